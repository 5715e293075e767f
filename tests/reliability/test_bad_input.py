"""The bad-input catalogue: every input an operator, a pipeline or a guest can get wrong ends the
run in one line (never a traceback: no exit code 3 anywhere here), with the exit code
docs/ci/exit-codes.md documents for it, and Azure and the guest exactly as they were (azsim's state
compared before and after, and no request that could change anything in its log).

Inputs: files that are not UTF-8 or not valid (waivers, scan rules, verdicts), a report directory
that cannot take the record, credentials in a URL or an address, a VM, resource group or
subscription that does not exist, a VM that is deallocated or generalized already, a wrong SSH
key, a wrong WinRM password, verdicts edited, unsigned, signed with another key, without a UTC
offset, expired, not JSON; waivers edited after the checks stage or expired; guest file names
that are not UTF-8 or hold a line break or a bidi override; and, accepted, a resource group whose
name is Unicode. The actions stage runs with --apply wherever it takes part: a wrong green would
generalize the VM, and the unchanged state would show it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from imageready import exitcodes
from imageready.signing import sign
from tests.e2e.conftest import Run, harness

from .conftest import Sim, assert_one_line, audit_vm

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

SCENARIO = "tests/scenarios/reliability-inputs.yaml"
RG = "rg-inputs"
WIN = f"{RG}/win-ok"
LIN = f"{RG}/lin-ok"
NAMES = f"{RG}/lin-names"
UNICODE_VM = "rg-ünïcødé-東京/win-uni"
OTHER_SUB = "00000000-0000-0000-0000-0000000000ff"
VMS = "Microsoft.Compute/virtualMachines"


@dataclass
class Stage:
    """The green verdict of win-ok from a checks stage, and the waiver file it was judged with."""

    verdict: Path
    waivers: Path
    base: Path


@pytest.fixture(scope="module")
def stage(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Stage:
    base = tmp_path_factory.mktemp("stage")
    waivers = base / "waivers.yaml"
    waivers.write_text(
        "waivers:\n  - {check: IR-WIN-999, reason: CHG-1 unused, approver: cab@contoso.example, "
        "expires: 2099-12-31}\n"
    )
    run = harness(sim, "checks", "--vm", WIN, f"--waivers={waivers}", report_dir=base / "checks")
    assert run.returncode == exitcodes.GREEN, run.output[-3000:]
    verdict = base / "checks" / "verdicts" / "verdict-rg-inputs__win-ok.json"
    assert json.loads(verdict.read_text())["signature"]["alg"] == "HMAC-SHA256"
    return Stage(verdict, waivers, base)


Extra = tuple[list[str], dict[str, str]]
#: a password an operator put in a URL or an address: it must reach no sink
PLANTED_PASSWORD = "Pl4nted-" + "".join(secrets.choice(string.ascii_letters) for _ in range(16))


def given(*args: str, **env: str) -> Extra:
    return list(args), dict(env)


@dataclass
class Case:
    """One bad input: what is run, and what must come of it."""

    args: list[str]
    code: int
    line: str  # a regular expression the one line naming the cause matches
    env: dict[str, str] = field(default_factory=dict)
    #: (tmp_path, sim, stage) -> (extra arguments, extra environment), after preparing files
    setup: Callable[[Path, Sim, Stage], Extra] | None = None


def _file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _verdict(change: Callable[[dict[str, Any]], None], signer: str | bytes) -> Any:
    """A setup writing the stage's verdict changed by ``change``: left with its old signature
    (``"none"``: anyone who can write the artifact), signed again with the pipeline's key
    (``"holder"``) or with another key (bytes)."""

    def setup(tmp: Path, sim: Sim, stage: Stage) -> Extra:
        document = json.loads(stage.verdict.read_text())
        change(document)
        if signer == "holder":
            document = sign(document, sim.env["IMAGEREADY_VERDICT_KEY"].encode())
        elif isinstance(signer, bytes):
            document = sign(document, signer)
        path = tmp / "verdict-rg-inputs__win-ok.json"
        path.write_text(json.dumps(document))
        return given(f"--verdict={path}", f"--waivers={stage.waivers}")

    return setup


def _naive_created_at(document: dict[str, Any]) -> None:
    document["created_at"] = dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def _forged_green(document: dict[str, Any]) -> None:
    # a consistent edit: nothing in the document itself can tell (its derived fields agree)
    document["change_ticket"] = "CHG-FORGED"


ACTIONS = ["actions", "--vm", WIN, "--apply"]


def file_arg(option: str, name: str, data: bytes) -> Callable[[Path, Sim, Stage], Extra]:
    """A setup writing ``data`` to a file and passing it as ``option``."""
    return lambda tmp, sim, stage: given(f"{option}={_file(tmp, name, data)}")


NOT_UTF8_WAIVERS = b"waivers:\n  - check: \xff\xfe\n"
UNKNOWN_KEY_WAIVERS = b"waivers: [{check: X, reason: r, approved_by: a}]\n"
NOT_UTF8_RULES = b"rules: []\n# \xff\n"
EXPIRED_DISABLE = (
    b"disable:\n  - {rule: jwt, reason: r, approver: cab@contoso.example, expires: 2021-01-31}\n"
)
EXPIRED_WAIVER = (
    b"waivers:\n  - {check: IR-TGT-002, vm: rg-inputs/win-dealloc, reason: r, approver: cab@contoso.example, "
    b"expires: 2021-06-30}\n"
)
NOT_UTF8_VERDICT = b'{"kind": "\xff"}'

CASES: dict[str, Case] = {
    # --- files that are not what they say ---------
    "waivers-not-utf8": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"--waivers .*: not UTF-8 text",
        setup=file_arg("--waivers", "w.yaml", NOT_UTF8_WAIVERS),
    ),
    "waivers-invalid": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"--waivers .*: waiver 1: unknown key\(s\) approved_by",
        setup=file_arg("--waivers", "w.yaml", UNKNOWN_KEY_WAIVERS),
    ),
    "rules-not-utf8": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"--scan-rules .*: not UTF-8 text",
        setup=file_arg("--scan-rules", "r.yaml", NOT_UTF8_RULES),
    ),
    "rules-invalid": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"--scan-rules .*: not valid YAML",
        setup=file_arg("--scan-rules", "r.yaml", b"rules: ["),
    ),
    "rules-disable-unapproved": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"--scan-rules .*: disable 1: 'jwt' needs an approval",
        setup=file_arg("--scan-rules", "r.yaml", b"disable: [jwt]\n"),
    ),
    "rules-disable-expired": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"the approval to disable 'jwt' by cab@contoso.example expired 2021-01-31",
        setup=file_arg("--scan-rules", "r.yaml", EXPIRED_DISABLE),
    ),
    # --- the record has nowhere to go ---------
    "report-dir-is-a-file": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"--report-dir .*: exists and is not a directory",
        setup=file_arg("--report-dir", "a-file", b""),
    ),
    "audit-json-is-a-directory": Case(
        ["--vm", WIN, "--apply"],
        exitcodes.USAGE_ERROR,
        r"audit.json exists and is not a file",
        setup=lambda t, s, st: given(f"--report-dir={_dir(t / 'taken' / 'audit.json').parent}"),
    ),
    # --- credentials where none belong ---------
    "arm-endpoint-with-password": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"IMAGEREADY_ARM_ENDPOINT https://\*\*\*@127\.0\.0\.1:\d+/: a URL with user:password@ is refused",
        setup=lambda t, s, st: given(
            IMAGEREADY_ARM_ENDPOINT=s.env["IMAGEREADY_ARM_ENDPOINT"].replace(
                "https://", f"https://pipeline:{PLANTED_PASSWORD}@"
            )
        ),
    ),
    "guest-address-with-password": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"guest address of rg-inputs/win-ok: '\*\*\*@127\.0\.0\.1:5986' is not HOST\[:PORT\]",
        setup=lambda t, s, st: given(f"--guest-address={WIN}=imageadmin:{PLANTED_PASSWORD}@127.0.0.1:5986"),
    ),
    "verdict-key-too-short": Case(
        ["--vm", WIN],
        exitcodes.USAGE_ERROR,
        r"IMAGEREADY_VERDICT_KEY: the verdict key is 5 characters, at least 32",
        env={"IMAGEREADY_VERDICT_KEY": "short"},
    ),
    # --- no such thing, or not a thing that can be checked ---------
    "unknown-vm": Case(
        ["checks", "--vm", f"{RG}/win-nope"], exitcodes.RED_CHECKS, r"VM rg-inputs/win-nope not found"
    ),
    "unknown-resource-group": Case(
        ["checks", "--vm", "rg-nope/win-ok"],
        exitcodes.RED_CHECKS,
        r"Resource group 'rg-nope' could not be found",
    ),
    "unknown-subscription": Case(
        ["checks", "--vm", f"/subscriptions/{OTHER_SUB}/resourceGroups/{RG}/providers/{VMS}/win-ok"],
        exitcodes.RED_CHECKS,
        rf"The subscription '{OTHER_SUB}' could not be found",
    ),
    "deallocated-vm": Case(
        ["--vm", f"{RG}/win-dealloc", "--apply"],
        exitcodes.RED_CHECKS,
        r"rg-inputs/win-dealloc is deallocated: its guest can be checked only while it runs",
    ),
    "generalized-vm": Case(
        ["--vm", f"{RG}/win-gen", "--apply"],
        exitcodes.RED_CHECKS,
        r"rg-inputs/win-gen is deallocated and generalized: its guest can never be checked again",
    ),
    # --- wrong guest credentials ---------
    "wrong-ssh-key": Case(
        ["checks", "--vm", LIN],
        exitcodes.INFRASTRUCTURE_ERROR,
        r"ssh azureuser@127\.0\.0\.1:\d+: the guest refused the credentials",
        setup=lambda t, s, st: given(IMAGEREADY_SSH_KEY=_other_ssh_key(t), SSH_AUTH_SOCK=""),
    ),
    "wrong-winrm-password": Case(
        ["checks", "--vm", WIN],
        exitcodes.INFRASTRUCTURE_ERROR,
        r"winrm imageadmin@https://127\.0\.0\.1:\d+/wsman: .*(credentials|401|authentication)",
        env={"IMAGEREADY_WINRM_PASSWORD": "Wrong-passw0rd!"},
    ),
    # --- verdicts ---------
    "verdict-edited-without-the-key": Case(
        ACTIONS,
        exitcodes.ACTIONS_BLOCKED,
        r"refused: its signature does not match its content: it was edited after the checks stage",
        setup=_verdict(_forged_green, "none"),
    ),
    "verdict-signed-with-another-key": Case(
        ACTIONS,
        exitcodes.ACTIONS_BLOCKED,
        r"refused: it was signed with another key",
        setup=_verdict(_forged_green, b"another-pipeline-" + b"x" * 32),
    ),
    "verdict-unsigned": Case(
        ACTIONS,
        exitcodes.ACTIONS_BLOCKED,
        r"refused: it is unsigned",
        setup=_verdict(lambda d: d.update(signature=None), "none"),
    ),
    "verdict-created-at-without-offset": Case(
        ACTIONS,
        exitcodes.ACTIONS_BLOCKED,
        r"refused: created_at \S+ has no UTC offset",
        setup=_verdict(_naive_created_at, "holder"),
    ),
    "verdict-expired": Case(
        [*ACTIONS, "--verdict-max-age=1s"],
        exitcodes.ACTIONS_BLOCKED,
        r"refused: stale: created \d+ s ago, the limit is 1 s",
        setup=lambda t, s, st: _after(2.0, given(f"--verdict={st.verdict}", f"--waivers={st.waivers}")),
    ),
    "verdict-not-json": Case(
        ACTIONS,
        exitcodes.ACTIONS_BLOCKED,
        r"--verdict .*: not JSON",
        setup=file_arg("--verdict", "verdict-x.json", b"{not json"),
    ),
    "verdict-not-utf8": Case(
        ACTIONS,
        exitcodes.ACTIONS_BLOCKED,
        r"--verdict .*: not UTF-8 text",
        setup=file_arg("--verdict", "verdict-x.json", NOT_UTF8_VERDICT),
    ),
    # --- waivers after the checks stage ---------
    "waivers-edited-after-the-checks": Case(
        ACTIONS,
        exitcodes.ACTIONS_BLOCKED,
        r"refused: policy digest sha256:\w+ differs from this run's",
        setup=lambda t, s, st: given(f"--verdict={st.verdict}", f"--waivers={_edited_waivers(t, st)}"),
    ),
    "waiver-expired": Case(
        ["checks", "--vm", f"{RG}/win-dealloc"],
        exitcodes.RED_CHECKS,
        r"EXPIRED waiver ignored: IR-TGT-002 \[rg-inputs/win-dealloc \*\] by cab@contoso.example",
        setup=file_arg("--waivers", "w.yaml", EXPIRED_WAIVER),
    ),
}


def _dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _after(seconds: float, extra: Extra) -> Extra:
    time.sleep(seconds)  # a verdict that really is older than --verdict-max-age
    return extra


def _other_ssh_key(tmp: Path) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp / "id_other"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return str(path)


def _edited_waivers(tmp: Path, stage: Stage) -> Path:
    edited = tmp / "waivers.yaml"
    text = stage.waivers.read_text().replace("CHG-1 unused", "CHG-1 unused then widened")
    edited.write_text(text)
    return edited


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_ends_in_one_line_and_changes_nothing(
    name: str, sim: Sim, stage: Stage, tmp_path: Path
) -> None:
    case = CASES[name]
    extra, extra_env = case.setup(tmp_path, sim, stage) if case.setup is not None else given()
    env = {**case.env, **extra_env}
    before, seq = sim.snapshot(), sim.last_seq()
    report_dir = tmp_path / "out"
    args = [*case.args, *extra]
    if not any(a.startswith("--report-dir=") for a in args):
        args.append(f"--report-dir={report_dir}")
    run = _run(sim, args, env, report_dir)
    assert_one_line(run, case.line)
    assert run.returncode == case.code, f"exit {run.returncode}, expected {case.code}:\n{run.output[-3000:]}"
    assert sim.mutations(seq) == [], "a bad input sent a request that could change Azure"
    assert sim.snapshot() == before, "a bad input changed Azure or the guest"
    if PLANTED_PASSWORD in run.output:
        pytest.fail("a password given in a URL or an address reached the terminal")
    for path in report_dir.rglob("*") if report_dir.is_dir() else []:
        if path.is_file():
            assert PLANTED_PASSWORD.encode() not in path.read_bytes(), path


def _run(sim: Sim, args: list[str], env: dict[str, str], report_dir: Path) -> Run:
    """``harness`` with the report options given by the case when it names its own directory."""
    import subprocess
    import sys

    from tests.e2e.conftest import REPO

    report_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pytest",
        *args,
        "-p",
        "no:cacheprovider",
        "-o",
        "console_output_style=classic",
    ]
    done = subprocess.run(
        command, cwd=REPO, env={**sim.env, **env}, capture_output=True, text=True, timeout=600
    )
    return Run(done.returncode, done.stdout, done.stderr, report_dir)


# --- guest names: data, not output --------------------------------------------------------------------


def _plant_names(sim: Sim) -> dict[str, str]:
    """Three files in lin-names' guest, each holding an AWS key id: named with a byte that is not
    UTF-8, with a line break, and with a right-to-left override. Planted through Azure Run Command
    (root), as any process in the guest could."""
    from imageready.azure import AzureSession, resolve_ca_bundle, resolve_cloud
    from imageready.target import parse_vm

    keys = {
        kind: "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
        for kind in ("byte", "newline", "bidi")
    }
    script = (
        # outside the admin's home (waagent deletes that): these findings persist into the image
        'd=/opt/notes; mkdir -p "$d"\n'
        f"printf 'aws_access_key_id = %s\\n' {keys['byte']} > \"$d/$(printf 'bad\\377name.txt')\"\n"
        f"printf 'aws_access_key_id = %s\\n' {keys['newline']} > \"$d/$(printf 'line\\nbreak.txt')\"\n"
        f"printf 'aws_access_key_id = %s\\n' {keys['bidi']} > \"$d/$(printf 'bidi\\342\\200\\256txt.exe')\"\n"
    )
    saved = dict(os.environ)
    os.environ.update(sim.env)
    try:
        vm = parse_vm(NAMES, sim.env["AZURE_SUBSCRIPTION_ID"])
        with AzureSession(vm.subscription, cloud=resolve_cloud(), ca_bundle=resolve_ca_bundle()) as azure:
            azure.run_command(vm, "RunShellScript", [script])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return keys


def test_guest_names_are_escaped_in_every_sink(sim: Sim, tmp_path: Path) -> None:
    """A finding in a file whose name is not UTF-8, holds a line break or a bidi override: the
    run ends red in the usual way (every case ran, nothing crashed, audit.html whole), each name
    shown escaped in the terminal, JUnit, Allure and the audit, the data attachment exact."""
    _plant_names(sim)
    before, seq = sim.snapshot(), sim.last_seq()
    run = harness(sim, "checks", "--vm", NAMES, "-vv", report_dir=tmp_path / "out")
    assert_one_line(run, r"finding\(s\) of aws-access-key")
    assert run.returncode == exitcodes.RED_CHECKS, run.output[-3000:]
    assert sim.mutations(seq) == [] and sim.snapshot() == before
    record = audit_vm(run, NAMES)
    assert record["checks"] and all(c["outcome"] != "not_run" for c in record["checks"])
    (case,) = [c for c in record["checks"] if c["case_id"].endswith("-aws-access-key]")]
    shown = "\n".join(case["evidence"])
    for escaped in ("bad\\xffname.txt", "line\\nbreak.txt", "bidi\\u202etxt.exe"):
        assert escaped in shown, shown
    html = (tmp_path / "out" / "audit.html").read_text(encoding="utf-8")
    assert len(html) > 10_000 and "bidi\\u202etxt.exe" in html and "line\\nbreak.txt" in html
    raw = {"\u202e".encode(), b"line\nbreak"}
    sinks = {"terminal": run.output.encode()} | {
        str(p.relative_to(tmp_path)): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()
    }
    for where, data in sinks.items():
        for needle in raw:
            assert needle not in data, f"{needle!r} raw in {where}"
    # the data stays exact where JSON carries it: Allure's evidence attachment of the rule
    exact = [
        json.loads(p.read_bytes())
        for p in (tmp_path / "out" / "allure-results").glob("*-attachment.json")
        if b"aws-access-key" in p.read_bytes()
    ]
    assert exact, "no evidence attachment of the rule"
    assert any("bidi\\u202etxt.exe" in line for doc in exact for line in doc.get("findings", []))


def test_a_unicode_resource_group_is_accepted(sim: Sim, tmp_path: Path) -> None:
    """Azure allows Unicode letters and digits in resource-group names (Char.IsLetterOrDigit):
    such a VM is checked like any other, its verdict written and accepted by an actions stage."""
    checks = harness(sim, "checks", "--vm", UNICODE_VM, report_dir=tmp_path / "checks")
    assert checks.returncode == exitcodes.GREEN, checks.output[-3000:]
    verdicts = list((tmp_path / "checks" / "verdicts").glob("*.json"))
    assert len(verdicts) == 1 and "東京" in verdicts[0].name
    plan = harness(
        sim, "actions", "--vm", UNICODE_VM, f"--verdict={verdicts[0]}", report_dir=tmp_path / "plan"
    )
    assert plan.returncode == exitcodes.GREEN, plan.output[-3000:]
    assert "gate OPEN (via verdict)" in plan.output


def test_every_documented_bad_input_is_in_the_catalogue() -> None:
    """docs/reliability.md lists the catalogue; it names exactly these cases."""
    from .test_fault_matrix import DOC

    text = DOC.read_text(encoding="utf-8")
    for name in CASES:
        assert f"`{name}`" in text, f"docs/reliability.md does not list {name}"

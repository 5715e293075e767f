"""The sensitive-data scan end to end: the real harness against azsim guests planted with one
target of every rule, clean guests, and guests whose scan cannot finish.

The fleet is ``tests/scenarios/scan-fleet.yaml``, a template: every secret in it is generated
here per run (:func:`render_scenario`), so no planted value is in any file of the repository.
Its ``x-expect`` says what each rule's case must report on each planted VM. The helpers here
(rendering, the harness with a fresh fingerprint key, JUnit texts) serve the other scan modules.
"""

from __future__ import annotations

import base64
import random
import re
import secrets
import string
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from imageready import exitcodes
from imageready.scan import load_rules, rules_for

from .conftest import REPO, Azsim, Run, harness, start_azsim

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root, pytest.mark.slow]

SCENARIO = "tests/scenarios/scan-fleet.yaml"
RG = "rg-scan"
SCAN_CASE = "checks/test_sensitive_data.py::test_sensitive_data[{vm}-{rule}]"
#: a bound on every scan here: a scan that stalls fails its test in minutes, not hours
SCAN_DEADLINE = "--scan-deadline=120"

# --- planting ------------------------------------------------------------------------------------

ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
_PLACEHOLDER = re.compile(r"\{\{([A-Za-z0-9-]+)(?::([^}]*))?\}\}")


@dataclass(frozen=True)
class Secret:
    """A planted value. ``cores`` are its random parts: no 12-character window of them may
    appear anywhere (a finding shows at most a value's first 4 characters)."""

    value: str
    cores: tuple[str, ...]


@dataclass
class Planted:
    """A rendered scenario: the file azsim loads, every secret in it, and ``x-expect``."""

    scenario: Path
    secrets: list[Secret] = field(default_factory=list)
    expect: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    #: the values generated for each VM's placeholders, in order
    by_vm: dict[str, list[str]] = field(default_factory=dict)


def _random(alphabet: str, n: int) -> str:
    rng = random.SystemRandom()
    while True:
        value = "".join(rng.choice(alphabet) for _ in range(n))
        # all letters reads as a plain word, which some rules ignore (ignore_values): keep a digit
        if n < 4 or not set(string.digits) & set(alphabet) or any(c.isdigit() for c in value):
            return value


def _generate(kind: str, arg: str | None) -> tuple[str, list[Secret]]:
    """The text for one placeholder and the secrets it plants."""
    alphabets = {
        "alnum": ALNUM,
        "hex": "0123456789abcdef",
        "HEX": "0123456789ABCDEF",
        "upper": string.ascii_uppercase + string.digits,
        "b64": B64,
        "letters": string.ascii_letters,
    }
    if kind in alphabets:
        value = _random(alphabets[kind], int(str(arg)))
        return value, [Secret(value, (value,))]
    if kind == "repeat":  # filler, not a secret
        word, _, count = str(arg).rpartition(":")
        return word * int(count), []
    if kind in ("pem", "pem-escaped"):
        lines = [_random(B64, 64) for _ in range(6)]
        joint = "\n" if kind == "pem" else "\\n"  # inside JSON, line breaks are escaped
        return joint.join(lines), [Secret(line, (line,)) for line in lines]
    if kind == "wg":  # a WireGuard key: base64 of 32 bytes
        value = base64.b64encode(secrets.token_bytes(32)).decode()
        return value, [Secret(value, (value[:42],))]
    if kind == "kube-key":  # kubeconfig client-key-data: base64 of a PEM key
        body = _random(B64, 64)
        value = base64.b64encode(f"-----BEGIN RSA PRIVATE KEY-----\n{body}\n".encode()).decode()
        return value, [Secret(value, (value[44:],)), Secret(body, (body,))]
    if kind == "entra":
        value = _random(ALNUM, 3) + _random(string.digits, 1) + "Q~" + _random(ALNUM, 34)
        return value, [Secret(value, (value,))]
    if kind == "docker-auth":
        # "ci-user1:" is 9 bytes, so the password's base64 is exactly characters 12..27
        password = _random(ALNUM, 12)
        value = base64.b64encode(f"ci-user1:{password}".encode()).decode()
        return value, [Secret(password, (password,)), Secret(value, (value[12:28],))]
    if kind == "unattend":
        # base64(UTF-16LE(password + "Password")): the password is characters 0..31
        password = _random(ALNUM, 12)
        value = base64.b64encode((password + "Password").encode("utf-16-le")).decode()
        return value, [Secret(password, (password,)), Secret(value, (value[:32],))]
    if kind == "shadow":
        digest = _random(ALNUM + "./", 86)
        value = f"$6${_random(ALNUM, 8)}${digest}"
        return value, [Secret(value, (digest,))]
    raise ValueError(f"unknown placeholder kind {kind!r}")


def render_scenario(template: Path, out: Path, *, keep_vms: set[str] | None = None) -> Planted:
    """Write ``template`` to ``out`` with fresh values for its placeholders (only the VMs in
    ``keep_vms`` when given)."""
    data = yaml.safe_load(template.read_text(encoding="utf-8"))
    planted = Planted(out)
    values: list[str] = []

    def fill(node: Any) -> Any:
        if isinstance(node, str):

            def one(match: re.Match[str]) -> str:
                text, made = _generate(match.group(1), match.group(2))
                planted.secrets.extend(made)
                values.append(text)
                return text

            text = _PLACEHOLDER.sub(one, node)
            if "{{" in text:
                raise ValueError(f"{template}: a placeholder is not understood in {node[:80]!r}")
            return text
        if isinstance(node, list):
            return [fill(item) for item in node]
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        return node

    for group in data["resource_groups"]:
        if keep_vms is not None:
            group["vms"] = [vm for vm in group["vms"] if vm["name"] in keep_vms]
        for index, vm in enumerate(group["vms"]):
            values = []
            group["vms"][index] = fill(vm)
            planted.by_vm[vm["name"]] = values
    planted.expect = data.get("x-expect") or {}
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return planted


# --- running ---------------------------------------------------------------------------------------


@dataclass
class Fleet:
    """A running azsim of a rendered scenario, and the fingerprint key every run here uses."""

    sim: Azsim
    planted: Planted
    key: str = field(default_factory=lambda: secrets.token_hex(32))

    def run(self, *args: str, report_dir: Path) -> Run:
        # a fresh key through the environment: no key file is created on the host
        return harness(self.sim, *args, report_dir=report_dir, env={"IMAGEREADY_FINGERPRINT_KEY": self.key})


def start_fleet(template: Path, base: Path, keep_vms: set[str] | None = None) -> Fleet:
    planted = render_scenario(template, base / "scenario.yaml", keep_vms=keep_vms)
    return Fleet(start_azsim(planted.scenario, base / "azsim"), planted)


def case_texts(run: Run) -> dict[str, tuple[str, str]]:
    """Per JUnit test id: its outcome and its failure or error text."""
    found = {}
    root = ET.parse(run.report_dir / "junit.xml").getroot()  # noqa: S314 - our own output
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        outcome, text = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                text = f"{child.get('message', '')}\n{child.text or ''}"
        found[name] = (outcome, text)
    return found


def audit_cases(run: Run, vm: str) -> dict[str, dict[str, Any]]:
    """The audit's check records of ``vm``, by parameter (the rule id for the scan check)."""
    record = next(v for v in run.audit()["vms"] if v["vm"] == vm)
    return {c["parameter"]: c for c in record["checks"] if c["check_id"] == "IR-SCAN"}


# --- the tests --------------------------------------------------------------------------------------

USER_RULES = """
known_examples:
  - {value: ctso_00000000000000000000000000000000, note: the Contoso docs example}
rules:
  - id: contoso-api-key
    title: Contoso API keys
    severity: high
    os: any
    kind: content
    pattern: "ctso_[A-Za-z0-9]{32}"
    keywords: ["ctso_"]
    rationale: Contoso keys grant access to the tenant.
    source: Contoso security standard 4.2
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """The scan fleet (all of scan-fleet.yaml) with fresh secrets, one azsim for the module."""
    found = start_fleet(REPO / SCENARIO, tmp_path_factory.mktemp("scan-fleet"))
    try:
        yield found
    finally:
        found.sim.cli("down", check=False)


@pytest.fixture(scope="module")
def planted_run(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One scan of both planted VMs (the scan check alone) with a user rule file on top."""
    base = tmp_path_factory.mktemp("planted-run")
    rules = base / "contoso-rules.yaml"
    rules.write_text(USER_RULES)
    return fleet.run(
        "checks/test_sensitive_data.py",
        "--vm",
        f"{RG}/lin-planted",
        "--vm",
        f"{RG}/win-planted",
        f"--scan-rules={rules}",
        SCAN_DEADLINE,
        report_dir=base / "report",
    )


@pytest.mark.parametrize("os_type, name", [("Linux", "lin-planted"), ("Windows", "win-planted")])
def test_every_rule_reports_its_plant(fleet: Fleet, planted_run: Run, os_type: str, name: str) -> None:
    vm = f"{RG}/{name}"
    expect = fleet.planted.expect[name]
    kinds = {r.id: r.kind for r in rules_for(os_type, load_rules())}
    assert set(expect) == set(kinds), "every built-in rule needs a plant in x-expect"
    texts, audit = case_texts(planted_run), audit_cases(planted_run, vm)
    for rule, want in sorted(expect.items()):
        outcome, text = texts[SCAN_CASE.format(vm=vm, rule=rule)]
        lines = audit[rule]["evidence"]
        if kinds[rule] == "location":  # a file or registry value: never any of its characters
            assert not any("starts '" in ln for ln in lines), f"{rule}: {lines}"
        if "fails" in want:
            assert outcome == "failed", f"{rule}: {outcome} {text[:300]}"
            assert want["fails"] in text and "persists in image" in text, f"{rule}: {text[:600]}"
            assert any(f"[{rule}] {want['fails']}" in ln and "persists in image" in ln for ln in lines)
            for also in want.get("also", []):  # compressed, archived, UTF-16, linked, escaped
                assert any(f"[{rule}] {also}" in ln for ln in lines), f"{rule}: {also} not in {lines}"
        else:
            assert outcome == "passed", f"{rule}: {outcome} {text[:300]}"
        if "removed" in want:
            listed = [ln for ln in lines if f"[{rule}] {want['removed']}" in ln]
            assert listed and all("removed: " in ln for ln in listed), f"{rule}: {lines}"
    assert planted_run.returncode == exitcodes.RED_CHECKS
    assert planted_run.verdict(vm)["status"] == "red" and not planted_run.verdict(vm)["green"]


def test_the_deprovision_fate_follows_the_guest_configuration(planted_run: Run) -> None:
    """lin-planted says RegenerateSshHostKeyPair=n: its host keys persist, while waagent's own
    directory and the provisioned user's home are listed as removed, with the reason."""
    audit = audit_cases(planted_run, f"{RG}/lin-planted")
    host_keys = [ln for ln in audit["ssh-host-private-key"]["evidence"] if "/etc/ssh/ssh_host_" in ln]
    assert host_keys and all("persists in image" in ln for ln in host_keys)
    provisioning = audit["waagent-provisioning-data"]["evidence"]
    assert any(
        "/var/lib/waagent/ovf-env.xml" in ln and "waagent deletes /var/lib/waagent" in ln
        for ln in provisioning
    )
    history = audit["bash-history"]["evidence"]
    assert any("/home/azureuser/.bash_history" in ln and "provisioned user's home" in ln for ln in history)
    shadow = audit["shadow-unlocked-password"]["evidence"]
    assert any("account=builder" in ln and "persists in image" in ln for ln in shadow)


def test_a_user_rule_file_adds_a_case_with_its_own_examples(fleet: Fleet, planted_run: Run) -> None:
    texts = case_texts(planted_run)
    lin = texts[SCAN_CASE.format(vm=f"{RG}/lin-planted", rule="contoso-api-key")]
    win = texts[SCAN_CASE.format(vm=f"{RG}/win-planted", rule="contoso-api-key")]
    assert lin[0] == "failed" and "/opt/app/contoso.conf:2 " in lin[1], lin
    assert "/opt/app/contoso.conf:1 " not in lin[1], "the user file's known example was reported"
    assert win[0] == "passed", win


def test_clean_guests_pass_every_check_with_examples_suppressed(fleet: Fleet, tmp_path: Path) -> None:
    """Decoys, published example keys and pathological long lines: no finding persists, the
    whole policy passes and the gate opens. The example keys sit where lin-planted's real-shaped
    keys are found, so their absence is suppression, not a path the scan missed."""
    vms = [f"{RG}/lin-clean", f"{RG}/win-clean"]
    run = fleet.run("--vm", vms[0], "--vm", vms[1], SCAN_DEADLINE, report_dir=tmp_path / "clean")
    assert run.returncode == exitcodes.GREEN, run.output[-3000:]
    for vm in vms:
        for rule, case in audit_cases(run, vm).items():
            assert case["outcome"] == "passed", (vm, rule, case["message"])
            assert "0 persisting" in case["evidence"][0], (vm, rule, case["evidence"])
            assert not any("persists in image" in ln for ln in case["evidence"]), (vm, rule)
    listed = " ".join(ln for vm in vms for c in audit_cases(run, vm).values() for ln in c["evidence"])
    for decoy in ("/opt/app/aws.py", "/etc/app/storage.conf", "/var/lib/app/session.json", "C:\\build\\"):
        assert decoy not in listed
    # the only findings on a clean copy are those the action removes (Azure's own state)
    assert "removed: our sysprep step deletes C:\\Windows\\Panther" in listed
    assert "removed: waagent deletes /var/lib/waagent" in listed


def test_a_scan_that_cannot_run_errors_every_case(fleet: Fleet, tmp_path: Path) -> None:
    """lin-nosudo has no sudo: the facts arrive (unelevated), the scan cannot run as root. Every
    rule's case errors, none passes, and the gate stays shut."""
    vm = f"{RG}/lin-nosudo"
    run = fleet.run("checks/test_sensitive_data.py", "--vm", vm, SCAN_DEADLINE, report_dir=tmp_path / "r")
    assert run.returncode == exitcodes.RED_CHECKS, run.output[-3000:]
    cases = audit_cases(run, vm)
    assert set(cases) == {r.id for r in rules_for("Linux", load_rules())}
    for rule, case in cases.items():
        assert case["outcome"] == "error", (rule, case)
        assert (
            "sensitive-data scan is incomplete" in case["message"] and "nothing is proven" in case["message"]
        )
    assert "scan produced no result" in next(iter(cases.values()))["message"]


def test_a_scan_past_its_deadline_errors_every_case(fleet: Fleet, tmp_path: Path) -> None:
    """User rules that match every character of every line (values all ignored) keep the guest
    busy for about 50 s on this disk, past a 10 s budget: the guest program stops itself at its
    deadline and every case errors as a timeout, never passes. The file also switches a
    built-in rule off."""
    probes = "".join(
        f"  - {{id: slow-probe-{n}, title: Any character, severity: low, os: Linux, kind: content,\n"
        "     pattern: '.', keywords: ['er', 'in'], ignore_values: '.', rationale: expensive,\n"
        "     source: this test}\n"
        for n in range(4)
    )
    rules = tmp_path / "slow.yaml"
    approval = "{rule: tmp-leftovers, reason: test, approver: cab@contoso.example, expires: 2099-12-31}"
    rules.write_text(f"disable:\n  - {approval}\nrules:\n{probes}")
    vm = f"{RG}/lin-clean"
    started = time.monotonic()
    run = fleet.run(
        "checks/test_sensitive_data.py",
        "--vm",
        vm,
        f"--scan-rules={rules}",
        "--scan-deadline=30",  # the guest program gets 30 - 20 = 10 s
        report_dir=tmp_path / "r",
    )
    assert time.monotonic() - started < 30, "the guest program did not stop at its deadline"
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR, run.output[-3000:]
    cases = audit_cases(run, vm)
    assert "tmp-leftovers" not in cases and "slow-probe-0" in cases
    for rule, case in cases.items():
        assert case["outcome"] == "error" and case["category"] == "timeout", (rule, case)
        assert "deadline passed: scan stopped early" in case["message"], case["message"]


def test_what_the_scan_cannot_read_keeps_the_gate_shut_until_waived_by_path(
    fleet: Fleet, tmp_path: Path
) -> None:
    """lin-unread and win-unread each hold a file past the 8 GiB bound and one that cannot be
    read: every rule's case errors, naming them, and the run is red. A waiver naming each path
    (approver, expiry) lets the cases run: what a tmpfs hides on the Linux disk and what a volume
    mounted in C:\\data holds are found, while the resource disks (Linux /mnt by its device,
    Windows D: by its LUN) stay out, DATALOSS note on C: or not."""
    vms = {f"{RG}/lin-unread": ("/var/log/app/huge.log", "/data/app/bad.conf"),
           f"{RG}/win-unread": ("C:\\logs\\huge.log", "C:\\build\\locked.txt")}  # fmt: skip
    targets = [arg for vm in vms for arg in ("--vm", vm)]
    red = fleet.run("checks/test_sensitive_data.py", *targets, SCAN_DEADLINE, report_dir=tmp_path / "red")
    assert red.returncode == exitcodes.RED_CHECKS, red.output[-3000:]
    for vm, paths in vms.items():
        for rule, case in audit_cases(red, vm).items():
            assert case["outcome"] == "error", (vm, rule, case["outcome"])
            assert "not scanned" in case["message"] and all(p in case["message"] for p in paths), case
        assert red.verdict(vm)["status"] == "red"
    waivers = tmp_path / "waivers.yaml"
    entries = "".join(
        f"  - {{check: IR-SCAN, vm: {vm}, path: '{path}', reason: 'rotated log, no secrets (CHG-7)',\n"
        "     approver: jane.doe@contoso.example, expires: 2099-12-31}\n"
        for vm, paths in vms.items()
        for path in paths
    )
    waivers.write_text("waivers:\n" + entries)
    run = fleet.run(
        "checks/test_sensitive_data.py",
        *targets,
        f"--waivers={waivers}",
        SCAN_DEADLINE,
        report_dir=tmp_path / "w",
    )
    assert run.returncode == exitcodes.RED_CHECKS, run.output[-3000:]  # the findings, now seen
    expect = fleet.planted.expect
    for vm, paths in vms.items():
        cases = audit_cases(run, vm)
        assert not [r for r, c in cases.items() if c["outcome"] == "error"], vm
        github = cases["github-token"]
        want = expect[vm.split("/")[1]]["github-token"]
        for path in [want["fails"], *want.get("also", [])]:
            assert any(f"[github-token] {path}" in ln for ln in github["evidence"]), (
                path,
                github["evidence"],
            )
        listed = " ".join(ln for c in cases.values() for ln in c["evidence"])
        assert "/mnt/leak.txt" not in listed and "D:\\scratch" not in listed
        assert all(
            f"NOT SCANNED {p}" in listed and "WAIVED by jane.doe@contoso.example" in listed for p in paths
        )
        applied = run.verdict(vm)["waivers_applied"]
        assert {w["path"] for w in applied} == set(paths), applied
    excluded = " ".join(ln for ln in audit_cases(run, f"{RG}/lin-unread")["jwt"]["evidence"])
    assert "/mnt: the Azure resource disk" in excluded

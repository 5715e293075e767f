"""A check of one's own, end to end: the example module of docs/writing-checks.md, copied into a
copy of the policy, runs against azsim beside the built-in checks, with its own item source, and
takes part in the gate, the verdict and the audit like they do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imageready import exitcodes

from .conftest import REPO, Azsim, Run, harness

SCENARIO = "tests/scenarios/checks-custom.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

GUIDE = REPO / "docs" / "writing-checks.md"
EXAMPLE = "checks/test_org_policy.py"
TESTINFRA_EXAMPLE = "checks/test_org_ssh.py"  # the guide's example of the `host` fixture
LINUX, WINDOWS = "rg-custom/lin-builder", "rg-custom/win-untagged"


def example_module(name: str = EXAMPLE) -> str:
    """The python block that follows the guide's `<!-- example module: NAME -->` marker."""
    text = GUIDE.read_text(encoding="utf-8")
    found = re.search(rf"<!-- example module: {re.escape(name)} -->\n```python\n(.*?)```", text, re.S)
    assert found, f"{GUIDE.name} has no example module block for {name}"
    return found.group(1)


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this repository's policy (checks/, actions/, pytest.ini) with the example added."""
    root = tmp_path_factory.mktemp("policy")
    for name in ("checks", "actions"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pytest.ini", "conftest.py"):
        shutil.copy(REPO / name, root / name)
    for name in (EXAMPLE, TESTINFRA_EXAMPLE):
        (root / name).write_text(example_module(name), encoding="utf-8")
    return root


def run_policy(sim: Azsim, policy: Path, *args: str, report_dir: Path) -> Run:
    """`pytest <args>` in the policy copy, as an operator with their own policy would run it."""
    return harness(sim, *args, report_dir=report_dir, timeout=600, cwd=policy)


def test_the_example_runs_beside_the_builtin_checks_and_shuts_the_gate(
    azsim: Azsim, policy: Path, tmp_path: Path
) -> None:
    run = run_policy(
        azsim,
        policy,
        "checks",
        "--deselect",
        "checks/test_sensitive_data.py",  # the scan has its own tests; it adds nothing here
        "--vm",
        LINUX,
        "--vm",
        WINDOWS,
        report_dir=tmp_path / "run",
    )
    assert run.returncode == exitcodes.RED_CHECKS, run.output[-3000:]
    outcomes = run.outcomes()
    accounts = "checks/test_org_policy.py::test_local_account_has_no_password"
    tagged = "checks/test_org_policy.py::test_required_tags"
    assert outcomes[f"{accounts}[{LINUX}-builder]"] == "failed"
    assert outcomes[f"{accounts}[{LINUX}-deploy]"] == "passed"
    assert outcomes[f"{accounts}[{LINUX}-azureuser]"] == "passed"
    assert outcomes[f"{accounts}[{LINUX}-root]"] == "passed"
    assert outcomes[f"{accounts}[{WINDOWS}]"] == "skipped"  # not applicable: a Linux-only check
    assert outcomes[f"{tagged}[{LINUX}]"] == "passed"
    assert outcomes[f"{tagged}[{WINDOWS}]"] == "failed"
    # the testinfra example: Debian's sshd refuses root passwords; not applicable on Windows
    sshd = f"{TESTINFRA_EXAMPLE}::test_sshd_refuses_root_password_login"
    assert outcomes[f"{sshd}[{LINUX}]"] == "passed"
    assert outcomes[f"{sshd}[{WINDOWS}]"] == "skipped"

    # the example's findings are the only thing keeping each gate shut, in the verdict as in the audit
    linux, windows = run.verdict(LINUX), run.verdict(WINDOWS)
    assert linux["green"] is False and windows["green"] is False
    assert [(c["check_id"], c["parameter"]) for c in linux["checks"] if c["outcome"] == "failed"] == [
        ("ORG-LNX-001", "builder")
    ]
    assert [(c["check_id"], c["message"]) for c in windows["checks"] if c["outcome"] == "failed"] == [
        ("ORG-TAG-001", "rg-custom/win-untagged lacks the tag(s) cost-center")
    ]
    assert not [c for c in linux["checks"] + windows["checks"] if c["outcome"] == "error"]
    audited = {c["case_id"]: c for vm in run.audit()["vms"] for c in vm["checks"]}
    assert audited[f"{accounts}[{LINUX}-deploy]"]["evidence"] == [
        f"{LINUX}: account deploy (uid 1002): password locked"
    ]

    # and the finding reads like imageready's own: what, where, how to fix, the document
    root = ET.parse(run.report_dir / "junit.xml").getroot()  # noqa: S314 - our own output
    failure = next(
        case.find("failure")
        for case in root.iter("testcase")
        if case.get("name") == f"test_local_account_has_no_password[{LINUX}-builder]"
    )
    assert failure is not None
    assert (failure.text or "").splitlines() == [
        f"local account builder on {LINUX} has a password set, so every VM from the image would accept it",
        f"  where: {LINUX}: /etc/shadow",
        "  fix:   passwd -l builder (sign in with SSH keys), or userdel -r builder",
        "  doc:   https://wiki.example.com/platform/images#local-accounts",
    ]


def test_the_example_cases_are_listed_as_findings(azsim: Azsim, policy: Path, tmp_path: Path) -> None:
    run = run_policy(
        azsim, policy, "--co", "-q", EXAMPLE, "--vm", LINUX, "--vm", WINDOWS, report_dir=tmp_path
    )
    assert run.returncode == exitcodes.GREEN, run.output[-2000:]
    listed = sorted(line for line in run.stdout.splitlines() if line.startswith(EXAMPLE))
    assert listed == [
        f"{EXAMPLE}::test_local_account_has_no_password[{LINUX}-azureuser]",
        f"{EXAMPLE}::test_local_account_has_no_password[{LINUX}-builder]",
        f"{EXAMPLE}::test_local_account_has_no_password[{LINUX}-deploy]",
        f"{EXAMPLE}::test_local_account_has_no_password[{LINUX}-root]",
        f"{EXAMPLE}::test_local_account_has_no_password[{WINDOWS}]",  # not applicable: one case
        f"{EXAMPLE}::test_required_tags[{LINUX}]",
        f"{EXAMPLE}::test_required_tags[{WINDOWS}]",
    ]


def test_the_example_is_clean_code(policy: Path) -> None:
    """What users copy from the guide passes this project's own linter and formatter."""
    ruff = Path(sys.executable).with_name("ruff")
    for command in (["check"], ["format", "--check"]):
        done = subprocess.run(
            [
                str(ruff),
                *command,
                "--config",
                str(REPO / "pyproject.toml"),
                str(policy / EXAMPLE),
                str(policy / TESTINFRA_EXAMPLE),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_the_testinfra_example_reads_the_guest_through_host(
    azsim: Azsim, policy: Path, tmp_path: Path
) -> None:
    """The `host` fixture's commands reach the VM of the case, as root under host.sudo(): a
    drop-in that lets root in with a password (written by hand over our own SSH login) turns the
    example's case red with the guest's own answer as evidence."""
    address = next(
        endpoints["ssh"]
        for key, vm in azsim.status().items()
        if key.lower() == LINUX and (endpoints := (vm.get("guest") or {}).get("endpoints") or {})
    )
    drop_in = "/etc/ssh/sshd_config.d/99-root.conf"
    azsim.admin_run(address, LINUX, f"printf 'PermitRootLogin yes\\n' > {drop_in}")
    try:
        run = run_policy(azsim, policy, TESTINFRA_EXAMPLE, "--vm", LINUX, report_dir=tmp_path)
    finally:
        azsim.admin_run(address, LINUX, f"rm -f {drop_in}")
    sshd = f"{TESTINFRA_EXAMPLE}::test_sshd_refuses_root_password_login[{LINUX}]"
    assert run.outcomes()[sshd] == "failed", run.output[-3000:]
    case = next(c for c in run.verdict(LINUX)["checks"] if c["check_id"] == "ORG-LNX-002")
    assert case["message"] == f"sshd on {LINUX} lets root log in with a password"
    audited = {c["case_id"]: c for vm in run.audit()["vms"] for c in vm["checks"]}
    assert audited[sshd]["evidence"] == [f"{LINUX}: sshd PermitRootLogin yes"]

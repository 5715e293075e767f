"""Every infrastructure category ends a run with exit 12, never 1: a pipeline must not read an
outage as a finding on the VM. Each category is caused here for real against azsim (a wrong
client secret, an ARM endpoint nobody answers, a guest host key that is not the pinned one) or
named where another suite causes it; the test fails if a category is neither."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import paramiko

from imageready import exitcodes

from .conftest import Azsim, Run, harness

SCENARIO = "tests/scenarios/checks-custom.yaml"

LINUX = "rg-custom/lin-builder"
WITHOUT_SCAN = ("checks", "--deselect", "checks/test_sensitive_data.py")

#: categories caused by the tests of other modules, and where
ELSEWHERE = {
    "Azure API error": "tests/reliability/test_fault_matrix_checks.py (5xx, lasting)",
    "Azure permission": "tests/reliability/test_fault_matrix_checks.py (forbidden)",
    "guest unreachable": "tests/reliability/test_fault_matrix_checks.py (guest unreachable)",
    "guest authentication": "tests/reliability/test_bad_input.py (wrong-ssh-key, wrong-winrm-password)",
    "guest identity": "tests/e2e/test_guest_identity.py",
    "guest facts": "tests/e2e/test_checks_fleet.py (lin-no-sudo: ovf-env.xml unreadable)",
    "timeout": "tests/reliability/test_fault_matrix_checks.py (LRO never ends)",
}


def categories(run: Run) -> set[str]:
    return {c["category"] for vm in run.audit()["vms"] for c in vm["checks"] if c["outcome"] == "error"}


def assert_infrastructure(run: Run, category: str) -> None:
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR, run.output[-3000:]
    assert categories(run) == {category}, categories(run)
    assert "Traceback" not in run.output


#: categories the tests of this module cause
HERE = {"Azure authentication", "Azure unreachable", "guest host key"}


def test_a_wrong_client_secret_is_azure_authentication(azsim: Azsim, tmp_path: Path) -> None:
    run = harness(
        azsim,
        *WITHOUT_SCAN,
        "--vm",
        LINUX,
        report_dir=tmp_path,
        env={"AZURE_CLIENT_SECRET": "not-the-secret"},
    )
    assert_infrastructure(run, "Azure authentication")
    assert "not-the-secret" not in run.output


def test_an_arm_endpoint_nobody_answers_is_azure_unreachable(azsim: Azsim, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port of this machine that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run = harness(
        azsim,
        *WITHOUT_SCAN,
        "--vm",
        LINUX,
        "--lro-deadline=20",
        report_dir=tmp_path,
        env={"IMAGEREADY_ARM_ENDPOINT": f"https://127.0.0.1:{port}/"},
        timeout=300,
    )
    assert_infrastructure(run, "Azure unreachable")


def test_a_guest_host_key_that_is_not_the_pinned_one_is_guest_host_key(azsim: Azsim, tmp_path: Path) -> None:
    addresses = json.loads(Path(azsim.env["IMAGEREADY_GUEST_ADDRESSES"]).read_text())
    host, _, port = addresses[LINUX].rpartition(":")
    other = paramiko.RSAKey.generate(2048)  # not the guest's key
    known = tmp_path / "known_hosts"
    line = f"[{host}]:{port} {other.get_name()} {base64.b64encode(other.asbytes()).decode()}\n"
    known.write_text(line)
    run = harness(
        azsim,
        *WITHOUT_SCAN,
        "--vm",
        LINUX,
        "--ssh-strict-host-keys",
        report_dir=tmp_path / "run",
        env={"IMAGEREADY_KNOWN_HOSTS": str(known)},
    )
    assert_infrastructure(run, "guest host key")


def test_every_infrastructure_category_is_caused_somewhere() -> None:
    """Each category of exitcodes.INFRA_CATEGORIES is caused by a test: here, or in the test
    module ELSEWHERE names."""
    repo = Path(__file__).resolve().parents[2]
    assert set(exitcodes.INFRA_CATEGORIES) == HERE | set(ELSEWHERE) and not HERE & set(ELSEWHERE)
    for where in ELSEWHERE.values():
        assert (repo / where.split(" ", 1)[0]).is_file(), where

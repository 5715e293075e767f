"""Guests with no network path: facts through Azure Run Command (read-only, as root/SYSTEM,
output compressed past Azure's 4 KB limit). The sensitive-data scan cannot run that way, so the
gate stays shut and says why: fail closed."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageready import exitcodes

from .conftest import Azsim, harness

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

SCENARIO = "tests/scenarios/run-command.yaml"


@pytest.mark.parametrize("vm", ["rg-rc/lin-copy", "rg-rc/win-copy"])
def test_facts_through_run_command(azsim: Azsim, tmp_path: Path, vm: str) -> None:
    run = harness(azsim, "checks", "--vm", vm, "--transport", "run-command", report_dir=tmp_path)
    outcomes = {case["case_id"]: case["outcome"] for case in run.verdict(vm)["checks"]}
    guest_checks = [c for c in outcomes if "readiness" in c or "server_roles" in c]
    assert guest_checks and all(outcomes[c] in ("passed", "not_applicable") for c in guest_checks), outcomes
    scan = {c: o for c, o in outcomes.items() if "sensitive_data" in c}
    assert scan and set(scan.values()) == {"error"}, "the scan must not pass without a session"
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR
    identity = run.audit()["vms"][0]["identity"]["guest"]
    assert identity["transport"] == "run-command"


def test_unreachable_guest_falls_back_for_facts(azsim: Azsim, tmp_path: Path) -> None:
    # a closed port: SSH is unreachable, so --transport auto reads the facts through Run Command
    run = harness(
        azsim,
        "checks",
        "--vm",
        "rg-rc/lin-copy",
        "--guest-address",
        "rg-rc/lin-copy=127.0.0.1:9",
        report_dir=tmp_path,
    )
    assert "falling back to Azure Run Command" in run.output
    outcomes = {case["check_id"]: case["outcome"] for case in run.verdict("rg-rc/lin-copy")["checks"]}
    assert outcomes["IR-LNX-001"] == "passed"

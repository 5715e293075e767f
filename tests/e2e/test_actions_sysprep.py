"""Sysprep's failure modes end red, name their cause, attach sysprep's logs and leave the VM
running and not generalized; the sysprep flags are configurable (/quit instead of /shutdown) and
checked before anything changes. The failures are ones the checks cannot see (see the scenario).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes
from imageready.steps.lease import LEASE_TAG

from .conftest import Azsim, Run, harness

SCENARIO = "tests/scenarios/actions-sysprep.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

APPX, PROVIDER, HANG, QUIT = (
    f"rg-sysprep/{name}" for name in ("win-appx", "win-provider", "win-hang", "win-quit")
)
GUEST_TAG = "imageready-step-guest"
DEADLINE = 6


def step(run: Run, vm: str, name: str) -> dict[str, Any]:
    (found,) = [v for v in run.audit()["vms"] if v["vm"] == vm]
    (record,) = [s for s in found["actions"] if s["step"] == name]
    return dict(record)


def attached_logs(run: Run) -> dict[str, dict[str, str]]:
    """Per VM, the sysprep logs attached to its guest step in the Allure results (they hang on
    the fixture that ran the step, in a container naming the cases it served)."""
    results = run.report_dir / "allure-results"
    names = {}
    for path in results.glob("*-result.json"):
        data = json.loads(path.read_text())
        names[data["uuid"]] = data["name"]
    found: dict[str, dict[str, str]] = {}
    for path in results.glob("*-container.json"):
        data = json.loads(path.read_text())
        cases = [names.get(child, "") for child in data.get("children", [])]
        vms = {case.split("[", 1)[1].rstrip("]") for case in cases if "[" in case}
        for fixture in data.get("befores", []):
            for attachment in _attachments(fixture):
                if attachment["name"].startswith("Sysprep\\Panther\\"):
                    text = (results / attachment["source"]).read_text()
                    for vm in vms:
                        found.setdefault(vm, {})[attachment["name"]] = text
    return found


def _attachments(node: dict[str, Any]) -> list[dict[str, str]]:
    found = list(node.get("attachments", []))
    for child in node.get("steps", []):
        found += _attachments(child)
    return found


@pytest.fixture(scope="module")
def failures(azsim: Azsim, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, dict[str, Any], int]:
    """One run over the three failing copies; azsim's state before it and its last request."""
    before, seq = azsim.snapshot(), azsim.last_seq()
    args = ("--vm", APPX, "--vm", PROVIDER, "--vm", HANG, "--apply", f"--sysprep-deadline={DEADLINE}")
    return harness(azsim, *args, report_dir=tmp_path_factory.mktemp("failures")), before, seq


def test_each_sysprep_failure_ends_red_names_its_cause_and_attaches_the_logs(
    azsim: Azsim, failures: tuple[Run, dict[str, Any], int]
) -> None:
    run, before, seq = failures
    assert run.returncode == exitcodes.ACTION_FAILED, run.output[-4000:]
    expected = {
        APPX: (
            "sysprep exited (1) and ImageState is still IMAGE_STATE_COMPLETE",
            "the per-user Appx package Microsoft.WindowsTerminal_1.18.3181.0_x64__8wekyb3d8bbwe is "
            "installed for a user but not provisioned for all users",
        ),
        PROVIDER: (
            "sysprep exited (1) part-way through generalize: ImageState stays IMAGE_STATE_UNDEPLOYABLE",
            "the Sysprep provider ContosoSysprep.dll failed in 'Sysprep_Generalize_Contoso' (dwRet 0x7e) "
            "(its DLL is missing)",
        ),
        HANG: (
            f"sysprep did not finish within {DEADLINE} s",
            "sysprep was stopped; cause: sysprep was still working with no error logged",
        ),
    }
    logs = attached_logs(run)
    now = azsim.status()
    for vm, (why, cause) in expected.items():
        guest = step(run, vm, "guest")
        assert guest["status"] == "failed", vm
        assert why in guest["detail"] and cause in guest["detail"], guest["detail"]
        assert f"{vm}: step guest: failed: sysprep failed: {why}" in run.stderr
        assert "Sysprep\\Panther\\setupact.log (last lines)" in logs.get(vm, {}), f"{vm}: no log attached"
        assert "Beginning of a new sysprep run" in logs[vm]["Sysprep\\Panther\\setupact.log (last lines)"]
        state = now[vm]
        assert (state["power_state"], state["os_state"]) == ("running", "specialized"), vm
        assert LEASE_TAG not in state["tags"], vm
        assert not state["guest"]["summary"]["sysprep_running"], f"{vm}: sysprep left running"
        recorded = [s["step"] for v in run.audit()["vms"] if v["vm"] == vm for s in v["actions"]]
        assert recorded == ["lock", "guest"], f"{vm}: steps after a failed guest step ran: {recorded}"
        outcomes = {
            c.split("::")[1]: o for c, o in run.outcomes().items() if c.startswith("actions/") and vm in c
        }
        assert outcomes[f"test_deallocated[{vm}]"] == outcomes[f"test_marked_generalized[{vm}]"] == "error"
    for vm in (APPX, PROVIDER):  # the root cause is in setuperr.log, and attached
        assert "Error" in logs[vm]["Sysprep\\Panther\\setuperr.log (last lines)"]
    assert "ContosoSysprep.dll" in logs[PROVIDER]["Sysprep\\Panther\\setuperr.log (last lines)"]
    # nothing but the guest itself and tags changed: no power operation, no generalize
    assert all(m.startswith("PATCH ") for m in azsim.mutations(seq)), azsim.mutations(seq)
    # a failure that left the guest as it was forgets its start (a re-run checks afresh); one that
    # broke it keeps it, so that no later run sysprep the broken guest again blindly
    assert GUEST_TAG not in now[APPX]["tags"] and GUEST_TAG not in now[HANG]["tags"]
    assert now[PROVIDER]["tags"][GUEST_TAG].startswith("started run=")
    snapshot = azsim.snapshot()
    assert [snapshot[vm]["image_state"] for vm in (APPX, PROVIDER, HANG)] == [
        "IMAGE_STATE_COMPLETE",
        "IMAGE_STATE_UNDEPLOYABLE",
        "IMAGE_STATE_COMPLETE",
    ]
    assert [snapshot[vm]["boots"] for vm in expected] == [before[vm]["boots"] for vm in expected]


def test_a_rerun_checks_an_intact_guest_again_and_refuses_a_broken_one(
    azsim: Azsim, failures: tuple[Run, dict[str, Any], int]
) -> None:
    first, _, _ = failures
    assert step(first, PROVIDER, "guest")["status"] == "failed", "needs the failed runs first"
    again = harness(azsim, "--vm", APPX, "--vm", PROVIDER, "--apply", report_dir=first.report_dir)
    assert again.returncode == exitcodes.ACTION_FAILED, again.output[-4000:]
    checks = {case: outcome for case, outcome in again.outcomes().items() if case.startswith("checks/")}
    # the intact guest is checked afresh, and the policy now sees sysprep's failure itself
    assert checks[f"checks/test_windows_readiness.py::test_no_failed_sysprep_providers[{APPX}]"] == "failed"
    assert "AppxSysprep.dll" in again.stdout
    (appx,) = [v for v in again.audit()["vms"] if v["vm"] == APPX]
    assert appx["actions"] == [] and appx["verdict"] == "NOT READY"
    # the broken one resumes the failed run, and refuses to run sysprep on it again
    assert {o for c, o in checks.items() if f"[{PROVIDER}" in c} == {"skipped"}, "the broken copy was checked"
    broken = step(again, PROVIDER, "guest")
    assert broken["status"] == "failed"
    assert "part-way through generalize" in broken["detail"] and "rebuild the copy" in broken["detail"]
    assert f"{PROVIDER}: sysprep.exe" not in again.stderr, "sysprep ran again on an undeployable guest"


def test_sysprep_flags_that_cannot_make_an_image_are_refused_before_anything_changes(
    azsim: Azsim, tmp_path: Path
) -> None:
    before, seq = azsim.snapshot()[QUIT], azsim.last_seq()
    run = harness(
        azsim, "--vm", QUIT, "--apply", "--sysprep-args=/generalize /oobe /reboot", report_dir=tmp_path
    )
    # a usage error, before anything connects: one line, nothing sent to Azure
    assert run.returncode == exitcodes.USAGE_ERROR, run.output[-4000:]
    assert [line for line in run.stderr.splitlines() if line.strip()] == [
        "ERROR: --sysprep-args '/generalize /oobe /reboot': give exactly one of /shutdown and /quit "
        "(/reboot boots the machine into setup again, which undoes the generalize)"
    ]
    assert azsim.snapshot()[QUIT] == before
    assert azsim.mutations(seq) == []


def test_quit_instead_of_shutdown_then_the_harness_powers_the_guest_off(azsim: Azsim, tmp_path: Path) -> None:
    run = harness(
        azsim, "--vm", QUIT, "--apply", "--sysprep-args=/generalize /oobe /quit /mode:vm", report_dir=tmp_path
    )
    assert run.returncode == exitcodes.GREEN, run.output[-4000:]
    guest = step(run, QUIT, "guest")
    assert guest["evidence"]["arguments"] == ["/generalize", "/oobe", "/quit", "/mode:vm", "/quiet"]
    assert guest["evidence"]["report"]["image_state"] == "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
    assert guest["evidence"]["success_observed"] is True
    assert "(/quit); shutting it down" in guest["detail"]
    assert guest["evidence"]["power_state_after"] == "stopped"
    state = azsim.status()[QUIT]
    assert (state["power_state"], state["os_state"]) == ("deallocated", "generalized")

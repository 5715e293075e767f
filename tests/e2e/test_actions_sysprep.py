"""Sysprep's failure modes end red, name their cause, attach sysprep's logs and leave the VM
running and not generalized; the sysprep flags are configurable (/quit instead of /shutdown) and
checked before anything changes. The failures are ones the checks cannot see (see the scenario).

Issue 11, hole 6: sysprep "success" is the reseal seen (ImageState
IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE, or a Sysprep_succeeded.tag written after the start), in
this run or recorded on the VM by the run it resumes, never a power-off and never an old tag. The
``test_hole6_*`` tests stage each way to a false "done" in azsim and judge the outcome from
azsim's state: the VM's power and OS state, its tags, the guest's ImageState and sysprep's log.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from imageready import exitcodes
from imageready.gate import sign_step_tag
from imageready.steps.lease import LEASE_TAG

from .conftest import Azsim, Run, harness
from .test_actions_apply import compute
from .test_actions_resume import start_harness

SCENARIO = "tests/scenarios/actions-sysprep.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

APPX, PROVIDER, HANG, QUIT = (
    f"rg-sysprep/{name}" for name in ("win-appx", "win-provider", "win-hang", "win-quit")
)
SHUTDOWN, OPSTOP, OPDEALLOC, INSIDE, STALE_QUIT, STALE_RESUME, SEALED, KILLSTOP = (
    f"rg-sysprep/{name}"
    for name in (
        "win-shutdown",
        "win-opstop",
        "win-opdealloc",
        "win-inside",
        "win-stale-quit",
        "win-stale-resume",
        "win-sealed",
        "win-killstop",
    )
)
GUEST_TAG = "imageready-step-guest"
DEADLINE = 6
STARTED_LINE = "sysprep.exe /generalize /oobe /shutdown"  # (+ /quiet started as ...)
UNSEALED = "the machine stopped before sysprep sealed it"


def step(run: Run, vm: str, name: str) -> dict[str, Any]:
    (found,) = [v for v in run.audit()["vms"] if v["vm"] == vm]
    (record,) = [s for s in found["actions"] if s["step"] == name]
    return dict(record)


def attached_logs(run: Run) -> dict[str, dict[str, str]]:
    """Per VM, the sysprep logs attached to its guest step in the Allure results (on the page of
    every action case whose set-up went through that step)."""
    results = run.report_dir / "allure-results"
    found: dict[str, dict[str, str]] = {}
    for path in results.glob("*-result.json"):
        data = json.loads(path.read_text())
        if "[" not in data["name"]:
            continue
        vm = data["name"].split("[", 1)[1].rstrip("]")
        for attachment in _attachments(data):
            if attachment["name"].startswith("Sysprep\\Panther\\"):
                found.setdefault(vm, {})[attachment["name"]] = (results / attachment["source"]).read_text()
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


# --- issue 11, hole 6: success is the reseal seen, never a power-off or an old tag ---------------


def junit_message(run: Run, case: str) -> str:
    """The failure or error text JUnit recorded for ``case`` (``test_x[rg/vm]``)."""
    root = ET.parse(run.report_dir / "junit.xml").getroot()  # noqa: S314 - our own output
    for testcase in root.iter("testcase"):
        if testcase.get("name") == case:
            return " ".join(
                f"{child.get('message', '')} {child.text or ''}"
                for child in testcase
                if child.tag in ("failure", "error")
            )
    raise AssertionError(f"no JUnit case {case}")


def guest_files(azsim: Azsim, vm: str) -> dict[str, str]:
    """The Windows guest's files as azsim's machine model saved them (case-folded paths)."""
    disk = Path(azsim.status()[vm]["guest"]["summary"]["disk"])
    saved = json.loads((disk / "windows-model.json").read_text())
    return {path.lower(): content for path, content in saved["files"]["files"].items()}


def sysprep_log(azsim: Azsim, vm: str) -> str:
    return guest_files(azsim, vm).get("c:\\windows\\system32\\sysprep\\panther\\setupact.log", "")


def harness_mutations(azsim: Azsim, seq: int) -> list[str]:
    """What the harness (or anyone) changed after ``seq``, minus tag writes."""
    return [m for m in azsim.mutations(seq) if not m.startswith("PATCH ")]


def assert_failed_unsealed(azsim: Azsim, run: Run, vm: str, power: str) -> None:
    """The state a power-off without proof must leave: exit 11, the VM as the operator left it
    (not deallocated by us, not generalized), the guest step failed and marked so on the VM, the
    cause in the audit and in JUnit."""
    assert run.returncode == exitcodes.ACTION_FAILED, run.output[-4000:]
    state = azsim.status()[vm]
    assert (state["power_state"], state["os_state"]) == (power, "specialized"), state
    assert state["tags"][GUEST_TAG].startswith("failed run="), state["tags"]
    assert "why=stopped-unsealed" in state["tags"][GUEST_TAG]
    assert LEASE_TAG not in state["tags"]
    guest = step(run, vm, "guest")
    assert guest["status"] == "failed" and UNSEALED in guest["detail"], guest
    assert "NOT deallocated or generalized" in guest["detail"]
    recorded = [s["step"] for v in run.audit()["vms"] if v["vm"] == vm for s in v["actions"]]
    assert recorded == ["lock", "guest"], recorded
    assert UNSEALED in junit_message(run, f"test_guest_generalized[{vm}]")
    outcomes = {
        c.split("::")[1]: o for c, o in run.outcomes().items() if c.startswith("actions/") and vm in c
    }
    assert outcomes[f"test_deallocated[{vm}]"] == outcomes[f"test_marked_generalized[{vm}]"] == "error"


def stop_mid_sysprep(azsim: Azsim, tmp_path: Path, vm: str, stop: Callable[[], None]) -> Run:
    """The default command (/shutdown), and ``stop`` once sysprep has started (it takes 20 s)."""
    report_dir = tmp_path / "reports"
    with start_harness(azsim, "--vm", vm, "--apply", report_dir=report_dir) as run:
        run.wait_for(f"{vm}: {STARTED_LINE}")
        time.sleep(1.0)  # sysprep is validating
        stop()
        return run.finish(timeout=300)


def rg_name(vm: str) -> tuple[str, str]:
    rg, name = vm.split("/")
    return rg, name


@pytest.mark.parametrize(
    ("vm", "how", "power"),
    [
        (OPSTOP, "powerOff", "stopped"),
        (OPDEALLOC, "deallocate", "deallocated"),
        (INSIDE, "guest-shutdown", "stopped"),
    ],
    ids=["arm-power-off", "arm-deallocate", "shutdown-from-inside"],
)
def test_hole6_operator_stop_mid_sysprep_is_not_success(
    azsim: Azsim, tmp_path: Path, vm: str, how: str, power: str
) -> None:
    rg, name = rg_name(vm)
    seq = azsim.last_seq()

    def stop() -> None:
        if how == "powerOff":
            compute(azsim).virtual_machines.begin_power_off(rg, name).result()
        elif how == "deallocate":
            compute(azsim).virtual_machines.begin_deallocate(rg, name).result()
        else:  # a shutdown from inside the guest that is not sysprep's (a schedule, a person)
            response = requests.post(
                f"{azsim.env['AZSIM_URL']}/azsim/vms/{rg}/{name}/guest-shutdown",
                headers={"X-Azsim-Admin": azsim.env["AZSIM_ADMIN_TOKEN"]},
                verify=azsim.env["IMAGEREADY_CA_BUNDLE"],
                timeout=30,
            )
            response.raise_for_status()

    run = stop_mid_sysprep(azsim, tmp_path, vm, stop)

    assert_failed_unsealed(azsim, run, vm, power)
    # sysprep died with the power while it validated: never resealed, no tag
    assert azsim.snapshot()[vm]["image_state"] == "IMAGE_STATE_COMPLETE"
    assert "Sysprep_succeeded.tag" not in "".join(guest_files(azsim, vm))
    # the only power operation was the operator's; nobody generalized it
    mutations = harness_mutations(azsim, seq)
    assert not [m for m in mutations if m.endswith("/generalize")], mutations
    assert len([m for m in mutations if m.endswith(("/powerOff", "/deallocate"))]) == (
        how != "guest-shutdown"
    )

    # the same command again does not quietly call it done
    seq = azsim.last_seq()
    again = harness(azsim, "--vm", vm, "--apply", report_dir=run.report_dir)
    assert again.returncode == exitcodes.ACTION_FAILED, again.output[-4000:]
    guest = step(again, vm, "guest")
    assert (
        guest["status"] == "failed"
        and UNSEALED in guest["detail"]
        and "no run may call it done" in guest["detail"]
    )
    state = azsim.status()[vm]
    assert (state["power_state"], state["os_state"]) == (power, "specialized")
    assert harness_mutations(azsim, seq) == []


def test_hole6_stale_succeeded_tag_with_quit_and_a_failing_sysprep_is_not_success(
    azsim: Azsim, tmp_path: Path
) -> None:
    assert "c:\\windows\\system32\\sysprep\\sysprep_succeeded.tag" in guest_files(azsim, STALE_QUIT)
    seq = azsim.last_seq()
    run = harness(
        azsim, "--vm", STALE_QUIT, "--apply", "--sysprep-args=/generalize /oobe /quit", report_dir=tmp_path
    )

    assert run.returncode == exitcodes.ACTION_FAILED, run.output[-4000:]
    state = azsim.status()[STALE_QUIT]
    assert (state["power_state"], state["os_state"]) == ("running", "specialized")
    assert GUEST_TAG not in state["tags"]  # the guest is as the checks saw it: a re-run checks afresh
    guest = step(run, STALE_QUIT, "guest")
    assert guest["status"] == "failed", guest
    assert "sysprep exited (1) and ImageState is still IMAGE_STATE_COMPLETE" in guest["detail"]
    assert "is installed for a user but not provisioned for all users" in guest["detail"]
    assert guest["evidence"]["prepared"]["tag_existed"] is True
    assert "Sysprep\\Panther\\setuperr.log (last lines)" in attached_logs(run).get(STALE_QUIT, {})
    assert "sysprep exited (1)" in junit_message(run, f"test_guest_generalized[{STALE_QUIT}]")
    # the harness deleted the old tag before sysprep ran: sysprep's own log found none to delete
    log = sysprep_log(azsim, STALE_QUIT)
    assert "Sysprep_succeeded.tag does not already exist, no need to delete anything" in log, log[-2000:]
    assert azsim.snapshot()[STALE_QUIT]["image_state"] == "IMAGE_STATE_COMPLETE"
    assert harness_mutations(azsim, seq) == []


def test_hole6_resumed_run_does_not_take_a_stale_tag_for_the_reseal(azsim: Azsim, tmp_path: Path) -> None:
    # run R checks the VM and tags it "started" (as a run killed right after tagging it, before
    # sysprep ran, leaves it); the guest still holds an earlier sysprep's succeeded tag
    rg, name = rg_name(STALE_RESUME)
    first = harness(azsim, "--vm", STALE_RESUME, report_dir=tmp_path)
    assert first.returncode == exitcodes.GREEN, first.output[-4000:]
    run_id = first.verdict(STALE_RESUME)["run_id"]
    client = compute(azsim)
    model = client.virtual_machines.get(rg, name)
    tags = dict(model.tags or {})
    at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # as run R writes it: signed with the pipeline's key for this VM and OS disk
    value = sign_step_tag(
        f"started run={run_id} at={at}",
        "guest",
        model.as_dict(),
        azsim.env["IMAGEREADY_VERDICT_KEY"].encode(),
    )
    client.virtual_machines.begin_update(rg, name, {"tags": {**tags, GUEST_TAG: value}}).result()
    seq = azsim.last_seq()

    again = harness(
        azsim, "--vm", STALE_RESUME, "--apply", "--sysprep-args=/generalize /oobe /quit", report_dir=tmp_path
    )

    assert again.returncode == exitcodes.ACTION_FAILED, again.output[-4000:]
    # the guest answers intact (ImageState complete): nothing resumes, this run's checks decide,
    # and the guest step, seeing run R's "started", re-runs sysprep and demands its own proof
    assert "resuming run" not in again.stdout
    assert again.verdict(STALE_RESUME)["green"] is True
    state = azsim.status()[STALE_RESUME]
    assert (state["power_state"], state["os_state"]) == ("running", "specialized")
    guest = step(again, STALE_RESUME, "guest")
    assert guest["status"] == "failed" and "ImageState is still IMAGE_STATE_COMPLETE" in guest["detail"], (
        guest
    )
    assert "Sysprep_succeeded.tag does not already exist" in sysprep_log(azsim, STALE_RESUME)
    assert harness_mutations(azsim, seq) == []


def test_resumed_run_finishes_on_the_reseal_the_interrupted_run_recorded(
    azsim: Azsim, tmp_path: Path
) -> None:
    report_dir = tmp_path / "reports"
    with start_harness(azsim, "--vm", SEALED, "--apply", report_dir=report_dir) as first:
        first.wait_for(f"{SEALED}: sysprep resealed the guest")
        os.kill(first.process.pid, signal.SIGSTOP)  # frozen after it recorded the reseal
        deadline = time.monotonic() + 60
        while azsim.status()[SEALED]["power_state"] != "stopped":  # sysprep's own /shutdown
            assert time.monotonic() < deadline, "sysprep did not power the VM off"
            time.sleep(0.2)
        tag = azsim.status()[SEALED]["tags"][GUEST_TAG]
        os.kill(first.process.pid, signal.SIGKILL)
        first.finish(timeout=60)
    assert tag.startswith("started run=") and " sealed=imagestate" in tag, tag
    run_id = tag.split("run=", 1)[1].split()[0]

    again = harness(azsim, "--vm", SEALED, "--apply", report_dir=report_dir)

    assert again.returncode == exitcodes.GREEN, again.output[-4000:]
    state = azsim.status()[SEALED]
    assert (state["power_state"], state["os_state"]) == ("deallocated", "generalized")
    guest = step(again, SEALED, "guest")
    assert guest["status"] == "done", guest
    assert f"run {run_id} saw sysprep reseal the guest (imagestate)" in guest["detail"]
    assert azsim.snapshot()[SEALED]["image_state"] == "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"


def test_hole6_resume_of_a_vm_stopped_without_a_recorded_reseal_fails_and_stays_failed(
    azsim: Azsim, tmp_path: Path
) -> None:
    rg, name = rg_name(KILLSTOP)
    report_dir = tmp_path / "reports"
    with start_harness(azsim, "--vm", KILLSTOP, "--apply", report_dir=report_dir) as first:
        first.wait_for(f"{KILLSTOP}: {STARTED_LINE}")
        os.kill(first.process.pid, signal.SIGKILL)
        first.finish(timeout=60)
    compute(azsim).virtual_machines.begin_power_off(rg, name).result()  # then an operator stops it
    seq = azsim.last_seq()

    again = harness(azsim, "--vm", KILLSTOP, "--apply", report_dir=report_dir)

    assert_failed_unsealed(azsim, again, KILLSTOP, "stopped")
    assert "sysprep's logs are unreachable while it is off" in step(again, KILLSTOP, "guest")["detail"]
    assert harness_mutations(azsim, seq) == []
    third = harness(azsim, "--vm", KILLSTOP, "--apply", report_dir=report_dir)
    assert third.returncode == exitcodes.ACTION_FAILED
    assert "no run may call it done" in step(third, KILLSTOP, "guest")["detail"]
    assert azsim.status()[KILLSTOP]["os_state"] == "specialized"


def test_shutdown_is_done_on_the_reseal_seen_before_the_power_went(azsim: Azsim, tmp_path: Path) -> None:
    # the default flags: the connection drops as sysprep powers off; the reseal was seen first
    run = harness(azsim, "--vm", SHUTDOWN, "--apply", report_dir=tmp_path)
    assert run.returncode == exitcodes.GREEN, run.output[-4000:]
    guest = step(run, SHUTDOWN, "guest")
    assert guest["evidence"]["arguments"] == ["/generalize", "/oobe", "/shutdown", "/quiet"]
    assert guest["evidence"]["proof"].startswith("ImageState IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE")
    assert guest["evidence"]["prepared"]["tag_existed"] is False
    state = azsim.status()[SHUTDOWN]
    assert (state["power_state"], state["os_state"]) == ("deallocated", "generalized")
    assert state["tags"][GUEST_TAG].startswith("done run=")
    assert azsim.snapshot()[SHUTDOWN]["image_state"] == "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"

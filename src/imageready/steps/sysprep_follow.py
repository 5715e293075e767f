"""Following sysprep to its end: poll the guest and Azure until sysprep has resealed the guest and
exited or powered it off, failed, or ran out of time; then wait until Azure shows the VM stopped.

A power-off without proof of the reseal (an operator's stop or deallocate, a schedule, a shutdown
from inside) fails the step and marks the tag ``failed``, so that no later run calls it done.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

from imageready import progress
from imageready.categories import Category
from imageready.guest.base import Guest, GuestError
from imageready.steps.records import Outcome, StepFailed
from imageready.steps.sysprep_failure import RECOVER, fail, keep_evidence
from imageready.steps.sysprep_proof import SPECIALIZED, Seal, exited_reason, record_seal
from imageready.steps.sysprep_run import SysprepShell, read_json, script
from imageready.steps.vm_actions import VmActions

POLL_SECONDS = 2.0
STOP_DEADLINE = 900.0
#: power states in which the guest is off or going off
POWERED_OFF = ("stopped", "deallocated", "stopping", "deallocating")


def follow(
    actions: VmActions,
    guest: Guest,
    worker: SysprepShell | None,
    deadline: float,
    seal: Seal,
    evidence: dict[str, Any],
    *,
    shutdown: bool,
) -> Outcome:
    """Poll until sysprep has resealed the guest and exited or powered it off (then it is done;
    after /quit we power it off), failed, or ran out of time. ``worker`` is None when following
    an earlier run's sysprep."""
    vm, options = actions.vm, actions.options
    ticker = progress.Ticker(f"{vm.key}: sysprep", deadline=options.sysprep_deadline, every=15)
    last_renewal = time.monotonic()
    status_script = script("sysprep_status.ps1")
    while True:
        exited, exit_code = False, None
        status: dict[str, Any] | None
        asked = time.monotonic()
        try:
            status = read_json(guest.run(status_script, timeout=60))
        except GuestError:
            status = None  # not answering: shutting down, or the network; Azure tells which
        if status:
            seal.observe(status, "status poll", asked)
            if status.get("image_state") == SPECIALIZED:
                fail(
                    actions,
                    guest,
                    worker,
                    f"ImageState became {SPECIALIZED}: the machine went through setup again, so it "
                    "is not generalized",
                    evidence,
                )
        worker_gone = worker is not None and not worker.is_alive()
        if worker is not None and worker_gone and worker.result is not None:
            report = read_json(worker.result)  # sysprep exited and its shell reported
            evidence["report"] = report
            seal.observe(report, "sysprep's report", worker.finished)
            exited, exit_code = True, report.get("exit_code")
        elif (
            worker is not None
            and worker_gone
            and worker.error is not None
            and worker.error.category == Category.TIMEOUT
        ):
            fail(
                actions,
                guest,
                worker,
                f"sysprep did not finish within {options.sysprep_deadline:.0f} s",
                evidence,
            )
        elif status and (worker is None or worker_gone):
            # following an earlier run's sysprep, or ours after its connection dropped
            exited = not status.get("running")
        if worker is not None and worker_gone and worker.error is not None:
            evidence["sysprep_shell"] = f"ended without a report: {worker.error}"
        record_seal(actions, seal)
        ticker.tick(f"ImageState {seal.image_state or 'unknown'}" + (", resealed" if seal.proof else ""))
        if exited:
            if exit_code not in (None, 0):
                seal.distrust(f"sysprep exited with code {exit_code}")
                record_seal(actions, seal)
            if not seal.proof:
                fail(actions, guest, worker, exited_reason(exit_code, seal), evidence)
            if not shutdown:
                guest.run(script("shutdown.ps1"), timeout=60)
                return _done(seal, evidence, "sysprep resealed the guest to OOBE (/quit); shutting it down")
            return _done(seal, evidence, "sysprep resealed the guest to OOBE; it powers itself off")
        if status is None or worker_gone:
            power = actions.statuses().get("PowerState")
            if power in POWERED_OFF and seal.proof:
                return _done(seal, evidence, f"sysprep resealed the guest, then it powered off ({power})")
            if power in POWERED_OFF:
                _stopped_unsealed(actions, seal, str(power), evidence)
            # running: a dropped connection is not a shutdown; keep looking
        if time.monotonic() > deadline:
            fail(
                actions,
                guest,
                worker,
                f"sysprep did not finish within {options.sysprep_deadline:.0f} s "
                f"(ImageState {seal.image_state or 'unknown'})",
                evidence,
            )
        if time.monotonic() - last_renewal > 300:
            actions.renew_lease()
            last_renewal = time.monotonic()
        time.sleep(POLL_SECONDS)


def _stopped_unsealed(actions: VmActions, seal: Seal, power: str, evidence: dict[str, Any]) -> NoReturn:
    """The machine went off with no proof of the reseal: whoever did it, sysprep is not done."""
    evidence["logs"] = f"unreachable: {actions.vm.key} is {power}"
    evidence["image_state_last_seen"] = seal.image_state
    evidence["readings"] = seal.readings
    keep_evidence(actions, evidence)
    actions.mark_failed("guest", "stopped-unsealed", since=seal.since)
    raise StepFailed(
        f"sysprep failed: the machine stopped before sysprep sealed it: {actions.vm.key} is {power}, "
        f"ImageState was last seen {seal.image_state or 'never'} and no succeeded tag was written "
        f"after the start{f' ({seal.withdrawn})' if seal.withdrawn else ''}; sysprep's logs are "
        f"unreachable while it is off; it is NOT deallocated or generalized; {RECOVER}"
    )


def _done(seal: Seal, evidence: dict[str, Any], detail: str) -> Outcome:
    evidence["success_observed"] = True
    evidence["proof"] = seal.proof
    return Outcome("done", f"sysprep: {detail} (proof: {seal.proof})", evidence)


def wait_stopped(actions: VmActions, evidence: dict[str, Any]) -> None:
    """After sysprep: Azure must show the VM stopped (not deallocated: it shut itself down)."""
    ticker = progress.Ticker(
        f"{actions.vm.key}: waiting for the VM to stop", deadline=STOP_DEADLINE, every=15
    )
    while ticker.elapsed < STOP_DEADLINE:
        power = actions.statuses().get("PowerState")
        if power in ("stopped", "deallocated"):
            evidence["power_state_after"] = power
            return
        ticker.tick(f"PowerState {power}")
        time.sleep(POLL_SECONDS)
    raise StepFailed(f"{actions.vm.key} did not stop within {STOP_DEADLINE:.0f} s after sysprep")

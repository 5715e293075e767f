"""Windows: delete C:\\Windows\\Panther, Sysprep\\unattend.xml and an old Sysprep_succeeded.tag,
run sysprep as the admin user over WinRM (never as SYSTEM, so never through Run Command), then
follow it with a deadline until the VM is *stopped* in Azure.

Success is observed, never assumed. Before sysprep starts the step reads the guest's clock
(``since``) and ImageState (it must be IMAGE_STATE_COMPLETE) and deletes any old succeeded tag.
The guest counts as sealed only when a reading taken in this run shows ImageState
IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE, or a Sysprep_succeeded.tag written after ``since`` while
ImageState could not be read, and nothing read after it contradicts it; or when the interrupted
run this one resumes recorded such a reading on the VM's step tag (``sealed=``), and the guest,
if it answers, still agrees. Readings come from sysprep's own shell (it streams ImageState and
the tag's write time while sysprep runs, so the reseal is seen before /shutdown powers the
machine off), from a second shell's polls, and from sysprep's final report. The step writes
``sealed=`` on the tag the moment it has proof (the tag is writable until ``generalize``).

A power-off without that proof (an operator's stop or deallocate, a schedule, a shutdown from
inside) fails the step, "the machine stopped before sysprep sealed it", marks the tag ``failed``
so that no later run calls it done, and the VM is neither deallocated nor generalized. Other
failures: ImageState not resealed once sysprep exited (IMAGE_STATE_UNDEPLOYABLE is "a setup phase
under way" only while it runs, Microsoft's "Windows Setup States"), a non-zero exit code,
IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE at any time (the machine went through setup again), or no
outcome by the deadline. On a failure while the guest answers, the step fetches setuperr.log and
setupact.log, attaches them and names the cause.

This module decides what the step does on this run: nothing (already done), refuse (an earlier
run marked it failed), judge a VM that is off already, plan, resume an interrupted run's sysprep,
or start one. The parts: ``sysprep_run`` (its arguments, the preparation, sysprep.exe in its own
WinRM shell), ``sysprep_proof`` (what counts as resealed), ``sysprep_follow`` (the polls until it
ends and the VM stops), ``sysprep_failure`` (the logs and the cause when it fails).
"""

from __future__ import annotations

import time
from typing import Any

from imageready import progress
from imageready.facts import VmFacts
from imageready.gate import parse_step_tag
from imageready.guest.base import Guest
from imageready.steps.platform import settled_statuses
from imageready.steps.records import Outcome, StepFailed
from imageready.steps.sysprep_failure import FAILED_BECAUSE, RECOVER, fail, keep_evidence
from imageready.steps.sysprep_follow import follow, wait_stopped
from imageready.steps.sysprep_proof import COMPLETE, RESEALED, Seal, exited_reason
from imageready.steps.sysprep_run import (
    WORKER_GRACE,
    SysprepShell,
    prepare,
    read_json,
    script,
    sysprep_arguments,
    sysprep_script,
)
from imageready.steps.vm_actions import VmActions


def sysprep(actions: VmActions, facts: VmFacts) -> Outcome:
    vm, options = actions.vm, actions.options
    state = settled_statuses(actions)
    if actions.step_done("guest") or state.get("OSState") == "generalized":
        return Outcome("already done", "sysprep generalized the guest")
    arguments = sysprep_arguments(options.sysprep_args)
    shutdown = "/shutdown" in (a.lower() for a in arguments)
    earlier = parse_step_tag(actions.step_tag("guest"))  # an interrupted or failed earlier run
    if earlier.get("state") == "failed":
        reason = FAILED_BECAUSE.get(earlier.get("why", ""), earlier.get("why", "?"))
        raise StepFailed(
            f"run {earlier.get('run')} marked the sysprep of {vm.key} failed at {earlier.get('at')}: "
            f"{reason}; no run may call it done now; {RECOVER}"
        )
    power = state.get("PowerState")
    if power != "running":
        return _off_before_this_run(actions, earlier, str(power))
    admin = str(((facts.guest or {}).get("user") or {}).get("name") or "the admin user")
    if not options.apply:
        return Outcome(
            "planned",
            f"would delete C:\\Windows\\Panther, Sysprep\\unattend.xml and any old "
            f"Sysprep_succeeded.tag, run sysprep.exe {' '.join(arguments)} as {admin} over WinRM, "
            f"wait for ImageState {RESEALED} (deadline {options.sysprep_deadline:.0f} s) and for "
            f"{vm.key} to stop",
        )
    guest = actions.provider.guest(vm)
    if guest.transport != "winrm" or guest.read_only:
        raise StepFailed(
            f"sysprep must run over WinRM as the administrator, not through {guest.transport} "
            "(Run Command runs as SYSTEM, which sysprep refuses)"
        )
    evidence: dict[str, Any] = {"arguments": list(arguments)}
    deadline = time.monotonic() + options.sysprep_deadline
    worker: SysprepShell | None = None
    seal = _resumable(actions, guest, earlier, evidence) if earlier else None
    if seal is not None:
        progress.emit(f"{vm.key}: following the sysprep run {earlier.get('run')} started")
    else:
        seal = prepare(actions, guest, evidence)
        worker = SysprepShell(
            actions.provider.connect_guest(vm, fallback=False),
            sysprep_script(arguments),
            deadline + WORKER_GRACE,
            seal,
        )
        worker.start()
        progress.emit(f"{vm.key}: sysprep.exe {' '.join(arguments)} started as {admin}")
    outcome = follow(actions, guest, worker, deadline, seal, evidence, shutdown=shutdown)
    actions.provider.drop_guest(vm)
    wait_stopped(actions, evidence)
    return outcome


def _off_before_this_run(actions: VmActions, earlier: dict[str, str], power: str) -> Outcome:
    """The VM is not running when this run begins: done only on a reseal an earlier run saw and
    recorded on the VM; without that record, a failed step (and, with --apply, a failed tag)."""
    vm, run, at = actions.vm, earlier.get("run"), earlier.get("at")
    if earlier.get("state") == "started" and earlier.get("sealed"):
        proof = f"run {run} saw sysprep reseal the guest ({earlier['sealed']}) and recorded it at {at}"
        evidence: dict[str, Any] = {"resumed": {"tag": earlier}, "proof": proof, "success_observed": True}
        if not actions.options.apply:
            return Outcome("planned", f"would record the guest step done: {proof}; {vm.key} is {power}")
        wait_stopped(actions, evidence)
        return Outcome("done", f"sysprep: {proof}; {vm.key} is {power}", evidence)
    if earlier.get("state") == "started":
        why = (
            f"the machine stopped before sysprep sealed it: {vm.key} is {power}, run {run} started "
            f"sysprep at {at} and no run saw ImageState {RESEALED} or a succeeded tag written after "
            "the start"
        )
        keep_evidence(actions, {"resumed": {"tag": earlier}, "logs": f"unreachable: {vm.key} is {power}"})
        if actions.options.apply:
            actions.mark_failed("guest", "stopped-unsealed", since=earlier.get("since", ""))
        raise StepFailed(
            f"sysprep failed: {why}; sysprep's logs are unreachable while it is off; it is NOT "
            f"deallocated or generalized; {RECOVER}"
        )
    raise StepFailed(
        f"{vm.key} is {power} and no run recorded a sysprep of it; do not start it blindly "
        "(a sysprepped Windows that boots runs setup again): check its boot diagnostics"
    )


def _resumable(
    actions: VmActions, guest: Guest, earlier: dict[str, str], evidence: dict[str, Any]
) -> Seal | None:
    """After an interrupted run, with the VM running: a Seal to follow its sysprep with (still
    running, or resealed), or None when it never got going (start again); fails when it left the
    guest broken, or when the reseal it recorded is gone (the guest ran setup again)."""
    asked = time.monotonic()
    status = read_json(guest.run(script("sysprep_status.ps1"), timeout=60))
    evidence["resumed"] = {
        "tag": earlier,
        "status": {k: status.get(k) for k in ("running", "image_state", "succeeded_tag_written")},
    }
    recorded = f"recorded by run {earlier.get('run')}: {earlier['sealed']}" if earlier.get("sealed") else ""
    # a tag counts only if written after the start the interrupted run recorded (none: no tag counts)
    seal = Seal(earlier.get("since", ""), recorded=recorded)
    seal.observe(status, "status poll", asked)
    if recorded and not seal.proof:
        keep_evidence(actions, evidence)
        actions.mark_failed("guest", "booted-after-seal", since=earlier.get("since", ""))
        raise StepFailed(
            f"sysprep failed: run {earlier.get('run')} saw sysprep reseal the guest, but now "
            f"{seal.withdrawn}: {FAILED_BECAUSE['booted-after-seal']}; it is NOT deallocated or "
            f"generalized; {RECOVER}"
        )
    if status.get("running") or seal.proof:
        return seal
    if seal.image_state != COMPLETE:
        fail(actions, guest, None, exited_reason(None, seal), evidence)
    return None

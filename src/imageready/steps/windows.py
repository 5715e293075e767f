"""Windows: delete C:\\Windows\\Panther and Sysprep\\unattend.xml, run sysprep as the admin user
over WinRM (never as SYSTEM, so never through Run Command), then follow it with a deadline:
ImageState polled from a second WinRM shell, then the VM reaching *stopped* in Azure.

Sysprep's own shell must stay open while it runs (Windows kills what a WinRM shell started when
the shell closes), so it runs in a thread, waiting; with /shutdown that connection drops when the
machine powers off, which is expected. Failure modes: ImageState still IMAGE_STATE_COMPLETE after
sysprep exited, IMAGE_STATE_UNDEPLOYABLE or IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE, or no answer
by the deadline. On failure the step fetches setuperr.log and setupact.log, attaches them and
names the cause.
"""

from __future__ import annotations

import json
import re
import threading
import time
from importlib import resources
from typing import Any

from imageready import progress
from imageready.facts import VmFacts
from imageready.guest.base import CommandResult, Guest, GuestError
from imageready.redact import redact
from imageready.steps import Outcome, StepFailed, VmActions

RESEALED = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
FAILED_STATES = ("IMAGE_STATE_UNDEPLOYABLE", "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE")
POLL_SECONDS = 2.0
STOP_DEADLINE = 900.0
_ARGS_LINE = re.compile(r"^\$arguments = @\(.*\)  # the harness sets this line$", re.MULTILINE)
_APPX = re.compile(r"Package (\S+) was installed for a user, but not provisioned for all users")


def script(name: str) -> str:
    return resources.files("imageready.scripts").joinpath(name).read_text(encoding="utf-8")


def sysprep_script(arguments: tuple[str, ...]) -> str:
    """scripts/sysprep_generalize.ps1 with the configured sysprep arguments."""
    for arg in arguments:
        if not re.fullmatch(r"/[A-Za-z]+(:[A-Za-z0-9_.\\-]+)?", arg):
            raise StepFailed(f"--sysprep-args: {arg!r} is not a sysprep option")
    quoted = ", ".join(f"'{a}'" for a in arguments)
    source = script("sysprep_generalize.ps1")
    replaced, count = _ARGS_LINE.subn(f"$arguments = @({quoted})  # the harness sets this line", source)
    if count != 1:
        raise RuntimeError("sysprep_generalize.ps1 lost its arguments line")
    return replaced


def _json(result: CommandResult) -> dict[str, Any]:
    text = result.text().strip().lstrip("\ufeff")
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    return data if isinstance(data, dict) else {}


def cause_of(logs: dict[str, Any]) -> str:
    """The reason sysprep failed, in a sentence, from its logs."""
    lines = [str(x) for x in (logs.get("setuperr") or [])] + [str(x) for x in (logs.get("setupact") or [])]
    for line in lines:
        found = _APPX.search(line)
        if found:
            return (
                f"the per-user Appx package {found.group(1)} is installed for a user but not provisioned "
                "for all users (remove it for that user, then retry)"
            )
    errors = [line for line in logs.get("setuperr") or [] if "Error" in str(line)]
    if errors:
        return "setuperr.log: " + str(errors[-1]).split("Error", 1)[-1].strip(" :")
    return "no error line in setuperr.log"


class _Sysprep(threading.Thread):
    """sysprep.exe in its own WinRM shell, waited for until it exits or the machine goes down."""

    def __init__(self, guest: Guest, source: str, deadline: float) -> None:
        super().__init__(name="imageready-sysprep", daemon=True)
        self.guest, self.source, self.deadline = guest, source, deadline
        self.result: CommandResult | None = None
        self.error: GuestError | None = None

    def run(self) -> None:
        try:
            self.result = self.guest.run(self.source, timeout=max(1.0, self.deadline - time.monotonic()))
        except GuestError as exc:
            self.error = exc
        finally:
            self.guest.close()


def sysprep(actions: VmActions, facts: VmFacts) -> Outcome:
    vm, options = actions.vm, actions.options
    state = actions.statuses()
    if actions.step_done("guest") or state.get("OSState") == "generalized":
        return Outcome("already done", "sysprep generalized the guest")
    power = state.get("PowerState")
    if power != "running":
        raise StepFailed(
            f"{vm.key} is {power} and no run recorded a successful sysprep; do not start it blindly "
            "(a sysprepped Windows that boots runs setup again): check its boot diagnostics"
        )
    admin = str((facts.require_guest().get("user") or {}).get("name") or "the admin user")
    args = " ".join(options.sysprep_args)
    if not options.apply:
        return Outcome(
            "planned",
            f"would delete C:\\Windows\\Panther and Sysprep\\unattend.xml, run sysprep.exe {args} as "
            f"{admin} over WinRM, poll ImageState (deadline {options.sysprep_deadline:.0f} s) and wait "
            f"for {vm.key} to stop",
        )
    guest = actions.provider.guest(vm)
    if guest.transport != "winrm" or guest.read_only:
        raise StepFailed(
            f"sysprep must run over WinRM as the administrator, not through {guest.transport} "
            "(Run Command runs as SYSTEM, which sysprep refuses)"
        )
    actions.mark_started("guest")
    prepared = _json(guest.run(script("sysprep_prepare.ps1"), timeout=options.guest_timeout))
    if prepared.get("exists") is not False:
        raise StepFailed(f"could not delete C:\\Windows\\Panther / Sysprep\\unattend.xml: {prepared}")
    evidence: dict[str, Any] = {"prepared": prepared, "arguments": list(options.sysprep_args)}
    deadline = time.monotonic() + options.sysprep_deadline
    worker = _Sysprep(
        actions.provider.connect_guest(vm, fallback=False), sysprep_script(options.sysprep_args), deadline
    )
    worker.start()
    progress.emit(f"{vm.key}: sysprep.exe {args} started as {admin}")
    outcome = _follow(actions, guest, worker, deadline, evidence)
    actions.provider.drop_guest(vm)
    _wait_stopped(actions, evidence)
    return outcome


def _follow(
    actions: VmActions, guest: Guest, worker: _Sysprep, deadline: float, evidence: dict[str, Any]
) -> Outcome:
    """Poll until sysprep succeeded (the machine then powers off), failed, or ran out of time."""
    vm, options = actions.vm, actions.options
    ticker = progress.Ticker(f"{vm.key}: sysprep", deadline=options.sysprep_deadline, every=15)
    success, image_state, last_renewal = False, "", time.monotonic()
    status_script = script("sysprep_status.ps1")
    while True:
        status: dict[str, Any] | None = None
        try:
            status = _json(guest.run(status_script, timeout=60))
        except GuestError:
            status = None  # not answering: shutting down, or the network; Azure tells which
        if status:
            image_state = str(status.get("image_state") or "")
            if image_state in FAILED_STATES:
                _fail(actions, guest, worker, f"ImageState became {image_state}", evidence)
            success = success or image_state == RESEALED or bool(status.get("succeeded_tag"))
        ticker.tick(f"ImageState {image_state or 'unknown'}" + (", resealed" if success else ""))
        if not worker.is_alive():
            if worker.result is not None:  # sysprep exited and its shell reported (e.g. /quit)
                report = _json(worker.result)
                evidence["report"] = report
                success = (
                    success or report.get("image_state") == RESEALED or bool(report.get("succeeded_tag"))
                )
                if not success:
                    _fail(
                        actions,
                        guest,
                        worker,
                        f"sysprep exited ({report.get('exit_code')}) and ImageState is "
                        f"still {report.get('image_state') or image_state}",
                        evidence,
                    )
                if not any(a.lower() in ("/shutdown", "/reboot") for a in options.sysprep_args):
                    guest.run(script("shutdown.ps1"), timeout=60)
                return _done(success, evidence, "sysprep resealed the guest to OOBE; shutting it down")
            if isinstance(worker.error, GuestError) and worker.error.category == "timeout":
                _fail(
                    actions,
                    guest,
                    worker,
                    f"sysprep did not finish within {options.sysprep_deadline:.0f} s",
                    evidence,
                )
        if status is None or not worker.is_alive():
            power = actions.statuses().get("PowerState")
            if power in ("stopped", "deallocated", "stopping"):
                return _done(success, evidence, f"the machine powered off after sysprep ({power})")
        if time.monotonic() > deadline:
            _fail(
                actions,
                guest,
                worker,
                f"sysprep did not finish within {options.sysprep_deadline:.0f} s "
                f"(ImageState {image_state or 'unknown'})",
                evidence,
            )
        if time.monotonic() - last_renewal > 300:
            actions.renew_lease()
            last_renewal = time.monotonic()
        time.sleep(POLL_SECONDS)


def _done(success: bool, evidence: dict[str, Any], detail: str) -> Outcome:
    evidence["success_observed"] = success
    if not success:
        detail += (
            "; ImageState was not seen resealed before the connection dropped (with /shutdown, "
            "sysprep powers off only after it succeeded)"
        )
    return Outcome("done", f"sysprep: {detail}", evidence)


def _fail(actions: VmActions, guest: Guest, worker: _Sysprep, why: str, evidence: dict[str, Any]) -> None:
    """Fetch the logs, attach them, name the cause, fail. The VM is not generalized."""
    logs: dict[str, Any] = {}
    try:
        logs = _json(guest.run(script("sysprep_logs.ps1"), timeout=120))
    except GuestError as exc:
        logs = {"error": str(exc)}
    record = actions.records.get("guest")
    if record is not None:
        for name in ("setuperr", "setupact"):
            if logs.get(name):
                record.attachments[f"Sysprep\\Panther\\{name}.log (last lines)"] = redact(
                    "\n".join(map(str, logs[name]))
                )
    evidence["logs_image_state"] = logs.get("image_state")
    worker.guest.close()
    raise StepFailed(f"sysprep failed: {why}; cause: {cause_of(logs)}")


def _wait_stopped(actions: VmActions, evidence: dict[str, Any]) -> None:
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

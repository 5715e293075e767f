"""Windows: delete C:\\Windows\\Panther and Sysprep\\unattend.xml, run sysprep as the admin user
over WinRM (never as SYSTEM, so never through Run Command), then follow it with a deadline:
ImageState polled from a second WinRM shell, then the VM reaching *stopped* in Azure.

Sysprep's own shell must stay open while it runs (Windows kills what a WinRM shell started when
the shell closes), so it runs in a thread, waiting; with /shutdown that connection drops when the
machine powers off, which is expected. Failures: ImageState still IMAGE_STATE_COMPLETE after
sysprep exited, IMAGE_STATE_UNDEPLOYABLE once sysprep is no longer running (while it runs that
is just "a setup phase under way", Microsoft's "Windows Setup States"),
IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE at any time (a generalize never passes through it: the
machine went through setup again), or no outcome by the deadline. On failure the step fetches
setuperr.log and setupact.log, attaches them and names the cause.
"""

from __future__ import annotations

import json
import re
import threading
import time
from importlib import resources
from typing import Any, NoReturn

from imageready import progress
from imageready.facts import VmFacts
from imageready.gate import parse_step_tag
from imageready.guest.base import CommandResult, Guest, GuestError
from imageready.redact import redact
from imageready.steps import Outcome, StepFailed, VmActions

RESEALED = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
UNDEPLOYABLE = "IMAGE_STATE_UNDEPLOYABLE"
SPECIALIZED = "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE"
COMPLETE = "IMAGE_STATE_COMPLETE"
POLL_SECONDS = 2.0
STOP_DEADLINE = 900.0
#: sysprep's own shell outlives the step's deadline by this much, so that at the deadline the
#: step can still read the logs of a sysprep that is running, before it ends it
WORKER_GRACE = 120.0
_ARGS_LINE = re.compile(r"^\$arguments = @\(.*\)  # the harness sets this line$", re.MULTILINE)
_APPX = re.compile(r"Package (\S+) was installed for a user, but not provisioned for all users")
_PROVIDER = re.compile(r"Failure occurred while executing '([^']+)' from (.+?);\s*dwRet = (\w+)")
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d, (?:Error|Info|Warning)\s+")


def script(name: str) -> str:
    return resources.files("imageready.scripts").joinpath(name).read_text(encoding="utf-8")


def sysprep_arguments(configured: tuple[str, ...]) -> tuple[str, ...]:
    """The sysprep.exe arguments to run: ``configured`` (--sysprep-args), checked, plus /quiet.

    An Azure image needs /generalize and /oobe. The machine must end powered off or waiting:
    /shutdown or /quit; /reboot would boot it into setup again and undo the generalize. /quiet
    is added because over WinRM there is no desktop: a failing sysprep would otherwise wait on an
    error dialog nobody can see until the deadline."""
    for arg in configured:
        if not re.fullmatch(r"/[A-Za-z]+(:[A-Za-z0-9_.\\-]+)?", arg):
            raise StepFailed(f"--sysprep-args: {arg!r} is not a sysprep option")
    lower = [a.lower() for a in configured]
    missing = [flag for flag in ("/generalize", "/oobe") if flag not in lower]
    if missing:
        raise StepFailed(
            f"--sysprep-args {' '.join(configured)!r} lacks {' and '.join(missing)}: an Azure image "
            "must be generalized and start in OOBE"
        )
    if "/audit" in lower:
        raise StepFailed("--sysprep-args: /audit cannot go with /oobe")
    power = [a for a in lower if a in ("/shutdown", "/quit", "/reboot")]
    if power not in (["/shutdown"], ["/quit"]):
        raise StepFailed(
            f"--sysprep-args {' '.join(configured)!r}: give exactly one of /shutdown and /quit "
            "(/reboot boots the machine into setup again, which undoes the generalize)"
        )
    return configured if "/quiet" in lower else (*configured, "/quiet")


def sysprep_script(arguments: tuple[str, ...]) -> str:
    """scripts/sysprep_generalize.ps1 with ``arguments`` (already checked by sysprep_arguments)."""
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


def _message(line: str) -> str:
    return _LOG_PREFIX.sub("", str(line)).strip()


def cause_of(logs: dict[str, Any]) -> str:
    """The reason sysprep failed, in a sentence, from its logs (the first specific line wins:
    sysprep logs the root cause first and generic 'hit failure' lines after it)."""
    errors = [str(x) for x in logs.get("setuperr") or []]
    actions = [str(x) for x in logs.get("setupact") or []]
    for line in errors + actions:
        found = _APPX.search(line)
        if found:
            return (
                f"the per-user Appx package {found.group(1)} is installed for a user but not provisioned "
                "for all users (remove it for that user, then retry)"
            )
    for line in errors:
        found = _PROVIDER.search(line)
        if found:
            function, path, code = found.groups()
            missing = " (its DLL is missing)" if code.lower() in ("0x7e", "0x8007007e") else ""
            return (
                f"the Sysprep provider {path.rsplit(chr(92), 1)[-1]} failed in '{function}' "
                f"(dwRet {code}){missing}: repair the application that registered it, or remove its "
                "registration"
            )
    specific = [_message(line) for line in errors if "Error" in line]
    if specific:
        return "setuperr.log: " + specific[0]
    if logs.get("running"):
        last = _message(actions[-1]) if actions else "nothing"
        return f"sysprep was still working with no error logged; setupact.log's last line: {last}"
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
    arguments = sysprep_arguments(options.sysprep_args)
    shutdown = "/shutdown" in (a.lower() for a in arguments)
    started = parse_step_tag(actions.step_tag("guest"))  # an interrupted earlier run
    power = state.get("PowerState")
    if power != "running":
        if started:
            raise StepFailed(
                f"{vm.key} is {power}; run {started.get('run')} started sysprep at {started.get('at')} "
                "and was interrupted before it saw the outcome. Do not start the VM (a sysprepped "
                "Windows that boots runs setup again). If its boot diagnostics show sysprep's "
                "shutdown, change the word 'started' in its imageready-step-guest tag to 'done' "
                "and re-run; otherwise rebuild the copy"
            )
        raise StepFailed(
            f"{vm.key} is {power} and no run recorded a successful sysprep; do not start it blindly "
            "(a sysprepped Windows that boots runs setup again): check its boot diagnostics"
        )
    admin = str(((facts.guest or {}).get("user") or {}).get("name") or "the admin user")
    if not options.apply:
        return Outcome(
            "planned",
            f"would delete C:\\Windows\\Panther and Sysprep\\unattend.xml, run sysprep.exe "
            f"{' '.join(arguments)} as {admin} over WinRM, poll ImageState (deadline "
            f"{options.sysprep_deadline:.0f} s) and wait for {vm.key} to stop",
        )
    guest = actions.provider.guest(vm)
    if guest.transport != "winrm" or guest.read_only:
        raise StepFailed(
            f"sysprep must run over WinRM as the administrator, not through {guest.transport} "
            "(Run Command runs as SYSTEM, which sysprep refuses)"
        )
    evidence: dict[str, Any] = {"arguments": list(arguments)}
    deadline = time.monotonic() + options.sysprep_deadline
    worker: _Sysprep | None = None
    if started and _left_running(actions, guest, started, evidence):
        progress.emit(f"{vm.key}: following the sysprep run {started.get('run')} started")
    else:
        actions.mark_started("guest")
        prepared = _json(guest.run(script("sysprep_prepare.ps1"), timeout=options.guest_timeout))
        if prepared.get("exists") is not False:
            raise StepFailed(f"could not delete C:\\Windows\\Panther / Sysprep\\unattend.xml: {prepared}")
        evidence["prepared"] = prepared
        worker = _Sysprep(
            actions.provider.connect_guest(vm, fallback=False),
            sysprep_script(arguments),
            deadline + WORKER_GRACE,
        )
        worker.start()
        progress.emit(f"{vm.key}: sysprep.exe {' '.join(arguments)} started as {admin}")
    outcome = _follow(actions, guest, worker, deadline, evidence, shutdown=shutdown)
    actions.provider.drop_guest(vm)
    _wait_stopped(actions, evidence)
    return outcome


def _left_running(
    actions: VmActions, guest: Guest, started: dict[str, str], evidence: dict[str, Any]
) -> bool:
    """After an interrupted run: True when its sysprep is still running or has resealed the guest
    (follow it); False when it never got going (start again); fails when it left the guest broken."""
    status = _json(guest.run(script("sysprep_status.ps1"), timeout=60))
    evidence["resumed"] = {"tag": started, "status": {k: status.get(k) for k in ("running", "image_state")}}
    image_state = str(status.get("image_state") or "")
    if status.get("running") or _resealed(status):
        return True
    if image_state != COMPLETE:
        _fail(actions, guest, None, _exited_reason(None, image_state), evidence)
    return False


def _resealed(report: dict[str, Any]) -> bool:
    return report.get("image_state") == RESEALED or report.get("succeeded_tag") is True


def _exited_reason(exit_code: object, image_state: str) -> str:
    code = f" ({exit_code})" if exit_code is not None else ""
    if image_state == UNDEPLOYABLE:
        return (
            f"sysprep exited{code} part-way through generalize: ImageState stays {UNDEPLOYABLE}, and "
            "this installation can no longer become an image (rebuild the copy from its source)"
        )
    if image_state == COMPLETE:
        return f"sysprep exited{code} and ImageState is still {COMPLETE}: nothing was generalized"
    return f"sysprep exited{code} with ImageState {image_state or 'unknown'}"


def _follow(
    actions: VmActions,
    guest: Guest,
    worker: _Sysprep | None,
    deadline: float,
    evidence: dict[str, Any],
    *,
    shutdown: bool,
) -> Outcome:
    """Poll until sysprep has resealed the guest (then it powers off, or we power it off after
    /quit), failed, or ran out of time. ``worker`` is None when following an earlier run's."""
    vm, options = actions.vm, actions.options
    ticker = progress.Ticker(f"{vm.key}: sysprep", deadline=options.sysprep_deadline, every=15)
    resealed, image_state, last_renewal = False, "", time.monotonic()
    status_script = script("sysprep_status.ps1")
    while True:
        exited, exit_code = False, None
        status: dict[str, Any] | None
        try:
            status = _json(guest.run(status_script, timeout=60))
        except GuestError:
            status = None  # not answering: shutting down, or the network; Azure tells which
        if status:
            image_state = str(status.get("image_state") or "")
            resealed = resealed or _resealed(status)
            if image_state == SPECIALIZED:
                _fail(
                    actions,
                    guest,
                    worker,
                    f"ImageState became {SPECIALIZED}: the machine went through setup again, so it "
                    "is not generalized",
                    evidence,
                )
        ticker.tick(f"ImageState {image_state or 'unknown'}" + (", resealed" if resealed else ""))
        worker_gone = worker is not None and not worker.is_alive()
        if worker is not None and worker_gone and worker.result is not None:
            report = _json(worker.result)  # sysprep exited and its shell reported
            evidence["report"] = report
            image_state = str(report.get("image_state") or image_state)
            resealed = resealed or _resealed(report)
            exited, exit_code = True, report.get("exit_code")
        elif (
            worker is not None
            and worker_gone
            and worker.error is not None
            and worker.error.category == "timeout"
        ):
            _fail(
                actions,
                guest,
                worker,
                f"sysprep did not finish within {options.sysprep_deadline:.0f} s",
                evidence,
            )
        elif status and (worker is None or worker_gone):
            # following an earlier run's sysprep, or ours after its connection dropped
            exited = not status.get("running")
        if exited:
            if not resealed:
                _fail(actions, guest, worker, _exited_reason(exit_code, image_state), evidence)
            if not shutdown:
                guest.run(script("shutdown.ps1"), timeout=60)
                return _done(True, evidence, "sysprep resealed the guest to OOBE (/quit); shutting it down")
            return _done(True, evidence, "sysprep resealed the guest to OOBE; it powers itself off")
        if status is None or (worker is not None and not worker.is_alive()):
            power = actions.statuses().get("PowerState")
            if power in ("stopped", "deallocated", "stopping"):
                if not shutdown and not resealed:
                    raise StepFailed(
                        f"{vm.key} powered off ({power}) before sysprep /quit reported, and /quit does not "
                        "power off: something else did; the guest's state is unknown"
                    )
                return _done(resealed, evidence, f"the machine powered off after sysprep ({power})")
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


def _done(resealed: bool, evidence: dict[str, Any], detail: str) -> Outcome:
    evidence["success_observed"] = resealed
    if not resealed:
        detail += (
            "; ImageState was not seen resealed before the connection dropped (with /generalize "
            "/shutdown, sysprep powers the machine off only after it succeeded)"
        )
    return Outcome("done", f"sysprep: {detail}", evidence)


def _fail(
    actions: VmActions, guest: Guest, worker: _Sysprep | None, why: str, evidence: dict[str, Any]
) -> NoReturn:
    """Fetch the logs, stop a sysprep still running, attach the logs, name the cause, fail.
    The VM is not generalized (the step fails before deallocate and generalize)."""
    logs: dict[str, Any] = {}
    try:
        logs = _json(guest.run(script("sysprep_logs.ps1"), timeout=120))
    except GuestError as exc:
        logs = {"error": str(exc)}
    stopped = ""
    if logs.get("running"):
        try:
            ended = _json(guest.run(script("sysprep_stop.ps1"), timeout=90))
            stopped = (
                "; sysprep was stopped" if ended.get("running") is False else "; sysprep is STILL running"
            )
        except GuestError as exc:
            stopped = f"; sysprep may still be running (could not stop it: {exc})"
    if worker is not None:
        worker.join(timeout=30)  # its wait ends with sysprep
        worker.guest.close()
    untouched = _untouched(guest, logs)
    if untouched:
        # nothing was generalized: a re-run after the fix runs the checks again, not a resume
        actions.clear_mark("guest")
    record = actions.records.get("guest")
    if record is not None:
        for name in ("setuperr", "setupact"):
            if logs.get(name):
                record.attachments[f"Sysprep\\Panther\\{name}.log (last lines)"] = redact(
                    "\n".join(map(str, logs[name]))
                )
    evidence["logs_image_state"] = logs.get("image_state")
    state = (
        f" (ImageState {logs['image_state']})" if logs.get("image_state") and "ImageState" not in why else ""
    )
    after = "; the guest is not generalized: fix the cause and run the checks again" if untouched else ""
    raise StepFailed(f"sysprep failed: {why}{state}{stopped}; cause: {cause_of(logs)}{after}")


def _untouched(guest: Guest, logs: dict[str, Any]) -> bool:
    """After a failure: no sysprep runs any more and ImageState is still IMAGE_STATE_COMPLETE,
    so the guest is as the checks saw it (without Panther)."""
    if logs.get("image_state") != COMPLETE:
        return False
    try:
        status = _json(guest.run(script("sysprep_status.ps1"), timeout=60))
    except GuestError:
        return False
    return status.get("running") is False and status.get("image_state") == COMPLETE


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

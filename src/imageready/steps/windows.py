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

Sysprep's own shell must stay open while it runs (Windows kills what a WinRM shell started when
the shell closes), so it runs in a thread, waiting; with /shutdown that connection drops when the
machine powers off, which is expected and proves nothing by itself.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import threading
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any, NoReturn

from imageready import progress
from imageready.categories import Category
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
#: power states in which the guest is off or going off
POWERED_OFF = ("stopped", "deallocated", "stopping", "deallocating")
#: the guest tag's ``why=`` of a failed sysprep step, and what it means
FAILED_BECAUSE = {
    "stopped-unsealed": "the machine stopped before sysprep sealed it",
    "booted-after-seal": "the guest ran again after sysprep sealed it (ImageState no longer resealed)",
}
RECOVER = (
    "recover: rebuild the copy from its source; or start the VM, delete its imageready-step-guest "
    "tag and run the checks again (they pass only on a guest sysprep left untouched)"
)
#: the options of Microsoft's "Sysprep Command-Line Options" page (/unattend is refused apart)
SYSPREP_OPTIONS = ("/generalize", "/oobe", "/audit", "/mode:vm", "/reboot", "/shutdown", "/quit", "/quiet")
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
    error dialog nobody can see until the deadline. /unattend (any form) is refused: Azure's
    generalize page says custom answer files are not supported. /mode:vm is accepted when asked
    for (Microsoft, "Sysprep Command-Line Options": a VM-mode image deploys only to VMs with the
    same hardware profile)."""
    for arg in configured:
        if "unattend" in arg.lower():
            raise StepFailed(
                f"--sysprep-args: {arg!r} is refused: Azure does not support custom answer files "
                "(/unattend) when it generalizes a VM for an image"
            )
        if arg.lower() not in SYSPREP_OPTIONS:
            raise StepFailed(
                f"--sysprep-args: {arg!r} is not a sysprep option (known: {' '.join(SYSPREP_OPTIONS)})"
            )
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


def _parse_time(text: object) -> int | None:
    """A guest time in PowerShell's round-trip format (``2026-11-25T21:13:18.1234567Z``) as
    100-nanosecond ticks since 1970 (the format's own precision: no rounding between two times)."""
    found = re.fullmatch(
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)?", str(text or "")
    )
    if not found:
        return None
    whole, fraction, zone = found.groups()
    offset = dt.timedelta(0)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        stamp = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.timezone(offset))
    except ValueError:
        return None
    return int(stamp.timestamp()) * 10_000_000 + int((fraction or "0").ljust(7, "0"))


class Seal:
    """What this run has seen of sysprep's outcome. ``proof`` says why the guest counts as
    resealed ("" while it does not). Readings arrive from several threads (sysprep's own shell
    streams them), each with the monotonic time it was asked for: a reading asked for after the
    proof that contradicts it (ImageState readable and not resealed) withdraws the proof, one
    asked for before it (a poll that crossed the reseal) does not."""

    def __init__(self, since: str, *, recorded: str = "") -> None:
        #: the guest's clock when the old succeeded tag was deleted: only a tag written after it counts
        self.since = since
        self._since = _parse_time(since)
        self.image_state = ""
        self.proof = recorded
        self._proof_at = -math.inf if recorded else math.inf
        self.withdrawn = ""
        self.readings = 0
        #: the proof is on the VM's step tag (a resuming run finds it there)
        self.on_vm = bool(recorded)
        self._lock = threading.Lock()

    def observe(self, reading: Mapping[str, Any], source: str, asked: float) -> None:
        with self._lock:
            self.readings += 1
            state = reading.get("image_state")
            if isinstance(state, str) and state:
                self.image_state = state
                if state == RESEALED:
                    if not self.proof:
                        self.proof, self._proof_at = f"ImageState {RESEALED} ({source})", asked
                elif self.proof and asked > self._proof_at:
                    self.withdrawn = f"ImageState {state} read after the reseal ({source})"
                    self.proof, self._proof_at = "", math.inf
                return
            written = _parse_time(reading.get("succeeded_tag_written"))
            if not self.proof and written is not None and self._since is not None and written >= self._since:
                self.proof = (
                    f"Sysprep_succeeded.tag written {reading.get('succeeded_tag_written')}, after the "
                    f"start {self.since} ({source})"
                )
                self._proof_at = asked

    def distrust(self, why: str) -> None:
        with self._lock:
            if self.proof:
                self.withdrawn = why
            self.proof, self._proof_at = "", math.inf

    def kind(self) -> str:
        return "tag" if self.proof.startswith("Sysprep_succeeded.tag") else "imagestate"


class _Sysprep(threading.Thread):
    """sysprep.exe in its own WinRM shell, waited for until it exits or the machine goes down;
    the readings its script streams go to ``seal`` as they arrive."""

    def __init__(self, guest: Guest, source: str, deadline: float, seal: Seal) -> None:
        super().__init__(name="imageready-sysprep", daemon=True)
        self.guest, self.source, self.deadline, self.seal = guest, source, deadline, seal
        self.result: CommandResult | None = None
        self.error: GuestError | None = None
        self.finished = math.inf

    def run(self) -> None:
        try:
            self.result = self.guest.run(
                self.source, timeout=max(1.0, self.deadline - time.monotonic()), on_progress=self._reading
            )
        except GuestError as exc:
            self.error = exc
        finally:
            self.finished = time.monotonic()
            self.guest.close()

    def _reading(self, line: str) -> None:
        kind, _, payload = line.partition(" ")
        if kind != "sysprep":
            return
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            return
        if isinstance(data, dict):
            self.seal.observe(data, "sysprep's shell", time.monotonic())


def sysprep(actions: VmActions, facts: VmFacts) -> Outcome:
    vm, options = actions.vm, actions.options
    state = actions.settled_statuses()
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
    worker: _Sysprep | None = None
    seal = _resumable(actions, guest, earlier, evidence) if earlier else None
    if seal is not None:
        progress.emit(f"{vm.key}: following the sysprep run {earlier.get('run')} started")
    else:
        seal = _prepare(actions, guest, evidence)
        worker = _Sysprep(
            actions.provider.connect_guest(vm, fallback=False),
            sysprep_script(arguments),
            deadline + WORKER_GRACE,
            seal,
        )
        worker.start()
        progress.emit(f"{vm.key}: sysprep.exe {' '.join(arguments)} started as {admin}")
    outcome = _follow(actions, guest, worker, deadline, seal, evidence, shutdown=shutdown)
    actions.provider.drop_guest(vm)
    _wait_stopped(actions, evidence)
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
        _wait_stopped(actions, evidence)
        return Outcome("done", f"sysprep: {proof}; {vm.key} is {power}", evidence)
    if earlier.get("state") == "started":
        why = (
            f"the machine stopped before sysprep sealed it: {vm.key} is {power}, run {run} started "
            f"sysprep at {at} and no run saw ImageState {RESEALED} or a succeeded tag written after "
            "the start"
        )
        _keep(actions, {"resumed": {"tag": earlier}, "logs": f"unreachable: {vm.key} is {power}"})
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


def _prepare(actions: VmActions, guest: Guest, evidence: dict[str, Any]) -> Seal:
    """Read the guest's clock and ImageState, delete Panther, unattend.xml and an old succeeded
    tag, then tag the VM ``started since=T`` (before sysprep runs, so a re-run resumes)."""
    prepared = _json(guest.run(script("sysprep_prepare.ps1"), timeout=actions.options.guest_timeout))
    evidence["prepared"] = prepared
    if prepared.get("exists") is not False:
        raise StepFailed(
            f"could not delete C:\\Windows\\Panther, Sysprep\\unattend.xml or an old "
            f"Sysprep_succeeded.tag: {prepared}"
        )
    image_state = prepared.get("image_state")
    if image_state != COMPLETE:
        raise StepFailed(
            f"ImageState is {image_state or 'unreadable'} before sysprep started, not {COMPLETE}: the "
            "guest is not as the checks saw it (an earlier sysprep?); run the checks again"
        )
    since = str(prepared.get("started") or "")
    if _parse_time(since) is None:
        raise StepFailed(
            f"the guest did not report its clock before sysprep ({since!r}): cannot tell a "
            "new succeeded tag from an old one"
        )
    actions.mark_started("guest", since=since)
    return Seal(since)


def _resumable(
    actions: VmActions, guest: Guest, earlier: dict[str, str], evidence: dict[str, Any]
) -> Seal | None:
    """After an interrupted run, with the VM running: a Seal to follow its sysprep with (still
    running, or resealed), or None when it never got going (start again); fails when it left the
    guest broken, or when the reseal it recorded is gone (the guest ran setup again)."""
    asked = time.monotonic()
    status = _json(guest.run(script("sysprep_status.ps1"), timeout=60))
    evidence["resumed"] = {
        "tag": earlier,
        "status": {k: status.get(k) for k in ("running", "image_state", "succeeded_tag_written")},
    }
    recorded = f"recorded by run {earlier.get('run')}: {earlier['sealed']}" if earlier.get("sealed") else ""
    # a tag counts only if written after the start the interrupted run recorded (none: no tag counts)
    seal = Seal(earlier.get("since", ""), recorded=recorded)
    seal.observe(status, "status poll", asked)
    if recorded and not seal.proof:
        _keep(actions, evidence)
        actions.mark_failed("guest", "booted-after-seal", since=earlier.get("since", ""))
        raise StepFailed(
            f"sysprep failed: run {earlier.get('run')} saw sysprep reseal the guest, but now "
            f"{seal.withdrawn}: {FAILED_BECAUSE['booted-after-seal']}; it is NOT deallocated or "
            f"generalized; {RECOVER}"
        )
    if status.get("running") or seal.proof:
        return seal
    if seal.image_state != COMPLETE:
        _fail(actions, guest, None, _exited_reason(None, seal), evidence)
    return None


def _exited_reason(exit_code: object, seal: Seal) -> str:
    code = f" ({exit_code})" if exit_code is not None else ""
    image_state = seal.image_state
    if seal.withdrawn:
        return f"sysprep exited{code} and the reseal is not proven: {seal.withdrawn}"
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
            status = _json(guest.run(status_script, timeout=60))
        except GuestError:
            status = None  # not answering: shutting down, or the network; Azure tells which
        if status:
            seal.observe(status, "status poll", asked)
            if status.get("image_state") == SPECIALIZED:
                _fail(
                    actions,
                    guest,
                    worker,
                    f"ImageState became {SPECIALIZED}: the machine went through setup again, so it "
                    "is not generalized",
                    evidence,
                )
        worker_gone = worker is not None and not worker.is_alive()
        if worker is not None and worker_gone and worker.result is not None:
            report = _json(worker.result)  # sysprep exited and its shell reported
            evidence["report"] = report
            seal.observe(report, "sysprep's report", worker.finished)
            exited, exit_code = True, report.get("exit_code")
        elif (
            worker is not None
            and worker_gone
            and worker.error is not None
            and worker.error.category == Category.TIMEOUT
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
        if worker is not None and worker_gone and worker.error is not None:
            evidence["sysprep_shell"] = f"ended without a report: {worker.error}"
        _record(actions, seal)
        ticker.tick(f"ImageState {seal.image_state or 'unknown'}" + (", resealed" if seal.proof else ""))
        if exited:
            if exit_code not in (None, 0):
                seal.distrust(f"sysprep exited with code {exit_code}")
                _record(actions, seal)
            if not seal.proof:
                _fail(actions, guest, worker, _exited_reason(exit_code, seal), evidence)
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
            _fail(
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


def _record(actions: VmActions, seal: Seal) -> None:
    """Keep the VM's step tag in step with the proof: ``sealed=`` once there is proof (a run
    interrupted before the power-off leaves it for the next), without it once withdrawn."""
    if bool(seal.proof) == seal.on_vm:
        return
    if seal.proof:
        actions.mark_started("guest", since=seal.since, sealed=seal.kind())
        progress.emit(f"{actions.vm.key}: sysprep resealed the guest ({seal.proof}); recorded on the VM")
    else:
        actions.mark_started("guest", since=seal.since)
    seal.on_vm = bool(seal.proof)


def _stopped_unsealed(actions: VmActions, seal: Seal, power: str, evidence: dict[str, Any]) -> NoReturn:
    """The machine went off with no proof of the reseal: whoever did it, sysprep is not done."""
    evidence["logs"] = f"unreachable: {actions.vm.key} is {power}"
    evidence["image_state_last_seen"] = seal.image_state
    evidence["readings"] = seal.readings
    _keep(actions, evidence)
    actions.mark_failed("guest", "stopped-unsealed", since=seal.since)
    raise StepFailed(
        f"sysprep failed: the machine stopped before sysprep sealed it: {actions.vm.key} is {power}, "
        f"ImageState was last seen {seal.image_state or 'never'} and no succeeded tag was written "
        f"after the start{f' ({seal.withdrawn})' if seal.withdrawn else ''}; sysprep's logs are "
        f"unreachable while it is off; it is NOT deallocated or generalized; {RECOVER}"
    )


def _keep(actions: VmActions, evidence: dict[str, Any]) -> None:
    """A failed step's evidence goes into the audit too (a done step's travels in its Outcome)."""
    record = actions.records.get("guest")
    if record is not None:
        record.evidence = evidence


def _done(seal: Seal, evidence: dict[str, Any], detail: str) -> Outcome:
    evidence["success_observed"] = True
    evidence["proof"] = seal.proof
    return Outcome("done", f"sysprep: {detail} (proof: {seal.proof})", evidence)


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
    _keep(actions, evidence)
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

"""A failed sysprep: fetch its logs, stop it if it still runs, attach the logs, name the cause
from them, and fail the step; the VM is then neither deallocated nor generalized. Also what the
``why=`` of a failed step tag means, and how to recover from it.
"""

from __future__ import annotations

import re
from typing import Any, NoReturn

from imageready.guest.base import Guest, GuestError
from imageready.redact import redact
from imageready.steps.records import StepFailed
from imageready.steps.sysprep_proof import COMPLETE
from imageready.steps.sysprep_run import SysprepShell, read_json, script
from imageready.steps.vm_actions import VmActions

#: the guest tag's ``why=`` of a failed sysprep step, and what it means
FAILED_BECAUSE = {
    "stopped-unsealed": "the machine stopped before sysprep sealed it",
    "booted-after-seal": "the guest ran again after sysprep sealed it (ImageState no longer resealed)",
}
RECOVER = (
    "recover: rebuild the copy from its source; or start the VM, delete its imageready-step-guest "
    "tag and run the checks again (they pass only on a guest sysprep left untouched)"
)
_APPX = re.compile(r"Package (\S+) was installed for a user, but not provisioned for all users")
_PROVIDER = re.compile(r"Failure occurred while executing '([^']+)' from (.+?);\s*dwRet = (\w+)")
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d, (?:Error|Info|Warning)\s+")


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


def keep_evidence(actions: VmActions, evidence: dict[str, Any]) -> None:
    """A failed step's evidence goes into the audit too (a done step's travels in its Outcome)."""
    record = actions.records.get("guest")
    if record is not None:
        record.evidence = evidence


def fail(
    actions: VmActions, guest: Guest, worker: SysprepShell | None, why: str, evidence: dict[str, Any]
) -> NoReturn:
    """Fetch the logs, stop a sysprep still running, attach the logs, name the cause, fail.
    The VM is not generalized (the step fails before deallocate and generalize)."""
    logs: dict[str, Any] = {}
    try:
        logs = read_json(guest.run(script("sysprep_logs.ps1"), timeout=120))
    except GuestError as exc:
        logs = {"error": str(exc)}
    stopped = ""
    if logs.get("running"):
        try:
            ended = read_json(guest.run(script("sysprep_stop.ps1"), timeout=90))
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
    keep_evidence(actions, evidence)
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
        status = read_json(guest.run(script("sysprep_status.ps1"), timeout=60))
    except GuestError:
        return False
    return status.get("running") is False and status.get("image_state") == COMPLETE

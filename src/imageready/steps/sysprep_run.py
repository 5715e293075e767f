"""Running sysprep: the arguments it takes, its script, the guest's preparation before it starts,
and sysprep.exe in its own WinRM shell; and how the step reads its guest scripts and their JSON.

Sysprep's own shell must stay open while it runs (Windows kills what a WinRM shell started when
the shell closes), so it runs in a thread, waiting; with /shutdown that connection drops when the
machine powers off, which is expected and proves nothing by itself.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from importlib import resources
from typing import Any

from imageready.guest.base import CommandResult, Guest, GuestError
from imageready.steps.records import StepFailed
from imageready.steps.sysprep_proof import COMPLETE, Seal, guest_time
from imageready.steps.vm_actions import VmActions

#: the options of Microsoft's "Sysprep Command-Line Options" page (/unattend is refused apart)
SYSPREP_OPTIONS = ("/generalize", "/oobe", "/audit", "/mode:vm", "/reboot", "/shutdown", "/quit", "/quiet")
#: sysprep's own shell outlives the step's deadline by this much, so that at the deadline the
#: step can still read the logs of a sysprep that is running, before it ends it
WORKER_GRACE = 120.0
_ARGS_LINE = re.compile(r"^\$arguments = @\(.*\)  # the harness sets this line$", re.MULTILINE)


def script(name: str) -> str:
    """A guest script shipped in ``imageready.scripts``."""
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


def read_json(result: CommandResult) -> dict[str, Any]:
    """The JSON object a guest script printed ({} when there is none)."""
    text = result.text().strip().lstrip("\ufeff")
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        data = {}
    return data if isinstance(data, dict) else {}


class SysprepShell(threading.Thread):
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


def prepare(actions: VmActions, guest: Guest, evidence: dict[str, Any]) -> Seal:
    """Read the guest's clock and ImageState, delete Panther, unattend.xml and an old succeeded
    tag, then tag the VM ``started since=T`` (before sysprep runs, so a re-run resumes)."""
    prepared = read_json(guest.run(script("sysprep_prepare.ps1"), timeout=actions.options.guest_timeout))
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
    if guest_time(since) is None:
        raise StepFailed(
            f"the guest did not report its clock before sysprep ({since!r}): cannot tell a "
            "new succeeded tag from an old one"
        )
    actions.mark_started("guest", since=since)
    return Seal(since)

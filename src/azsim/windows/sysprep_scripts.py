"""The scripts that drive sysprep over WinRM, as the Windows model answers them: start it (waiting
for it, and streaming ``PROGRESS`` lines with ImageState and the tag's write time while it runs when
the script asks), poll its status, remove Panther (and an old tag), stop it, and power the machine
off. What sysprep itself does, and Microsoft's sources for it: :mod:`azsim.windows.sysprep`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time

from azsim.windows import catalog
from azsim.windows.model import WindowsMachine
from azsim.windows.powershell import PsError, ScriptCall, ScriptHandler, ScriptResult, ScriptView
from azsim.windows.sysprep import KNOWN_FLAGS, SHUTDOWN_DELAY, SysprepRun, sysprep_flags

#: how often a script's own watch loop reads the state when it names no interval
DEFAULT_WATCH_MS = 250


def _tail_length(view: ScriptView, log: str) -> int:
    """The -Tail count a script reads a log with (Get-Content -Tail N, or a helper's N after the
    log's name); 20 when it says none."""
    index = view.code.lower().find(log.lower())
    found = re.search(r"(?:-Tail\s+|['\"]\s+)(\d+)", view.code[index:] if index >= 0 else "", re.IGNORECASE)
    return int(found.group(1)) if found else 20


def utc_roundtrip(seconds: float | None) -> str | None:
    """A time as PowerShell's ``[DateTime]::UtcNow.ToString('o')`` prints it (7 fraction digits)."""
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _watch_state(view: ScriptView, machine: WindowsMachine) -> dict[str, object]:
    """One reading of a script's watch loop: ImageState and the tag's write time (if it asks)."""
    with machine.lock:
        reading: dict[str, object] = {"image_state": machine.image_state}
        if view.asks("LastWriteTimeUtc"):
            reading["succeeded_tag_written"] = utc_roundtrip(machine.files.written(catalog.SUCCEEDED_TAG))
        return reading


def sysprep_status(view: ScriptView, machine: WindowsMachine) -> dict[str, object]:
    """What a script reads about sysprep's outcome (the keys of scripts/sysprep_*.ps1)."""
    status: dict[str, object] = {}
    with machine.lock:
        if view.asks_all("Setup\\State", "ImageState"):
            status["image_state"] = machine.image_state
        if view.asks("Sysprep_succeeded.tag"):
            status["succeeded_tag"] = machine.files.is_file(catalog.SUCCEEDED_TAG)
        if view.asks("Sysprep_succeeded.tag") and view.asks("LastWriteTimeUtc"):
            status["succeeded_tag_written"] = utc_roundtrip(machine.files.written(catalog.SUCCEEDED_TAG))
        for key, path in (("setuperr", catalog.SETUPERR_LOG), ("setupact", catalog.SETUPACT_LOG)):
            if view.asks(f"{key}.log"):
                log = machine.files.read(path) or ""
                tail = _tail_length(view, f"{key}.log")
                status[key] = [line for line in log.splitlines() if line.strip()][-tail:]
        if view.asks("Get-Process"):
            status["running"] = bool(machine.running_processes("sysprep"))
    return status


class StartSysprep:
    """A script that runs sysprep.exe: directly or with ``Start-Process -Wait`` (it waits, then
    may report the outcome), or with plain ``Start-Process`` (it returns at once; sysprep dies
    with the WinRS shell unless the shell stays open)."""

    name = "sysprep-start"

    def matches(self, view: ScriptView) -> bool:
        return view.asks("sysprep") and any(f in KNOWN_FLAGS for f in sysprep_flags(view))

    def run(self, call: ScriptCall) -> ScriptResult:
        machine, view = call.machine, call.view
        if machine.running_processes("sysprep"):
            error = PsError("Another instance of sysprep is running.", "ResourceBusy")
            return ScriptResult(errors=[error], exit_code=1)
        run = SysprepRun(machine, sysprep_flags(view), as_system=call.is_system, shell_id=call.shell_id)
        run.start()
        waiting = ("-Wait", "Wait-Process", "WaitForExit", "HasExited")
        waits = view.asks(*waiting) or not view.asks("Start-Process")
        if not waits:
            stdout = json.dumps({"pid": run.pid}) if view.asks("ConvertTo-Json") else ""
            return ScriptResult(stdout=stdout)
        if view.asks_all("HasExited", "PROGRESS"):
            exit_code = self._watch(call, run)
        else:
            exit_code = run.wait(call.cancelled)
        if exit_code is None:
            return ScriptResult(exit_code=1)
        report = sysprep_status(view, machine)
        if report and view.asks("ConvertTo-Json"):
            return ScriptResult(stdout=json.dumps({"exit_code": exit_code, **report}, separators=(",", ":")))
        return ScriptResult(exit_code=exit_code)

    @staticmethod
    def _watch(call: ScriptCall, run: SysprepRun) -> int | None:
        """The script's own loop: while sysprep runs (and once more after it exited), read the
        state every ``Start-Sleep -Milliseconds N`` and print ``PROGRESS sysprep {json}`` on
        stderr when it changed. None if the command was stopped first."""
        found = re.search(r"Start-Sleep\s+-Milliseconds\s+(\d+)", call.view.code, re.IGNORECASE)
        interval = int(found.group(1) if found else DEFAULT_WATCH_MS) / 1000
        last = ""
        while True:
            exited = not run.running
            line = json.dumps(_watch_state(call.view, call.machine), separators=(",", ":"))
            if line != last:
                call.write_stderr(f"PROGRESS sysprep {line}\r\n")
                last = line
            if exited:
                return run.exit_code
            if not call.sleep(interval):
                return None


class SysprepStatus:
    """A script that reads how sysprep went: ImageState, the tag, the error log, the process."""

    name = "sysprep-status"

    def matches(self, view: ScriptView) -> bool:
        return (
            view.asks("Sysprep_succeeded.tag")
            and not view.asks("Remove-Item")
            and not any(f in KNOWN_FLAGS for f in sysprep_flags(view))
        )

    def run(self, call: ScriptCall) -> ScriptResult:
        return ScriptResult(stdout=json.dumps(sysprep_status(call.view, call.machine), separators=(",", ":")))


class StopSysprep:
    """A script that ends a running sysprep (``Stop-Process``): it dies where it is, so ended
    in its generalize pass it leaves ImageState ``IMAGE_STATE_UNDEPLOYABLE``."""

    name = "sysprep-stop"

    def matches(self, view: ScriptView) -> bool:
        return view.asks_all("Stop-Process", "sysprep") and not sysprep_flags(view)

    def run(self, call: ScriptCall) -> ScriptResult:
        found = call.machine.running_processes("sysprep")
        for process in found:
            process.kill()
        for process in found:
            if isinstance(process, SysprepRun):
                process.wait(call.cancelled)
        result = {"stopped": len(found), "running": bool(call.machine.running_processes("sysprep"))}
        return ScriptResult(stdout=json.dumps(result, separators=(",", ":")))


class RemovePanther:
    """A script that deletes C:\\Windows\\Panther (what Azure's generalize doc asks for) and,
    when it names them too, the Sysprep answer file and an old Sysprep_succeeded.tag; it may also
    read the guest's clock (``[DateTime]::UtcNow``) and ImageState, before it deletes anything."""

    name = "remove-panther"

    def matches(self, view: ScriptView) -> bool:
        return view.asks("Remove-Item") and catalog.PANTHER.lower() in (p.lower() for p in view.paths())

    def run(self, call: ScriptCall) -> ScriptResult:
        machine, view = call.machine, call.view
        named = {p.lower() for p in view.paths()}
        unattend = catalog.SYSPREP_UNATTEND.lower() in named
        tag = catalog.SUCCEEDED_TAG.lower() in named
        with machine.lock:
            before: dict[str, object] = {}
            if view.asks("UtcNow"):
                before["started"] = utc_roundtrip(time.time())
            if view.asks_all("Setup\\State", "ImageState"):
                before["image_state"] = machine.image_state
            existed = machine.files.is_dir(catalog.PANTHER)
            removed = machine.files.remove(catalog.PANTHER)
            unattend_existed = unattend and machine.files.is_file(catalog.SYSPREP_UNATTEND)
            if unattend_existed:
                machine.files.remove(catalog.SYSPREP_UNATTEND)
            tag_existed = tag and machine.files.is_file(catalog.SUCCEEDED_TAG)
            if tag_existed:
                machine.files.remove(catalog.SUCCEEDED_TAG)
            machine.save()
        result: dict[str, object] = {"existed": existed, "removed_files": removed, "exists": False}
        if unattend or tag:
            result = {
                **before,
                "panther_existed": existed,
                "removed_files": removed,
                "unattend_existed": unattend_existed,
                **({"tag_existed": tag_existed} if tag else {}),
                "exists": False,
            }
        return ScriptResult(stdout=json.dumps(result, separators=(",", ":")))


class _PendingShutdown:
    """A scheduled shutdown (``shutdown /s /t N``): gone if the power goes another way first."""

    name = "shutdown"
    shell_id: str | None = None

    def __init__(self, machine: WindowsMachine, reboot: bool, delay: float) -> None:
        self.pid = machine.new_pid()
        power = machine.power
        assert power is not None
        self.timer = threading.Timer(
            delay, power.reboot_from_inside if reboot else power.shutdown_from_inside
        )
        self.timer.daemon = True

    @property
    def running(self) -> bool:
        return self.timer.is_alive()

    def kill(self) -> None:
        self.timer.cancel()


class PowerOff:
    """``shutdown.exe /s`` or ``/r`` (returns at once; the power goes after ``/t`` seconds),
    ``Stop-Computer`` and ``Restart-Computer`` (the session ends with the machine)."""

    name = "power"
    _SHUTDOWN = re.compile(r"\bshutdown(?:\.exe)?['\"]?\s+[^\n]*?/([sr])\b", re.IGNORECASE)
    _DELAY = re.compile(r"/t\s+(\d+)", re.IGNORECASE)

    def matches(self, view: ScriptView) -> bool:
        return bool(self._SHUTDOWN.search(view.code)) or view.asks("Stop-Computer", "Restart-Computer")

    def run(self, call: ScriptCall) -> ScriptResult:
        power = call.machine.power
        found = self._SHUTDOWN.search(call.view.code)
        reboot = (found.group(1).lower() == "r") if found else call.view.asks("Restart-Computer")
        delay_match = self._DELAY.search(call.view.code) if found else None
        # shutdown.exe's default delay is 30 s; a cmdlet acts at once
        delay = float(delay_match.group(1)) if delay_match else (30.0 if found else SHUTDOWN_DELAY)
        if power is not None:
            pending = _PendingShutdown(call.machine, reboot, delay)
            with call.machine.lock:
                call.machine.processes.append(pending)
            pending.timer.start()
        if found:
            return ScriptResult()
        call.sleep(delay + 5)  # Stop-Computer: the session goes down with the machine
        return ScriptResult()


HANDLERS: list[ScriptHandler] = [StartSysprep(), SysprepStatus(), StopSysprep(), RemovePanther(), PowerOff()]

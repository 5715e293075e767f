"""Sysprep as the harness meets it: started over WinRM, judged by ImageState, the tag and its logs.

``SysprepRun`` is the sysprep.exe process: it validates its flags, refuses what real sysprep
refuses (SYSTEM, an upgraded install, no generalize count left, BitLocker on the OS volume, a
package installed for a user but not provisioned, a failed provider), then after the scenario's
``seconds`` does what the scenario's ``outcome`` says: ``succeed`` (ImageState
``IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE``, ``Sysprep_succeeded.tag``, then shut down, reboot or
quit), ``fail-appx`` (the real log lines, ImageState stays ``IMAGE_STATE_COMPLETE``) or ``hang``.
Validation takes the first half of ``seconds``; the generalize pass the second, with ImageState
``IMAGE_STATE_UNDEPLOYABLE`` meanwhile, where it stays if sysprep dies or a provider registered
under ``SysPrepExternal\\Generalize`` fails (its DLL missing from the machine).

What Windows does here, and where Microsoft says so:

* ImageState values and their meaning: "Windows Setup States" (learn.microsoft.com,
  windows-hardware/manufacture/desktop/windows-setup-states): ``IMAGE_STATE_COMPLETE`` a finished
  install, ``IMAGE_STATE_UNDEPLOYABLE`` while a setup phase (sysprep's generalize pass) is under
  way, ``IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE`` generalized, booting to OOBE next.
* ``Sysprep_succeeded.tag``: sysprep deletes an old one early in each run, before it parses its
  command line, and writes a new one only when the run succeeded. Sysprep's own log says so
  (``SYSPRP FCreateTagFile:Tag file C:\\Windows\\System32\\sysprep\\Sysprep_succeeded.tag does
  not already exist, no need to delete anything``, quoted in Microsoft's support article
  "The KMS current count does not increase", KB 929829). A run refused before that point (as
  SYSTEM, at ``ValidateUser``) leaves an old tag where it was.
* Its logs: ``%WINDIR%\\System32\\Sysprep\\Panther\\setupact.log`` and ``setuperr.log``
  ("Sysprep Process Overview", section "Sysprep Log Files": generalize logs to that folder).
* Its flags: "Sysprep Command-Line Options" (``/mode:vm``, ``/quit``, ``/shutdown``, ``/unattend``).
* A machine powered off from outside (ARM powerOff or deallocate) ends every process in it: a
  sysprep cut off in its generalize pass leaves ``IMAGE_STATE_UNDEPLOYABLE`` (Windows Setup States:
  an image in that state cannot be deployed).

The scripts that start it, poll it, stop it and power the machine off are answered by
:mod:`azsim.windows.sysprep_scripts`.
"""

from __future__ import annotations

import re
import threading

from azsim.windows import catalog
from azsim.windows.model import WindowsMachine, log_time, provider_failure_line
from azsim.windows.powershell import ScriptView

#: how long Windows takes from sysprep's end to the power going off
SHUTDOWN_DELAY = 0.3
DEFAULT_APPX = "Microsoft.WindowsTerminal_1.18.3181.0_x64__8wekyb3d8bbwe"
_FLAG = re.compile(r"(?:^|[\s'\",(])/([A-Za-z]+(?::[^\s'\",)]+)?)")
KNOWN_FLAGS = {"generalize", "oobe", "audit", "shutdown", "reboot", "quit", "quiet", "mode:vm"}
_POWER_FLAGS = ("shutdown", "reboot", "quit")
#: how sysprep names its tag in setupact.log (lower-case "sysprep", as in Microsoft's sample)
TAG_IN_LOG = "C:\\Windows\\System32\\sysprep\\Sysprep_succeeded.tag"
GENERALIZE_PROVIDERS_KEY = (
    "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\SysPrepExternal\\Generalize"
)


def sysprep_flags(view: ScriptView) -> list[str]:
    """The ``/flag`` arguments a script passes (comments excluded), lower-cased."""
    return [m.group(1).lower() for m in _FLAG.finditer(view.code)]


def _invalid_flags(flags: list[str]) -> str | None:
    unknown = [f for f in flags if f not in KNOWN_FLAGS and not f.startswith("unattend:")]
    if unknown:
        return f"unknown option /{unknown[0]}"
    if ("oobe" in flags) == ("audit" in flags):
        return "exactly one of /oobe and /audit is required"
    if sum(f in flags for f in _POWER_FLAGS) != 1:
        return "exactly one of /shutdown, /reboot and /quit is required"
    return None


def _launch_failure(function: str, dll: str, code: str) -> str:
    return (
        "[0x0f0082] SYSPRP ActionPlatform::LaunchModule: Failure occurred while executing "
        f"'{function}' from C:\\Windows\\System32\\{dll}; dwRet = {code}"
    )


class SysprepRun:
    """One sysprep.exe process (a thread standing in for it)."""

    name = "sysprep"

    def __init__(
        self, machine: WindowsMachine, flags: list[str], *, as_system: bool, shell_id: str | None
    ) -> None:
        self.machine = machine
        self.flags = flags
        self.as_system = as_system
        self.shell_id = shell_id
        self.pid = machine.new_pid()
        self.exit_code: int | None = None
        self._killed = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"sysprep-{self.pid}", daemon=True)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def start(self) -> None:
        with self.machine.lock:
            self.machine.processes.append(self)
        self._thread.start()

    def kill(self) -> None:
        self._killed.set()

    def wait(self, cancelled: threading.Event) -> int | None:
        """Wait for sysprep to exit (None if the waiting command was stopped first)."""
        while not self._done.wait(0.05):
            if cancelled.is_set():
                return None
        return self.exit_code

    def _log(self, level: str, message: str, *, error: bool = False) -> None:
        line = f"{log_time()}, {level:<10} {message}\r\n"
        self.machine.files.append(catalog.SETUPACT_LOG, line)
        if error:
            self.machine.files.append(catalog.SETUPERR_LOG, line)

    def _exit(self, code: int) -> None:
        with self.machine.lock:
            self._log("Info", f"SYSPRP Sysprep exiting with code {code}")
            self.machine.save()
        self.exit_code = code

    def _refusal(self) -> list[str] | None:
        """What real sysprep logs when it will not generalize this machine, or None."""
        machine = self.machine
        if self.as_system:
            return ["SYSPRP ValidateUser: Sysprep must not run as LocalSystem; run it as an admin"]
        if machine.is_upgraded():
            return [
                "[0x0f0036] SYSPRP spopk.dll:: Sysprep will not run on an upgraded OS. "
                "You can only run Sysprep on a custom (clean) install version of Windows.",
                _launch_failure("Sysprep_Clean_Validate_Opk", "spopk.dll", "0x139f"),
            ]
        if "generalize" not in self.flags:
            return None
        os_volume = [v for v in machine.state.bitlocker if v["mount"].upper() == "C:"]
        if any(v["protection"] == "On" for v in os_volume):
            return [
                "BitLocker-Sysprep: BitLocker is on for the OS volume. "
                "Turn BitLocker off to run Sysprep. (0x80310039)",
                _launch_failure("ValidateBitLockerState", "BdeSysprep.dll", "0x80310039"),
            ]
        if machine.state.generalize_count <= 0:
            return [
                "SYSPRP LaunchDll:Failure occurred while executing "
                "'C:\\Windows\\System32\\slc.dll,SLReArmWindows', returned error code -1073425657",
                "[0x0f0070] SYSPRP RunExternalDlls:An error occurred while running registry "
                "sysprep DLLs, halting sysprep execution. dwRet = -1073425657",
            ]
        return None

    def _appx_failure(self) -> list[str]:
        packages = [a["name"] for a in self.machine.state.appx if not a["provisioned"]]
        lines = [
            f"SYSPRP Package {name} was installed for a user, but not provisioned for all users. "
            "This package will not function properly in the sysprep image."
            for name in packages or [DEFAULT_APPX]
        ]
        return [
            *lines,
            "SYSPRP Failed to remove apps for the current user: 0x80073cf2.",
            "SYSPRP Exit code of RemoveAllApps thread was 0x3cf2.",
            _launch_failure("SysprepGeneralizeValidate", "AppxSysprep.dll", "0x3cf2"),
            "[0x0f00d8] SYSPRP WinMain:Hit failure while pre-validate sysprep generalize "
            "internal providers; hr = 0x80073cf2",
        ]

    def _main(self) -> None:
        try:
            self._sysprep()
        finally:
            self._done.set()

    def _sysprep(self) -> None:
        machine = self.machine
        with machine.lock:
            self._log("Info", "SYSPRP ========== Beginning of a new sysprep run ==========")
            if not self.as_system:
                self._delete_old_tag()
            self._log("Info", "SYSPRP Sysprep command line: " + " ".join("/" + f for f in self.flags))
            invalid = _invalid_flags(self.flags)
            refusal = None if invalid else self._refusal()
            if invalid:
                self._log("Error", f"SYSPRP Invalid command line: {invalid}", error=True)
            appx_blocked = any(not a["provisioned"] for a in machine.state.appx)
            outcome = machine.state.sysprep_outcome
            providers = [] if refusal or invalid else self._failed_providers()
        if invalid or (refusal and self.as_system):
            with machine.lock:
                for line in refusal or []:
                    self._log("Error", line, error=True)
            self._exit(87 if invalid else 1)
            return
        if outcome == "hang":  # nothing changes until the power goes
            self._killed.wait()
            return
        generalize = "generalize" in self.flags
        # the first half of the run validates; the second is the generalize pass itself
        half = machine.state.sysprep_seconds / 2
        if self._killed.wait(half):
            return
        with machine.lock:
            failure = refusal or providers
            if not failure and generalize and (outcome == "fail-appx" or appx_blocked):
                failure = self._appx_failure()
            if failure:
                for line in failure:
                    self._log("Error", line, error=True)
            elif generalize:
                # Windows marks the image undeployable until the pass completes: a run that
                # dies from here on leaves an installation that can never be generalized
                self._log("Info", "SYSPRP Sysprep_Generalize: running the generalize providers")
                machine.set_image_state(catalog.IMAGE_STATE_UNDEPLOYABLE)
                machine.save()
        if failure:
            self._exit(1)
            return
        if self._killed.wait(half):
            return
        with machine.lock:
            failure = self._registered_provider_failure() if generalize else []
            for line in failure:
                self._log("Error", line, error=True)
            if not failure:
                self._generalized()
        self._exit(1 if failure else 0)
        if not failure:
            self._power_action()

    def _delete_old_tag(self) -> None:
        """FCreateTagFile: an old Sysprep_succeeded.tag goes before this run can fail (see the
        module docstring for Microsoft's log line; the wording for a tag found is azsim's)."""
        files = self.machine.files
        if files.is_file(catalog.SUCCEEDED_TAG):
            files.remove(catalog.SUCCEEDED_TAG)
            self._log("Info", f"[0x0f007e] SYSPRP FCreateTagFile:Tag file {TAG_IN_LOG} deleted")
        else:
            self._log(
                "Info",
                f"[0x0f007e] SYSPRP FCreateTagFile:Tag file {TAG_IN_LOG} does not already exist, "
                "no need to delete anything",
            )

    def _registered_provider_failure(self) -> list[str]:
        """The generalize pass runs each provider registered under SysPrepExternal\\Generalize
        (data ``C:\\path\\provider.dll,EntryPoint``); one whose DLL is gone (an application
        uninstalled without unregistering it) fails with ERROR_MOD_NOT_FOUND and halts sysprep."""
        registry, files = self.machine.registry, self.machine.files
        if not registry.exists(GENERALIZE_PROVIDERS_KEY):
            return []
        for value in registry.create(GENERALIZE_PROVIDERS_KEY).values():
            dll, _, entry_point = str(value).partition(",")
            dll = dll.strip().strip('"')
            if dll and not files.is_file(dll):
                return [
                    "[0x0f0082] SYSPRP ActionPlatform::LaunchModule: Failure occurred while executing "
                    f"'{entry_point.strip() or 'Sysprep_Generalize'}' from {dll}; dwRet = 0x7e",
                    "[0x0f0070] SYSPRP RunExternalDlls:An error occurred while running registry "
                    "sysprep DLLs, halting sysprep execution. dwRet = 0x7e",
                    "[0x0f00a8] SYSPRP WinMain:Hit failure while processing sysprep generalize "
                    "providers; hr = 0x8007007e",
                ]
        return []

    def _failed_providers(self) -> list[str]:
        # an external provider in a failed state (from the scenario) fails this run too
        return [
            provider_failure_line(dll, detail).split(", ", 1)[1].split(None, 1)[1].rstrip()
            for dll, detail in self.machine.state.failed_providers
        ]

    def _generalized(self) -> None:
        machine = self.machine
        generalize = "generalize" in self.flags
        if generalize:
            machine.state.generalize_count -= 1
        target = "OOBE" if "oobe" in self.flags else "AUDIT"
        kind = "GENERALIZE" if generalize else "SPECIALIZE"
        machine.set_image_state(f"IMAGE_STATE_{kind}_RESEAL_TO_{target}")
        machine.files.write(catalog.SUCCEEDED_TAG, "")
        self._log("Info", "[0x0f004d] SYSPRP WinMain:Sysprep run completed successfully")

    def _power_action(self) -> None:
        power = self.machine.power
        if power is None or "quit" in self.flags or self._killed.wait(SHUTDOWN_DELAY):
            return
        if "shutdown" in self.flags:
            power.shutdown_from_inside()
        elif "reboot" in self.flags:
            power.reboot_from_inside()

"""Answers the harness's facts script (src/imageready/facts/SCHEMA.md, "Windows").

Each probe is recognised by what it asks Windows for (``Get-BitLockerVolume``,
``Win32_ComputerSystem``, ``Setup\\State``...) and answered from the machine's state the way
those commands would answer; a probe the script does not ask for is not in the output, and a
probe whose cmdlet the scenario breaks (``cmdlet_errors``) is null with an entry in ``errors``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from azsim.windows import catalog
from azsim.windows.model import WindowsMachine
from azsim.windows.powershell import ScriptCall, ScriptHandler, ScriptResult, ScriptView

SYSTEM_ACCOUNT = "NT AUTHORITY\\SYSTEM"
SYSTEM_SID = "S-1-5-18"
_PROVIDER_FAILURE = re.compile(r"Failure occurred while executing '([^']+)' from (\S+?);")


@dataclass(frozen=True)
class Probe:
    key: str
    asked: Callable[[ScriptView], bool]
    answer: Callable[[ScriptCall], Any]
    #: cmdlets the probe runs; an error the scenario injects into one breaks the probe
    cmdlets: tuple[str, ...] = ()


def _user(call: ScriptCall) -> dict[str, Any]:
    if call.is_system:
        return {"name": SYSTEM_ACCOUNT, "sid": SYSTEM_SID, "is_admin": True, "is_system": True}
    machine = call.machine
    return {"name": call.account, "sid": machine.admin_sid(), "is_admin": True, "is_system": False}


def _os(call: ScriptCall) -> dict[str, Any]:
    machine = call.machine
    version = catalog.OS_VERSIONS[machine.state.version]
    return {
        "caption": version.product,
        "version": machine.state.version,
        "build": machine.state.version.rsplit(".", 1)[1],
        "installation_type": machine.registry.get(catalog.CURRENT_VERSION_KEY, "InstallationType"),
        "upgraded": machine.is_upgraded(),
    }


def _features(call: ScriptCall) -> list[dict[str, str]]:
    rows = [catalog.FEATURES[name.lower()] for name in call.machine.state.features]
    return [{"name": f.name, "display_name": f.display_name, "feature_type": f.feature_type} for f in rows]


def _role_details(call: ScriptCall) -> dict[str, Any]:
    machine = call.machine
    details: dict[str, Any] = {}
    if "WDS" in machine.state.features:
        details["WDS"] = {"initialized": bool(machine.registry.get(catalog.WDS_TFTP_KEY, "RootFolder"))}
    if "Hyper-V" in machine.state.features:
        details["Hyper-V"] = {"virtual_switches": machine.state.hyperv_switches}
    if "Web-Server" in machine.state.features:
        config = machine.files.read(catalog.APPLICATION_HOST_CONFIG) or ""
        details["Web-Server"] = {"encrypted_credentials": "[enc:" in config}
    return details


def _bitlocker(call: ScriptCall) -> list[dict[str, Any]]:
    machine = call.machine
    if "BitLocker" not in machine.state.features:
        return []
    return [
        {
            "mount_point": v["mount"],
            "volume_type": "OperatingSystem" if v["mount"].upper() == "C:" else "Data",
            "protection_status": v["protection"],
            "encryption_percentage": v["percent"],
            "volume_status": v["status"],
            "encryption_method": v["method"],
        }
        for v in machine.state.bitlocker
    ]


def _pending_reboot(call: ScriptCall) -> dict[str, Any]:
    machine, view = call.machine, call.view
    reasons = []
    for reason, key in catalog.REBOOT_EVIDENCE.items():
        if not view.asks(reason.split()[-1]):
            continue
        if reason == "PendingFileRenameOperations":
            found = bool(machine.registry.get(key, "PendingFileRenameOperations"))
        else:
            found = machine.registry.exists(key)
        if found:
            reasons.append(reason)
    return {"pending": bool(reasons), "reasons": reasons}


def _appx(call: ScriptCall) -> list[dict[str, str]]:
    machine = call.machine
    return [
        {"name": a["name"], "user": f"{machine.hostname}\\{a['user']}"}
        for a in machine.state.appx
        if not a["provisioned"]
    ]


def _panther(call: ScriptCall) -> dict[str, Any]:
    files = call.machine.files
    return {
        "exists": files.is_dir(catalog.PANTHER),
        "file_count": len(files.files_under(catalog.PANTHER)),
    }


def _unattend_paths(view: ScriptView) -> list[str]:
    return [p for p in view.paths() if p.lower().endswith(".xml") and "unattend" in p.lower()]


def _unattend_files(call: ScriptCall) -> list[str]:
    return [p for p in _unattend_paths(call.view) if call.machine.files.is_file(p)]


def _services(call: ScriptCall) -> dict[str, Any]:
    known = call.machine.state.services
    by_lower = {name.lower(): name for name in known}
    answer: dict[str, Any] = {}
    for literal in call.view.literals:
        name = by_lower.get(literal.lower())
        if name is None or name in answer:
            continue
        service = known[name]
        answer[name] = None if service["status"] == "Missing" else dict(service)
    return answer


def _providers_failed(call: ScriptCall) -> list[dict[str, str]]:
    log = call.machine.files.read(catalog.SETUPERR_LOG) or ""
    found = {(m.group(2).rsplit("\\", 1)[-1], m.group(1)) for m in _PROVIDER_FAILURE.finditer(log)}
    return [{"name": name, "detail": detail} for name, detail in sorted(found)]


#: what .NET's WebRequest says when nothing answers at 169.254.169.254 (a WebException)
IMDS_UNREACHABLE = "Unable to connect to the remote server"
#: Win32_ComputerSystemProduct.UUID when no UUID is available (learn.microsoft.com, the class)
NO_UUID = "00000000-0000-0000-0000-000000000000"


def _identity(call: ScriptCall) -> dict[str, Any]:
    """The identity probe (facts ``identity``, or imageready's probe script): IMDS ``compute``
    as the VM's platform answers it, and ``Win32_ComputerSystemProduct.UUID`` (azsim.guestapi.
    Platform says what the platform shows, and what a scenario staged)."""
    machine = call.machine
    platform = machine.platform
    found: dict[str, Any] = {"imds": None, "imds_error": None, "smbios_uuid": None, "smbios_error": None}
    if platform is not None and platform.imds == "reachable":
        compute = platform.compute()
        found["imds"] = {key: compute[key] for key in ("vmId", "name", "resourceId")}
    else:
        found["imds_error"] = IMDS_UNREACHABLE
    broken = {k.lower(): v for k, v in machine.state.cmdlet_errors.items()}
    if "get-ciminstance" in broken:
        found["smbios_error"] = broken["get-ciminstance"]
    else:
        shown = platform.smbios_uuid() if platform is not None else None
        found["smbios_uuid"] = shown or NO_UUID
    return found


def _asks_identity(view: ScriptView) -> bool:
    return view.asks("169.254.169.254") or view.asks("Win32_ComputerSystemProduct")


PROBES = (
    Probe(
        "hostname",
        lambda v: v.asks("MachineName", "$env:COMPUTERNAME"),
        lambda c: c.machine.hostname,
    ),
    Probe("user", lambda v: v.asks("WindowsIdentity"), _user),
    Probe("os", lambda v: v.asks("Win32_OperatingSystem"), _os, ("Get-CimInstance",)),
    Probe("features", lambda v: v.asks("Get-WindowsFeature"), _features, ("Get-WindowsFeature",)),
    Probe(
        "role_details",
        lambda v: v.asks("WDSTFTP", "Get-VMSwitch", "applicationHost.config"),
        _role_details,
        ("Get-WindowsFeature", "Get-VMSwitch"),
    ),
    Probe("bitlocker", lambda v: v.asks("Get-BitLockerVolume"), _bitlocker, ("Get-BitLockerVolume",)),
    Probe(
        "domain",
        lambda v: v.asks("Win32_ComputerSystem"),
        lambda c: _domain(c.machine),
        ("Get-CimInstance",),
    ),
    Probe(
        "pending_reboot",
        lambda v: v.asks("RebootPending", "RebootRequired", "PendingFileRenameOperations"),
        _pending_reboot,
    ),
    Probe(
        "appx_not_provisioned",
        lambda v: v.asks_all("Get-AppxPackage", "-AllUsers"),
        _appx,
        ("Get-AppxPackage", "Get-AppxProvisionedPackage"),
    ),
    Probe(
        "image_state",
        lambda v: v.asks_all("Setup\\State", "ImageState"),
        lambda c: c.machine.image_state,
    ),
    Probe(
        "generalize_count",
        lambda v: v.asks("SoftwareLicensingService", "RemainingWindowsReArmCount"),
        lambda c: c.machine.state.generalize_count,
        ("Get-CimInstance",),
    ),
    Probe("panther", lambda v: catalog.PANTHER.lower() in (p.lower() for p in v.paths()), _panther),
    Probe("unattend_files", lambda v: bool(_unattend_paths(v)), _unattend_files),
    Probe("services", lambda v: v.asks("Win32_Service", "Get-Service"), _services),
    Probe(
        "sysprep_providers_failed",
        lambda v: v.asks_all("setuperr.log", "Failure occurred while executing"),
        _providers_failed,
        ("Select-String",),
    ),
    # its own try/catch per source in the script: a broken cmdlet is an error inside the answer
    Probe("identity", _asks_identity, _identity),
)


def _domain(machine: WindowsMachine) -> dict[str, Any]:
    return {"part_of_domain": machine.state.domain_joined, "domain": machine.state.domain_name}


class FactsScript:
    """A script that gathers several facts and prints them as one JSON object."""

    name = "facts"

    def matches(self, view: ScriptView) -> bool:
        return view.asks("ConvertTo-Json") and sum(p.asked(view) for p in PROBES) >= 3

    def run(self, call: ScriptCall) -> ScriptResult:
        machine, view = call.machine, call.view
        facts: dict[str, Any] = {"schema": 1, "os_family": "Windows"}
        errors: list[dict[str, str]] = []
        with machine.lock:
            broken = {k.lower(): v for k, v in machine.state.cmdlet_errors.items()}
            for probe in PROBES:
                if not probe.asked(view):
                    continue
                failure = next((broken[c.lower()] for c in probe.cmdlets if c.lower() in broken), None)
                if failure is not None:
                    facts[probe.key] = None
                    errors.append({"probe": probe.key, "error": failure})
                else:
                    facts[probe.key] = probe.answer(call)
        facts["errors"] = errors
        return ScriptResult(stdout=json.dumps(facts, separators=(",", ":"), ensure_ascii=False))


class IdentityScript:
    """imageready's identity probe on its own (``scripts/identity_windows.ps1``): one JSON object."""

    name = "identity"

    def matches(self, view: ScriptView) -> bool:
        return view.asks("ConvertTo-Json") and _asks_identity(view)

    def run(self, call: ScriptCall) -> ScriptResult:
        with call.machine.lock:
            found = _identity(call)
        return ScriptResult(stdout=json.dumps(found, separators=(",", ":")))


HANDLERS: list[ScriptHandler] = [FactsScript(), IdentityScript()]

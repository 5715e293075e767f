"""A scenario's Windows ``guest:`` mapping, validated (scenarios/README.md, "Windows guest").

Unknown keys are errors naming their path, so a typo never silently changes what a test stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from azsim.staging import COMPRESSIONS, compressed
from azsim.windows import catalog

SYSPREP_OUTCOMES = ("succeed", "fail-appx", "hang")
BITLOCKER_STATUSES = (
    "FullyDecrypted",
    "DecryptionInProgress",
    "FullyEncrypted",
    "EncryptionInProgress",
)
BITLOCKER_METHODS = ("None", "Aes128", "Aes256", "XtsAes128", "XtsAes256")
SERVICE_STATUSES = ("Running", "Stopped", "StartPending", "StopPending", "Paused", "Missing")
START_TYPES = ("Automatic", "Manual", "Disabled", "Boot", "System")


class GuestSpecError(ValueError):
    """The ``guest:`` mapping is invalid; the message names the key."""


@dataclass(frozen=True)
class BitLockerSpec:
    mount: str
    protection: str = "Off"
    percent: float = 0.0
    status: str = "FullyDecrypted"
    method: str = "None"


@dataclass(frozen=True)
class AppxSpec:
    name: str
    user: str
    provisioned: bool = False


@dataclass(frozen=True)
class ServiceSpec:
    status: str = "Running"
    start_type: str = "Automatic"


@dataclass(frozen=True)
class VolumeSpec:
    """A volume as Windows mounts it: at a drive letter (``D:``) or in a folder (``C:\\data``),
    on the OS disk, Azure's resource (temporary) disk, or a data disk."""

    mount: str
    disk: str = "data"  # os | resource | data
    label: str = ""


#: what Azure gives a VM with a temporary disk: C: on the OS disk, D: on the resource disk
DEFAULT_VOLUMES = (VolumeSpec("C:", "os", "Windows"), VolumeSpec("D:", "resource", "Temporary Storage"))
FILE_ENCODINGS = ("utf-8", "utf-16le", "utf-16be", "utf-32")
FILE_COMPRESSIONS = COMPRESSIONS
UNREADABLE_ERRORS = ("UnauthorizedAccessException", "IOException")


@dataclass(frozen=True)
class WindowsGuestSpec:
    hostname: str
    version: str = "10.0.20348"
    upgraded: bool = False
    #: installed features, parents included (Install-WindowsFeature names)
    features: tuple[str, ...] = catalog.DEFAULT_FEATURES
    wds_initialized: bool = False
    hyperv_switches: int = 0
    iis_encrypted_credentials: bool = False
    bitlocker: tuple[BitLockerSpec, ...] = (BitLockerSpec("C:"),)
    domain_joined: bool = False
    domain_name: str = "WORKGROUP"
    pending_reboot: tuple[str, ...] = ()
    appx: tuple[AppxSpec, ...] = ()
    generalize_count: int = 1000
    services: dict[str, ServiceSpec] = field(default_factory=dict)
    #: (provider DLL, detail) pairs a previous sysprep run logged as failed
    sysprep_providers_failed: tuple[tuple[str, str], ...] = ()
    registry: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: tuple[tuple[str, str], ...] = ()
    #: per file path (lower case): what else the scenario says about it (see PlantedAttrs)
    file_attrs: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the volumes and where they are mounted (a drive letter or a folder), on which disk
    volumes: tuple[VolumeSpec, ...] = ()
    users: tuple[str, ...] = ()
    sysprep_outcome: str = "succeed"
    sysprep_seconds: float = 2.0
    #: how long a scan of this machine's disks takes (a large disk: a fleet's scans overlap)
    scan_seconds: float = 0.0
    #: Azure leaves C:\Windows\Panther (with its cached answer file) on every VM
    panther: bool = True
    winrm_basic: bool = False
    winrm_allow_unencrypted: bool = False
    #: cmdlet name -> the error it throws (a broken module, access denied, ...)
    cmdlet_errors: dict[str, str] = field(default_factory=dict)


_KEYS = {
    "hostname",
    "version",
    "upgraded",
    "roles",
    "role_state",
    "bitlocker",
    "domain",
    "pending_reboot",
    "appx",
    "generalize_count",
    "services",
    "sysprep_providers_failed",
    "registry",
    "files",
    "users",
    "sysprep",
    "scan",
    "panther",
    "winrm",
    "cmdlet_errors",
    "volumes",
}
_DEFAULT_SERVICES = {
    "RdAgent": ServiceSpec("Running", "Automatic"),
    "WindowsAzureGuestAgent": ServiceSpec("Running", "Automatic"),
    "cdrom": ServiceSpec("Running", "System"),
}


def _check_keys(mapping: object, allowed: set[str], path: str) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise GuestSpecError(f"{path}: expected a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            raise GuestSpecError(f"{path}.{key}: unknown key (known: {', '.join(sorted(allowed))})")
    return mapping


def _typed(value: object, kind: type | tuple[type, ...], path: str) -> Any:
    # bool is an int in Python; a YAML `yes` must not pass for a count
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise GuestSpecError(f"{path}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        raise GuestSpecError(f"{path}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _choice(value: object, choices: tuple[str, ...], path: str) -> str:
    if value not in choices:
        raise GuestSpecError(f"{path}: {value!r} is not one of {', '.join(choices)}")
    return str(value)


def _features(raw: object) -> tuple[str, ...]:
    names = _typed(raw, list, "guest.roles")
    for i, name in enumerate(names):
        if str(name).lower() not in catalog.FEATURES:
            raise GuestSpecError(f"guest.roles[{i}]: unknown feature {name!r}")
    listed = [catalog.FEATURES[str(n).lower()].name for n in names]
    return tuple(catalog.with_parents([*catalog.DEFAULT_FEATURES, *listed]))


def _bitlocker(raw: object) -> tuple[BitLockerSpec, ...]:
    volumes = []
    for i, item in enumerate(_typed(raw, list, "guest.bitlocker")):
        path = f"guest.bitlocker[{i}]"
        entry = _check_keys(item, {"mount", "protection", "percent", "status", "method"}, path)
        status = _choice(entry.get("status", "FullyDecrypted"), BITLOCKER_STATUSES, f"{path}.status")
        encrypted = status != "FullyDecrypted"
        default_percent = {"FullyDecrypted": 0, "FullyEncrypted": 100}.get(status, 50)
        # YAML reads `protection: Off` as false; accept both spellings
        protection = entry.get("protection", "On" if encrypted else "Off")
        protection = {True: "On", False: "Off"}.get(protection, protection)
        volumes.append(
            BitLockerSpec(
                mount=str(_typed(entry.get("mount"), str, f"{path}.mount")),
                protection=_choice(protection, ("On", "Off"), f"{path}.protection"),
                percent=float(_typed(entry.get("percent", default_percent), (int, float), path)),
                status=status,
                method=_choice(
                    entry.get("method", "XtsAes128" if encrypted else "None"),
                    BITLOCKER_METHODS,
                    f"{path}.method",
                ),
            )
        )
    return tuple(volumes)


def _services(raw: object) -> dict[str, ServiceSpec]:
    services = dict(_DEFAULT_SERVICES)
    for name, value in _typed(raw, dict, "guest.services").items():
        path = f"guest.services.{name}"
        if isinstance(value, str):
            value = {"status": value}
        entry = _check_keys(value, {"status", "start_type"}, path)
        default = services.get(name, ServiceSpec())
        services[name] = ServiceSpec(
            status=_choice(entry.get("status", default.status), SERVICE_STATUSES, f"{path}.status"),
            start_type=_choice(
                entry.get("start_type", default.start_type), START_TYPES, f"{path}.start_type"
            ),
        )
    return services


def _role_state(raw: object, features: tuple[str, ...]) -> dict[str, Any]:
    allowed = {
        "WDS": {"initialized"},
        "Hyper-V": {"virtual_switches"},
        "Web-Server": {"encrypted_credentials"},
    }
    state = _check_keys(raw, set(allowed), "guest.role_state")
    for role, value in state.items():
        _check_keys(value, allowed[role], f"guest.role_state.{role}")
        if role not in features:
            raise GuestSpecError(f"guest.role_state.{role}: {role} is not in guest.roles")
    return state


def _appx(raw: object, users: tuple[str, ...], admin_user: str) -> tuple[AppxSpec, ...]:
    packages = []
    for i, item in enumerate(_typed(raw, list, "guest.appx")):
        path = f"guest.appx[{i}]"
        entry = _check_keys(item, {"name", "user", "provisioned"}, path)
        user = str(entry.get("user", admin_user))
        if user.lower() not in {u.lower() for u in (*users, admin_user)}:
            raise GuestSpecError(f"{path}.user: {user!r} is not the admin user or in guest.users")
        packages.append(
            AppxSpec(
                name=str(_typed(entry.get("name"), str, f"{path}.name")),
                user=user,
                provisioned=bool(_typed(entry.get("provisioned", False), bool, f"{path}.provisioned")),
            )
        )
    return tuple(packages)


def _pending_reboot(raw: object) -> tuple[str, ...]:
    if isinstance(raw, bool):
        return ("CBS RebootPending",) if raw else ()
    reasons = _typed(raw, list, "guest.pending_reboot")
    return tuple(
        _choice(r, tuple(catalog.REBOOT_EVIDENCE), f"guest.pending_reboot[{i}]")
        for i, r in enumerate(reasons)
    )


def _providers(raw: object) -> tuple[tuple[str, str], ...]:
    providers = []
    for i, item in enumerate(_typed(raw, list, "guest.sysprep_providers_failed")):
        path = f"guest.sysprep_providers_failed[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        entry = _check_keys(item, {"name", "detail"}, path)
        name = str(_typed(entry.get("name"), str, f"{path}.name"))
        providers.append((name, str(entry.get("detail", "Generalize"))))
    return tuple(providers)


def parse_spec(raw: dict[str, Any] | None, vm_name: str, admin_user: str) -> WindowsGuestSpec:
    """Validate a scenario's ``guest:`` mapping for a Windows VM."""
    spec = _check_keys(raw or {}, _KEYS, "guest")
    users = tuple(
        str(
            _typed(
                _check_keys(u, {"name"}, f"guest.users[{i}]").get("name"),
                str,
                f"guest.users[{i}].name",
            )
        )
        for i, u in enumerate(_typed(spec.get("users", []), list, "guest.users"))
    )
    features = _features(spec.get("roles", []))
    role_state = _role_state(spec.get("role_state", {}), features)
    domain = _check_keys(spec.get("domain", {}), {"joined", "name"}, "guest.domain")
    sysprep = _check_keys(spec.get("sysprep", {}), {"outcome", "seconds"}, "guest.sysprep")
    scan = _check_keys(spec.get("scan", {}), {"seconds"}, "guest.scan")
    scan_seconds = float(_typed(scan.get("seconds", 0), (int, float), "guest.scan.seconds"))
    if scan_seconds < 0:
        raise GuestSpecError("guest.scan.seconds: must be 0 or more")
    winrm = _check_keys(spec.get("winrm", {}), {"basic", "allow_unencrypted"}, "guest.winrm")
    version = _choice(spec.get("version", "10.0.20348"), tuple(catalog.OS_VERSIONS), "guest.version")
    registry: dict[str, dict[str, Any]] = {}
    for key, values in _typed(spec.get("registry", {}), dict, "guest.registry").items():
        registry[str(key)] = dict(_typed(values, dict, f"guest.registry.{key}"))
    files, attrs = _files(spec.get("files", []))
    generalize_count = _typed(spec.get("generalize_count", 1000), int, "guest.generalize_count")
    if generalize_count < 0:
        raise GuestSpecError("guest.generalize_count: must be 0 or more")
    cmdlet_errors = {
        str(k): str(v) for k, v in _typed(spec.get("cmdlet_errors", {}), dict, "guest.cmdlet_errors").items()
    }
    bitlocker = _bitlocker(spec["bitlocker"]) if "bitlocker" in spec else (BitLockerSpec("C:"),)
    if any(v.status != "FullyDecrypted" or v.protection == "On" for v in bitlocker):
        # an encrypted volume means the BitLocker feature (and its cmdlets) is installed
        features = tuple(catalog.with_parents([*features, "BitLocker"]))
    return WindowsGuestSpec(
        hostname=str(_typed(spec.get("hostname", vm_name[:15].upper()), str, "guest.hostname")),
        version=version,
        upgraded=bool(_typed(spec.get("upgraded", False), bool, "guest.upgraded")),
        features=features,
        wds_initialized=bool(role_state.get("WDS", {}).get("initialized", False)),
        hyperv_switches=int(role_state.get("Hyper-V", {}).get("virtual_switches", 0)),
        iis_encrypted_credentials=bool(role_state.get("Web-Server", {}).get("encrypted_credentials", False)),
        bitlocker=bitlocker,
        domain_joined=bool(_typed(domain.get("joined", False), bool, "guest.domain.joined")),
        domain_name=str(domain.get("name", "WORKGROUP")),
        pending_reboot=_pending_reboot(spec.get("pending_reboot", False)),
        appx=_appx(spec.get("appx", []), users, admin_user),
        generalize_count=generalize_count,
        services=_services(spec.get("services", {})),
        sysprep_providers_failed=_providers(spec.get("sysprep_providers_failed", [])),
        registry=registry,
        files=tuple(files),
        file_attrs=attrs,
        volumes=_volumes(spec["volumes"]) if "volumes" in spec else DEFAULT_VOLUMES,
        users=users,
        sysprep_outcome=_choice(sysprep.get("outcome", "succeed"), SYSPREP_OUTCOMES, "guest.sysprep.outcome"),
        sysprep_seconds=float(_typed(sysprep.get("seconds", 2), (int, float), "guest.sysprep.seconds")),
        scan_seconds=scan_seconds,
        panther=bool(_typed(spec.get("panther", True), bool, "guest.panther")),
        winrm_basic=bool(_typed(winrm.get("basic", False), bool, "guest.winrm.basic")),
        winrm_allow_unencrypted=bool(
            _typed(winrm.get("allow_unencrypted", False), bool, "guest.winrm.allow_unencrypted")
        ),
        cmdlet_errors=cmdlet_errors,
    )


def _files(raw: object) -> tuple[list[tuple[str, str]], dict[str, dict[str, Any]]]:
    """Planted files; bytes that are not text (compressed, UTF-16) are kept one character per
    byte (latin-1) with ``binary`` set in their attributes."""
    files: list[tuple[str, str]] = []
    attrs: dict[str, dict[str, Any]] = {}
    keys = {"path", "content", "compress", "encoding", "size", "unreadable", "symlink"}
    for i, item in enumerate(_typed(raw, list, "guest.files")):
        where = f"guest.files[{i}]"
        entry = _check_keys(item, keys, where)
        path = str(_typed(entry.get("path"), str, f"{where}.path"))
        if len(path) < 3 or path[1:3] != ":\\":
            raise GuestSpecError(f"{where}.path: {path!r} is not an absolute Windows path")
        content = str(entry.get("content", ""))
        extra: dict[str, Any] = {}
        encoding = _choice(entry.get("encoding", "utf-8"), FILE_ENCODINGS, f"{where}.encoding")
        data = (
            content.encode()
            if encoding == "utf-8"
            else ("\ufeff" + content).encode("utf-32-le" if encoding == "utf-32" else encoding)
        )
        if "compress" in entry:
            how = _choice(entry["compress"], FILE_COMPRESSIONS, f"{where}.compress")
            data = compressed(data, how, path.rsplit("\\", 1)[-1])
        if data != content.encode():
            content, extra["binary"] = data.decode("latin-1"), True
        if "size" in entry:
            extra["size"] = int(_typed(entry["size"], int, f"{where}.size"))
        if "unreadable" in entry:
            extra["unreadable"] = _choice(entry["unreadable"], UNREADABLE_ERRORS, f"{where}.unreadable")
        if "symlink" in entry:
            extra["link"] = str(_typed(entry["symlink"], str, f"{where}.symlink"))
        files.append((path, content))
        if extra:
            attrs[path.lower()] = extra
    return files, attrs


def _volumes(raw: object) -> tuple[VolumeSpec, ...]:
    volumes = []
    for i, item in enumerate(_typed(raw, list, "guest.volumes")):
        where = f"guest.volumes[{i}]"
        entry = _check_keys(item, {"mount", "disk", "label"}, where)
        mount = str(_typed(entry.get("mount"), str, f"{where}.mount")).rstrip("\\")
        if len(mount) < 2 or mount[1] != ":" or (len(mount) > 2 and mount[2] != "\\"):
            raise GuestSpecError(f"{where}.mount: {mount!r} is not a drive (D:) or a folder (C:\\data)")
        disk = _choice(entry.get("disk", "data"), ("os", "resource", "data"), f"{where}.disk")
        volumes.append(VolumeSpec(mount, disk, str(entry.get("label", ""))))
    if not any(v.mount.upper() == "C:" and v.disk == "os" for v in volumes):
        raise GuestSpecError("guest.volumes: C: on the os disk is required")
    return tuple(volumes)

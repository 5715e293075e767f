"""The Windows machine model: a registry, a file system and the typed state scripts ask about.

Seeded from the scenario (``spec.WindowsGuestSpec``), changed by the scripts the model answers
(sysprep, Panther removal), and saved as JSON in the guest's state directory after every change,
so a stop/start or an azsim restart finds the machine as the last script left it. The registry
and the file system are case-insensitive, as on Windows; facts derive from them where Windows
keeps the evidence there (ImageState, pending reboots, an upgraded install), so what a script
changes is what the next script reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from azsim.guestapi import Platform
from azsim.windows import catalog
from azsim.windows.spec import WindowsGuestSpec

STATE_FILE = "windows-model.json"
#: scripts kept in the history (oldest dropped first)
HISTORY_LIMIT = 500


def normalize_path(path: str) -> str:
    r"""``c:/Windows//Panther\`` -> ``c:\Windows\Panther`` (case kept: compare ``.lower()``)."""
    text = path.replace("/", "\\")
    while "\\\\" in text:
        text = text.replace("\\\\", "\\")
    if len(text) > 3 and text.endswith("\\"):
        text = text.rstrip("\\")
    return text


def normalize_key(path: str) -> str:
    r"""Registry paths in any spelling (``HKLM:\``, ``HKEY_LOCAL_MACHINE\``) -> ``HKLM\...``."""
    text = normalize_path(path.strip())
    for prefix in ("Registry::", "Microsoft.PowerShell.Core\\Registry::"):
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix) :]
    head, _, rest = text.partition("\\")
    head = {"hkey_local_machine": "HKLM", "hklm:": "HKLM", "hklm": "HKLM"}.get(head.lower(), head)
    return f"{head}\\{rest}" if rest else head


class Registry:
    """Keys (with their display spelling) and their values."""

    def __init__(self, keys: dict[str, tuple[str, dict[str, Any]]] | None = None) -> None:
        self._keys: dict[str, tuple[str, dict[str, Any]]] = dict(keys or {})

    def create(self, path: str) -> dict[str, Any]:
        key = normalize_key(path)
        parts = key.split("\\")
        for i in range(1, len(parts) + 1):
            sub = "\\".join(parts[:i])
            self._keys.setdefault(sub.lower(), (sub, {}))
        return self._keys[key.lower()][1]

    def set(self, path: str, name: str, value: Any) -> None:
        self.create(path)[name] = value

    def get(self, path: str, name: str) -> Any:
        entry = self._keys.get(normalize_key(path).lower())
        if entry is None:
            return None
        return next((v for n, v in entry[1].items() if n.lower() == name.lower()), None)

    def exists(self, path: str) -> bool:
        return normalize_key(path).lower() in self._keys

    def subkeys(self, path: str) -> list[str]:
        prefix = normalize_key(path).lower() + "\\"
        return sorted(
            display.rsplit("\\", 1)[1]
            for key, (display, _) in self._keys.items()
            if key.startswith(prefix) and "\\" not in key[len(prefix) :]
        )

    def delete(self, path: str) -> None:
        key = normalize_key(path).lower()
        for name in [k for k in self._keys if k == key or k.startswith(key + "\\")]:
            del self._keys[name]

    def to_json(self) -> dict[str, Any]:
        return {display: values for display, values in self._keys.values()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Registry:
        registry = cls()
        for display, values in data.items():
            registry.create(display).update(values)
        return registry


class FileSystem:
    """Files (text) and directories, by case-insensitive path, with each file's last write time
    (NTFS keeps it; a script reads it as ``LastWriteTimeUtc``)."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[str, str]] = {}
        self._dirs: dict[str, str] = {}
        self._written: dict[str, float] = {}
        #: per file (lower case): binary (content is bytes as latin-1), size (the file's length
        #: when it is not the content's), unreadable (the .NET exception reading it throws),
        #: link (a symbolic link or junction to this target)
        self._attrs: dict[str, dict[str, Any]] = {}

    def attrs(self, path: str) -> dict[str, Any]:
        return dict(self._attrs.get(normalize_path(path).lower(), {}))

    def set_attrs(self, path: str, attrs: dict[str, Any]) -> None:
        self._attrs[normalize_path(path).lower()] = dict(attrs)

    def data(self, path: str) -> bytes | None:
        """A file's bytes (text is stored as UTF-8, binary content one character per byte)."""
        content = self.read(path)
        if content is None:
            return None
        return content.encode("latin-1" if self.attrs(path).get("binary") else "utf-8")

    def _mkdirs(self, path: str) -> None:
        parts = normalize_path(path).split("\\")
        for i in range(1, len(parts) + 1):
            sub = "\\".join(parts[:i])
            self._dirs.setdefault(sub.lower(), sub)

    def mkdir(self, path: str) -> None:
        self._mkdirs(path)

    def write(self, path: str, content: str, *, written: float | None = None) -> None:
        display = normalize_path(path)
        self._mkdirs(display.rsplit("\\", 1)[0])
        self._files[display.lower()] = (display, content)
        self._written[display.lower()] = time.time() if written is None else written

    def written(self, path: str) -> float | None:
        """The file's last write time (seconds since the epoch, UTC), or None if it is absent."""
        return self._written.get(normalize_path(path).lower()) if self.is_file(path) else None

    def append(self, path: str, text: str) -> None:
        self.write(path, (self.read(path) or "") + text)

    def read(self, path: str) -> str | None:
        entry = self._files.get(normalize_path(path).lower())
        return entry[1] if entry else None

    def is_file(self, path: str) -> bool:
        return normalize_path(path).lower() in self._files

    def is_dir(self, path: str) -> bool:
        return normalize_path(path).lower() in self._dirs

    def exists(self, path: str) -> bool:
        return self.is_file(path) or self.is_dir(path)

    def files_under(self, path: str) -> list[str]:
        prefix = normalize_path(path).lower() + "\\"
        return sorted(display for key, (display, _) in self._files.items() if key.startswith(prefix))

    def remove(self, path: str) -> int:
        """Remove a file or a directory tree; returns how many files went."""
        key = normalize_path(path).lower()
        gone = [k for k in self._files if k == key or k.startswith(key + "\\")]
        for name in gone:
            del self._files[name]
            self._written.pop(name, None)
        for name in [k for k in self._dirs if k == key or k.startswith(key + "\\")]:
            del self._dirs[name]
        for name in [k for k in self._attrs if k == key or k.startswith(key + "\\")]:
            del self._attrs[name]
        return len(gone)

    def to_json(self) -> dict[str, Any]:
        return {
            "files": {display: content for display, content in self._files.values()},
            "written": {display: self._written[key] for key, (display, _) in self._files.items()},
            "dirs": sorted(self._dirs.values()),
            "attrs": dict(self._attrs),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileSystem:
        fs = cls()
        for directory in data.get("dirs", []):
            fs.mkdir(directory)
        written = data.get("written", {})
        for path, content in data.get("files", {}).items():
            fs.write(path, content, written=written.get(path))
        fs._attrs = {str(k): dict(v) for k, v in data.get("attrs", {}).items()}
        return fs


class Power(Protocol):
    """How software inside the machine turns it off or restarts it (the guest implements it)."""

    def shutdown_from_inside(self) -> None: ...

    def reboot_from_inside(self) -> None: ...


class Process(Protocol):
    """A program running in the machine in the background (sysprep started with Start-Process)."""

    name: str
    pid: int
    #: the WinRS shell whose job object holds the process (None: outside any shell)
    shell_id: str | None

    @property
    def running(self) -> bool: ...

    def kill(self) -> None: ...


@dataclass
class ScriptRun:
    """One script the model answered: who ran it, through what, and how it ended."""

    user: str
    via: str  # "winrm" | "run-command"
    handler: str
    script: str
    exit_code: int
    at: float = field(default_factory=time.time)


@dataclass
class MachineState:
    """Everything typed about the machine that is not a registry value or a file."""

    hostname: str
    admin_user: str
    version: str
    features: list[str]
    bitlocker: list[dict[str, Any]]
    domain_joined: bool
    domain_name: str
    appx: list[dict[str, Any]]
    generalize_count: int
    services: dict[str, dict[str, str]]
    users: list[str]
    hyperv_switches: int
    sysprep_outcome: str
    sysprep_seconds: float
    cmdlet_errors: dict[str, str]
    #: [dll, detail] of external sysprep providers in a failed state
    failed_providers: list[list[str]]
    #: volumes: mount (C:, D:, C:\\data), disk (os | resource | data), label
    volumes: list[dict[str, str]] = field(default_factory=list)
    #: how long a scan of the disks takes (scenario guest.scan.seconds)
    scan_seconds: float = 0.0


class WindowsMachine:
    """The machine's state; every access from handlers holds ``lock``."""

    def __init__(self, state: MachineState, registry: Registry, files: FileSystem) -> None:
        self.state = state
        self.registry = registry
        self.files = files
        self.history: list[ScriptRun] = []
        self.lock = threading.RLock()
        self.state_path: Path | None = None
        #: set by the guest; None while nothing can power the machine off from inside
        self.power: Power | None = None
        #: what the Azure platform shows this machine (IMDS, SMBIOS); set by the guest, never
        #: saved: it belongs to the VM, not to the disk
        self.platform: Platform | None = None
        self.processes: list[Process] = []
        self._next_pid = 4000

    def new_pid(self) -> int:
        with self.lock:
            self._next_pid += 4
            return self._next_pid

    def running_processes(self, name: str) -> list[Process]:
        with self.lock:
            return [p for p in self.processes if p.name.lower() == name.lower() and p.running]

    def close_shell(self, shell_id: str) -> None:
        """WinRS closes a shell's job object: the processes started in that shell die."""
        with self.lock:
            doomed = [p for p in self.processes if p.shell_id == shell_id]
            self.processes = [p for p in self.processes if p.shell_id != shell_id]
        for process in doomed:
            process.kill()

    def power_off(self) -> None:
        """Everything running inside dies with the power."""
        with self.lock:
            processes, self.processes = self.processes, []
        for process in processes:
            process.kill()

    def boot(self) -> None:
        """Start-up work Windows does itself: a resealed image runs OOBE and specializes again."""
        with self.lock:
            if self.image_state.endswith("_RESEAL_TO_OOBE"):
                self.set_image_state(catalog.IMAGE_STATE_COMPLETE)
                self.files.write(catalog.PANTHER + "\\unattend.xml", catalog.AZURE_CACHED_UNATTEND)
                self.files.append(catalog.PANTHER + "\\setupact.log", "Info [oobe] specialize\r\n")
                self.save()

    @property
    def hostname(self) -> str:
        return self.state.hostname

    @property
    def admin_account(self) -> str:
        return f"{self.state.hostname}\\{self.state.admin_user}"

    def admin_sid(self) -> str:
        # Azure renames the built-in Administrator (RID 500); the machine part is per install
        digest = hashlib.sha256(self.state.hostname.encode()).digest()
        parts = [int.from_bytes(digest[i : i + 4], "little") for i in (0, 4, 8)]
        return "S-1-5-21-{}-{}-{}-500".format(*parts)

    @property
    def image_state(self) -> str:
        value = self.registry.get(catalog.SETUP_STATE_KEY, "ImageState")
        return str(value) if value is not None else catalog.IMAGE_STATE_COMPLETE

    def set_image_state(self, value: str) -> None:
        self.registry.set(catalog.SETUP_STATE_KEY, "ImageState", value)

    def is_upgraded(self) -> bool:
        return self.registry.exists(catalog.UPGRADE_KEY) or any(
            name.lower().startswith("source os") for name in self.registry.subkeys("HKLM\\SYSTEM\\Setup")
        )

    def record(self, run: ScriptRun) -> None:
        with self.lock:
            self.history.append(run)
            del self.history[:-HISTORY_LIMIT]
            self.save()

    def save(self) -> None:
        """Write the state atomically (a reader never sees half a file)."""
        if self.state_path is None:
            return
        with self.lock:
            data = {
                "state": asdict(self.state),
                "registry": self.registry.to_json(),
                "files": self.files.to_json(),
                "history": [asdict(run) for run in self.history],
            }
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.state_path)

    @classmethod
    def load(cls, path: Path) -> WindowsMachine:
        data = json.loads(path.read_text(encoding="utf-8"))
        machine = cls(
            MachineState(**data["state"]),
            Registry.from_json(data["registry"]),
            FileSystem.from_json(data["files"]),
        )
        machine.history = [ScriptRun(**run) for run in data.get("history", [])]
        machine.state_path = path
        return machine

    @classmethod
    def open(cls, spec: WindowsGuestSpec, admin_user: str, state_dir: Path) -> WindowsMachine:
        """The machine saved in ``state_dir``, or a fresh one built from the scenario."""
        path = state_dir / STATE_FILE
        if path.exists():
            return cls.load(path)
        machine = build_machine(spec, admin_user)
        machine.state_path = path
        machine.save()
        return machine


def build_machine(spec: WindowsGuestSpec, admin_user: str) -> WindowsMachine:
    """A fresh machine as Azure provisions it, then staged as the scenario says."""
    os_version = catalog.OS_VERSIONS[spec.version]
    state = MachineState(
        hostname=spec.hostname,
        admin_user=admin_user,
        version=spec.version,
        features=list(spec.features),
        bitlocker=[asdict(v) for v in spec.bitlocker],
        domain_joined=spec.domain_joined,
        domain_name=spec.domain_name,
        appx=[asdict(a) for a in spec.appx],
        generalize_count=spec.generalize_count,
        services={name: asdict(s) for name, s in spec.services.items()},
        users=list(spec.users),
        hyperv_switches=spec.hyperv_switches,
        sysprep_outcome=spec.sysprep_outcome,
        sysprep_seconds=spec.sysprep_seconds,
        scan_seconds=spec.scan_seconds,
        cmdlet_errors=dict(spec.cmdlet_errors),
        failed_providers=[[dll, detail] for dll, detail in spec.sysprep_providers_failed],
        volumes=[asdict(v) for v in spec.volumes],
    )
    registry = Registry()
    registry.create(catalog.CURRENT_VERSION_KEY).update(
        {
            "ProductName": os_version.product.removeprefix("Microsoft "),
            "CurrentBuild": spec.version.rsplit(".", 1)[1],
            "InstallationType": os_version.installation_type,
        }
    )
    registry.set(catalog.SETUP_STATE_KEY, "ImageState", catalog.IMAGE_STATE_COMPLETE)
    registry.create("HKLM\\SYSTEM\\Setup")
    if spec.upgraded:
        registry.create(catalog.UPGRADE_KEY)
        registry.set(catalog.SOURCE_OS_KEY, "ProductName", "Windows Server 2019 Datacenter")
    for reason in spec.pending_reboot:
        if reason == "PendingFileRenameOperations":
            registry.set(
                catalog.SESSION_MANAGER_KEY,
                "PendingFileRenameOperations",
                ["\\??\\C:\\Windows\\Temp\\azsim-update.tmp", ""],
            )
        else:
            registry.create(catalog.REBOOT_EVIDENCE[reason])
    if spec.wds_initialized:
        registry.set(catalog.WDS_TFTP_KEY, "RootFolder", "C:\\RemoteInstall")
    for key, values in spec.registry.items():
        registry.create(key).update(values)

    files = FileSystem()
    files.write(catalog.SYSPREP_EXE, "MZ")
    files.mkdir(catalog.SYSPREP_PANTHER)
    if spec.panther:
        files.write(catalog.PANTHER + "\\setupact.log", "Info [windeploy.exe] Setup completed\r\n")
        files.write(catalog.PANTHER + "\\setuperr.log", "")
        files.write(catalog.PANTHER + "\\unattend.xml", catalog.AZURE_CACHED_UNATTEND)
        files.write(catalog.PANTHER + "\\UnattendGC\\setupact.log", "Info [oobe] done\r\n")
    for dll, detail in spec.sysprep_providers_failed:
        files.append(catalog.SETUPERR_LOG, provider_failure_line(dll, detail))
    if "Web-Server" in spec.features:
        password = (
            'password="[enc:IISWASOnlyCngProvider:8QxAZsimEncryptedValue==:enc]"'
            if spec.iis_encrypted_credentials
            else 'password=""'
        )
        files.write(
            catalog.APPLICATION_HOST_CONFIG,
            f'<configuration><applicationPools><add name="DefaultAppPool">'
            f'<processModel userName="" {password} /></add></applicationPools></configuration>\r\n',
        )
    for volume in spec.volumes:
        if volume.disk == "resource" and len(volume.mount) == 2:
            # the Azure agent's note on the temporary disk (a file anyone can also write elsewhere)
            files.write(volume.mount + "\\" + catalog.DATALOSS_WARNING, catalog.DATALOSS_WARNING_TEXT)
    for path, content in spec.files:
        files.write(path, content)
        if path.lower() in spec.file_attrs:
            files.set_attrs(path, spec.file_attrs[path.lower()])
    return WindowsMachine(state, registry, files)


def log_time() -> str:
    """Sysprep's log timestamp format."""
    return time.strftime("%Y-%m-%d %H:%M:%S")


def provider_failure_line(dll: str, detail: str) -> str:
    where = f"C:\\Windows\\System32\\{dll}"
    return (
        f"{log_time()}, Error      [0x0f0082] SYSPRP ActionPlatform::LaunchModule: "
        f"Failure occurred while executing '{detail}' from {where}; dwRet = 0x80004005\r\n"
    )

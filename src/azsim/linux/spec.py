"""A scenario's Linux ``guest:`` mapping, validated (schema: scenarios/README.md, "Linux guest").

Unknown keys are errors naming their path, so a typo never silently changes what a test stages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from azsim.staging import COMPRESSIONS, compressed

_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})$")
_CONF_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9.]*$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_MODE = re.compile(r"^0?[0-7]{3,4}$")
#: paths the sandbox's sh scripts take as words: no spaces, quotes or shell syntax
_PLAIN_PATH = re.compile(r"^(/[A-Za-z0-9._+@-]+)+$")
ENCODINGS = ("utf-8", "utf-16le", "utf-16be", "utf-32")
MOUNT_TYPES = ("tmpfs", "resource-disk", "data-disk")


class GuestSpecError(ValueError):
    """The ``guest:`` mapping is invalid; the message names the key."""


@dataclass(frozen=True)
class PlantedFile:
    path: str
    content: bytes
    mode: int = 0o644
    #: "user" or "user:group"; empty: root
    owner: str = ""
    #: a symbolic link to this target instead of a file (content unused)
    symlink: str = ""
    #: the file's size: content first, then a hole up to it (a huge file that takes no space)
    size: int | None = None


@dataclass(frozen=True)
class GuestMount:
    """A file system mounted in the guest at every boot (inside its own mount namespace)."""

    path: str
    #: tmpfs: over the directory after provisioning (its planted files stay on the disk beneath);
    #: resource-disk: an ext4 disk presented as Azure's resource disk (/dev/sdb1 and WALinuxAgent's
    #: /dev/disk/azure/resource-part1 link); data-disk: an ext4 data disk (/dev/sdcN)
    type: str
    files: tuple[PlantedFile, ...] = ()
    #: data/resource disks: files (relative to the disk) whose inode is damaged: reading or even
    #: stat() fails with an I/O error, as on a disk with a bad sector
    unreadable: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExtraUser:
    name: str
    shell: str = "/bin/bash"
    #: a crypt(3) hash; empty: the account is locked
    password_hash: str = field(default="", repr=False)


#: ``ovf_env.state``: the file Azure's agent keeps at /var/lib/waagent/ovf-env.xml, which
#: ``waagent -deprovision+user`` reads to learn which user to delete
OVF_ENV_STATES = ("provisioned", "missing", "unparseable", "no-platform-settings")


@dataclass(frozen=True)
class OvfEnvSpec:
    state: str = "provisioned"
    #: the UserName it names ("": the VM's admin user)
    user: str = ""


@dataclass(frozen=True)
class LinuxGuestSpec:
    hostname: str
    files: tuple[PlantedFile, ...] = ()
    users: tuple[ExtraUser, ...] = ()
    waagent_conf: tuple[tuple[str, str], ...] = ()
    swap_on_os_disk: bool = False
    client_alive_interval: int | None = None
    remove_packages: tuple[str, ...] = ()
    ovf_env: OvfEnvSpec = OvfEnvSpec()
    mounts: tuple[GuestMount, ...] = ()


_KEYS = {
    "hostname",
    "files",
    "users",
    "waagent_conf",
    "swap_on_os_disk",
    "client_alive_interval",
    "remove_packages",
    "ovf_env",
    "mounts",
}
_OVF_KEYS = {"state", "user"}
_FILE_KEYS = {"path", "content", "mode", "owner", "symlink", "compress", "encoding", "size"}
_MOUNT_KEYS = {"path", "type", "files", "unreadable"}
_USER_KEYS = {"name", "shell", "password_hash"}


def parse_spec(raw: dict[str, Any] | None, *, vm_name: str, where: str = "guest") -> LinuxGuestSpec:
    """Validate ``raw``; ``where`` prefixes key paths in error messages."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise GuestSpecError(f"{where}: expected a mapping")
    _no_unknown(raw, _KEYS, where)
    hostname = str(raw.get("hostname") or vm_name)
    if not _HOSTNAME.match(hostname):
        raise GuestSpecError(f"{where}.hostname: {hostname!r} is not a valid host name")
    interval = raw.get("client_alive_interval")
    if interval is not None and (isinstance(interval, bool) or not isinstance(interval, int) or interval < 0):
        raise GuestSpecError(f"{where}.client_alive_interval: expected a whole number of seconds")
    swap = raw.get("swap_on_os_disk", False)
    if not isinstance(swap, bool):
        raise GuestSpecError(f"{where}.swap_on_os_disk: expected true or false")
    return LinuxGuestSpec(
        hostname=hostname,
        files=tuple(_file(f, f"{where}.files[{i}]") for i, f in enumerate(_list(raw, "files", where))),
        users=tuple(_user(u, f"{where}.users[{i}]") for i, u in enumerate(_list(raw, "users", where))),
        waagent_conf=_conf(raw.get("waagent_conf") or {}, f"{where}.waagent_conf"),
        swap_on_os_disk=swap,
        client_alive_interval=interval,
        remove_packages=tuple(
            _package(p, f"{where}.remove_packages") for p in _list(raw, "remove_packages", where)
        ),
        ovf_env=_ovf_env(raw.get("ovf_env") or {}, f"{where}.ovf_env"),
        mounts=tuple(_mount(m, f"{where}.mounts[{i}]") for i, m in enumerate(_list(raw, "mounts", where))),
    )


def _ovf_env(raw: Any, where: str) -> OvfEnvSpec:
    if not isinstance(raw, dict):
        raise GuestSpecError(f"{where}: expected a mapping with state and/or user")
    _no_unknown(raw, _OVF_KEYS, where)
    state = str(raw.get("state", "provisioned"))
    if state not in OVF_ENV_STATES:
        raise GuestSpecError(f"{where}.state: expected one of {', '.join(OVF_ENV_STATES)}, got {state!r}")
    user = str(raw.get("user") or "")
    if user and not _USER_NAME.match(user):
        raise GuestSpecError(f"{where}.user: {user!r} is not a user name")
    return OvfEnvSpec(state=state, user=user)


def _no_unknown(raw: dict[str, Any], known: set[str], where: str) -> None:
    for key in raw:
        if key not in known:
            raise GuestSpecError(f"{where}.{key}: unknown key (expected one of {', '.join(sorted(known))})")


def _list(raw: dict[str, Any], key: str, where: str) -> list[Any]:
    value = raw.get(key) or []
    if not isinstance(value, list):
        raise GuestSpecError(f"{where}.{key}: expected a list")
    return value


def _file(raw: Any, where: str) -> PlantedFile:
    if not isinstance(raw, dict):
        raise GuestSpecError(f"{where}: expected a mapping with path and content")
    _no_unknown(raw, _FILE_KEYS, where)
    path = raw.get("path")
    if not isinstance(path, str) or not path.startswith("/") or "\n" in path or "/../" in f"{path}/":
        raise GuestSpecError(f"{where}.path: expected an absolute path without '..'")
    content = raw.get("content", "")
    if not isinstance(content, str | bytes):
        raise GuestSpecError(f"{where}.content: expected text")
    mode = str(raw.get("mode", "0644"))
    if not _MODE.match(mode):
        raise GuestSpecError(f'{where}.mode: {mode!r} is not an octal mode like "0600"')
    owner = str(raw.get("owner", ""))
    if owner and not all(_USER_NAME.match(part) for part in owner.split(":", 1)):
        raise GuestSpecError(f"{where}.owner: {owner!r} is not user or user:group")
    symlink = raw.get("symlink", "")
    if not isinstance(symlink, str) or "\n" in symlink:
        raise GuestSpecError(f"{where}.symlink: expected a target path")
    size = raw.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise GuestSpecError(f"{where}.size: expected a number of bytes")
    encoding = str(raw.get("encoding", "utf-8"))
    if encoding not in ENCODINGS:
        raise GuestSpecError(f"{where}.encoding: one of {', '.join(ENCODINGS)}")
    if isinstance(content, bytes) or encoding == "utf-8":
        data = content if isinstance(content, bytes) else content.encode()
    else:  # with a byte order mark, as Windows tools write it
        data = ("\ufeff" + content).encode(encoding if encoding != "utf-32" else "utf-32-le")
    compress = raw.get("compress")
    if compress is not None:
        if compress not in COMPRESSIONS:
            raise GuestSpecError(f"{where}.compress: one of {', '.join(COMPRESSIONS)}")
        data = compressed(data, str(compress), path.rsplit("/", 1)[-1])
    return PlantedFile(path=path, content=data, mode=int(mode, 8), owner=owner, symlink=symlink, size=size)


def _mount(raw: Any, where: str) -> GuestMount:
    if not isinstance(raw, dict):
        raise GuestSpecError(f"{where}: expected a mapping with path and type")
    _no_unknown(raw, _MOUNT_KEYS, where)
    path = raw.get("path")
    if not isinstance(path, str) or not _PLAIN_PATH.match(path) or "/../" in f"{path}/":
        raise GuestSpecError(f"{where}.path: expected an absolute path of letters, digits and ._+@-")
    kind = raw.get("type")
    if kind not in MOUNT_TYPES:
        raise GuestSpecError(f"{where}.type: one of {', '.join(MOUNT_TYPES)}")
    files = tuple(_file(f, f"{where}.files[{i}]") for i, f in enumerate(_list(raw, "files", where)))
    unreadable = tuple(str(u) for u in _list(raw, "unreadable", where))
    if kind == "tmpfs" and (files or unreadable):
        raise GuestSpecError(f"{where}: a tmpfs starts empty (plant files under its path instead)")
    for name in unreadable:
        if not _PLAIN_PATH.match(name) or name not in {f.path for f in files}:
            raise GuestSpecError(f"{where}.unreadable: {name!r} is not one of its files")
    return GuestMount(path=path, type=str(kind), files=files, unreadable=unreadable)


def _user(raw: Any, where: str) -> ExtraUser:
    if not isinstance(raw, dict):
        raise GuestSpecError(f"{where}: expected a mapping with name")
    _no_unknown(raw, _USER_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not _USER_NAME.match(name):
        raise GuestSpecError(f"{where}.name: expected a user name like builder")
    shell = str(raw.get("shell", "/bin/bash"))
    if not shell.startswith("/") or any(c.isspace() or c == ":" for c in shell):
        raise GuestSpecError(f"{where}.shell: expected an absolute path")
    password_hash = str(raw.get("password_hash") or "")
    if any(c.isspace() or c == ":" for c in password_hash):
        # never echo the value: it may be a real hash someone pasted
        raise GuestSpecError(f"{where}.password_hash: not a crypt(3) hash")
    return ExtraUser(name=name, shell=shell, password_hash=password_hash)


def _conf(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise GuestSpecError(f"{where}: expected a mapping of Key: value")
    items = []
    for key, value in raw.items():
        if not isinstance(key, str) or not _CONF_KEY.match(key):
            raise GuestSpecError(f"{where}.{key}: not a waagent.conf key")
        text = "y" if value is True else "n" if value is False else str(value)
        if "\n" in text:
            raise GuestSpecError(f"{where}.{key}: value must be one line")
        items.append((key, text))
    return tuple(items)


def _package(raw: Any, where: str) -> str:
    if not isinstance(raw, str) or not _PACKAGE.match(raw):
        raise GuestSpecError(f"{where}: {raw!r} is not a Debian package name")
    return raw

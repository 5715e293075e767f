"""The seam between azsim's ARM state and the guests it runs.

ARM owns power state; a guest owns what runs inside the VM. ARM calls a guest's ``start`` and
``stop`` when a VM is started, powered off or deallocated; a guest that shuts itself down (sysprep
``/shutdown``, ``shutdown -h`` inside Linux) calls ``GuestContext.on_guest_shutdown`` so that ARM
shows the VM *stopped* (not deallocated), as Azure does.

Implementations: ``azsim.linuxguest.LinuxGuest`` (real sshd and waagent in a sandbox) and
``azsim.windows.guest.WindowsGuest`` (real WS-Man endpoints over a Windows machine model).

A guest's *content* (what is on its OS disk) belongs to the managed disk, not to the VM: a
snapshot copies its source disk's content, a disk made from a snapshot copies the snapshot's, and
a VM boots from its OS disk's content (``GuestContext.disk_dir``). So a copy of a VM shows the
source's files as they were at snapshot time, and whatever happens to the copy never reaches the
source. Content is only ``CONTENT_PATHS`` inside a disk's directory; everything else a guest
keeps (console log, WinRM credential store, overlay work and mount directories) is runtime state
of one boot and stays behind. Where each disk keeps its content: ``Disk.content_home``, relative
to azsim's state directory (``guest_home`` for a scenario VM's OS disk, ``disk_home`` otherwise).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

#: a disk's guest content, relative to its directory: Linux's provisioning marker (the image
#: recipe its upper layer was written on) and overlay upper layer; Windows' machine model
CONTENT_PATHS = ("provisioned", "disk/upper", "windows-model.json")


def guest_home(resource_group: str, vm_name: str) -> PurePosixPath:
    """A VM's guest directory, relative to azsim's state directory; a scenario VM's OS disk
    keeps its content there too."""
    return PurePosixPath("guests", resource_group, vm_name)


def disk_home(resource_group: str, kind: str, name: str) -> PurePosixPath:
    """Where a disk (``kind`` "disks") or snapshot ("snapshots") made through ARM keeps its
    content, relative to azsim's state directory."""
    return PurePosixPath("disks", resource_group.lower(), kind, name.lower())


#: how a scenario may stage what a guest learns about its VM (scenarios/README.md, "identity")
IMDS_MODES = ("reachable", "unreachable")
SMBIOS_MODES = ("as-is", "swapped", "unreadable")


@dataclass(frozen=True)
class Platform:
    """What the Azure platform shows a VM's guest about the VM, whatever is on its disk.

    * IMDS: http://169.254.169.254/metadata/instance answers a guest with its own VM's
      ``compute`` (``vmId``, ``name``, ``resourceId``, ...), every value a string
      (learn.microsoft.com/azure/virtual-machines/instance-metadata-service).
    * SMBIOS: the system UUID is the VM's unique ID, the ``vmId`` ("Accessing and Using Azure VM
      Unique ID", Microsoft Azure blog 2014): as-is on SMBIOS >= 2.6, the first three fields
      byte-swapped on older SMBIOS (the IMDS page's vmId row). Windows reports a UUID of all
      zeros when none is available (learn.microsoft.com, Win32_ComputerSystemProduct).

    The staging fields model a guest that cannot reach IMDS (a route or firewall inside it), an
    SMBIOS UUID it cannot read, or a guest that is another VM (it is shown ``shown_vm_id``)."""

    vm_id: str
    name: str
    resource_id: str
    resource_group: str
    subscription_id: str
    location: str = "westeurope"
    vm_size: str = "Standard_D2s_v5"
    os_type: str = "Linux"
    #: the vmId the guest is shown instead of ``vm_id`` ("": its own)
    reported_vm_id: str = ""
    imds: str = "reachable"
    smbios: str = "as-is"

    @classmethod
    def for_vm(cls, resource_group: str, name: str, os_type: str = "Linux") -> Platform:
        """A platform for a guest built without ARM (tests): a fresh vmId."""
        subscription = "00000000-0000-0000-0000-000000000001"
        resource_id = (
            f"/subscriptions/{subscription}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{name}"
        )
        return cls(str(uuid.uuid4()), name, resource_id, resource_group, subscription, os_type=os_type)

    @property
    def shown_vm_id(self) -> str:
        return self.reported_vm_id or self.vm_id

    def compute(self) -> dict[str, str]:
        """IMDS ``/metadata/instance/compute`` (a subset: every value a string, as IMDS sends)."""
        return {
            "azEnvironment": "AzurePublicCloud",
            "location": self.location,
            "name": self.name,
            "osType": self.os_type,
            "provider": "Microsoft.Compute",
            "resourceGroupName": self.resource_group,
            "resourceId": self.resource_id,
            "subscriptionId": self.subscription_id,
            "tags": "",
            "vmId": self.shown_vm_id,
            "vmSize": self.vm_size,
        }

    def smbios_uuid(self) -> str | None:
        """The SMBIOS system UUID as the guest reads it (None: it cannot read one)."""
        if self.smbios == "unreadable":
            return None
        shown = uuid.UUID(self.shown_vm_id)
        if self.smbios == "swapped":
            shown = uuid.UUID(bytes_le=shown.bytes)
        return str(shown).upper()


@dataclass
class GuestContext:
    """Everything a guest needs from azsim, handed over at creation."""

    #: resource group and VM name
    resource_group: str
    vm_name: str
    #: the VM's osProfile.adminUsername
    admin_user: str
    #: a directory owned by this guest: runtime state (console log, WinRM credential store)
    #: and, unless ``disk_dir`` is given, the OS disk's content too
    state_dir: Path
    #: the scenario's `guest:` mapping, unparsed; each guest validates its own keys
    spec: dict[str, Any]
    #: azsim's CA-signed server certificate and key (PEM paths) for TLS endpoints
    tls_cert: Path
    tls_key: Path
    #: OpenSSH public key line authorised for the admin user (Linux)
    ssh_public_key: str = ""
    #: the admin password (Windows); generated per state dir, never in a scenario
    admin_password: str = field(default="", repr=False)
    #: where the cached Debian root file system lives (Linux)
    cache_dir: Path = field(default_factory=lambda: Path("/var/cache/azsim"))
    #: called by the guest when it powers itself off (from inside)
    on_guest_shutdown: Callable[[], None] = lambda: None
    #: the OS disk's content directory (``CONTENT_PATHS``); None: ``state_dir``
    disk_dir: Path | None = None
    #: the faults of the network path to this guest (``azsim.guestnet.GuestNetwork``); None: none
    network: Any = None
    #: what the platform shows the guest about its VM (IMDS, SMBIOS); None: a fresh one
    platform: Platform | None = None

    @property
    def vm_platform(self) -> Platform:
        """``platform``, or one made up once for a guest built without ARM (tests)."""
        if self.platform is None:
            self.platform = Platform.for_vm(self.resource_group, self.vm_name)
        return self.platform

    @property
    def content_dir(self) -> Path:
        """Where this guest's OS disk content lives (the guest boots from it)."""
        return self.disk_dir if self.disk_dir is not None else self.state_dir


class GuestController(Protocol):
    """A VM's guest as ARM sees it."""

    def start(self) -> None:
        """Boot the guest; return once its endpoint answers. Idempotent."""

    def stop(self) -> None:
        """Power the guest off; return once its endpoint is gone. Idempotent."""

    @property
    def running(self) -> bool:
        """True while the guest is up."""

    def endpoints(self) -> dict[str, str]:
        """Where the guest listens, e.g. ``{"ssh": "127.0.0.1:40123"}`` or
        ``{"winrm_https": "127.0.0.1:40124", "winrm_http": "127.0.0.1:40125"}``."""

    def run_command(self, script: str, timeout: float) -> tuple[int, str, str]:
        """Azure Run Command: run ``script`` as root (Linux ``sh``) or SYSTEM (Windows
        PowerShell) through the agent, returning (exit code, stdout, stderr)."""

    def summary(self) -> dict[str, Any]:
        """A JSON-able summary for ``azsim status``."""

    def close(self) -> None:
        """Stop and release everything (processes, ports, mounts). Idempotent."""

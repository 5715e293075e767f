"""A Linux guest's disks besides the OS disk: the Azure resource disk and data disks.

Each is an ext4 image in the VM's state directory, built once from the scenario (``mke2fs -d``)
and attached at every boot by the sandbox as a loop device mounted inside the guest's own mount
namespace (never the host's), with a device node in the guest's ``/dev``. The resource disk
also gets the link WALinuxAgent's udev rules make for it (``/dev/disk/azure/resource-part1``,
``66-azure-storage.rules``): what the guest sees of Azure's temporary disk, and all a scan
inside has to prove it is that disk.

``unreadable`` files get a damaged inode (debugfs points their extent past the end of the
disk): ``stat`` and ``read`` fail with an I/O error, as on a disk with a bad sector.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from azsim.linux.spec import GuestMount

#: what each kind of disk is called inside the guest (the resource disk is sdb, as on Azure)
RESOURCE_DEVICE = "sdb1"
DATA_DEVICES = ("sdc1", "sdd1", "sde1", "sdf1")
MIN_SIZE = 8 * 1024 * 1024


class DiskImageError(RuntimeError):
    """A disk image could not be built; the message is one line."""


@dataclass(frozen=True)
class AttachedDisk:
    image: Path
    mountpoint: str
    device: str
    role: str  # "resource" | "data"

    def record(self) -> str:
        """One line for the sandbox's boot script: image, mount point, device name, role."""
        return f"{self.image} {self.mountpoint} {self.device} {self.role}"


def attached_disks(mounts: tuple[GuestMount, ...], directory: Path) -> list[AttachedDisk]:
    """The resource and data disks of ``mounts``, their images built under ``directory`` if
    they do not exist yet (a disk keeps its content across boots)."""
    found: list[AttachedDisk] = []
    data = iter(DATA_DEVICES)
    for mount in mounts:
        if mount.type == "tmpfs":
            continue
        role = "resource" if mount.type == "resource-disk" else "data"
        device = RESOURCE_DEVICE if role == "resource" else next(data, "")
        if not device:
            raise DiskImageError(f"at most {len(DATA_DEVICES)} data disks")
        image = directory / f"{device}.img"
        if not image.exists():
            _build(image, mount)
        found.append(AttachedDisk(image, mount.path, device, role))
    return found


def _build(image: Path, mount: GuestMount) -> None:
    image.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for tool in ("mke2fs", "debugfs"):
        if shutil.which(tool) is None:
            raise DiskImageError(f"{tool} is not installed (apt-get install e2fsprogs)")
    with tempfile.TemporaryDirectory(prefix=".stage-", dir=image.parent) as stage:
        size = MIN_SIZE
        for planted in mount.files:
            target = Path(stage) / planted.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if planted.symlink:
                target.symlink_to(planted.symlink)
                continue
            target.write_bytes(planted.content)
            target.chmod(planted.mode)
            size += len(planted.content) + 8192
        partial = image.with_suffix(".tmp")
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-E", "root_owner=0:0",
              "-d", stage, str(partial), str(size // 1024)])  # fmt: skip
    for name in mount.unreadable:
        # the inode's first extent now starts past the end of the disk: ext4 refuses the inode
        _run(["debugfs", "-w", "-R", f"sif {name} block[5] 0x7fffff", str(partial)])
    partial.rename(image)


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DiskImageError(f"{argv[0]} failed (exit {done.returncode}): {last}")

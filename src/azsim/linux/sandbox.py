"""One Linux VM's running OS: its own mount, pid, uts and network namespaces over an overlay of
the image.

``unshare`` starts a host ``sh`` (BOOT below) as PID 1 of new namespaces. It mounts the overlay
(lower: the cached image, read-only; upper/work: this VM's state dir) inside that mount
namespace only, gives it a minimal /dev, /proc, /run, /tmp and /sys, switches root with
``pivot_root`` and detaches the host's tree, then execs the guest's own ``sh`` as init (INIT
below). No host directory is ever bind-mounted, so nothing inside can reach the host's files.

The network namespace is the guest's own, with only its loopback: 127.0.0.1, where its sshd
listens on port 22, and 169.254.169.254, where azsim serves the VM's Instance Metadata Service
(``azsim.imds``) from a socket it makes inside the namespace. azsim relays a free port of the
host's 127.0.0.1 to that sshd (``azsim.linux.netns``). /sys holds the VM's SMBIOS system UUID at
``/sys/class/dmi/id/product_uuid`` (root-only, as on Linux), read-only.

Other disks of the VM (the resource disk, data disks: ``azsim.linux.disks``) are image files
attached as loop devices and mounted inside the same mount namespace; the guest gets a device node
for each and nothing else of the host's ``/dev``. The guest's root lacks CAP_SYS_ADMIN, so it
cannot bind-mount its own disk to look beneath ``/proc``, ``/dev``, ``/run``, ``/sys`` and
``/tmp``; a second read-only mount of the root (``/run/azsim/disk``) is there instead, as a disk
mounted twice would be.

Stopping signals PID 1 by its host pid (``unshare`` itself ignores SIGTERM while it waits);
when PID 1 exits the kernel kills everything else in the namespace and the mounts go with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from azsim.guestapi import Platform
from azsim.imds import IMDS_ADDRESS, ImdsServer
from azsim.linux.netns import Relay, socket_in

#: where the guest's sshd listens, in the guest's own network
GUEST_SSH_PORT = 22

#: Runs as the host's sh in the new namespaces: $1 lower $2 upper $3 work $4 merged $5 init
#: $6 the SMBIOS UUID ("" unreadable) $7 "1" when IMDS is reachable $8 the other disks, one
#: "IMAGE MOUNTPOINT DEVICE ROLE" line each (azsim.linux.disks).
BOOT = r"""
set -eu
lower=$1 upper=$2 work=$3 root=$4 init=$5 smbios=$6 imds=$7 disks=$8
shift 8
# the guest's own network: loopback, and IMDS's address on it when the VM can reach IMDS
ip link set lo up
if [ "$imds" = 1 ]; then ip addr add 169.254.169.254/32 dev lo; fi
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
mount -t tmpfs -o mode=755,nosuid,size=1m dev "$root/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    name=${node%%:*} numbers=${node#*:}
    mknod -m 666 "$root/dev/$name" c "${numbers%%:*}" "${numbers#*:}"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620,gid=5 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
mount -t tmpfs -o mode=755,nosuid,nodev,size=16m run "$root/run"
mount -t tmpfs -o mode=1777,nosuid,nodev,size=64m tmp "$root/tmp"
# SMBIOS as the kernel shows it: /sys/class/dmi/id -> ../../devices/virtual/dmi/id
mount -t tmpfs -o mode=755,nosuid,nodev,noexec,size=64k sys "$root/sys"
mkdir -p "$root/sys/devices/virtual/dmi/id" "$root/sys/class/dmi"
ln -s ../../devices/virtual/dmi/id "$root/sys/class/dmi/id"
if [ -n "$smbios" ]; then
    printf '%s\n' "$smbios" > "$root/sys/devices/virtual/dmi/id/product_uuid"
    chmod 400 "$root/sys/devices/virtual/dmi/id/product_uuid"
fi
mount -o remount,ro "$root/sys"
# The guest's root has no CAP_SYS_ADMIN here (a real VM's root has): it cannot bind-mount its
# own disk to read what /proc, /dev, /run, /sys and /tmp hide. A second read-only mount of the
# disk (not recursive: the mounts above are not in it) is the way in that it keeps.
mkdir -p "$root/run/azsim/disk"
mount --bind "$root" "$root/run/azsim/disk"
mount -o remount,bind,ro "$root/run/azsim/disk"
# the resource disk and data disks: loop devices (autoclear) mounted in this namespace only
printf '%s\n' "$disks" | while read -r image point device role; do
    [ -n "$image" ] || continue
    mkdir -p "$root$point"
    mount -o loop "$image" "$root$point"
    source=$(findmnt -n -o SOURCE --mountpoint "$root$point")
    mknod -m 660 "$root/dev/$device" b "$((0x$(stat -c %t "$source")))" "$((0x$(stat -c %T "$source")))"
    if [ "$role" = resource ]; then  # the link WALinuxAgent's udev rules make for Azure's temp disk
        mkdir -p "$root/dev/disk/azure"
        ln -s "../../$device" "$root/dev/disk/azure/resource-part1"
    fi
done
mkdir -p "$root/.azsim-oldroot"
cd "$root"
# init lives in the guest's fresh /run (a tmpfs), so ps shows a name, not a script
printf '%s' "$init" > run/azsim-init
pivot_root . .azsim-oldroot
exec /bin/sh /run/azsim-init "$@"
"""

#: Capabilities no guest process keeps (dropped from the bounding set once init is set up): with
#: them root inside could mount or mknod the host's disks, read host files by handle
#: (open_by_handle_at), load modules, reboot or re-time the host.
DROPPED_CAPS = ",".join(
    f"-{cap}"
    for cap in (
        "sys_admin", "mknod", "dac_read_search", "sys_module", "sys_rawio", "sys_boot",
        "sys_time", "sys_ptrace", "sys_pacct", "net_admin", "net_raw", "mac_admin",
        "mac_override", "syslog", "wake_alarm", "block_suspend", "linux_immutable", "bpf",
        "perfmon", "checkpoint_restore", "audit_read", "sys_tty_config",
    )
)  # fmt: skip

#: The guest's init, run by the guest's sh after pivot_root: $1 port, $2 "1" to provision first
#: (else "0"), $3 DROPPED_CAPS, $4 directories to mount a tmpfs over once provisioned.
#: Its first pass (full root) finishes the machine; it then re-runs itself with DROPPED_CAPS
#: gone ($2 "run") and serves sshd until it is told to power off.
INIT = r"""
set -u
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
port=$1 stage=$2 caps=${3:-} overmounts=${4:-}
if [ "$stage" != run ]; then
    umount -l /.azsim-oldroot && rmdir /.azsim-oldroot
    if [ "$stage" = 1 ]; then
        echo "azsim: provisioning"
        /bin/sh -s <&0 || { echo "azsim: provisioning failed" >&2; exit 1; }
    fi
    exec </dev/null
    hostname -F /etc/hostname 2>/dev/null || hostname localhost
    mkdir -p /run/sshd /run/azsim
    chmod 755 /run/sshd
    for point in $overmounts; do  # over what provisioning planted there: hidden, still on disk
        mkdir -p "$point"
        mount -t tmpfs -o mode=755,nosuid,nodev,size=16m azsim-overmount "$point"
    done
    # Like lxcfs, show this guest's own swap table: its fstab swap files, as if `swapon -a` ran.
    swaps=/run/azsim/swaps
    printf 'Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n' > "$swaps"
    priority=-2
    while read -r source mountpoint fstype rest; do
        case "$source" in '#'*|'') continue ;; esac
        [ "$fstype" = swap ] && [ -f "$source" ] || continue
        size=$(( $(stat -c %s "$source") / 1024 - 4 ))
        printf '%-40s%s\t\t%s\t\t0\t\t%s\n' "$source" file "$size" "$priority" >> "$swaps"
        priority=$((priority - 1))
    done < /etc/fstab
    mount --bind "$swaps" /proc/swaps
    # host-wide knobs stay out of reach (root's file permissions alone would allow writes)
    for knob in /proc/sys /proc/sysrq-trigger /proc/irq /proc/bus; do
        [ -e "$knob" ] && mount --bind "$knob" "$knob" && mount -o remount,bind,ro "$knob"
    done
    exec setpriv --bounding-set="$caps" -- /bin/sh /run/azsim-init "$port" run
fi
# a deprovisioned disk has no host keys; like the agent at next boot, make new ones
ssh-keygen -A >/dev/null
/usr/sbin/sshd -D -e -p "$port" -o ListenAddress=127.0.0.1 &
sshd=$!
power_off() {
    kill -TERM "$sshd" 2>/dev/null
    wait "$sshd"
    [ "$(cat /run/azsim/power 2>/dev/null)" = reboot ] && exit 3
    exit 0
}
trap power_off TERM INT
wait "$sshd"
echo "azsim: sshd exited" >&2
exit 1
"""

#: init's exit status when the guest asked for a reboot
REBOOT_STATUS = 3

_GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class SandboxError(RuntimeError):
    """The sandbox could not boot or be reached; the message is one line."""


def clean_env() -> dict[str, str]:
    """The environment for anything started in or for the guest: never the host's (secrets)."""
    return {"PATH": _GUEST_PATH, "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def ssh_banner(port: int, timeout: float = 1.0) -> bool:
    """True when something on 127.0.0.1:port speaks SSH."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


@dataclass(frozen=True)
class Disk:
    """A VM's disk: the shared read-only image plus this VM's overlay layers."""

    lower: Path
    state_dir: Path

    @property
    def upper(self) -> Path:
        return self.state_dir / "disk" / "upper"

    @property
    def work(self) -> Path:
        return self.state_dir / "disk" / "work"

    @property
    def mountpoint(self) -> Path:
        return self.state_dir / "disk" / "root"

    def create(self) -> None:
        for path in (self.lower, self.state_dir):
            # overlayfs separates its options with "," and its lower layers with ":"
            if any(c in str(path) for c in ",:\\") or any(c.isspace() for c in str(path)):
                raise SandboxError(f"{path}: overlay paths must not hold ',', ':', '\\' or spaces")
        # the upper layer holds the guest's /etc/shadow and keys: only root may look
        (self.state_dir / "disk").mkdir(mode=0o700, parents=True, exist_ok=True)
        for path in (self.upper, self.work, self.mountpoint):
            path.mkdir(exist_ok=True)


class Sandbox:
    """One boot of a VM: the ``unshare`` process, its PID 1, the relay from the host's ``port``
    to its sshd, and its IMDS."""

    def __init__(
        self,
        disk: Disk,
        port: int,
        console: Path,
        platform: Platform,
        *,
        attached: tuple[str, ...] = (),
        overmounts: tuple[str, ...] = (),
    ) -> None:
        self.disk = disk
        self.port = port
        self.console = console
        self.platform = platform
        #: other disks, as AttachedDisk.record() lines; directories a tmpfs is mounted over
        self.attached = attached
        self.overmounts = overmounts
        self.process: subprocess.Popen[bytes] | None = None
        self.init_pid = 0
        self._netns_fd = -1
        self._relay: Relay | None = None
        self._imds: ImdsServer | None = None
        self._release_lock = threading.Lock()

    def boot(self, provisioning: str | None, deadline: float) -> None:
        """Start the namespaces and return once sshd answers (or raise SandboxError)."""
        self.disk.create()
        argv = [
            "unshare",
            "--mount",
            "--pid",
            "--uts",
            "--net",
            "--fork",
            "--propagation",
            "private",
            "--kill-child",  # if unshare dies, PID 1 (and so the whole namespace) dies too
            "/bin/sh",
            "-c",
            BOOT,
            "azsim-boot",
            str(self.disk.lower),
            str(self.disk.upper),
            str(self.disk.work),
            str(self.disk.mountpoint),
            INIT,
            self.platform.smbios_uuid() or "",
            "1" if self.platform.imds == "reachable" else "0",
            "\n".join(self.attached),
            str(GUEST_SSH_PORT),
            "1" if provisioning is not None else "0",
            DROPPED_CAPS,
            " ".join(self.overmounts),
        ]
        with open(self.console, "ab") as console:
            self.process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                start_new_session=True,
            )
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.process.stdin.write((provisioning or "").encode())
        self.process.stdin.close()
        self._wait_ready(deadline)

    def _wait_ready(self, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._release()
                raise SandboxError(
                    f"the guest exited during boot (status {self.process.returncode}): {self.console_tail()}"
                )
            if not self.init_pid:
                self.init_pid = _only_child(self.process.pid)
            if self.init_pid and self._relay is None:
                self._join_network()
            if self._relay is not None and ssh_banner(self.port, timeout=0.5):
                self._serve_imds()
                return
            time.sleep(0.05)
        self.kill()
        raise SandboxError(f"sshd did not answer on 127.0.0.1:{self.port} in time: {self.console_tail()}")

    def _join_network(self) -> None:
        """Hold the guest's network namespace and relay the host's port to its sshd."""
        self._netns_fd = os.open(f"/proc/{self.init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        relay = Relay(self.port, self._netns_fd, ("127.0.0.1", GUEST_SSH_PORT), self.platform.name)
        relay.start()
        self._relay = relay

    def _serve_imds(self) -> None:
        """IMDS on 169.254.169.254:80 of the guest's loopback (BOOT put the address there)."""
        if self.platform.imds != "reachable":
            return  # no address, no server: the guest's requests fail as unreachable
        listener = socket_in(self._netns_fd)
        try:
            listener.bind((IMDS_ADDRESS, 80))
            listener.listen(16)
        except OSError as err:
            listener.close()
            self.kill()
            raise SandboxError(f"IMDS could not listen in the guest's network: {err}") from None
        self._imds = ImdsServer(listener, self.platform)
        self._imds.start()

    def _release(self) -> None:
        """Close what azsim holds in the guest's network (the namespace goes with the last).
        Whoever calls it (stop, or the thread that saw the guest exit) returns only once the
        relay's port is closed."""
        with self._release_lock:
            if self._relay is not None:
                self._relay.close()
                self._relay = None
            if self._imds is not None:
                self._imds.close()
                self._imds = None
            if self._netns_fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self._netns_fd)
                self._netns_fd = -1

    def console_tail(self) -> str:
        try:
            lines = self.console.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no console output"
        return lines[-1].strip() if lines else "no console output"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self) -> int:
        assert self.process is not None
        status = self.process.wait()
        self._release()
        return status

    def shutdown(self, timeout: float = 10.0) -> None:
        """Power off: SIGTERM to PID 1, SIGKILL if it lingers; return once all is gone."""
        if not self.alive:
            self._release()
            return
        if self.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGTERM)
        try:
            assert self.process is not None
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._release()

    def kill(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self._release()
            return
        for pid in (self.init_pid, self.process.pid):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self._release()

    def enter(self, script: str, args: tuple[str, ...] = (), *, with_pid_ns: bool = True) -> list[str]:
        """argv that runs ``sh -c script`` as root inside the running guest."""
        namespaces = ["--mount", "--uts", "--net"] + (["--pid"] if with_pid_ns else [])
        return [
            "nsenter",
            f"--target={self.init_pid}",
            *namespaces,
            "--root",
            "--wdns=/",
            # the guest's own setpriv: Run Command gets no more power than the guest's root
            "setpriv",
            f"--bounding-set={DROPPED_CAPS}",
            "--",
            "/bin/sh",
            "-c",
            script,
            "sh",
            *args,
        ]


def offline_argv(disk: Disk, script: str, args: tuple[str, ...] = ()) -> list[str]:
    """argv that runs the guest's ``sh -c script`` over a read-only view of a stopped VM's disk."""
    mount = (
        'mount -t overlay overlay -o "ro,lowerdir=$1:$2" "$3" && shift 3 && '
        'exec chroot "$root" /bin/sh -c "$@"'
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        f"root=$3; {mount}",
        "azsim-offline",
        str(disk.upper),
        str(disk.lower),
        str(disk.mountpoint),
        script,
        "sh",
        *args,
    ]


def _only_child(pid: int) -> int:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0
    return int(children[0]) if children else 0

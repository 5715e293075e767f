"""LinuxGuest: a Linux VM's guest as ARM sees it: real sshd and real waagent in a sandbox.

The disk is an overlay of the cached Debian image (``azsim.linux.rootfs``) with the OS disk's
upper layer under ``ctx.content_dir``; the first boot of a disk provisions it as Azure's agent
would (admin user, SSH key, sudoers, ovf-env.xml, host keys) and stages the scenario's leftovers.
Later boots, reboots and stop/start cycles keep the disk as it is, and so does a VM made from a
copy of a provisioned disk (Azure does not provision a specialized disk again). ``read_path``
and ``exists`` look at the disk from outside (not through sshd), running or stopped, so tests
can check what waagent did after it deleted the very user they logged in as.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from azsim.guestapi import GuestContext
from azsim.linux.disks import DiskImageError, attached_disks
from azsim.linux.provision import provisioning_script
from azsim.linux.rootfs import DEFAULT_CACHE_DIR, cache_dir_from_env, ensure_rootfs, recipe_key
from azsim.linux.sandbox import (
    REBOOT_STATUS,
    Disk,
    Sandbox,
    SandboxError,
    clean_env,
    free_port,
    offline_argv,
    ssh_banner,
)
from azsim.linux.spec import GuestSpecError, parse_spec

__all__ = ["GuestCommandTimeout", "GuestSpecError", "LinuxGuest", "SandboxError"]

log = logging.getLogger("azsim.linux")

BOOT_TIMEOUT = 60.0
_ADMIN_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


class GuestCommandTimeout(TimeoutError):
    """A Run Command script passed its deadline (it was killed)."""


class LinuxGuest:
    """Implements ``azsim.guestapi.GuestController`` for ``os: Linux`` VMs."""

    def __init__(self, ctx: GuestContext) -> None:
        self.ctx = ctx
        self.spec = parse_spec(ctx.spec, vm_name=ctx.vm_name)
        if not _ADMIN_USER.match(ctx.admin_user):
            raise GuestSpecError(f"admin_user: {ctx.admin_user!r} is not a Linux user name")
        self.cache_dir = cache_dir_from_env() if ctx.cache_dir == DEFAULT_CACHE_DIR else ctx.cache_dir
        self._lock = threading.RLock()
        self._sandbox: Sandbox | None = None
        self._stopping = False
        self._port = 0
        self.last_boot_seconds = 0.0
        #: boots since this object was made (a reboot from inside counts)
        self.boots = 0

    @property
    def name(self) -> str:
        return f"{self.ctx.resource_group}/{self.ctx.vm_name}"

    @property
    def running(self) -> bool:
        with self._lock:
            return self._sandbox is not None and self._sandbox.alive

    @property
    def port(self) -> int:
        return self._port

    @property
    def provisioned(self) -> bool:
        return self._marker.exists()

    @property
    def _marker(self) -> Path:
        """Written on the disk once provisioned: the image recipe its upper layer is over."""
        return self.ctx.content_dir / "provisioned"

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            self._boot()

    def _boot(self) -> None:
        disk = self._disk()  # may build the image first: not part of the boot's deadline
        started = time.monotonic()
        provisioning = None
        if self.provisioned:
            made_from = self._marker.read_text().strip()
            if made_from != recipe_key():
                # an upper layer only makes sense over the image it was written on
                raise SandboxError(
                    f"{self.name}: its disk was made from image {made_from}, azsim now builds "
                    f"{recipe_key()}; remove {self.ctx.content_dir} to start afresh"
                )
        else:
            provisioning = provisioning_script(
                self.spec,
                admin_user=self.ctx.admin_user,
                public_key=self.ctx.ssh_public_key.strip(),
                waagent_conf=_read_text(disk.lower / "etc/waagent.conf"),
            )
        if not self._port or not _port_free(self._port):
            self._port = free_port()
        try:
            attached = attached_disks(self.spec.mounts, self.ctx.state_dir / "disks")
        except DiskImageError as err:
            raise SandboxError(f"{self.name}: {err}") from None
        sandbox = Sandbox(
            disk,
            self._port,
            self.ctx.state_dir / "console.log",
            self.ctx.vm_platform,
            attached=tuple(a.record() for a in attached),
            overmounts=tuple(m.path for m in self.spec.mounts if m.type == "tmpfs"),
        )
        try:
            sandbox.boot(provisioning, deadline=started + BOOT_TIMEOUT)
        except SandboxError as err:
            raise SandboxError(f"{self.name}: {err}") from None
        if provisioning is not None:
            self._marker.write_text(f"{recipe_key()}\n")
        self._sandbox = sandbox
        self._stopping = False
        self.last_boot_seconds = time.monotonic() - started
        self.boots += 1
        log.info(
            "%s: booted in %.2f s, sshd on 127.0.0.1:%d",
            self.name,
            self.last_boot_seconds,
            self._port,
        )
        threading.Thread(target=self._watch, args=(sandbox,), daemon=True, name=f"azsim-{self.name}").start()

    def _disk(self) -> Disk:
        self.ctx.state_dir.mkdir(parents=True, exist_ok=True)
        self.ctx.content_dir.mkdir(parents=True, exist_ok=True)
        disk = Disk(ensure_rootfs(self.cache_dir), self.ctx.content_dir)
        disk.create()
        return disk

    def _watch(self, sandbox: Sandbox) -> None:
        """Notice the guest powering itself off (or rebooting) from inside."""
        status = sandbox.wait()
        with self._lock:
            if self._sandbox is not sandbox or self._stopping:
                return  # stop() did it
            self._sandbox = None
            if status == REBOOT_STATUS:
                log.info("%s: rebooting", self.name)
                try:
                    self._boot()
                    return
                except SandboxError as err:
                    log.warning("%s: reboot failed: %s", self.name, err)
        log.info("%s: the guest shut down from inside (status %d)", self.name, status)
        self.ctx.on_guest_shutdown()

    def stop(self) -> None:
        with self._lock:
            sandbox, self._sandbox = self._sandbox, None
            if sandbox is None:
                return
            self._stopping = True
            sandbox.shutdown()
            deadline = time.monotonic() + 5
            while ssh_banner(self._port, timeout=0.2) and time.monotonic() < deadline:
                time.sleep(0.05)

    def close(self) -> None:
        self.stop()

    def endpoints(self) -> dict[str, str]:
        """Where sshd listens while the VM runs (the port is kept across stop/start if free)."""
        return {"ssh": f"127.0.0.1:{self._port}"} if self._port else {}

    def run_command(self, script: str, timeout: float) -> tuple[int, str, str]:
        """Azure Run Command: ``sh -c script`` as root inside the running guest."""
        with self._lock:
            sandbox = self._sandbox
            if sandbox is None or not sandbox.alive:
                raise SandboxError(f"{self.name}: the VM is not running")
            argv = sandbox.enter(script)
        code, out, err = _run(argv, timeout, what=f"{self.name}: Run Command")
        return code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def read_path(self, path: str) -> bytes | None:
        """A file's bytes as the guest's disk holds them (None if absent); works when stopped."""
        code, out, err = self._outside('[ -f "$1" ] || exit 3; exec cat -- "$1"', path)
        if code == 3:
            return None
        if code != 0:
            raise SandboxError(f"{self.name}: cannot read {path}: {err.decode(errors='replace').strip()}")
        return out

    def exists(self, path: str) -> bool:
        """True if ``path`` exists on the guest's disk (without following a final symlink)."""
        code, _, _ = self._outside('[ -e "$1" ] || [ -L "$1" ]', path)
        return code == 0

    def listdir(self, path: str) -> list[str] | None:
        """Names in a directory of the guest's disk, sorted (None if it is not a directory)."""
        code, out, _ = self._outside('[ -d "$1" ] || exit 3; cd -- "$1" && ls -A1', path)
        if code != 0:
            return None
        return sorted(out.decode("utf-8", "replace").splitlines())

    def _outside(self, script: str, *args: str) -> tuple[int, bytes, bytes]:
        with self._lock:
            sandbox = self._sandbox
            if sandbox is not None and sandbox.alive:
                argv = sandbox.enter(script, args, with_pid_ns=False)
            else:
                argv = offline_argv(self._disk(), script, args)
            return _run(argv, 30.0, what=f"{self.name}: disk read")

    def summary(self) -> dict[str, Any]:
        return {
            "os": "Linux",
            "running": self.running,
            "ssh": self.endpoints().get("ssh"),
            "hostname": self.spec.hostname,
            "vm_id_shown": self.ctx.vm_platform.shown_vm_id,
            "imds": self.ctx.vm_platform.imds,
            "smbios": self.ctx.vm_platform.smbios,
            "admin_user": self.ctx.admin_user,
            "provisioned": self.provisioned,
            "disk": str(self.ctx.content_dir),
            "rootfs": recipe_key(),
            "boots": self.boots,
            "last_boot_seconds": round(self.last_boot_seconds, 2),
        }


def _run(argv: list[str], timeout: float, *, what: str) -> tuple[int, bytes, bytes]:
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env(),
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # nsenter's child (inside the guest) shares its process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        # a process that left the group may still hold the pipes: do not wait on it forever
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.communicate(timeout=5)
        raise GuestCommandTimeout(f"{what} did not finish within {timeout:g} s") from None
    return process.returncode, out, err


def _read_text(path: Path) -> str | None:
    if path.is_symlink() or not path.is_file():
        return None
    return path.read_text()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True

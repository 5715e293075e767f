"""Creating and driving the guest behind each VM (Linux: real sshd + waagent; Windows: WS-Man).

The guest classes live in modules of their own, imported only when a scenario has a VM of that
OS and guests are enabled; a missing module is a loud error, never a silent ARM-only run. With
guests disabled (``--guests none`` or ``guests: none``) ARM still works and Run Command answers
with an empty output and a note on stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from azsim.faults import FaultSet
from azsim.guestapi import CONTENT_PATHS, GuestContext, GuestController, Platform, guest_home
from azsim.guestnet import GuestNetwork, Relay

GUEST_CLASSES = {
    "Linux": "azsim.linuxguest:LinuxGuest",
    "Windows": "azsim.windows.guest:WindowsGuest",
}
NO_GUEST_NOTE = "azsim: this VM has no guest (azsim runs with guests: none)"


class GuestSetupError(RuntimeError):
    """A guest class that cannot be loaded or a guest that cannot be created; one line."""


class DiskContentError(RuntimeError):
    """A disk's guest content could not be copied; one line."""


def copy_content(source: Path, target: Path) -> bool:
    """Give ``target`` the guest content of ``source``, replacing any it had; False when the
    source has none (its VM never booted: a VM made from the copy then provisions afresh).

    Like an Azure snapshot of a disk in use, the copy is crash-consistent: the source's guest
    may keep running. ``cp -a`` keeps what the overlay upper layer needs (owners, modes, device
    nodes that mark deletions, ``trusted.overlay.*`` attributes, hard links).
    """
    present = [relative for relative in CONTENT_PATHS if (source / relative).exists()]
    if not present:
        return False
    staging = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o700, parents=True)
    for relative in present:
        destination = staging / relative
        destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        done = subprocess.run(
            ["cp", "-a", "--reflink=auto", "--", str(source / relative), str(destination)],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C"},
            check=False,
        )
        # a file the running guest deleted while cp walked the tree is simply not in the copy
        problems = [line for line in done.stderr.splitlines() if "No such file or directory" not in line]
        if done.returncode != 0 and (problems or not done.stderr.strip()):
            shutil.rmtree(staging, ignore_errors=True)
            why = (problems or [f"cp exited {done.returncode}"])[0]
            raise DiskContentError(f"copying the content of {source} failed: {why}")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(target)
    return True


def load_guest_class(os_type: str) -> Callable[[GuestContext], GuestController]:
    target = GUEST_CLASSES[os_type]
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise GuestSetupError(
            f"{os_type} guests need {module_name}, which cannot be imported ({err}); "
            "run `azsim up --guests none` for ARM only"
        ) from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise GuestSetupError(f"{module_name} has no {class_name}")
    return cls  # type: ignore[no-any-return]


@dataclass(frozen=True)
class GuestSettings:
    """What every guest gets from the state directory."""

    state_dir: Path
    tls_cert: Path
    tls_key: Path
    ssh_public_key: str
    admin_password: str
    addresses_file: Path
    #: pairs of "rg/name" whose addresses the address map exchanges (scenario staging)
    swapped_addresses: tuple[tuple[str, str], ...] = ()


class Guests:
    """The guest controllers of every VM, keyed by ``rg/name`` (lower case)."""

    def __init__(
        self,
        settings: GuestSettings | None,
        on_guest_shutdown: Callable[[str], None],
        faults: FaultSet | None = None,
    ) -> None:
        #: None: guests disabled
        self.settings = settings
        self._on_guest_shutdown = on_guest_shutdown
        self._faults = faults
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._guests: dict[str, GuestController] = {}
        #: the network path to each guest (azsim.guestnet): what guest-addresses.json names
        self._relays: dict[str, Relay] = {}
        self.errors: dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    def check_classes(self, os_types: set[str]) -> None:
        """Import the guest class of every OS in use now, so a missing one fails at startup."""
        if self.enabled:
            for os_type in sorted(os_types):
                load_guest_class(os_type)

    def create(
        self,
        key: str,
        *,
        resource_group: str,
        vm_name: str,
        os_type: str,
        admin_user: str,
        spec: dict[str, Any],
        disk_home: str | None = None,
        platform: Platform | None = None,
    ) -> None:
        """Create (not boot) the guest of a VM whose OS disk keeps its content at ``disk_home``
        (``Disk.content_home``; None: in the guest's own directory, as a scenario VM's does).
        ``platform``: what the VM's platform shows the guest (its vmId in IMDS and SMBIOS)."""
        if self.settings is None:
            return
        cls = load_guest_class(os_type)
        guest_dir = self.settings.state_dir / guest_home(resource_group, vm_name)
        guest_dir.mkdir(parents=True, exist_ok=True)
        ctx = GuestContext(
            resource_group=resource_group,
            vm_name=vm_name,
            admin_user=admin_user,
            state_dir=guest_dir,
            spec=spec,
            tls_cert=self.settings.tls_cert,
            tls_key=self.settings.tls_key,
            ssh_public_key=self.settings.ssh_public_key,
            admin_password=self.settings.admin_password,
            on_guest_shutdown=lambda: self._went_down(key),
            disk_dir=self.content_dir(disk_home),
            platform=platform,
            network=GuestNetwork(key, self._faults),
        )
        guest = cls(ctx)
        relay = Relay(ctx.network, lambda: self._endpoint(key))
        with self._lock:
            self._guests[key.lower()] = guest
            old = self._relays.pop(key.lower(), None)
            self._relays[key.lower()] = relay
        if old is not None:
            old.close()

    def _endpoint(self, key: str) -> tuple[str, int] | None:
        """Where the running guest of ``key`` listens (its SSH or WinRM HTTPS port)."""
        guest = self._get(key)
        if guest is None or not guest.running:
            return None
        endpoints = guest.endpoints()
        address = endpoints.get("ssh") or endpoints.get("winrm_https")
        if not address:
            return None
        host, _, port = address.rpartition(":")
        return host, int(port)

    def _relay(self, key: str) -> Relay | None:
        with self._lock:
            return self._relays.get(key.lower())

    def _went_down(self, key: str) -> None:
        """The guest powered itself off: its network path goes with it (clients are refused)."""
        relay = self._relay(key)
        if relay is not None:
            # not in the guest's own thread: closing joins the relay's connection threads
            threading.Thread(target=relay.close, daemon=True, name="relay-close").start()
        self._on_guest_shutdown(key)

    def content_dir(self, home: str | None) -> Path | None:
        """The directory of a disk's guest content (``Disk.content_home``); None when guests
        are disabled or the disk has no home."""
        if self.settings is None or not home:
            return None
        return self.settings.state_dir / home

    def copy_disk_content(self, source_home: str | None, target_home: str | None) -> bool:
        """A snapshot or a disk copy: the target disk gets the source's guest content as it is
        now. False when there is nothing to copy (guests disabled, or the source never booted)."""
        source, target = self.content_dir(source_home), self.content_dir(target_home)
        if source is None or target is None:
            return False
        return copy_content(source, target)

    def _get(self, key: str) -> GuestController | None:
        with self._lock:
            return self._guests.get(key.lower())

    def start(self, key: str) -> None:
        guest = self._get(key)
        if guest is not None:
            guest.start()
            relay = self._relay(key)
            if relay is not None:
                relay.open()
            self.write_addresses()

    def stop(self, key: str) -> None:
        guest = self._get(key)
        if guest is not None:
            relay = self._relay(key)
            if relay is not None:
                relay.close()
            guest.stop()
            self.write_addresses()

    def start_many(self, keys: list[str]) -> dict[str, str]:
        """Boot several guests in parallel (each takes seconds); returns ``{key: error}``."""
        errors: dict[str, str] = {}

        def boot(key: str) -> None:
            try:
                self.start(key)
            except Exception as err:  # reported per VM; the others still boot
                errors[key] = f"{type(err).__name__}: {err}"

        if keys:
            with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
                list(pool.map(boot, keys))
        self.errors.update(errors)
        self.write_addresses()
        return errors

    def run_command(self, key: str, script: str, timeout: float) -> tuple[int, str, str]:
        guest = self._get(key)
        if guest is None:
            return 0, "", NO_GUEST_NOTE
        return guest.run_command(script, timeout)

    def remove(self, key: str) -> None:
        """Stop and release a deleted VM's guest."""
        with self._lock:
            guest = self._guests.pop(key.lower(), None)
            relay = self._relays.pop(key.lower(), None)
        if relay is not None:
            relay.close()
        if guest is not None:
            try:
                guest.stop()
            finally:
                guest.close()
            self.write_addresses()

    def describe(self, key: str) -> dict[str, Any] | None:
        guest = self._get(key)
        if guest is None:
            return None
        info: dict[str, Any] = {"running": guest.running, "endpoints": guest.endpoints()}
        relay = self._relay(key)
        if relay is not None and relay.listening:
            info["address"] = relay.address  # where a client reaches it (through its relay)
        try:
            info["summary"] = guest.summary()
        except Exception as err:  # status must always answer
            info["summary_error"] = str(err)
        if key.lower() in self.errors:
            info["error"] = self.errors[key.lower()]
        return info

    def addresses(self) -> dict[str, str]:
        """``rg/name -> 127.0.0.1:PORT`` of each running guest's ssh or winrm-https endpoint, as
        a client reaches it: through its relay (azsim.guestnet), where guest faults act."""
        with self._lock:
            guests = dict(self._guests)
            relays = dict(self._relays)
        found: dict[str, str] = {}
        for key, guest in sorted(guests.items()):
            if not guest.running:
                continue
            relay = relays.get(key)
            if relay is not None and not relay.listening:
                relay.open()
            if relay is not None:
                found[key] = relay.address
        return found

    def write_addresses(self) -> None:
        if self.settings is None:
            return
        target = self.settings.addresses_file
        found = self.addresses()
        for first, second in self.settings.swapped_addresses:
            # a staged mistake in the operator's map: each name points at the other's guest
            if first in found and second in found:
                found[first], found[second] = found[second], found[first]
        with self._write_lock:  # guests start in parallel; one writer at a time
            temporary = target.with_suffix(".tmp")
            temporary.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
            os.replace(temporary, target)

    def close_all(self) -> None:
        """Stop and close every guest, in parallel (shutdown of each takes a moment)."""
        with self._lock:
            guests = list(self._guests.values())
            self._guests.clear()
            relays = list(self._relays.values())
            self._relays.clear()
        for relay in relays:
            relay.close()

        def shut(guest: GuestController) -> None:
            try:
                guest.stop()
            except Exception as err:  # close() below still releases what stop() could not
                print(f"azsim: stopping a guest failed: {err}", file=sys.stderr)
            try:
                guest.close()
            except Exception as err:  # the others must still close
                print(f"azsim: closing a guest failed: {err}", file=sys.stderr)

        if guests:
            with ThreadPoolExecutor(max_workers=min(8, len(guests))) as pool:
                list(pool.map(shut, guests))
        if self.settings is not None:
            self.settings.addresses_file.unlink(missing_ok=True)

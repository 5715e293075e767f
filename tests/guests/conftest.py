"""Fixtures that boot azsim Linux sandboxes directly (no ARM server) and reach them over SSH."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from azsim.guestapi import GuestContext, Platform
from azsim.linux.rootfs import cache_dir_from_env, ensure_rootfs
from azsim.linuxguest import LinuxGuest
from imageready.guest.ssh import SshGuest

ADMIN = "azureuser"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # every test that boots a sandbox needs root (namespaces, overlay mounts)
    for item in items:
        if "linux_rootfs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session")
def linux_rootfs(pytestconfig: pytest.Config) -> Path:
    """The cached Debian root file system (built on first use; the build time is printed)."""
    if os.geteuid() != 0:
        pytest.skip("Linux sandboxes need root (namespaces, overlay mounts)")
    if shutil.which("debootstrap") is None or shutil.which("unshare") is None:
        pytest.skip("Linux sandboxes need debootstrap and util-linux unshare")
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def progress(line: str) -> None:
        # the first build takes a minute: say so on the terminal, past output capture
        if reporter is not None and capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(f"azsim: {line}")

    return ensure_rootfs(cache_dir_from_env(), progress=progress)


@pytest.fixture(scope="session")
def ssh_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An ed25519 key pair: (private key file, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return path, public.decode() + " azsim-test"


class Shutdowns:
    """Counts on_guest_shutdown calls (what ARM would see)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1

    def wait(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.count == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.count > 0


@pytest.fixture
def linux_vm(
    linux_rootfs: Path, ssh_keypair: tuple[Path, str], tmp_path: Path
) -> Iterator[Callable[..., LinuxGuest]]:
    """Factory: ``linux_vm(spec={...}, name="vm1", platform=...)`` boots a sandbox VM (its IMDS and
    SMBIOS show ``platform``, else a fresh vmId); all are closed after."""
    guests: list[LinuxGuest] = []

    def boot(
        spec: dict[str, Any] | None = None,
        name: str = "vm1",
        start: bool = True,
        platform: Platform | None = None,
    ) -> LinuxGuest:
        shutdowns = Shutdowns()
        ctx = GuestContext(
            resource_group="rg-test",
            vm_name=name,
            admin_user=ADMIN,
            state_dir=tmp_path / name,
            spec=spec or {},
            tls_cert=tmp_path / "unused.pem",
            tls_key=tmp_path / "unused.key",
            ssh_public_key=ssh_keypair[1],
            cache_dir=linux_rootfs.parent,
            on_guest_shutdown=shutdowns,
            platform=platform,
        )
        guest = LinuxGuest(ctx)
        guest.shutdowns = shutdowns  # type: ignore[attr-defined]
        guests.append(guest)
        if start:
            guest.start()
        return guest

    yield boot
    for guest in guests:
        guest.close()


@pytest.fixture
def ssh_to(ssh_keypair: tuple[Path, str]) -> Iterator[Callable[..., SshGuest]]:
    """Factory: ``ssh_to(guest, key_path=..., strict=...)`` -> SshGuest for the admin user (not
    yet connected; the test's key unless told otherwise). All are closed after the test."""
    opened: list[SshGuest] = []

    def make(guest: LinuxGuest, **options: Any) -> SshGuest:
        host, port = guest.endpoints()["ssh"].rsplit(":", 1)
        options.setdefault("key_path", ssh_keypair[0])
        options.setdefault("connect_timeout", 5.0)
        options.setdefault("allow_agent", False)
        ssh = SshGuest(host, int(port), ADMIN, vm_key=guest.name, **options)
        opened.append(ssh)
        return ssh

    yield make
    for ssh in opened:
        ssh.close()


@pytest.fixture
def vm_and_ssh(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> tuple[LinuxGuest, SshGuest]:
    """A clean VM and an SSH connection to it as the admin user."""
    guest = linux_vm()
    return guest, ssh_to(guest)

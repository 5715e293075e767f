"""Fixtures for azsim Windows guests (real WinRM listeners, no ARM server) and the harness's
WinRM transport. Test modules import what they use: ``from conftest_windows import ...``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import winrm

from azsim.guestapi import GuestContext, Platform
from azsim.tls import TlsFiles, make_ca_and_server_cert
from azsim.windows.guest import WindowsGuest
from imageready.guest.winrm import PASSWORD_ENV, WinRmGuest, connect_winrm

ADMIN = "azureuser"
PASSWORD = "Az-sim-Pa55word!"
VM_KEY = "rg-win/win-vm"


class Booted:
    """A started Windows guest and what the test needs around it."""

    def __init__(self, guest: WindowsGuest, tls: TlsFiles) -> None:
        self.guest = guest
        self.tls = tls
        #: how many times the guest told ARM it powered itself off
        self.shutdowns: list[float] = []

    @property
    def machine(self) -> Any:
        return self.guest.machine

    def address(self, scheme: str = "https") -> str:
        return self.guest.endpoints()[f"winrm_{scheme}"]

    def port(self, scheme: str = "https") -> int:
        return int(self.address(scheme).rsplit(":", 1)[1])

    def url(self, scheme: str = "https") -> str:
        return f"{scheme}://{self.address(scheme)}/wsman"

    def connect(self, scheme: str = "https", **options: Any) -> WinRmGuest:
        """The harness's transport, connected (password from the environment)."""
        options.setdefault("ca_bundle", self.tls.ca_cert)
        return connect_winrm(self.address(scheme), ADMIN, vm_key=VM_KEY, scheme=scheme, **options)  # type: ignore[arg-type]

    def raw_session(self, scheme: str = "http") -> winrm.Session:
        """pywinrm's own Session (NTLM), for what the harness deliberately does not send."""
        return winrm.Session(
            self.url(scheme),
            auth=(ADMIN, PASSWORD),
            transport="ntlm",
            ca_trust_path=str(self.tls.ca_cert),
            proxy=None,
        )

    def handlers_run(self) -> list[str]:
        return [run.handler for run in self.machine.history]


@pytest.fixture(scope="session")
def windows_tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost (azsim.tls)."""
    files = TlsFiles.in_state_dir(tmp_path_factory.mktemp("azsim-tls"))
    make_ca_and_server_cert(files)
    return files


@pytest.fixture
def winrm_password(monkeypatch: pytest.MonkeyPatch) -> str:
    """The admin password, where the harness reads it from (the environment)."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return PASSWORD


@pytest.fixture
def boot_windows(tmp_path: Path, windows_tls: TlsFiles) -> Iterator[Callable[..., Booted]]:
    """Factory: ``boot_windows(spec={...})`` starts a Windows guest; all stop at teardown."""
    booted: list[Booted] = []

    def boot(
        spec: dict[str, Any] | None = None,
        *,
        name: str = "win-vm",
        state_dir: Path | None = None,
        platform: Platform | None = None,
    ) -> Booted:
        holder: list[Booted] = []
        ctx = GuestContext(
            resource_group="rg-win",
            vm_name=name,
            admin_user=ADMIN,
            state_dir=state_dir or tmp_path / f"{name}-{len(booted)}",
            spec=spec or {},
            tls_cert=windows_tls.server_cert,
            tls_key=windows_tls.server_key,
            admin_password=PASSWORD,
            on_guest_shutdown=lambda: holder[0].shutdowns.append(1.0),
            platform=platform,
        )
        guest = WindowsGuest(ctx)
        holder.append(Booted(guest, windows_tls))
        booted.append(holder[0])
        guest.start()
        return holder[0]

    yield boot
    for item in booted:
        item.guest.close()
        assert not item.guest.running

"""One table of guest transports: each name is one class that says which OSes it serves and how
it opens; --transport offers exactly those names (and auto)."""

from __future__ import annotations

import pytest

from imageready import guest as transports
from imageready.guest.base import AddressedGuest, Guest, GuestTarget


@pytest.mark.parametrize("name", list(transports.TRANSPORTS))
def test_each_registered_transport_is_one_class_named_by_its_key(name: str) -> None:
    found = transports.transport_class(name)
    assert issubclass(found, Guest) and found.transport == name
    assert found.os_types and set(found.os_types) <= {"Linux", "Windows"}
    assert found.open.__func__ is not Guest.open.__func__  # type: ignore[attr-defined]
    # a transport reached at an address says at which port when the address names none
    assert (found.default_port is not None) is issubclass(found, AddressedGuest)


def test_auto_prefers_the_first_transport_that_serves_the_os() -> None:
    assert transports.for_os("Linux").__name__ == "SshGuest"  # type: ignore[union-attr]
    assert transports.for_os("Windows").__name__ == "WinRmGuest"  # type: ignore[union-attr]
    assert transports.for_os("Windows", "ssh") is None
    assert transports.for_os("Linux", "winrm") is None
    assert transports.for_os("Linux", "run-command") is transports.transport_class(transports.FALLBACK)
    assert transports.FALLBACK in transports.TRANSPORTS


def test_the_option_offers_the_registered_transports(pytester: pytest.Pytester) -> None:
    assert transports.choices() == ("auto", "ssh", "winrm", "run-command")
    result = pytester.runpytest("--transport", "telnet")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    offered = ", ".join(repr(name) for name in transports.choices())
    result.stderr.fnmatch_lines([f"*--transport: invalid choice: 'telnet' (choose from {offered})*"])


def test_a_guest_class_outside_the_table_cannot_be_opened_from_it() -> None:
    with pytest.raises(NotImplementedError):
        Guest.open(GuestTarget.__new__(GuestTarget))

"""Windows guests prove which VM they are (the model answers the probe's IMDS call and
Win32_ComputerSystemProduct), and the WinRM transport proves it in every shell before a command
runs there, and pins the TLS certificate it first trusted."""

from __future__ import annotations

import dataclasses

import pytest
from conftest_windows import VM_KEY, Booted, boot_windows, windows_tls, winrm_password

from azsim.guestapi import Platform
from imageready.facts import windows as windows_facts
from imageready.guest.identity import ExpectedIdentity, GuestIdentityError, Pins, verify

__all__ = ["boot_windows", "windows_tls", "winrm_password"]
pytestmark = pytest.mark.azsim

PAYLOAD = "Write-Output 'payload ran'"


def expected_of(booted: Booted) -> ExpectedIdentity:
    platform = booted.guest.ctx.vm_platform
    return ExpectedIdentity(VM_KEY, platform.vm_id, platform.name, platform.resource_id)


def test_the_facts_carry_the_identity(boot_windows, winrm_password) -> None:
    booted: Booted = boot_windows()
    platform = booted.guest.ctx.vm_platform
    with booted.connect("https") as guest:
        facts = windows_facts.parse(guest.run(windows_facts.SCRIPT, timeout=30).stdout)
    assert facts["identity"] == {
        "imds": {"vmId": platform.vm_id, "name": platform.name, "resourceId": platform.resource_id},
        "imds_error": None,
        "smbios_uuid": platform.vm_id.upper(),
        "smbios_error": None,
    }
    assert verify(expected_of(booted), facts["identity"], address="test").read_from == "imds"


def test_every_shell_proves_before_its_command(boot_windows, winrm_password) -> None:
    booted: Booted = boot_windows()
    with booted.connect("https", expected=expected_of(booted)) as guest:
        assert guest.proof is not None  # connect() proved in its shell
        before = len(booted.handlers_run())
        for _ in range(2):
            assert guest.run(PAYLOAD, timeout=30).text().strip() == "payload ran"
        assert booted.handlers_run()[before:] == ["identity", "simple-statements"] * 2
        assert guest.identity.evidence["identity_read_from"] == "imds"
        assert guest.pins().tls_cert_sha256 == guest.identity.evidence["tls_cert_sha256"]


def test_another_vm_runs_nothing(boot_windows, winrm_password) -> None:
    mine, other = boot_windows(name="win-a"), boot_windows(name="win-b")
    before = len(other.handlers_run())
    with pytest.raises(GuestIdentityError) as caught:
        other.connect("https", expected=expected_of(mine))
    message = str(caught.value)
    assert mine.guest.ctx.vm_platform.vm_id in message and other.guest.ctx.vm_platform.vm_id in message
    assert other.address("https") in message
    # not connected up front: the first command proves first, and runs nowhere else
    guest = other.connect("https", expected=expected_of(mine), prove=False)
    with guest, pytest.raises(GuestIdentityError):
        guest.run(PAYLOAD, timeout=30)
    assert "simple-statements" not in other.handlers_run()[before:]


def test_a_windows_guest_that_cannot_prove_anything(boot_windows, winrm_password) -> None:
    platform = dataclasses.replace(
        Platform.for_vm("rg-win", "win-vm", "Windows"), imds="unreachable", smbios="unreadable"
    )
    booted: Booted = boot_windows(platform=platform)
    with pytest.raises(GuestIdentityError, match="cannot prove it is") as caught:
        booted.connect("https", expected=expected_of(booted))
    assert "Unable to connect to the remote server" in str(caught.value)
    assert "is not a UUID" in str(caught.value)  # Windows' all-zeros "no UUID"


def test_smbios_proves_a_windows_guest_without_imds(boot_windows, winrm_password) -> None:
    platform = dataclasses.replace(
        Platform.for_vm("rg-win", "win-vm", "Windows"), imds="unreachable", smbios="swapped"
    )
    booted: Booted = boot_windows(platform=platform)
    with booted.connect("https", expected=expected_of(booted)) as guest:
        assert guest.proof is not None
        assert (guest.proof.read_from, guest.proof.smbios_byte_order) == ("smbios", "swapped")


def test_a_certificate_other_than_the_pinned_one_is_refused(boot_windows, winrm_password) -> None:
    booted: Booted = boot_windows()
    pins = Pins(tls_cert_sha256="00" * 32)
    with pytest.raises(GuestIdentityError, match="another machine answers: its TLS certificate"):
        booted.connect("https", expected=expected_of(booted), pins=pins)
    before = len(booted.handlers_run())
    # pywinrm's own connections are pinned too: the handshake fails before anything is sent
    guest = booted.connect("https", expected=expected_of(booted), prove=False)
    guest._cert_digest = "00" * 32
    guest.close()  # a fresh session, built with the pin
    with guest, pytest.raises(GuestIdentityError, match="TLS certificate is not the one seen"):
        guest.run(PAYLOAD, timeout=30)
    assert booted.handlers_run()[before:] == []

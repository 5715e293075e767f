"""Drives fully decrypted: Sysprep requires it, and an ADE-encrypted disk cannot become a
generalized image. Server-side encryption (platform or customer keys) is fine and says so."""

from __future__ import annotations

from typing import Any

import pytest

from checks import _docs
from imageready.checking import evidence, finding
from imageready.facts import VmFacts
from imageready.facts.azure_view import ade_extensions, disk_ade_enabled, disk_sse, extension_type, extensions
from imageready.facts.view import FactsView
from imageready.target import VmRef


@pytest.mark.check(
    id="IR-ENC-001",
    title="No Azure Disk Encryption on the disk (server-side encryption is fine)",
    severity="critical",
    os="any",
    doc=_docs.ADE,
    each="disk",
)
def test_disk_not_ade_encrypted(vm: VmRef, disk: Any, request: pytest.FixtureRequest) -> None:
    name = f"{disk['role']} disk {disk['name']}"
    if disk["disk"] is None:
        finding(
            f"{name} of {vm.key} could not be read, so its encryption is unknown",
            where=disk["id"] or f"{vm.id} storageProfile",
            fix="Grant Microsoft.Compute/disks/read on the disk's resource group and run again.",
            doc=_docs.ADE,
        )
    sse = disk_sse(disk["disk"])
    ade = disk_ade_enabled(disk["disk"])
    properties = disk["disk"].raw.get("properties") or {}
    evidence(
        request,
        f"{name}: {'Azure Disk Encryption enabled' if ade else 'no Azure Disk Encryption'}; {sse} (fine)",
        {
            "encryption": properties.get("encryption"),
            "encryptionSettingsCollection": properties.get("encryptionSettingsCollection"),
        },
    )
    if ade:
        finding(
            f"{name} of {vm.key} is encrypted with Azure Disk Encryption (encryptionSettingsCollection)",
            where=disk["id"],
            fix="Disable ADE and decrypt the volume (az vm encryption disable), or image a decrypted "
            f"copy; {sse} needs no change.",
            doc=_docs.GENERALIZE,
        )


@pytest.mark.check(
    id="IR-ENC-002",
    title="No Azure Disk Encryption extension on the VM",
    severity="critical",
    os="any",
    doc=_docs.ADE,
)
def test_no_ade_extension(vm: VmRef, facts: VmFacts, request: pytest.FixtureRequest) -> None:
    found = ade_extensions(facts)
    evidence(
        request,
        f"{vm.key}: extensions: " + (", ".join(extension_type(e) for e in extensions(facts)) or "none"),
    )
    if found:
        names = ", ".join(str(e.get("name")) for e in found)
        finding(
            f"{vm.key} has the Azure Disk Encryption extension ({names})",
            where=f"{vm.id}/extensions",
            fix="Disable encryption (az vm encryption disable), wait for the volumes to decrypt, then "
            "remove the extension.",
            doc=_docs.ADE,
        )


@pytest.mark.check(
    id="IR-ENC-003",
    title="BitLocker volume fully decrypted",
    severity="critical",
    os="Windows",
    doc=_docs.GENERALIZE,
    each="bitlocker_volume",
)
def test_bitlocker_volume_decrypted(vm: VmRef, bitlocker_volume: Any, request: pytest.FixtureRequest) -> None:
    if not isinstance(bitlocker_volume, FactsView):
        evidence(request, f"{vm.key}: no BitLocker volumes reported")
        return
    v = bitlocker_volume
    mount = v.need("mount_point", str)
    status, protection = v.need("volume_status", str), v.need("protection_status", str)
    percent = float(v.need("encryption_percentage", float))
    method = v.need("encryption_method", str)
    state = f"{status}, protection {protection}, {percent:g} % encrypted, method {method}"
    evidence(request, f"volume {mount}: {state}", dict(v.raw))
    decrypted = status == "FullyDecrypted" and protection == "Off" and percent == 0
    if not decrypted:
        busy = " and still decrypting" if status == "DecryptionInProgress" else ""
        finding(
            f"volume {mount} of {vm.key} is not fully decrypted{busy} ({state})",
            where=f"{vm.key}: Get-BitLockerVolume {mount}",
            fix=f"Disable-BitLocker -MountPoint '{mount}' and wait until it reports FullyDecrypted, 0 %.",
            doc=_docs.GENERALIZE,
        )


@pytest.mark.check(
    id="IR-ENC-004",
    title="No dm-crypt/LUKS volume",
    severity="critical",
    os="Linux",
    doc=_docs.GENERALIZE,
    each="crypt_volume",
)
def test_no_luks_volume(vm: VmRef, crypt_volume: Any, request: pytest.FixtureRequest) -> None:
    if not isinstance(crypt_volume, FactsView):
        evidence(request, f"{vm.key}: no dm-crypt/LUKS volumes (crypttab, device mapper)")
        return
    v = crypt_volume
    mountpoint = v.optional("mountpoint", str)
    finding(
        f"{vm.key} has an encrypted volume {v.optional('name', str)} ({v.optional('source', str)}: "
        f"{v.optional('device', str)}{', mounted at ' + mountpoint if mountpoint else ''})",
        where=f"{vm.key}: {v.optional('source', str)}",
        fix="Decrypt the volume (Azure Disk Encryption for Linux: az vm encryption disable) and remove "
        "its /etc/crypttab entry before generalizing.",
        doc=_docs.ADE,
    )

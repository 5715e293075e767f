"""Generalizing is irreversible: the VM must be a copy, never the original that has to keep
working. The OS disk's provenance is the proof (disk → snapshot → source disk), or the tag our
own copy step sets."""

from __future__ import annotations

import pytest

from checks import _docs
from imageready.checking import evidence, finding
from imageready.facts import VmFacts
from imageready.facts.azure_view import COPY_TAG, creation, provenance_chain, tags
from imageready.target import VmRef

COPY_OPTIONS = {"copy", "restore", "import", "copystart", "copyfromsandata"}
ADVICE = (
    "Generalize a copy: snapshot the OS disk (and data disks), create disks and a new VM from the "
    "snapshots, and run imageready on that VM (or pass --copy-first to let imageready do it)."
)


@pytest.mark.check(
    id="IR-SRC-001",
    title="The VM is a copy, not an original",
    severity="critical",
    os="any",
    doc=_docs.GENERALIZE,
)
def test_vm_is_a_copy(vm: VmRef, facts: VmFacts, request: pytest.FixtureRequest) -> None:
    os_disk = facts.vm_model.get("properties", {}).get("storageProfile", {}).get("osDisk", {})
    disk_id = str((os_disk.get("managedDisk") or {}).get("id") or "")
    chain = provenance_chain(facts, disk_id) if disk_id else []
    links = " -> ".join(
        f"{link['kind']} {link['id'].rsplit('/', 1)[-1]}"
        + (f" ({link['create_option']})" if link["create_option"] else "")
        + (" [deleted]" if link["exists"] is False else "")
        for link in chain
    )
    tagged = tags(facts).get(COPY_TAG)
    evidence(
        request,
        f"{vm.key}: OS disk chain: {links or 'unmanaged disk'}"
        + (f"; tagged {COPY_TAG}={tagged}" if tagged else ""),
        {"chain": chain},
    )
    if tagged:
        return
    disk = (facts.azure or {}).get("disks", {}).get(disk_id.lower())
    option = str(creation(disk).get("createOption") or os_disk.get("createOption") or "unknown")
    if option.lower() in COPY_OPTIONS:
        return
    finding(
        f"{vm.key} looks like an original: its OS disk was created '{option}', not copied from a "
        f"snapshot or disk (chain: {links or 'none'})",
        where=disk_id or vm.id,
        fix=ADVICE,
        doc=_docs.GENERALIZE,
    )

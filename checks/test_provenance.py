"""Generalizing is irreversible: the VM must be a copy, never the original that has to keep
working. The OS disk's provenance is the proof (disk → snapshot → source disk), or the tag our
own copy step sets."""

from __future__ import annotations

from typing import Any

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
# why a disk made this way is the original: what the finding says after "its OS disk <name>"
ORIGINAL_BECAUSE = {
    "fromimage": "was created from an image (FromImage)",
    "empty": "was created empty (Empty) and built in place",
    "attach": "is attached as it is (Attach): the VM runs on the original disk",
}


def _chain_text(chain: list[dict[str, Any]]) -> str:
    return " → ".join(
        f"{link['kind']} {link['id'].rsplit('/', 1)[-1]}"
        + (f" ({link['create_option']})" if link["create_option"] else "")
        for link in chain
    )


def _source_text(chain: list[dict[str, Any]]) -> str:
    """Whether the first disk the chain came from still exists (the docs' "keep the original")."""
    if len(chain) < 2:
        return ""
    source = chain[-1]
    name = f"{source['kind']} {source['id'].rsplit('/', 1)[-1]}"
    if source["exists"] is False:
        return f"; its source {name} no longer exists (deleted)"
    if source["exists"] is None:
        return f"; its source {name} was not looked up"
    return f"; its source {name} still exists"


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
    links = _chain_text(chain)
    tagged = tags(facts).get(COPY_TAG)
    evidence(
        request,
        f"{vm.key}: OS disk chain: {links or 'unmanaged disk'}{_source_text(chain)}"
        + (f"; tagged {COPY_TAG}={tagged}" if tagged else ""),
        {"chain": chain},
    )
    if tagged:
        return
    disk = (facts.azure or {}).get("disks", {}).get(disk_id.lower())
    option = str(creation(disk).get("createOption") or os_disk.get("createOption") or "unknown")
    if option.lower() in COPY_OPTIONS:
        return
    name = disk_id.rsplit("/", 1)[-1] or str(os_disk.get("name") or "(unmanaged)")
    because = ORIGINAL_BECAUSE.get(option.lower(), f"was created '{option}'")
    finding(
        f"{vm.key} is an original, not a copy: its OS disk {name} {because}, not copied from a "
        f"snapshot or disk (chain: {links or 'none'})",
        where=disk_id or vm.id,
        fix=ADVICE,
        doc=_docs.GENERALIZE,
    )

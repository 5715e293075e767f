"""Generalizing is irreversible: the VM must be a copy, never the original that has to keep
working. The OS disk's lineage is the proof (disk → snapshot or restore point → ... → a source disk
that still exists and belongs to another VM, or to none); a tag is evidence, never proof."""

from __future__ import annotations

from typing import Any

import pytest

from checks import _docs
from imageready.checking import evidence, finding
from imageready.facts import VmFacts
from imageready.facts.azure_view import COPY_TAG, provenance_chain, tags
from imageready.target import VmRef

#: create options that copy another resource's content (the source is in sourceResourceId)
COPY_OPTIONS = {"copy", "restore", "copystart", "copyfromsansnapshot"}
ADVICE = (
    "Generalize a copy: snapshot the OS disk (and data disks), create disks and a new VM from the "
    "snapshots, and run imageready on that VM (or pass --copy-first to let imageready do it); keep "
    "the original and its disk."
)
# why a disk made this way is the original: what the finding says after "its OS disk <name>"
ORIGINAL_BECAUSE = {
    "fromimage": "was created from an image (FromImage)",
    "empty": "was created empty (Empty) and built in place",
    "attach": "is attached as it is (Attach): the VM runs on the original disk",
    "import": "was imported from a VHD (Import): nothing in Azure shows an original it was copied from",
    "importsecure": "was imported from a VHD (ImportSecure): nothing in Azure shows an original",
    "upload": "was uploaded (Upload): nothing in Azure shows an original it was copied from",
    "uploadpreparedsecure": "was uploaded (UploadPreparedSecure): nothing in Azure shows an original",
}


def _name(link: dict[str, Any]) -> str:
    return f"{link['kind']} {str(link['id']).rsplit('/', 1)[-1]}"


def _chain_text(chain: list[dict[str, Any]]) -> str:
    words = {False: " [deleted]", None: " [unread]"}
    return " → ".join(
        _name(link)
        + (f" ({link['create_option']})" if link["create_option"] else "")
        + words.get(link["exists"], "")
        for link in chain
    )


def judge_lineage(vm: VmRef, chain: list[dict[str, Any]]) -> tuple[bool, str]:
    """(is a copy, why): a copy only when the OS disk was copied and its lineage reaches a source
    disk that still exists (the very one it was made from) and is not this VM's own."""
    if not chain:
        return False, "its OS disk is not a managed disk, so its lineage cannot be read"
    os_link = chain[0]
    os_name = str(os_link["id"]).rsplit("/", 1)[-1]
    if os_link["exists"] is not True:
        return False, f"its OS disk {os_name} could not be read ({os_link['error'] or 'not found'})"
    option = os_link["create_option"].lower()
    if option not in COPY_OPTIONS:
        because = ORIGINAL_BECAUSE.get(option, f"was created '{os_link['create_option'] or 'unknown'}'")
        return False, f"its OS disk {os_name} {because}, not copied from another disk"
    for link in chain[1:]:
        if link["error"]:
            return False, f"its lineage cannot be followed past {_name(link)}: {link['error']}"
        if link["exists"] is False:
            return False, (
                f"its source {_name(link)} no longer exists: the copy would be the only instance left "
                "of the original"
            )
        if link["exists"] is not True:
            return False, f"its source {_name(link)} could not be read"
        if link["same_source"] is False:
            return False, (
                f"{_name(link)} is not the resource it was copied from (its uniqueId differs from the "
                "recorded sourceUniqueId: the source was deleted and another made under its name)"
            )
        if link["kind"] != "disk":
            continue  # a snapshot or restore point: follow it to the disk it was taken of
        owner = str(link["managed_by"] or "")
        if link["id"].lower() == os_link["id"].lower() or owner.lower() == vm.id.lower():
            return False, f"its lineage leads back to this VM's own disk ({_name(link)})"
        where = f"attached to VM {owner.rsplit('/', 1)[-1]}" if owner else "unattached"
        return True, f"a copy of {_name(link)} ({where}), which still exists"
    last = chain[-1]
    return False, (
        f"its lineage ends at {_name(last)} ({last['create_option'] or 'no create option'}) without "
        "reaching a source disk that still exists"
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
    copy, why = judge_lineage(vm, chain)
    # the tag our copy step sets is evidence, never proof: lineage decides
    tagged = tags(facts).get(COPY_TAG)
    evidence(
        request,
        f"{vm.key}: OS disk lineage: {_chain_text(chain) or 'unmanaged disk'}: {why}"
        + (f"; tagged {COPY_TAG}={tagged} (evidence only)" if tagged else ""),
        {"chain": chain, "tag": tagged},
    )
    if copy:
        return
    finding(
        f"{vm.key} is not proven to be a copy: {why} (lineage: {_chain_text(chain) or 'none'})",
        where=disk_id or vm.id,
        fix=ADVICE,
        doc=_docs.GENERALIZE,
    )

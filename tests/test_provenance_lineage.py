"""A VM is a copy only when its OS disk's lineage reaches a source disk that still exists and is
not its own (issue 11, hole 4): every other chain is red, whatever a tag says. The chains here are
ARM payloads as azsim and Azure return them; tests/e2e/test_checks_fleet.py stages them in azsim."""

from __future__ import annotations

from typing import Any

import pytest

from checks.test_provenance import judge_lineage
from imageready.facts import VmFacts
from imageready.facts.azure_view import provenance_chain
from imageready.target import VmRef

SUB = "00000000-0000-0000-0000-0000000000aa"
CP = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute"
VM = VmRef(SUB, "rg", "copy")
OS_DISK = f"{CP}/disks/copy-osdisk"
SNAP = f"{CP}/snapshots/snap"
GOLDEN = f"{CP}/disks/golden-osdisk"
POINT = f"{CP}/restorePointCollections/rpc/restorePoints/rp1/diskRestorePoints/golden-os"


def disk(
    option: str, source: str = "", *, managed_by: str = "", unique: str = "u", src_unique: str = ""
) -> dict[str, Any]:
    data: dict[str, Any] = {"createOption": option}
    if source:
        data["sourceResourceId"] = source
    if src_unique:
        data["sourceUniqueId"] = src_unique
    model: dict[str, Any] = {"properties": {"creationData": data, "uniqueId": unique}}
    if managed_by:
        model["managedBy"] = managed_by
    return model


def restore_point(source: str) -> dict[str, Any]:
    return {"properties": {"sourceResourceId": source}}


def judge(
    os_disk: dict[str, Any],
    sources: dict[str, dict[str, Any]] | None = None,
    missing: list[str] = (),  # type: ignore[assignment]
    unresolved: dict[str, str] | None = None,
) -> tuple[bool, str]:
    os_disk.setdefault("managedBy", f"{CP}/virtualMachines/copy")
    facts = VmFacts(
        vm=VM.key,
        resource_id=VM.id,
        azure={
            "vm": {},
            "disks": {OS_DISK.lower(): os_disk},
            "sources": {k.lower(): v for k, v in (sources or {}).items()},
            "missing_sources": list(missing),
            "unresolved_sources": {k.lower(): v for k, v in (unresolved or {}).items()},
        },
    )
    return judge_lineage(VM, provenance_chain(facts, OS_DISK))


def test_copy_of_a_snapshot_of_a_disk_that_still_exists() -> None:
    copy, why = judge(
        disk("Copy", SNAP),
        {SNAP: disk("Copy", GOLDEN), GOLDEN: disk("FromImage", managed_by=f"{CP}/virtualMachines/golden")},
    )
    assert copy, why
    assert "disk golden-osdisk (attached to VM golden), which still exists" in why


def test_copy_of_an_unattached_disk() -> None:
    copy, why = judge(disk("Copy", GOLDEN), {GOLDEN: disk("FromImage")})
    assert copy and "unattached" in why


def test_restore_from_a_restore_point_of_a_disk_that_exists() -> None:
    copy, why = judge(disk("Restore", POINT), {POINT: restore_point(GOLDEN), GOLDEN: disk("FromImage")})
    assert copy, why


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("FromImage", "created from an image"),
        ("Empty", "created empty"),
        ("Attach", "attached as it is"),
        ("Import", "imported from a VHD"),
        ("Upload", "was uploaded"),
        ("Something", "was created 'Something'"),
    ],
)
def test_hole4_originals_by_create_option(option: str, words: str) -> None:
    copy, why = judge(disk(option))
    assert not copy and words in why


def test_hole4_restore_without_lineage_is_red() -> None:
    copy, why = judge(disk("Restore"))
    assert not copy and "without reaching a source disk" in why


def test_hole4_source_disk_deleted_is_red() -> None:
    copy, why = judge(disk("Copy", SNAP), {SNAP: disk("Copy", GOLDEN)}, missing=[GOLDEN])
    assert not copy and "disk golden-osdisk no longer exists" in why


def test_hole4_snapshot_deleted_is_red() -> None:
    copy, why = judge(disk("Copy", SNAP), missing=[SNAP])
    assert not copy and "snapshot snap no longer exists" in why


def test_hole4_restore_point_of_a_deleted_disk_is_red() -> None:
    copy, why = judge(disk("Restore", POINT), {POINT: restore_point(GOLDEN)}, missing=[GOLDEN])
    assert not copy and "no longer exists" in why


def test_hole4_unreadable_source_is_red() -> None:
    copy, why = judge(disk("Copy", SNAP), unresolved={SNAP: "403 AuthorizationFailed"})
    assert not copy and "cannot be followed past snapshot snap: 403 AuthorizationFailed" in why


def test_hole4_source_replaced_under_its_name_is_red() -> None:
    copy, why = judge(disk("Copy", GOLDEN, src_unique="old-id"), {GOLDEN: disk("FromImage", unique="new-id")})
    assert not copy and "is not the resource it was copied from" in why


def test_hole4_chain_back_to_this_vms_own_disk_is_red() -> None:
    data = f"{CP}/disks/copy-data0"
    copy, why = judge(
        disk("Copy", SNAP),
        {SNAP: disk("Copy", data), data: disk("Empty", managed_by=f"{CP}/virtualMachines/copy")},
    )
    assert not copy and "leads back to this VM's own disk" in why


def test_hole4_chain_ending_at_an_imported_snapshot_is_red() -> None:
    copy, why = judge(disk("Copy", SNAP), {SNAP: disk("Import")})
    assert not copy and "ends at snapshot snap (Import)" in why


def test_hole4_a_loop_is_red() -> None:
    other = f"{CP}/snapshots/other"
    copy, why = judge(disk("Copy", SNAP), {SNAP: disk("Copy", other), other: disk("Copy", SNAP)})
    assert not copy and "loops back" in why


def test_hole4_lineage_not_followed_to_the_end_is_red() -> None:
    copy, why = judge(disk("Copy", SNAP), {SNAP: disk("Copy", GOLDEN)})  # GOLDEN never read
    assert not copy and "cannot be followed past disk golden-osdisk: not looked up" in why


def test_hole4_unmanaged_os_disk_is_red() -> None:
    copy, why = judge_lineage(VM, [])
    assert not copy and "not a managed disk" in why

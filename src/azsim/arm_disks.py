"""Disks, snapshots and disk encryption sets.

A snapshot or a disk made from one copies what Azure copies: the OS type, size, Hyper-V
generation, architecture, encryption settings, the lineage of the VM whose OS disk it was and its
content (the guest's files as they are when the copy starts; see ``azsim.guestapi``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from azsim.arm_http import ArmError, ArmReply, ArmRequest, Route, invalid, route
from azsim.arm_resources import CP, created, location_in, reader, resource_group, retagged, tags_in
from azsim.guestapi import disk_home
from azsim.state import Disk, DiskEncryptionSet, Store

if TYPE_CHECKING:
    from azsim.arm import Simulator


def _disk_json(disk: Disk, store: Store) -> dict[str, Any]:
    return disk.to_arm(store.subscription_id)


get_disk = reader("Microsoft.Compute/disks", Disk, _disk_json)
get_snapshot = reader("Microsoft.Compute/snapshots", Disk, _disk_json)
get_des = reader(
    "Microsoft.Compute/diskEncryptionSets", DiskEncryptionSet, lambda des, store: des.to_arm(store.tenant)
)


def _put_disk(sim: Simulator, req: ArmRequest, m: dict[str, str], *, snapshot: bool) -> ArmReply:
    kind = "snapshots" if snapshot else "disks"
    body = req.json()
    rg = resource_group(sim, m)
    with sim.store.lock:
        resource_id = sim.store.compute_id(rg, kind, m["name"])
        existing = retagged(sim, resource_id, Disk, body)
        if existing is not None:
            return ArmReply(200, existing.to_arm(sim.store.subscription_id))
        props = body.get("properties") or {}
        creation = props.get("creationData") or {}
        option = creation.get("createOption")
        disk = Disk(
            id=resource_id,
            name=m["name"],
            resource_group=rg,
            location=location_in(sim, body, rg),
            tags=tags_in(body),
            snapshot=snapshot,
            create_option=str(option),
            content_home=str(disk_home(rg, kind, m["name"])),
        )
        source_home: str | None = None
        if option in ("Copy", "Restore"):
            source_id = creation.get("sourceResourceId")
            source = sim.store.get(str(source_id or ""))
            if not isinstance(source, Disk):
                raise ArmError(
                    404,
                    "NotFound",
                    f"Resource '{source_id}' was not found (properties.creationData.sourceResourceId).",
                )
            disk.source_id = source.id
            disk.source_unique_id = source.unique_id
            disk.size_gb = int(props.get("diskSizeGB") or source.size_gb)
            disk.os = source.os
            disk.hyper_v_generation = source.hyper_v_generation
            disk.architecture = source.architecture
            disk.encryption, disk.des_id, disk.ade = source.encryption, source.des_id, source.ade
            disk.lineage = sim.store.lineage_of(source)
            source_home = source.content_home
        elif option == "Empty" and not snapshot:
            size = props.get("diskSizeGB")
            if not isinstance(size, int) or size < 1:
                raise invalid("properties.diskSizeGB: required for an empty disk.")
            disk.size_gb = size
        else:
            allowed = "Copy or Restore" if snapshot else "Copy, Restore or Empty"
            raise invalid(f"properties.creationData.createOption: azsim supports {allowed}, got {option!r}.")
        encryption = props.get("encryption") or {}
        if encryption.get("diskEncryptionSetId"):
            disk.encryption, disk.des_id = "customer", str(encryption["diskEncryptionSetId"])
    operation = "createSnapshot" if snapshot else "createDisk"

    def copy_content() -> None:
        if source_home is not None:
            sim.guests.copy_disk_content(source_home, disk.content_home)

    return created(
        sim, req, disk, operation, 202, lambda: disk.to_arm(sim.store.subscription_id), copy_content
    )


def put_disk(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    return _put_disk(sim, req, m, snapshot=False)


def put_snapshot(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    return _put_disk(sim, req, m, snapshot=True)


def list_disks(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    rg = resource_group(sim, m)
    with sim.store.lock:
        disks = [r for r in sim.store.of_type(Disk, rg) if isinstance(r, Disk) and not r.snapshot]
        return ArmReply(200, {"value": [d.to_arm(sim.store.subscription_id) for d in disks]})


_C = "Microsoft.Compute"
ROUTES: list[Route] = [
    route("GET", CP + "/disks", list_disks, f"{_C}/disks/read", "listDisks"),
    route("GET", CP + "/disks/{name}", get_disk, f"{_C}/disks/read", "getDisk"),
    route("PUT", CP + "/disks/{name}", put_disk, f"{_C}/disks/write", "createDisk"),
    route("GET", CP + "/snapshots/{name}", get_snapshot, f"{_C}/snapshots/read", "getSnapshot"),
    route("PUT", CP + "/snapshots/{name}", put_snapshot, f"{_C}/snapshots/write", "createSnapshot"),
    route(
        "GET",
        CP + "/diskEncryptionSets/{name}",
        get_des,
        f"{_C}/diskEncryptionSets/read",
        "getDiskEncryptionSet",
    ),
]

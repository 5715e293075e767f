"""Disk restore points, read-only: what a disk made with createOption ``Restore`` was restored
from, and the disk that restore point was taken of.

Route and shape: ``DiskRestorePoint_Get`` (Microsoft.Compute DiskRP, e.g. api-version
2023-10-02, example ``diskRestorePointExamples/DiskRestorePoint_Get.json`` in
Azure/azure-rest-api-specs). azsim stages restore points from the scenario
(``restore_points:``); creating them (VM restore points) is not modelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from azsim.arm_http import ArmReply, ArmRequest, Route, not_found, route
from azsim.state import DiskRestorePoint

if TYPE_CHECKING:
    from azsim.arm import Simulator

_POINT = (
    "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/restorePointCollections/"
    "{collection}/restorePoints/{point}/diskRestorePoints/{name}"
)


def get_disk_restore_point(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    sim.check_subscription(m["sub"])
    rg = sim.check_rg(m["rg"])
    resource_id = sim.store.source_id(rg, f"restore_points/{m['collection']}/{m['point']}/{m['name']}")
    with sim.store.lock:
        found = sim.store.get(resource_id)
        if not isinstance(found, DiskRestorePoint):
            raise not_found(
                "Microsoft.Compute/restorePointCollections/restorePoints/diskRestorePoints",
                m["name"],
                m["rg"],
            )
        return ArmReply(200, found.to_arm())


ROUTES: list[Route] = [
    route(
        "GET",
        _POINT,
        get_disk_restore_point,
        "Microsoft.Compute/restorePointCollections/restorePoints/diskRestorePoints/read",
        "getDiskRestorePoint",
    ),
]

"""Network interfaces: read, and created for a copy VM (at once, Succeeded, as Azure usually does)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from azsim.arm_http import ArmReply, ArmRequest, Route, route
from azsim.arm_resources import RG, location_in, reader, resource_group, retagged, tags_in
from azsim.state import Nic

if TYPE_CHECKING:
    from azsim.arm import Simulator

get_nic = reader("Microsoft.Network/networkInterfaces", Nic, lambda nic, _: nic.to_arm())


def put_nic(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """A network interface for a copy VM; created at once (Succeeded), as Azure usually does."""
    body = req.json()
    rg = resource_group(sim, m)
    with sim.store.lock:
        resource_id = sim.store.network_id(rg, "networkInterfaces", m["name"])
        existing = retagged(sim, resource_id, Nic, body)
        if existing is not None:
            return ArmReply(200, existing.to_arm())
        nic = sim.store.new_nic(rg, m["name"], location_in(sim, body, rg), None)
        nic.tags = tags_in(body)
        configs = (body.get("properties") or {}).get("ipConfigurations") or []
        subnet = ((configs[0].get("properties") or {}).get("subnet") or {}).get("id") if configs else None
        if isinstance(subnet, str) and subnet:
            nic.subnet_id = subnet
        return ArmReply(201, nic.to_arm())


NIC = RG + "/providers/Microsoft.Network/networkInterfaces/{name}"
ROUTES: list[Route] = [
    route("GET", NIC, get_nic, "Microsoft.Network/networkInterfaces/read", "getNetworkInterface"),
    route("PUT", NIC, put_nic, "Microsoft.Network/networkInterfaces/write", "createNetworkInterface"),
]

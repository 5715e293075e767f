"""Resource groups: created, listed by tag, deleted with everything in them.

What the opt-in live suite (tests/live) needs to make its own resource group and to clean up after
itself, so that the same suite runs against azsim and against Azure. Each rule, its Microsoft
source and its test: docs/azsim-rules.md, rows RG-1 to RG-3.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from azsim.arm_http import ArmError, ArmReply, ArmRequest, Route, invalid, route, string_tags
from azsim.state import Vm

if TYPE_CHECKING:
    from azsim.arm import Simulator

SUB = "/subscriptions/{sub}"
#: ``$filter`` forms Resource Groups - List documents: a tag name, or a tag name and value
_TAG_FILTER = re.compile(
    r"^\s*tagName\s+eq\s+'(?P<name>[^']*)'(?:\s+and\s+tagValue\s+eq\s+'(?P<value>[^']*)')?\s*$", re.I
)


def group_json(sim: Simulator, name: str, state: str = "Succeeded") -> dict[str, Any]:
    _, location, tags = sim.store.resource_groups[name.lower()]
    return {
        "id": f"/subscriptions/{sim.store.subscription_id}/resourceGroups/{name}",
        "name": name,
        "type": "Microsoft.Resources/resourceGroups",
        "location": location,
        "tags": dict(tags),
        "properties": {"provisioningState": state},
    }


def get_group(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    sim.check_subscription(m["sub"])
    return ArmReply(200, group_json(sim, sim.check_rg(m["rg"])))


def put_group(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """Create a resource group, or update the tags of one that exists (its location stays)."""
    sim.check_subscription(m["sub"])
    body = req.json()
    location = body.get("location")
    if not isinstance(location, str) or not location:
        raise invalid("The location property is required for this definition.", "LocationRequired")
    tags = string_tags(body.get("tags") or {}, "tags")
    with sim.store.lock:
        known = sim.store.resource_groups.get(m["rg"].lower())
        if known is not None:
            if known[1].lower() != location.lower():
                raise ArmError(
                    409,
                    "InvalidResourceGroupLocation",
                    f"Invalid resource group location '{location}'. The Resource group already exists in "
                    f"location '{known[1]}'.",
                )
            sim.store.resource_groups[m["rg"].lower()] = (known[0], known[1], dict(tags))
            return ArmReply(200, group_json(sim, known[0]))
        sim.store.resource_groups[m["rg"].lower()] = (m["rg"], location, dict(tags))
        return ArmReply(201, group_json(sim, m["rg"]))


def list_groups(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    sim.check_subscription(m["sub"])
    wanted = req.query.get("$filter", "")
    match = _TAG_FILTER.match(wanted) if wanted else None
    if wanted and match is None:
        raise invalid(f"azsim filters resource groups only by tagName (and tagValue); got {wanted!r}.")
    with sim.store.lock:
        found = []
        for name, _location, tags in sim.store.resource_groups.values():
            if match is not None:
                value = tags.get(match.group("name"))
                if value is None or (match.group("value") is not None and value != match.group("value")):
                    continue
            found.append(group_json(sim, name))
    return ArmReply(200, {"value": sorted(found, key=lambda g: str(g["name"]).lower())})


def delete_group(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """A long-running delete of the group and of every resource in it (VMs, their guests,
    disks, snapshots, NICs, images, galleries with their definitions and versions)."""
    sim.check_subscription(m["sub"])
    with sim.store.lock:
        name = sim.check_rg(m["rg"])
        location = sim.store.resource_groups[name.lower()][1]
        for vm in sim.store.vms():
            if vm.resource_group.lower() == name.lower() and vm.busy is not None:
                raise ArmError(
                    409,
                    "OperationNotAllowed",
                    f"Operation 'delete' is not allowed on VM '{vm.name}' since another operation is in "
                    "progress.",
                )
        group_id = f"/subscriptions/{sim.store.subscription_id}/resourceGroups/{name}"

    def finish(_: Any) -> None:
        doomed = [r for r in sim.store.resources.values() if r.resource_group.lower() == name.lower()]
        for resource in doomed:
            if isinstance(resource, Vm):
                sim.delete_vm(resource.key)
            else:
                sim.store.resources.pop(resource.id.lower(), None)
        sim.store.resource_groups.pop(name.lower(), None)

    return sim.start_operation(
        req,
        kind="deleteResourceGroup",
        resource_id=group_id,
        location=location,
        vm_key=None,
        timing="delete",
        work=None,
        finish=finish,
        fail=lambda: None,
    )


ROUTES: list[Route] = [
    route(
        "GET",
        SUB + "/resourceGroups",
        list_groups,
        "Microsoft.Resources/subscriptions/resourceGroups/read",
        "listResourceGroups",
    ),
    route(
        "GET",
        SUB + "/resourceGroups/{rg}",
        get_group,
        "Microsoft.Resources/subscriptions/resourceGroups/read",
        "getResourceGroup",
    ),
    route(
        "PUT",
        SUB + "/resourceGroups/{rg}",
        put_group,
        "Microsoft.Resources/subscriptions/resourceGroups/write",
        "createResourceGroup",
    ),
    route(
        "DELETE",
        SUB + "/resourceGroups/{rg}",
        delete_group,
        "Microsoft.Resources/subscriptions/resourceGroups/delete",
        "deleteResourceGroup",
    ),
]

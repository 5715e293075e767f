"""What the routes of resources other than VMs share: the resource group a request names, a
resource looked up by type, the tags of a PUT, a GET of one resource, and a creating PUT.

Creation is an LRO (the resource shows ``Creating`` until it ends). The routes themselves:
:mod:`azsim.arm_disks` (disks, snapshots, disk encryption sets), :mod:`azsim.arm_images`
(images, galleries and what is in them), :mod:`azsim.arm_network` (network interfaces).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from azsim.arm_http import ArmReply, ArmRequest, Handler, invalid, not_found
from azsim.state import Disk, Resource, Store

if TYPE_CHECKING:
    from azsim.arm import Simulator

RG = "/subscriptions/{sub}/resourceGroups/{rg}"
CP = RG + "/providers/Microsoft.Compute"
R = TypeVar("R", bound=Resource)


def resource_group(sim: Simulator, m: dict[str, str]) -> str:
    """The request's resource group as it was created (404 for an unknown subscription or group)."""
    sim.check_subscription(m["sub"])
    return sim.check_rg(m["rg"])


def get_or_404(sim: Simulator, m: dict[str, str], resource_id: str, type_name: str, cls: type[R]) -> R:
    """The resource at ``resource_id`` if it is a ``cls`` (a disk is not a snapshot), else 404."""
    found = sim.store.get(resource_id)
    if not isinstance(found, cls) or (
        isinstance(found, Disk) and found.snapshot != (type_name.endswith("snapshots"))
    ):
        raise not_found(type_name, resource_id.rsplit("/", 1)[-1], m["rg"])
    return found


def tags_in(body: dict[str, Any]) -> dict[str, str]:
    tags = body.get("tags") or {}
    if not isinstance(tags, dict):
        raise invalid("tags: expected an object.")
    return {str(k): str(v) for k, v in tags.items()}


def retag(existing: Resource, body: dict[str, Any]) -> None:
    """A PUT on a resource that exists updates its tags, if it names any."""
    if "tags" in body:
        existing.tags = tags_in(body)


def retagged(sim: Simulator, resource_id: str, cls: type[R], body: dict[str, Any]) -> R | None:
    """The ``cls`` at ``resource_id`` with its tags updated by the PUT, if it exists (a PUT on a
    resource that exists updates it); None: the PUT creates it."""
    existing = sim.store.get(resource_id)
    if not isinstance(existing, cls):
        return None
    retag(existing, body)
    return existing


def location_in(sim: Simulator, body: dict[str, Any], rg: str) -> str:
    """The PUT's location, else the resource group's."""
    return str(body.get("location") or sim.store.resource_groups[rg.lower()][1])


def reader(
    type_name: str,
    cls: type[R],
    render: Callable[[R, Store], dict[str, Any]],
    *,
    key: str = "name",
) -> Handler:
    """The GET of one resource of ``type_name`` named by the route's ``key``, shown by ``render``."""

    def read(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
        rg = resource_group(sim, m)
        with sim.store.lock:
            resource_id = sim.store.resource_id(rg, type_name, m[key])
            return ArmReply(200, render(get_or_404(sim, m, resource_id, type_name, cls), sim.store))

    return read


def created(
    sim: Simulator,
    req: ArmRequest,
    resource: Resource,
    kind: str,
    status: int,
    render: Callable[[], Any],
    work: Callable[[], Any] | None = None,
    source_vm: str | None = None,
) -> ArmReply:
    """Answer a creating PUT: the resource shows Creating until its operation (and ``work``,
    run outside the state lock) ends. ``source_vm`` (rg/name: the VM an image is made of) is what
    an lro_* fault's ``vm`` matches.

    Called without the state lock held: the operation's end needs it while ARM waits.
    """
    with sim.store.lock:
        resource.provisioning_state = "Creating"
        sim.store.add(resource)
        body = render()

    def finish(_: Any) -> None:
        resource.provisioning_state = "Succeeded"

    def fail() -> None:
        resource.provisioning_state = "Failed"

    return sim.start_operation(
        req,
        kind=kind,
        resource_id=resource.id,
        location=resource.location,
        vm_key=source_vm,
        timing="create",
        work=work,
        finish=finish,
        fail=fail,
        status=status,
        body=body,
    )

"""Virtual machine routes, with the rules Azure enforces on them (each rule, its Microsoft source
and its test: docs/azsim-rules.md).

- generalize is synchronous (200, empty body) and refused unless the VM is stopped or deallocated;
- after it the instance view holds ``OSState/generalized``, the VM can never start again, and it
  takes no change at all: PUT, PATCH and tags (through the VM or the ``Microsoft.Resources/tags``
  API at its scope) are refused with ``OperationNotAllowedOnGeneralizedVM``;
- one operation at a time per VM (another one is refused with 409);
- the etag changes on every mutation; ``If-Match`` that does not match is 412;
- a list names each VM's extensions by id only; a GET shows them whole.

Creating a VM: :mod:`azsim.arm_vm_create`; Run Command: :mod:`azsim.arm_run_command`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from azsim.arm_http import ArmError, ArmReply, ArmRequest, Route, invalid, not_allowed, route, string_tags
from azsim.lro import OperationError
from azsim.state import Vm

if TYPE_CHECKING:
    from azsim.arm import Simulator

VM = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
#: how Azure names an operation in "Operation 'X' is not allowed ..." ("Start VM": bitnami/vms#1471)
OPERATION_NAMES = {"start": "Start VM", "restart": "Restart VM"}


def check_if_match(req: ArmRequest, vm: Vm) -> None:
    wanted = req.header("If-Match")
    if wanted is not None and wanted.strip() not in ("*", vm.etag):
        raise ArmError(
            412,
            "PreconditionFailed",
            "The condition specified using HTTP conditional "
            f"header(s) is not met. (If-Match {wanted} does not match the current etag "
            f"{vm.etag} of VM '{vm.name}'.)",
        )


def check_idle(vm: Vm, operation: str) -> None:
    if vm.busy is not None:
        raise not_allowed(
            f"Operation '{operation}' is not allowed on VM '{vm.name}' since another operation is "
            "in progress."
        )


def refuse_if_generalized(vm: Vm, operation: str) -> None:
    """A generalized VM accepts no change at all, tags included."""
    if vm.generalized:
        raise ArmError(
            409,
            "OperationNotAllowedOnGeneralizedVM",
            f"Operation '{operation}' is not allowed on VM '{vm.name}' since the VM is generalized.",
        )


def vm_reply(sim: Simulator, vm: Vm, *, instance_view: bool) -> ArmReply:
    body = vm.to_arm(sim.store.subscription_id, sim.store.ssh_public_key, instance_view=instance_view)
    return ArmReply(200, body, {"ETag": vm.etag})


def get_vm(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        expand = req.query.get("$expand", "").lower()
        return vm_reply(sim, vm, instance_view=expand == "instanceview")


def list_vms(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    sim.check_subscription(m["sub"])
    rg = sim.check_rg(m["rg"]) if "rg" in m else None
    with sim.store.lock:
        vms = [vm for vm in sim.store.vms() if rg is None or vm.resource_group.lower() == rg.lower()]
        value = [vm.to_arm(sim.store.subscription_id, sim.store.ssh_public_key, listed=True) for vm in vms]
    return ArmReply(200, {"value": value})


def instance_view(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        return ArmReply(200, vm.instance_view(sim.store.subscription_id, None))


def list_extensions(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        return ArmReply(200, {"value": [ext.to_arm(vm) for ext in vm.extensions]})


def get_extension(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        for ext in vm.extensions:
            if ext.name.lower() == m["ext"].lower():
                return ArmReply(200, ext.to_arm(vm))
    raise ArmError(
        404,
        "NotFound",
        f"The entity was not found in this Azure location. (extension '{m['ext']}' of VM '{m['name']}')",
    )


def apply_tags(vm: Vm, body: dict[str, Any]) -> None:
    vm.tags = string_tags(body.get("tags"), "tags")
    vm.touch()


def update_vm(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """PATCH: azsim updates tags (ARM semantics: the given map replaces the old one)."""
    body = req.json()
    unsupported = sorted(key for key, value in body.items() if key != "tags" and value)
    if unsupported:
        raise invalid(f"azsim updates only 'tags' of a VM; got {', '.join(unsupported)}.")
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        refuse_if_generalized(vm, "Update VM")
        check_if_match(req, vm)
        if "tags" in body:
            apply_tags(vm, body)
        return vm_reply(sim, vm, instance_view=False)


def _tags_resource(vm: Vm) -> dict[str, Any]:
    """``Microsoft.Resources/tags/default`` at the VM's scope, as the Tags API shows it."""
    return {
        "id": f"{vm.id}/providers/Microsoft.Resources/tags/default",
        "name": "default",
        "type": "Microsoft.Resources/tags",
        "properties": {"tags": dict(vm.tags)},
    }


def _tags_in(body: dict[str, Any]) -> dict[str, str]:
    return string_tags((body.get("properties") or {}).get("tags"), "properties.tags")


def get_scope_tags(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    with sim.store.lock:
        return ArmReply(200, _tags_resource(sim.vm_or_404(m)))


def put_scope_tags(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """Tags API, create or update at scope: the given tags replace the resource's tags."""
    body = req.json()
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        refuse_if_generalized(vm, "Update VM")
        vm.tags = _tags_in(body)
        vm.touch()
        return ArmReply(200, _tags_resource(vm))


def patch_scope_tags(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """Tags API, update at scope: ``operation`` Merge, Replace or Delete (by name, or name and value)."""
    body = req.json()
    operation = str(body.get("operation") or "")
    if operation.lower() not in ("merge", "replace", "delete"):
        raise invalid(f"operation: expected Merge, Replace or Delete, got {operation!r}.")
    given = _tags_in(body)
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        refuse_if_generalized(vm, "Update VM")
        if operation.lower() == "merge":
            vm.tags = {**vm.tags, **given}
        elif operation.lower() == "replace":
            vm.tags = given
        else:
            vm.tags = {k: v for k, v in vm.tags.items() if not (k in given and given[k] in ("", v))}
        vm.touch()
        return ArmReply(200, _tags_resource(vm))


def delete_scope_tags(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        refuse_if_generalized(vm, "Update VM")
        vm.tags = {}
        vm.touch()
    return ArmReply(200, None)


def _power_operation(sim: Simulator, req: ArmRequest, m: dict[str, str], kind: str) -> ArmReply:
    """deallocate, powerOff, start, restart: an LRO that moves the power state."""
    targets = {
        "deallocate": ("deallocating", "deallocated"),
        "powerOff": ("stopping", "stopped"),
        "start": ("starting", "running"),
        "restart": ("running", "running"),
    }
    transitional, final = targets[kind]
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        if kind in ("start", "restart") and vm.generalized:
            raise not_allowed(
                f"Operation '{OPERATION_NAMES[kind]}' is not allowed on VM '{vm.name}' since the VM is "
                "generalized."
            )
        check_idle(vm, OPERATION_NAMES.get(kind, kind))
        if kind == "restart" and vm.power != "running":
            raise not_allowed(
                f"Operation 'restart' is not allowed on VM '{vm.name}' since the VM is {vm.power}."
            )
        previous = vm.power
        vm.power = transitional if previous != final else previous
        vm.provisioning_state = "Updating"
        vm.busy = kind
        vm.touch()
        key = vm.key

    def work() -> None:
        if kind in ("deallocate", "powerOff"):
            sim.guests.stop(key)
        elif kind == "start":
            sim.guests.start(key)
        else:
            sim.guests.stop(key)
            sim.guests.start(key)

    def finish(_: Any) -> None:
        if sim.store.get(vm.id) is not vm:
            raise OperationError(
                "NotFound",
                f"The VM '{vm.name}' was deleted while the '{kind}' operation was in progress.",
            )
        vm.end_operation(final)

    def fail() -> None:
        vm.end_operation(previous)

    return sim.start_operation(
        req,
        kind=kind,
        resource_id=vm.id,
        location=vm.location,
        vm_key=key,
        timing={"powerOff": "power_off"}.get(kind, kind),
        work=work,
        finish=finish,
        fail=fail,
    )


def deallocate(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    return _power_operation(sim, req, m, "deallocate")


def power_off(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    return _power_operation(sim, req, m, "powerOff")


def start(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    return _power_operation(sim, req, m, "start")


def restart(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    return _power_operation(sim, req, m, "restart")


def generalize(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        check_idle(vm, "generalize")
        if vm.power not in ("stopped", "deallocated"):
            raise not_allowed(
                f"Operation 'generalize' is not allowed on VM '{vm.name}' since the VM is running. "
                "Please power off explicitly in case you shut down the VM from inside the guest "
                "operating system."
            )
        if not vm.generalized:
            vm.generalized = True
            vm.touch()
    return ArmReply(200, None)


#: the Tags API at a resource's scope (azure-mgmt-resource TagsOperations.*_at_scope, `az tag`)
TAGS = "/providers/Microsoft.Resources/tags/default"
_VMS = "Microsoft.Compute/virtualMachines"
ROUTES: list[Route] = [
    route(
        "GET",
        "/subscriptions/{sub}/providers/Microsoft.Compute/virtualMachines",
        list_vms,
        f"{_VMS}/read",
        "listVms",
    ),
    route(
        "GET",
        "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines",
        list_vms,
        f"{_VMS}/read",
        "listVms",
    ),
    route("GET", VM, get_vm, f"{_VMS}/read", "get"),
    route("PATCH", VM, update_vm, f"{_VMS}/write", "update"),
    route(
        "GET",
        VM + "/instanceView",
        instance_view,
        f"{_VMS}/instanceView/read",
        "instanceView",
        scope_trim=1,
    ),
    route(
        "GET",
        VM + TAGS,
        get_scope_tags,
        "Microsoft.Resources/tags/read",
        "getTagsAtScope",
        scope_trim=4,
    ),
    route(
        "PUT",
        VM + TAGS,
        put_scope_tags,
        "Microsoft.Resources/tags/write",
        "createOrUpdateTagsAtScope",
        scope_trim=4,
    ),
    route(
        "PATCH",
        VM + TAGS,
        patch_scope_tags,
        "Microsoft.Resources/tags/write",
        "updateTagsAtScope",
        scope_trim=4,
    ),
    route(
        "DELETE",
        VM + TAGS,
        delete_scope_tags,
        "Microsoft.Resources/tags/delete",
        "deleteTagsAtScope",
        scope_trim=4,
    ),
    route("GET", VM + "/extensions", list_extensions, f"{_VMS}/extensions/read", "listExtensions"),
    route("GET", VM + "/extensions/{ext}", get_extension, f"{_VMS}/extensions/read", "getExtension"),
    route(
        "POST",
        VM + "/deallocate",
        deallocate,
        f"{_VMS}/deallocate/action",
        "deallocate",
        scope_trim=1,
    ),
    route("POST", VM + "/powerOff", power_off, f"{_VMS}/powerOff/action", "powerOff", scope_trim=1),
    route("POST", VM + "/start", start, f"{_VMS}/start/action", "start", scope_trim=1),
    route("POST", VM + "/restart", restart, f"{_VMS}/restart/action", "restart", scope_trim=1),
    route(
        "POST",
        VM + "/generalize",
        generalize,
        f"{_VMS}/generalize/action",
        "generalize",
        scope_trim=1,
    ),
]

"""Virtual machine routes, with the rules Azure enforces on them (each rule, its Microsoft source
and its test: docs/azsim-rules.md).

- generalize is synchronous (200, empty body) and refused unless the VM is stopped or deallocated;
- after it the instance view holds ``OSState/generalized``, the VM can never start again, and it
  takes no change at all: PUT, PATCH and tags (through the VM or the ``Microsoft.Resources/tags``
  API at its scope) are refused with ``OperationNotAllowedOnGeneralizedVM``;
- one operation at a time per VM (another one is refused with 409);
- the etag changes on every mutation; ``If-Match`` that does not match is 412;
- a list names each VM's extensions by id only; a GET shows them whole;
- Run Command needs a running VM with a ready agent, and shows Azure's output shapes (Linux: one
  ``[stdout]``/``[stderr]`` message; Windows: StdOut/StdErr statuses), each stream cut to its last
  4096 bytes as Azure does.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from azsim.arm_http import ArmError, ArmReply, ArmRequest, Route, invalid, not_allowed, route
from azsim.guestapi import disk_home
from azsim.lro import OperationError
from azsim.state import Disk, Nic, Vm

if TYPE_CHECKING:
    from azsim.arm import Simulator

RUN_COMMAND_OUTPUT_LIMIT = 4096
RUN_COMMAND_TIMEOUT = 5400.0  # Azure gives a Run Command script 90 minutes
#: how Azure names an operation in "Operation 'X' is not allowed ..." ("Start VM": bitnami/vms#1471)
OPERATION_NAMES = {"start": "Start VM", "restart": "Restart VM"}


def _check_if_match(req: ArmRequest, vm: Vm) -> None:
    wanted = req.header("If-Match")
    if wanted is not None and wanted.strip() not in ("*", vm.etag):
        raise ArmError(
            412,
            "PreconditionFailed",
            "The condition specified using HTTP conditional "
            f"header(s) is not met. (If-Match {wanted} does not match the current etag "
            f"{vm.etag} of VM '{vm.name}'.)",
        )


def _check_idle(vm: Vm, operation: str) -> None:
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


def _vm_reply(sim: Simulator, vm: Vm, *, instance_view: bool) -> ArmReply:
    body = vm.to_arm(sim.store.subscription_id, sim.store.ssh_public_key, instance_view=instance_view)
    return ArmReply(200, body, {"ETag": vm.etag})


def get_vm(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        expand = req.query.get("$expand", "").lower()
        return _vm_reply(sim, vm, instance_view=expand == "instanceview")


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


def _apply_tags(vm: Vm, body: dict[str, Any]) -> None:
    tags = body.get("tags")
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise invalid("tags: expected an object of string values.")
    vm.tags = {str(k): v for k, v in tags.items()}
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
        _check_if_match(req, vm)
        if "tags" in body:
            _apply_tags(vm, body)
        return _vm_reply(sim, vm, instance_view=False)


def _tags_resource(vm: Vm) -> dict[str, Any]:
    """``Microsoft.Resources/tags/default`` at the VM's scope, as the Tags API shows it."""
    return {
        "id": f"{vm.id}/providers/Microsoft.Resources/tags/default",
        "name": "default",
        "type": "Microsoft.Resources/tags",
        "properties": {"tags": dict(vm.tags)},
    }


def _tags_in(body: dict[str, Any]) -> dict[str, str]:
    tags = (body.get("properties") or {}).get("tags")
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise invalid("properties.tags: expected an object of string values.")
    return {str(k): v for k, v in tags.items()}


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
        _check_idle(vm, OPERATION_NAMES.get(kind, kind))
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
        vm.power = final
        vm.provisioning_state = "Succeeded"
        vm.busy = None
        vm.touch()

    def fail() -> None:
        vm.power = previous
        vm.provisioning_state = "Succeeded"
        vm.busy = None
        vm.touch()

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
        _check_idle(vm, "generalize")
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


def _trim(text: str) -> str:
    data = text.encode("utf-8", "replace")
    if len(data) <= RUN_COMMAND_OUTPUT_LIMIT:
        return text
    return data[-RUN_COMMAND_OUTPUT_LIMIT:].decode("utf-8", "replace")


def run_command_result(os_type: str, exit_code: int, stdout: str, stderr: str) -> dict[str, Any]:
    """The final body of a Run Command, in the shape Azure uses for each OS."""
    out, err = _trim(stdout), _trim(stderr)
    if os_type == "Windows":
        return {
            "value": [
                {
                    "code": "ComponentStatus/StdOut/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                    "message": out,
                },
                {
                    "code": "ComponentStatus/StdErr/succeeded",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded",
                    "message": err,
                },
            ]
        }
    if exit_code == 0:
        status = {
            "code": "ProvisioningState/succeeded",
            "level": "Info",
            "displayStatus": "Provisioning succeeded",
            "message": f"Enable succeeded: \n[stdout]\n{out}\n[stderr]\n{err}",
        }
    else:
        status = {
            "code": "ProvisioningState/failed",
            "level": "Error",
            "displayStatus": "Provisioning failed",
            "message": "Enable failed: failed to execute command: command terminated with "
            f"exit status={exit_code}\n[stdout]\n{out}\n[stderr]\n{err}",
        }
    return {"value": [status]}


def run_command(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    body = req.json()
    command_id = body.get("commandId")
    script = body.get("script") or []
    if not isinstance(script, list) or not all(isinstance(line, str) for line in script):
        raise invalid("script: expected a list of strings.")
    with sim.store.lock:
        vm = sim.vm_or_404(m)
        expected = "RunShellScript" if vm.os == "Linux" else "RunPowerShellScript"
        if command_id != expected:
            raise invalid(
                f"The command id '{command_id}' is not supported for a {vm.os} VM in azsim (use {expected}).",
                "InvalidParameter",
            )
        if vm.power != "running":
            raise not_allowed("The operation requires the VM to be running (or set to run).")
        _check_idle(vm, "runCommand")
        agent_ready = vm.vm_agent_status == "Ready"
        vm.busy = "runCommand"
        key, os_type = vm.key, vm.os

    def work() -> dict[str, Any]:
        if not agent_ready:
            raise OperationError(
                "VMAgentStatusCommunicationError",
                f"VM '{vm.name}' has not "
                "reported status for VM agent or extensions. Verify that the OS "
                "is up and healthy, the VM has a running VM agent, and that it "
                "can establish outbound connections to Azure storage.",
            )
        code, out, err = sim.guests.run_command(key, "\n".join(script), RUN_COMMAND_TIMEOUT)
        return run_command_result(os_type, code, out, err)

    def finish(result: Any) -> Any:
        vm.busy = None
        return result

    def fail() -> None:
        vm.busy = None

    return sim.start_operation(
        req,
        kind="runCommand",
        resource_id=vm.id,
        location=vm.location,
        vm_key=key,
        timing="run_command",
        work=work,
        finish=finish,
        fail=fail,
    )


def _attached_disk(sim: Simulator, rg: str, ref: Any, where: str, vm_id: str) -> Disk:
    disk_id = ((ref or {}).get("managedDisk") or {}).get("id") if isinstance(ref, dict) else None
    if not isinstance(disk_id, str):
        raise invalid(f"{where}.managedDisk.id: required (azsim creates VMs from attached disks).")
    disk = sim.store.get(disk_id)
    if not isinstance(disk, Disk) or disk.snapshot:
        raise ArmError(404, "NotFound", f"Disk '{disk_id}' was not found.")
    if disk.managed_by and disk.managed_by.lower() != vm_id.lower():
        raise ArmError(
            409,
            "OperationNotAllowed",
            f"Disk '{disk.name}' is already attached to VM '{disk.managed_by}'.",
        )
    if disk.provisioning_state != "Succeeded":
        raise ArmError(409, "OperationNotAllowed", f"Disk '{disk.name}' is {disk.provisioning_state}.")
    return disk


def _disk_from_image(sim: Simulator, rg: str, vm_name: str, body: dict[str, Any]) -> tuple[Disk, str]:
    """The OS disk of a VM created from a Marketplace image (createOption FromImage), and the
    admin user of its osProfile. The image must be one the scenario lists (``marketplace:``);
    its OS type, Hyper-V generation and architecture become the disk's (Virtual Machine Images -
    Get). The disk is added to the store by the caller, once the whole request is valid."""
    props = body.get("properties") or {}
    storage = props.get("storageProfile") or {}
    ref = storage.get("imageReference") or {}
    parts = [str(ref.get(key) or "") for key in ("publisher", "offer", "sku", "version")]
    if not all(parts):
        raise invalid("storageProfile.imageReference: publisher, offer, sku and version are required.")
    image = next((i for i in sim.scenario.marketplace if i.matches(*parts)), None)
    if image is None:
        raise ArmError(
            404,
            "PlatformImageNotFound",
            f"The platform image '{':'.join(parts)}' is not available. Verify that all fields in the "
            "storage profile are correct. For more details about storage profile information, please "
            "refer to https://aka.ms/storageprofile",
        )
    profile = props.get("osProfile") or {}
    admin_user = profile.get("adminUsername")
    if not isinstance(admin_user, str) or not admin_user:
        raise invalid("Required parameter 'osProfile' is missing (null).", "InvalidParameter")
    _check_guest_credential(sim, image.os, profile)
    os_ref = storage.get("osDisk") or {}
    name = str(os_ref.get("name") or f"{vm_name}_OsDisk_1_{uuid.uuid4().hex}")
    location = str(body.get("location") or sim.store.resource_groups[rg.lower()][1])
    disk = Disk(
        id=sim.store.compute_id(rg, "disks", name),
        name=name,
        resource_group=rg,
        location=location,
        size_gb=int(os_ref.get("diskSizeGB") or image.size_gb),
        os=image.os,
        hyper_v_generation=image.hyper_v_generation,
        architecture=image.architecture,
        create_option="FromImage",
        image=":".join(parts),
        # empty: the guest provisions afresh from azsim's base image when it first boots
        content_home=str(disk_home(rg, "disks", name)),
    )
    if sim.store.get(disk.id) is not None:
        raise ArmError(409, "Conflict", f"Disk '{name}' already exists.")
    return disk, admin_user


def _check_guest_credential(sim: Simulator, os_type: str, profile: dict[str, Any]) -> None:
    """azsim's guests know one credential: its SSH key (Linux) and its admin password (Windows),
    generated per state directory. A VM given another one could never be logged in to, so azsim
    refuses it loudly instead of pretending."""
    if os_type == "Linux":
        keys = ((profile.get("linuxConfiguration") or {}).get("ssh") or {}).get("publicKeys") or []
        given = {" ".join(str(k.get("keyData") or "").split()[:2]) for k in keys if isinstance(k, dict)}
        mine = " ".join(sim.store.ssh_public_key.split()[:2])
        if mine not in given:
            raise invalid(
                "azsim: a Linux VM from an image must authorise azsim's SSH key (the .pub of "
                "IMAGEREADY_SSH_KEY in azsim's env) in osProfile.linuxConfiguration.ssh.publicKeys."
            )
    elif profile.get("adminPassword") != sim.admin_password:
        raise invalid(
            "azsim: a Windows VM from an image must be given azsim's admin password "
            "(IMAGEREADY_WINRM_PASSWORD in azsim's env)."
        )


def _plan(value: Any) -> dict[str, str] | None:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) and value else None


def create_vm(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """PUT a VM: tags-only update of an existing VM, or a new VM from attached managed disks."""
    body = req.json()
    with sim.store.lock:
        sim.check_subscription(m["sub"])
        rg = sim.check_rg(m["rg"])
        existing = sim.store.vm(rg, m["name"])
        if existing is not None:
            if req.header("If-None-Match") == "*":
                raise ArmError(
                    412,
                    "PreconditionFailed",
                    f"VM '{existing.name}' already exists (If-None-Match: *).",
                )
            refuse_if_generalized(existing, "Update VM")
            _check_if_match(req, existing)
            if "tags" in body:
                _apply_tags(existing, body)
            return _vm_reply(sim, existing, instance_view=False)
        props = body.get("properties") or {}
        storage = props.get("storageProfile") or {}
        os_ref = storage.get("osDisk") or {}
        vm_id = sim.store.compute_id(rg, "virtualMachines", m["name"])
        from_image = os_ref.get("createOption") == "FromImage"
        if from_image:
            os_disk, admin_user = _disk_from_image(sim, rg, m["name"], body)
        elif os_ref.get("createOption") != "Attach":
            raise invalid(
                "storageProfile.osDisk.createOption: azsim creates VMs from a Marketplace image "
                "('FromImage') or by attaching an existing managed disk ('Attach')."
            )
        else:
            os_disk = _attached_disk(sim, rg, os_ref, "storageProfile.osDisk", vm_id)
        if not os_disk.os:
            raise invalid(f"Disk '{os_disk.name}' has no osType and cannot be an OS disk.")
        data_disks: list[tuple[int, Disk]] = []
        for i, ref in enumerate(storage.get("dataDisks") or []):
            lun = ref.get("lun") if isinstance(ref, dict) else None
            if not isinstance(lun, int):
                raise invalid(f"storageProfile.dataDisks[{i}].lun: required.")
            data_disks.append((lun, _attached_disk(sim, rg, ref, f"storageProfile.dataDisks[{i}]", vm_id)))
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        nic = sim.store.get(nics[0].get("id", "")) if nics and isinstance(nics[0], dict) else None
        if not isinstance(nic, Nic):
            raise invalid(
                "networkProfile.networkInterfaces[0].id: an existing network interface is required."
            )
        if nic.vm_id and nic.vm_id.lower() != vm_id.lower():
            raise ArmError(
                409,
                "NicInUse",
                f"Network interface '{nic.id}' is used by existing VM '{nic.vm_id}'.",
            )
        lineage = sim.store.lineage_of(os_disk) or {}
        vm = Vm(
            id=vm_id,
            name=m["name"],
            resource_group=rg,
            location=str(body.get("location") or os_disk.location),
            tags={str(k): str(v) for k, v in (body.get("tags") or {}).items()},
            provisioning_state="Creating",
            os=os_disk.os,
            size=str((props.get("hardwareProfile") or {}).get("vmSize") or "Standard_D2s_v5"),
            power="starting",
            admin_user=admin_user if from_image else str(lineage.get("admin_user") or "azureuser"),
            # a VM made from an image shows the osProfile it was given; one that attaches a
            # specialized disk has none (the disk already carries its OS configuration)
            has_os_profile=from_image,
            vm_agent_version="2.7.3.0" if os_disk.os == "Linux" else "2.7.41491.1102",
            os_disk=os_disk,
            data_disks=data_disks,
            nic=nic,
            encryption_at_host=bool((props.get("securityProfile") or {}).get("encryptionAtHost")),
            security_type=str((props.get("securityProfile") or {}).get("securityType") or "Standard"),
            hyper_v_generation=os_disk.hyper_v_generation or "V2",
            architecture=os_disk.architecture or "x64",
            plan=_plan(body.get("plan")),
            guest_spec=dict(lineage.get("guest") or {}),
            busy="createVm",
        )
        for disk in (os_disk, *(d for _, d in data_disks)):
            disk.managed_by = vm.id
        if from_image:
            os_disk.lineage = {"vm": vm.key, "admin_user": vm.admin_user, "os": vm.os, "guest": {}}
            sim.store.add(os_disk)
        nic.vm_id = vm.id
        sim.store.add(vm)
        reply_body = vm.to_arm(sim.store.subscription_id, sim.store.ssh_public_key)

    def work() -> None:
        if sim.guests.enabled:
            sim.guests.create(
                vm.key,
                resource_group=vm.resource_group,
                vm_name=vm.name,
                os_type=vm.os,
                admin_user=vm.admin_user,
                spec=vm.guest_spec,
                # the guest boots from what is on its OS disk (a copy: the source's files)
                disk_home=os_disk.content_home,
                platform=vm.platform(),
            )
            sim.guests.start(vm.key)

    def finish(_: Any) -> None:
        vm.provisioning_state = "Succeeded"
        vm.power = "running"
        vm.busy = None
        vm.touch()

    def fail() -> None:
        vm.provisioning_state = "Failed"
        vm.power = "stopped"
        vm.busy = None
        vm.touch()

    return sim.start_operation(
        req,
        kind="createVm",
        resource_id=vm.id,
        location=vm.location,
        vm_key=vm.key,
        timing="create",
        work=work,
        finish=finish,
        fail=fail,
        status=201,
        body=reply_body,
    )


VM = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{name}"
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
    route("PUT", VM, create_vm, f"{_VMS}/write", "createVm"),
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
    route(
        "POST",
        VM + "/runCommand",
        run_command,
        f"{_VMS}/runCommand/action",
        "runCommand",
        scope_trim=1,
    ),
]

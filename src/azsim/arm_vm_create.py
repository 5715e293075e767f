"""Creating a VM: from a Marketplace image (its OS disk made from the image) or by attaching
existing managed disks and a network interface; a PUT on a VM that exists updates its tags only.
Each rule, its Microsoft source and its test: docs/azsim-rules.md (VM-10 and the copy rows).
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from azsim.arm_http import ArmError, ArmReply, ArmRequest, Route, invalid, route
from azsim.arm_vms import VM, apply_tags, check_if_match, refuse_if_generalized, vm_reply
from azsim.guestapi import disk_home
from azsim.state import Disk, Nic, Vm

if TYPE_CHECKING:
    from azsim.arm import Simulator


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
            check_if_match(req, existing)
            if "tags" in body:
                apply_tags(existing, body)
            return vm_reply(sim, existing, instance_view=False)
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
            # the guest boots from what is on its OS disk (a copy: the source's files)
            sim.create_guest(vm, os_disk.content_home)
            sim.guests.start(vm.key)

    def finish(_: Any) -> None:
        vm.end_operation("running")

    def fail() -> None:
        vm.end_operation("stopped", "Failed")

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


ROUTES: list[Route] = [
    route("PUT", VM, create_vm, "Microsoft.Compute/virtualMachines/write", "createVm"),
]

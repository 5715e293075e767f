"""The subscription azsim serves: every resource, built from the scenario, found by id.

Everything here is guarded by ``Store.lock`` (one re-entrant lock; requests are few and short).
Names compare case-insensitively, as in ARM, and are shown as created.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from typing import Any

from azsim.guestapi import disk_home, guest_home
from azsim.resources import (
    COMPUTE,
    Disk,
    DiskEncryptionSet,
    DiskRestorePoint,
    Gallery,
    GalleryImage,
    GalleryImageVersion,
    Image,
    Nic,
    Resource,
)
from azsim.scenario import Scenario
from azsim.scenario_resources import DiskSpec, VmSpec
from azsim.vm import Extension, Vm

__all__ = [
    "Disk",
    "DiskEncryptionSet",
    "DiskRestorePoint",
    "Extension",
    "Gallery",
    "GalleryImage",
    "GalleryImageVersion",
    "Image",
    "Nic",
    "Resource",
    "Store",
    "Vm",
]


def rg_id(subscription: str, rg: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{rg}"


class Store:
    """All resources of the one subscription azsim serves."""

    def __init__(self, scenario: Scenario, ssh_public_key: str = "") -> None:
        self.lock = threading.RLock()
        self.tenant = scenario.tenant
        self.subscription_id = scenario.subscription_id
        self.subscription_name = scenario.subscription_name
        self.ssh_public_key = ssh_public_key
        #: lower-case name -> (name, location, tags)
        self.resource_groups: dict[str, tuple[str, str, dict[str, str]]] = {}
        #: lower-case resource id -> resource
        self.resources: dict[str, Resource] = {}
        self._load(scenario)

    # -- ids and lookups -------------------------------------------------------------------

    def rg_name(self, rg: str) -> str | None:
        found = self.resource_groups.get(rg.lower())
        return found[0] if found else None

    def resource_id(self, rg: str, type_name: str, name: str) -> str:
        """The id of resource ``name`` of ``type_name`` (``Microsoft.Compute/disks``) in ``rg``."""
        return f"{rg_id(self.subscription_id, rg)}/providers/{type_name}/{name}"

    def compute_id(self, rg: str, kind: str, name: str) -> str:
        return self.resource_id(rg, f"{COMPUTE}/{kind}", name)

    def source_id(self, rg: str, source: str) -> str:
        """The resource id of a scenario ``source``: disks/NAME, snapshots/NAME or
        restore_points/COLLECTION/POINT/NAME, in resource group ``rg``."""
        kind, _, rest = source.partition("/")
        if kind == "restore_points":
            collection, point, name = rest.split("/")
            return (
                self.compute_id(rg, "restorePointCollections", collection)
                + f"/restorePoints/{point}/diskRestorePoints/{name}"
            )
        return self.compute_id(rg, kind, rest)

    def network_id(self, rg: str, kind: str, name: str) -> str:
        return self.resource_id(rg, f"Microsoft.Network/{kind}", name)

    def get(self, resource_id: str) -> Resource | None:
        return self.resources.get(resource_id.lower().rstrip("/"))

    def add(self, resource: Resource) -> None:
        self.resources[resource.id.lower()] = resource

    def vm(self, rg: str, name: str) -> Vm | None:
        found = self.get(self.compute_id(rg, "virtualMachines", name))
        return found if isinstance(found, Vm) else None

    def vms(self) -> list[Vm]:
        found = [r for r in self.resources.values() if isinstance(r, Vm)]
        return sorted(found, key=lambda vm: vm.key.lower())

    def of_type(self, kind: type[Resource], rg: str | None = None) -> list[Resource]:
        return sorted(
            (
                r
                for r in self.resources.values()
                if type(r) is kind and (rg is None or r.resource_group.lower() == rg.lower())
            ),
            key=lambda r: r.id.lower(),
        )

    def delete_vm(self, vm: Vm) -> None:
        """Remove a VM; its disks and NIC stay (deleteOption Detach), released."""
        self.resources.pop(vm.id.lower(), None)
        for disk in [vm.os_disk, *(d for _, d in vm.data_disks)]:
            if disk is not None:
                disk.managed_by = None
        if vm.nic is not None:
            vm.nic.vm_id = None

    # -- building from the scenario ---------------------------------------------------------

    def _disk_from_spec(self, rg: str, location: str, spec: DiskSpec, *, snapshot: bool) -> Disk:
        kind = "snapshots" if snapshot else "disks"
        disk = Disk(
            id=self.compute_id(rg, kind, spec.name),
            name=spec.name,
            resource_group=rg,
            location=location,
            tags=dict(spec.tags),
            snapshot=snapshot,
            size_gb=spec.size_gb,
            os=spec.os,
            hyper_v_generation=spec.hyper_v_generation or ("V2" if spec.os else None),
            create_option=spec.create_option,
            image=spec.image,
            encryption=spec.encryption,
            des_id=self.compute_id(rg, "diskEncryptionSets", spec.disk_encryption_set)
            if spec.disk_encryption_set
            else None,
            ade=spec.ade,
            content_home=str(disk_home(rg, kind, spec.name)),
        )
        if spec.source:
            disk.source_id = self.source_id(rg, spec.source)
        if spec.source_replaced:
            # what creationData.sourceUniqueId recorded: a resource that no longer exists
            disk.source_unique_id = str(uuid.uuid4())
        self.add(disk)
        return disk

    def _vm_from_spec(self, rg: str, spec: VmSpec) -> Vm:
        vm = Vm(
            id=self.compute_id(rg, "virtualMachines", spec.name),
            name=spec.name,
            resource_group=rg,
            location=spec.location,
            tags=dict(spec.tags),
            provisioning_state=spec.provisioning_state,
            os=spec.os,
            size=spec.size,
            power=spec.power_state,
            generalized=spec.generalized,
            admin_user=spec.admin_user,
            vm_agent_status=spec.vm_agent_status,
            vm_agent_version=spec.vm_agent_version,
            encryption_at_host=spec.encryption_at_host,
            security_type=spec.security_type,
            hyper_v_generation=spec.hyper_v_generation,
            plan=dict(spec.plan) if spec.plan else None,
            os_type_reported=spec.os_type_reported,
            architecture=spec.architecture,
            guest_spec=dict(spec.guest),
            identity_imds=spec.identity.imds,
            identity_smbios=spec.identity.smbios,
            identity_vm_id=spec.identity.vm_id,
            extensions=[
                Extension(e.name, e.publisher, e.type, e.version, e.provisioning_state)
                for e in spec.extensions
            ],
        )
        os_disk = self._disk_from_spec(rg, spec.location, spec.os_disk, snapshot=False)
        os_disk.managed_by = vm.id
        os_disk.hyper_v_generation = spec.hyper_v_generation
        os_disk.architecture = spec.architecture
        # the guest writes its disk where it keeps the rest of its state (azsim.guests)
        os_disk.content_home = str(guest_home(rg, spec.name))
        os_disk.lineage = {
            "vm": vm.key,
            "admin_user": spec.admin_user,
            "os": spec.os,
            "guest": dict(spec.guest),
        }
        vm.os_disk = os_disk
        for data_spec in spec.data_disks:
            data = self._disk_from_spec(rg, spec.location, data_spec, snapshot=False)
            data.managed_by = vm.id
            vm.data_disks.append((data_spec.lun or 0, data))
        vm.nic = self.new_nic(rg, f"{spec.name}-nic", spec.location, vm.id)
        self.add(vm)
        return vm

    def new_nic(self, rg: str, name: str, location: str, vm_id: str | None) -> Nic:
        nic = Nic(
            id=self.network_id(rg, "networkInterfaces", name),
            name=name,
            resource_group=rg,
            location=location,
            vm_id=vm_id,
            subnet_id=self.network_id(rg, "virtualNetworks", f"{rg}-vnet") + "/subnets/default",
        )
        self.add(nic)
        return nic

    def _load(self, scenario: Scenario) -> None:
        for rg in scenario.resource_groups:
            self.resource_groups[rg.name.lower()] = (rg.name, rg.location, dict(rg.tags))
            for des in rg.disk_encryption_sets:
                self.add(
                    DiskEncryptionSet(
                        id=self.compute_id(rg.name, "diskEncryptionSets", des.name),
                        name=des.name,
                        resource_group=rg.name,
                        location=rg.location,
                        key_url=des.key_url,
                    )
                )
            for spec in rg.disks:
                self._disk_from_spec(rg.name, rg.location, spec, snapshot=False)
            for spec in rg.snapshots:
                self._disk_from_spec(rg.name, rg.location, spec, snapshot=True)
            for point in rg.restore_points:
                self.add(
                    DiskRestorePoint(
                        id=self.source_id(
                            rg.name, f"restore_points/{point.collection}/{point.point}/{point.name}"
                        ),
                        name=point.name,
                        resource_group=rg.name,
                        location=rg.location,
                        source_id=self.source_id(rg.name, point.source),
                    )
                )
            for vm_spec in rg.vms:
                self._vm_from_spec(rg.name, vm_spec)
            for gallery_spec in rg.galleries:
                gallery = Gallery(
                    id=self.compute_id(rg.name, "galleries", gallery_spec.name),
                    name=gallery_spec.name,
                    resource_group=rg.name,
                    location=rg.location,
                )
                self.add(gallery)
                for image in gallery_spec.images:
                    # a definition's spec names the same fields as the resource (plan copied)
                    fields = dataclasses.asdict(image)
                    self.add(
                        GalleryImage(
                            id=f"{gallery.id}/images/{image.name}",
                            resource_group=rg.name,
                            location=rg.location,
                            **fields,
                        )
                    )
        # Second pass: a source named in the scenario gives its unique id and its lineage; a
        # source that is named but absent models "the source was deleted".
        for resource in list(self.resources.values()):
            if isinstance(resource, Disk | DiskRestorePoint) and resource.source_id:
                source = self.get(resource.source_id)
                if isinstance(source, Disk) and resource.source_unique_id is None:
                    resource.source_unique_id = source.unique_id
                    if isinstance(resource, DiskRestorePoint):
                        resource.os = source.os
                        resource.hyper_v_generation = source.hyper_v_generation
        for resource in list(self.resources.values()):
            if isinstance(resource, Disk) and resource.lineage is None:
                resource.lineage = self.lineage_of(resource)

    def lineage_of(self, disk: Disk | DiskRestorePoint, depth: int = 0) -> dict[str, Any] | None:
        """The OS-disk lineage a copy inherits from its source chain (None if unknown)."""
        own = disk.lineage if isinstance(disk, Disk) else None
        if own is not None or depth > 8 or not disk.source_id:
            return own
        source = self.get(disk.source_id)
        return self.lineage_of(source, depth + 1) if isinstance(source, Disk | DiskRestorePoint) else None

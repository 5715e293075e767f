"""A virtual machine and its extensions, with the model and instance view ARM shows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from azsim.guestapi import Platform
from azsim.resources import COMPUTE, Disk, Nic, Resource, now_iso, status_entry

#: instance view wording of each power state
POWER_DISPLAY = {
    "running": "VM running",
    "stopped": "VM stopped",
    "deallocated": "VM deallocated",
    "starting": "VM starting",
    "stopping": "VM stopping",
    "deallocating": "VM deallocating",
}


@dataclass
class Extension:
    name: str
    publisher: str
    type: str
    version: str
    provisioning_state: str = "Succeeded"

    def to_arm(self, vm: Vm) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": f"{vm.id}/extensions/{self.name}",
            "type": f"{COMPUTE}/virtualMachines/extensions",
            "location": vm.location,
            "properties": {
                "autoUpgradeMinorVersion": True,
                "provisioningState": self.provisioning_state,
                "publisher": self.publisher,
                "type": self.type,
                "typeHandlerVersion": self.version,
                "settings": {},
            },
        }

    def instance_view(self) -> dict[str, Any]:
        state = self.provisioning_state.lower()
        return {
            "name": self.name,
            "type": f"{self.publisher}.{self.type}",
            "typeHandlerVersion": self.version,
            "statuses": [status_entry(f"ProvisioningState/{state}", f"Provisioning {state}")],
        }


@dataclass
class Vm(Resource):
    os: str = "Linux"
    size: str = "Standard_D2s_v5"
    vm_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    power: str = "running"
    generalized: bool = False
    admin_user: str = "azureuser"
    #: False for VMs created by attaching a specialized disk: ARM shows no osProfile then
    has_os_profile: bool = True
    vm_agent_status: str = "Ready"
    vm_agent_version: str = "2.7.3.0"
    os_disk: Disk | None = None
    data_disks: list[tuple[int, Disk]] = field(default_factory=list)
    extensions: list[Extension] = field(default_factory=list)
    nic: Nic | None = None
    encryption_at_host: bool = False
    security_type: str = "Standard"
    hyper_v_generation: str = "V2"
    plan: dict[str, str] | None = None
    #: False: the model leaves out the OS disk's osType (the scenario's os_type_reported)
    os_type_reported: bool = True
    architecture: str = "x64"
    guest_spec: dict[str, Any] = field(default_factory=dict)
    etag_counter: int = 1
    #: the kind of the operation in progress on this VM, if any
    busy: str | None = None
    #: what its guest learns about it, as a scenario staged it (``vms[].identity``)
    identity_imds: str = "reachable"
    identity_smbios: str = "as-is"
    identity_vm_id: str = ""

    def platform(self) -> Platform:
        """What the platform shows this VM's guest: IMDS ``compute`` and the SMBIOS UUID."""
        subscription = self.id.split("/")[2] if self.id.startswith("/subscriptions/") else ""
        return Platform(
            vm_id=self.vm_id,
            name=self.name,
            resource_id=self.id,
            resource_group=self.resource_group,
            subscription_id=subscription,
            location=self.location,
            vm_size=self.size,
            os_type=self.os,
            reported_vm_id=self.identity_vm_id,
            imds=self.identity_imds,
            smbios=self.identity_smbios,
        )

    @property
    def key(self) -> str:
        return f"{self.resource_group}/{self.name}"

    @property
    def etag(self) -> str:
        return f'"{self.etag_counter}"'

    def touch(self) -> None:
        """Every mutation changes the etag (If-Match leases rely on it)."""
        self.etag_counter += 1

    def end_operation(self, power: str, provisioning_state: str = "Succeeded") -> None:
        """The operation in progress has ended, leaving the VM ``power`` and ``provisioning_state``."""
        self.power = power
        self.provisioning_state = provisioning_state
        self.busy = None
        self.touch()

    def computer_name(self) -> str:
        hostname = self.guest_spec.get("hostname")
        return str(hostname) if hostname else self.name[:15]

    def _managed_disk(self, disk: Disk) -> dict[str, Any]:
        managed: dict[str, Any] = {"storageAccountType": "Premium_LRS", "id": disk.id}
        if disk.des_id:
            managed["diskEncryptionSet"] = {"id": disk.des_id}
        return managed

    def _storage_profile(self) -> dict[str, Any]:
        assert self.os_disk is not None
        disk = self.os_disk
        profile: dict[str, Any] = {}
        if disk.create_option == "FromImage" and disk.image:
            publisher, offer, sku, version = disk.image.split(":")
            profile["imageReference"] = {
                "publisher": publisher,
                "offer": offer,
                "sku": sku,
                "version": version,
                "exactVersion": "1.0.0" if version == "latest" else version,
            }
        profile["osDisk"] = {
            **({"osType": self.os} if self.os_type_reported else {}),
            "name": disk.name,
            "createOption": "FromImage" if disk.create_option == "FromImage" else "Attach",
            "caching": "ReadWrite",
            "managedDisk": self._managed_disk(disk),
            "deleteOption": "Detach",
            "diskSizeGB": disk.size_gb,
        }
        profile["dataDisks"] = [
            {
                "lun": lun,
                "name": data.name,
                "createOption": "Empty" if data.create_option == "Empty" else "Attach",
                "caching": "None",
                "managedDisk": self._managed_disk(data),
                "deleteOption": "Detach",
                "diskSizeGB": data.size_gb,
                "toBeDetached": False,
            }
            for lun, data in sorted(self.data_disks, key=lambda item: item[0])
        ]
        profile["diskControllerType"] = "SCSI"
        return profile

    def _os_profile(self, ssh_public_key: str) -> dict[str, Any]:
        profile: dict[str, Any] = {
            "computerName": self.computer_name(),
            "adminUsername": self.admin_user,
            "secrets": [],
            "allowExtensionOperations": True,
            "requireGuestProvisionSignal": True,
        }
        if self.os == "Linux":
            profile["linuxConfiguration"] = {
                "disablePasswordAuthentication": True,
                "ssh": {
                    "publicKeys": [
                        {
                            "path": f"/home/{self.admin_user}/.ssh/authorized_keys",
                            "keyData": ssh_public_key,
                        }
                    ]
                },
                "provisionVMAgent": True,
                "patchSettings": {"patchMode": "ImageDefault", "assessmentMode": "ImageDefault"},
            }
        else:
            profile["windowsConfiguration"] = {
                "provisionVMAgent": True,
                "enableAutomaticUpdates": True,
                "patchSettings": {"patchMode": "AutomaticByOS", "assessmentMode": "ImageDefault"},
            }
        return profile

    def instance_view(self, subscription: str, guest_os: dict[str, str] | None) -> dict[str, Any]:
        statuses = [
            status_entry(
                f"ProvisioningState/{self.provisioning_state.lower()}",
                f"Provisioning {self.provisioning_state.lower()}",
            )
        ]
        if self.generalized:
            statuses.append(status_entry("OSState/generalized", "VM generalized"))
        statuses.append(status_entry(f"PowerState/{self.power}", POWER_DISPLAY[self.power]))
        statuses[0]["time"] = self.time_created
        view: dict[str, Any] = {"computerName": self.computer_name()}
        if guest_os:
            view.update(guest_os)
        if self.power == "running":
            agent_ready = self.vm_agent_status == "Ready"
            view["vmAgent"] = {
                "vmAgentVersion": self.vm_agent_version if agent_ready else "Unknown",
                "statuses": [
                    {
                        "code": "ProvisioningState/succeeded",
                        "level": "Info" if agent_ready else "Warning",
                        "displayStatus": "Ready" if agent_ready else "Not Ready",
                        "message": "GuestAgent is running and processing the extensions."
                        if agent_ready
                        else "VM status blob is found but not yet populated.",
                        "time": now_iso(),
                    }
                ],
                "extensionHandlers": [
                    {
                        "type": f"{ext.publisher}.{ext.type}",
                        "typeHandlerVersion": ext.version,
                        "status": status_entry("ProvisioningState/succeeded", "Ready"),
                    }
                    for ext in self.extensions
                ],
            }
        disks = [self.os_disk] if self.os_disk else []
        disks += [disk for _, disk in sorted(self.data_disks, key=lambda item: item[0])]
        view["disks"] = []
        for disk in disks:
            entry: dict[str, Any] = {
                "name": disk.name,
                "statuses": [status_entry("ProvisioningState/succeeded", "Provisioning succeeded")],
            }
            if disk.ade:
                entry["encryptionSettings"] = [{"enabled": True}]
            view["disks"].append(entry)
        view["hyperVGeneration"] = self.hyper_v_generation
        view["extensions"] = [ext.instance_view() for ext in self.extensions]
        view["statuses"] = statuses
        return view

    def to_arm(
        self,
        subscription: str,
        ssh_public_key: str,
        *,
        instance_view: bool = False,
        guest_os: dict[str, str] | None = None,
        listed: bool = False,
    ) -> dict[str, Any]:
        """The VM as GET shows it; ``listed``: as a list shows it, where ARM names each child
        extension by its id only (real clients rely on it: azure-cli's ``vm list`` flattens an
        extension's properties and would meet two ``type`` keys; see docs/azsim-rules.md)."""
        body = self.envelope(f"{COMPUTE}/virtualMachines")
        body["etag"] = self.etag
        if self.plan:
            body["plan"] = dict(self.plan)
        props: dict[str, Any] = {
            "vmId": self.vm_id,
            "hardwareProfile": {"vmSize": self.size},
            "storageProfile": self._storage_profile(),
        }
        if self.has_os_profile:
            props["osProfile"] = self._os_profile(ssh_public_key)
        security: dict[str, Any] = {}
        if self.encryption_at_host:
            security["encryptionAtHost"] = True
        if self.security_type != "Standard":
            security["securityType"] = self.security_type
            security["uefiSettings"] = {"secureBootEnabled": True, "vTpmEnabled": True}
        if security:
            props["securityProfile"] = security
        if self.nic is not None:
            props["networkProfile"] = {
                "networkInterfaces": [{"id": self.nic.id, "properties": {"primary": True}}]
            }
        props["diagnosticsProfile"] = {"bootDiagnostics": {"enabled": True}}
        props["provisioningState"] = self.provisioning_state
        props["timeCreated"] = self.time_created
        if instance_view:
            props["instanceView"] = self.instance_view(subscription, guest_os)
        body["properties"] = props
        if listed:
            body["resources"] = [{"id": f"{self.id}/extensions/{ext.name}"} for ext in self.extensions]
        else:
            body["resources"] = [ext.to_arm(self) for ext in self.extensions]
        return body

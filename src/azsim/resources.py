"""ARM resources other than VMs, and the JSON ARM shows for each (REST examples in
``shared/azure-examples``): disks and snapshots, disk encryption sets, network interfaces,
images, galleries, gallery image definitions and versions.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass, field
from typing import Any

COMPUTE = "Microsoft.Compute"
ENCRYPTION_TYPES = {
    "platform": "EncryptionAtRestWithPlatformKey",
    "customer": "EncryptionAtRestWithCustomerKey",
}


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


def status_entry(code: str, display: str) -> dict[str, str]:
    """One entry of an instance view's ``statuses``."""
    return {"code": code, "level": "Info", "displayStatus": display}


@dataclass
class Resource:
    """Common ARM envelope fields."""

    id: str
    name: str
    resource_group: str
    location: str
    tags: dict[str, str] = field(default_factory=dict)
    provisioning_state: str = "Succeeded"
    time_created: str = field(default_factory=now_iso)

    def envelope(self, type_name: str, properties: dict[str, Any] | None = None) -> dict[str, Any]:
        """The fields every resource shows, then its ``properties`` when given."""
        body: dict[str, Any] = {
            "name": self.name,
            "id": self.id,
            "type": type_name,
            "location": self.location,
            "tags": dict(self.tags),
        }
        if properties is not None:
            body["properties"] = properties
        return body


@dataclass
class DiskEncryptionSet(Resource):
    key_url: str = ""
    principal_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_arm(self, tenant: str) -> dict[str, Any]:
        body = self.envelope(f"{COMPUTE}/diskEncryptionSets")
        vault = self.id.split("/providers/")[0] + "/providers/Microsoft.KeyVault/vaults/azsim-vault"
        body["identity"] = {
            "type": "SystemAssigned",
            "principalId": self.principal_id,
            "tenantId": tenant,
        }
        body["properties"] = {
            "encryptionType": "EncryptionAtRestWithCustomerKey",
            "activeKey": {"keyUrl": self.key_url, "sourceVault": {"id": vault}},
            "provisioningState": self.provisioning_state,
        }
        return body


@dataclass
class DiskRestorePoint(Resource):
    """A disk restore point: the read-only record of one disk in a VM restore point
    (``restorePointCollections/C/restorePoints/P/diskRestorePoints/NAME``). Its
    ``properties.sourceResourceId`` names the disk it was taken of, and ``sourceUniqueId`` that
    disk's uniqueId (REST example DiskRestorePoint_Get, Microsoft.Compute DiskRP 2023-10-02). A
    disk made from it has createOption Restore ("copying from a backup recovery point")."""

    source_id: str = ""
    source_unique_id: str | None = None
    os: str | None = None
    hyper_v_generation: str | None = None
    family_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def to_arm(self) -> dict[str, Any]:
        props: dict[str, Any] = {"timeCreated": self.time_created, "sourceResourceId": self.source_id}
        if self.os:
            props["osType"] = self.os
        if self.hyper_v_generation:
            props["hyperVGeneration"] = self.hyper_v_generation
        props["familyId"] = self.family_id
        if self.source_unique_id:
            props["sourceUniqueId"] = self.source_unique_id
        props["networkAccessPolicy"] = "AllowAll"
        props["publicNetworkAccess"] = "Disabled"
        return {
            "id": self.id,
            "name": self.name,
            "type": f"{COMPUTE}/restorePointCollections/restorePoints/diskRestorePoints",
            "properties": props,
        }


@dataclass
class Disk(Resource):
    """A managed disk (``snapshot=False``) or a snapshot."""

    snapshot: bool = False
    size_gb: int = 30
    os: str | None = None
    hyper_v_generation: str | None = None
    create_option: str = "Empty"
    source_id: str | None = None
    source_unique_id: str | None = None
    image: str | None = None
    encryption: str = "platform"
    des_id: str | None = None
    ade: bool = False
    managed_by: str | None = None
    unique_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: which VM's OS disk this content came from: {"vm", "admin_user", "os", "guest"}
    lineage: dict[str, Any] | None = None
    #: where its guest content lives, relative to azsim's state directory (azsim.guestapi)
    content_home: str | None = None
    #: x64 | Arm64 for an OS disk (DiskRP's supportedCapabilities.architecture); None: not shown
    architecture: str | None = None

    def creation_data(self, subscription: str) -> dict[str, Any]:
        data: dict[str, Any] = {"createOption": self.create_option}
        if self.create_option == "FromImage" and self.image:
            publisher, offer, sku, version = self.image.split(":")
            data["imageReference"] = {
                "id": f"/Subscriptions/{subscription}/Providers/{COMPUTE}/Locations/{self.location}"
                f"/Publishers/{publisher}/ArtifactTypes/VMImage/Offers/{offer}/Skus/{sku}"
                f"/Versions/{version}"
            }
        elif self.create_option in ("Copy", "Restore") and self.source_id:
            data["sourceResourceId"] = self.source_id
            if self.source_unique_id:
                data["sourceUniqueId"] = self.source_unique_id
        elif self.create_option == "Import":
            data["sourceUri"] = f"https://azsimimports.blob.core.windows.net/vhds/{self.name}.vhd"
        return data

    def encryption_block(self) -> dict[str, Any] | None:
        if self.encryption == "none":
            return None
        block: dict[str, Any] = {"type": ENCRYPTION_TYPES[self.encryption]}
        if self.des_id:
            block["diskEncryptionSetId"] = self.des_id
        return block

    def ade_block(self, subscription: str) -> dict[str, Any]:
        vault = (
            f"/subscriptions/{subscription}/resourceGroups/{self.resource_group}"
            "/providers/Microsoft.KeyVault/vaults/azsim-vault"
        )
        return {
            "enabled": True,
            "encryptionSettings": [
                {
                    "diskEncryptionKey": {
                        "sourceVault": {"id": vault},
                        "secretUrl": f"https://azsim-vault.vault.azure.net/secrets/{self.unique_id}",
                    },
                    "keyEncryptionKey": {
                        "sourceVault": {"id": vault},
                        "keyUrl": "https://azsim-vault.vault.azure.net/keys/ade-kek/1",
                    },
                }
            ],
            "encryptionSettingsVersion": "1.1",
        }

    def to_arm(self, subscription: str) -> dict[str, Any]:
        kind = "snapshots" if self.snapshot else "disks"
        body = self.envelope(f"{COMPUTE}/{kind}")
        if self.managed_by and not self.snapshot:
            body["managedBy"] = self.managed_by
        body["sku"] = (
            {"name": "Standard_LRS", "tier": "Standard"}
            if self.snapshot
            else {"name": "Premium_LRS", "tier": "Premium"}
        )
        props: dict[str, Any] = {}
        if self.os:
            props["osType"] = self.os
        if self.hyper_v_generation:
            props["hyperVGeneration"] = self.hyper_v_generation
        if self.architecture:
            props["supportedCapabilities"] = {"architecture": self.architecture}
        props["creationData"] = self.creation_data(subscription)
        props["diskSizeGB"] = self.size_gb
        props["diskSizeBytes"] = self.size_gb * 1024**3
        props["uniqueId"] = self.unique_id
        encryption = self.encryption_block()
        if encryption:
            props["encryption"] = encryption
        if self.ade:
            props["encryptionSettingsCollection"] = self.ade_block(subscription)
        props["networkAccessPolicy"] = "AllowAll"
        props["publicNetworkAccess"] = "Enabled"
        props["timeCreated"] = self.time_created
        props["provisioningState"] = self.provisioning_state
        if self.snapshot:
            props["incremental"] = False
        else:
            props["diskState"] = "Attached" if self.managed_by else "Unattached"
        body["properties"] = props
        return body


@dataclass
class Nic(Resource):
    vm_id: str | None = None
    mac: str = field(
        default_factory=lambda: "00-0D-3A-" + "-".join(uuid.uuid4().hex[i : i + 2].upper() for i in (0, 2, 4))
    )
    subnet_id: str = ""
    etag: str = field(default_factory=lambda: f'W/"{uuid.uuid4()}"')

    def to_arm(self) -> dict[str, Any]:
        body = self.envelope("Microsoft.Network/networkInterfaces")
        body["etag"] = self.etag
        props: dict[str, Any] = {
            "provisioningState": self.provisioning_state,
            "resourceGuid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.id.lower())),
            "ipConfigurations": [
                {
                    "name": "ipconfig1",
                    "id": f"{self.id}/ipConfigurations/ipconfig1",
                    "etag": self.etag,
                    "type": "Microsoft.Network/networkInterfaces/ipConfigurations",
                    "properties": {
                        "provisioningState": "Succeeded",
                        # the guest's endpoints listen on loopback (IMAGEREADY_GUEST_ADDRESSES
                        # maps each VM to its port)
                        "privateIPAddress": "127.0.0.1",
                        "privateIPAllocationMethod": "Dynamic",
                        "subnet": {"id": self.subnet_id},
                        "primary": True,
                        "privateIPAddressVersion": "IPv4",
                    },
                }
            ],
            "dnsSettings": {"dnsServers": [], "appliedDnsServers": []},
            "macAddress": self.mac,
            "enableAcceleratedNetworking": False,
            "enableIPForwarding": False,
            "primary": True,
            "nicType": "Standard",
        }
        if self.vm_id:
            props["virtualMachine"] = {"id": self.vm_id}
        body["properties"] = props
        return body


@dataclass
class Image(Resource):
    source_vm_id: str = ""
    os: str = "Linux"
    os_disk_id: str = ""
    os_disk_size_gb: int = 30
    data_disks: list[tuple[int, str, int]] = field(default_factory=list)
    hyper_v_generation: str = "V2"

    def to_arm(self) -> dict[str, Any]:
        return self.envelope(
            f"{COMPUTE}/images",
            {
                "sourceVirtualMachine": {"id": self.source_vm_id},
                "storageProfile": {
                    "osDisk": {
                        "osType": self.os,
                        "osState": "Generalized",
                        "managedDisk": {"id": self.os_disk_id},
                        "caching": "ReadWrite",
                        "diskSizeGB": self.os_disk_size_gb,
                        "storageAccountType": "Premium_LRS",
                    },
                    "dataDisks": [
                        {"lun": lun, "managedDisk": {"id": disk_id}, "diskSizeGB": size}
                        for lun, disk_id, size in self.data_disks
                    ],
                    "zoneResilient": False,
                },
                "provisioningState": self.provisioning_state,
                "hyperVGeneration": self.hyper_v_generation,
            },
        )


@dataclass
class Gallery(Resource):
    def to_arm(self, subscription: str) -> dict[str, Any]:
        return self.envelope(
            f"{COMPUTE}/galleries",
            {
                "identifier": {"uniqueName": f"{subscription}-{self.name.upper()}"},
                "provisioningState": self.provisioning_state,
            },
        )


@dataclass
class GalleryImage(Resource):
    os: str = "Linux"
    os_state: str = "Generalized"
    hyper_v_generation: str = "V2"
    publisher: str = ""
    offer: str = ""
    sku: str = ""
    #: the SecurityType feature (None: the definition declares none, i.e. Standard)
    security_type: str | None = None
    architecture: str = "x64"
    plan: dict[str, str] | None = None

    def to_arm(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "osType": self.os,
            "osState": self.os_state,
            "hyperVGeneration": self.hyper_v_generation,
            "architecture": self.architecture,
            "identifier": {"publisher": self.publisher, "offer": self.offer, "sku": self.sku},
            "provisioningState": self.provisioning_state,
        }
        if self.security_type:
            props["features"] = [{"name": "SecurityType", "value": self.security_type}]
        if self.plan:
            props["purchasePlan"] = dict(self.plan)
        return self.envelope(f"{COMPUTE}/galleries/images", props)


@dataclass
class GalleryImageVersion(Resource):
    source_vm_id: str = ""
    os_disk_size_gb: int = 30
    data_disks: list[tuple[int, int]] = field(default_factory=list)
    target_regions: list[dict[str, Any]] = field(default_factory=list)
    exclude_from_latest: bool = False

    def to_arm(self) -> dict[str, Any]:
        return self.envelope(
            f"{COMPUTE}/galleries/images/versions",
            {
                "publishingProfile": {
                    "targetRegions": self.target_regions,
                    "replicaCount": 1,
                    "excludeFromLatest": self.exclude_from_latest,
                    "publishedDate": self.time_created,
                    "storageAccountType": "Standard_LRS",
                },
                "storageProfile": {
                    "source": {"virtualMachineId": self.source_vm_id},
                    "osDiskImage": {"sizeInGB": self.os_disk_size_gb, "hostCaching": "ReadWrite"},
                    "dataDiskImages": [
                        {"lun": lun, "sizeInGB": size, "hostCaching": "None"} for lun, size in self.data_disks
                    ],
                },
                "safetyProfile": {"allowDeletionOfReplicatedLocations": True},
                "provisioningState": self.provisioning_state,
            },
        )

"""The resource groups of a scenario: their VMs (with their disks, extensions, guest and identity),
disks, snapshots, galleries, disk encryption sets and disk restore points, as typed specs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from azsim.guestapi import IMDS_MODES, SMBIOS_MODES
from azsim.scenario_reader import Reader, ScenarioError

_CREATE_OPTIONS = ("Copy", "Restore", "Import", "FromImage", "Empty", "Attach")


@dataclass(frozen=True)
class DiskSpec:
    """A managed disk or snapshot (also a VM's OS or data disk)."""

    name: str
    size_gb: int = 30
    create_option: str = "FromImage"
    #: "snapshots/NAME", "disks/NAME" or "restore_points/COLLECTION/POINT/NAME" (a disk restore
    #: point) in the same resource group
    source: str | None = None
    image: str | None = None  # "Publisher:Offer:Sku:Version"
    os: str | None = None  # Linux | Windows | None (data disks)
    encryption: str = "platform"  # platform | customer | none
    disk_encryption_set: str | None = None
    ade: bool = False
    lun: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    hyper_v_generation: str | None = None
    #: the source was deleted and another resource made under its name since this one was
    #: copied: creationData.sourceUniqueId names the old one, not the resource found now
    source_replaced: bool = False


@dataclass(frozen=True)
class ExtensionSpec:
    name: str
    publisher: str
    type: str
    version: str
    provisioning_state: str = "Succeeded"


@dataclass(frozen=True)
class VmSpec:
    name: str
    os: str
    size: str
    location: str
    tags: dict[str, str]
    provisioning_state: str
    power_state: str
    generalized: bool
    admin_user: str
    vm_agent_status: str
    vm_agent_version: str
    os_disk: DiskSpec
    data_disks: tuple[DiskSpec, ...]
    extensions: tuple[ExtensionSpec, ...]
    guest: dict[str, Any]
    encryption_at_host: bool
    security_type: str
    hyper_v_generation: str
    plan: dict[str, str] | None
    #: False: the VM model leaves out storageProfile.osDisk.osType (an OS type Azure does not know)
    os_type_reported: bool = True
    #: x64 | Arm64: what the VM size runs; ARM shows it on the OS disk (supportedCapabilities)
    architecture: str = "x64"
    #: what the guest learns about its VM (IMDS, SMBIOS); staging, see ``identity`` in the README
    identity: IdentitySpec = field(default_factory=lambda: IdentitySpec())


@dataclass(frozen=True)
class IdentitySpec:
    """``vms[].identity``: IMDS reachable or not, the SMBIOS UUID as-is, swapped or unreadable,
    and a vmId the guest is shown instead of its own (a guest that is another VM)."""

    imds: str = "reachable"
    smbios: str = "as-is"
    vm_id: str = ""


#: the SecurityType feature values an image definition may declare (Microsoft's "Store and share
#: images in an Azure Compute Gallery", image definitions); None: no SecurityType feature
GALLERY_SECURITY_TYPES = (
    "TrustedLaunch",
    "ConfidentialVM",
    "TrustedLaunchSupported",
    "ConfidentialVMSupported",
    "TrustedLaunchAndConfidentialVmSupported",
)


@dataclass(frozen=True)
class GalleryImageSpec:
    name: str
    os: str
    os_state: str
    hyper_v_generation: str
    publisher: str
    offer: str
    sku: str
    security_type: str | None = None
    architecture: str = "x64"
    #: purchasePlan {name, publisher, product}, for images of Marketplace images with a plan
    plan: dict[str, str] | None = None


@dataclass(frozen=True)
class GallerySpec:
    name: str
    images: tuple[GalleryImageSpec, ...]


@dataclass(frozen=True)
class DiskEncryptionSetSpec:
    name: str
    key_url: str


@dataclass(frozen=True)
class ResourceGroupSpec:
    name: str
    location: str
    tags: dict[str, str]
    vms: tuple[VmSpec, ...]
    disks: tuple[DiskSpec, ...]
    snapshots: tuple[DiskSpec, ...]
    galleries: tuple[GallerySpec, ...]
    disk_encryption_sets: tuple[DiskEncryptionSetSpec, ...]
    restore_points: tuple[DiskRestorePointSpec, ...] = ()


@dataclass(frozen=True)
class DiskRestorePointSpec:
    """A disk restore point (restorePointCollections/C/restorePoints/P/diskRestorePoints/NAME)
    taken of ``source`` ("disks/NAME"; named but absent: the disk was deleted since)."""

    collection: str
    point: str
    name: str
    source: str


def _plan(r: Reader) -> dict[str, str] | None:
    """A Marketplace purchase plan (a VM's, an image definition's): name, publisher and product."""
    plan = r.strings("plan") or None
    if plan is not None and set(plan) != {"name", "publisher", "product"}:
        raise ScenarioError(f"{r.where('plan')}: expected exactly name, publisher and product")
    return plan


def _disk(data: Any, where: str, *, os_default: str | None, lun: bool = False) -> DiskSpec:
    r = Reader(data, where)
    name = r.name()
    create_option = r.text("create_option", "Empty" if lun else "FromImage", choices=_CREATE_OPTIONS)
    source = r.optional_text("source")
    if source is not None and not re.match(
        r"^((snapshots|disks)/[^/]+|restore_points/[^/]+/[^/]+/[^/]+)$", source
    ):
        raise ScenarioError(
            f"{r.where('source')}: expected snapshots/NAME, disks/NAME or "
            f"restore_points/COLLECTION/POINT/NAME, got {source!r}"
        )
    image = r.optional_text("image")
    if image is not None and len(image.split(":")) != 4:
        raise ScenarioError(f"{r.where('image')}: expected Publisher:Offer:Sku:Version, got {image!r}")
    os_value = r.text("os", os_default or "None", choices=("Linux", "Windows", "None"))
    encryption = r.text("encryption", "platform", choices=("platform", "customer", "none"))
    des = r.optional_text("disk_encryption_set")
    if encryption == "customer" and des is None:
        raise ScenarioError(f"{r.where('disk_encryption_set')}: required for encryption: customer")
    spec = DiskSpec(
        name=name,
        size_gb=r.integer("size_gb", 30, minimum=1),
        create_option=create_option,
        source=source,
        image=image,
        os=None if os_value == "None" else os_value,
        encryption=encryption,
        disk_encryption_set=des,
        ade=r.flag("ade", False),
        lun=r.integer("lun", 0) if lun else None,
        tags=r.strings("tags"),
        hyper_v_generation=r.optional_text("hyper_v_generation"),
        source_replaced=r.flag("source_replaced", False),
    )
    r.done()
    return spec


def _vm(data: Any, where: str, rg_location: str) -> VmSpec:
    r = Reader(data, where)
    name = r.name()
    os_type = r.text("os", choices=("Linux", "Windows"))
    agent = r.child("vm_agent")
    agent_status = agent.text("status", "Ready", choices=("Ready", "NotReady", "Unknown"))
    agent_version = agent.text("version", "2.7.3.0" if os_type == "Linux" else "2.7.41491.1102")
    agent.done()
    os_disk_data = dict(r.mapping("os_disk"))
    os_disk_data.setdefault("name", f"{name}-osdisk")
    os_disk = _disk(os_disk_data, r.where("os_disk"), os_default=os_type)
    if os_disk.os != os_type:
        raise ScenarioError(f"{r.where('os_disk')}.os: {os_disk.os} on a {os_type} VM")
    data_disks = tuple(
        _disk(item, f"{r.where('data_disks')}[{i}]", os_default=None, lun=True)
        for i, item in enumerate(r.items("data_disks"))
    )
    luns = [d.lun for d in data_disks]
    if len(set(luns)) != len(luns):
        raise ScenarioError(f"{r.where('data_disks')}: two data disks share a lun ({luns})")
    extensions = []
    for i, item in enumerate(r.items("extensions")):
        e = Reader(item, f"{r.where('extensions')}[{i}]")
        extensions.append(
            ExtensionSpec(
                name=e.name(),
                publisher=e.text("publisher"),
                type=e.text("type"),
                version=e.text("version"),
                provisioning_state=e.text(
                    "provisioning_state", "Succeeded", choices=("Succeeded", "Failed", "Creating")
                ),
            )
        )
        e.done()
    plan = _plan(r)
    power_state = r.text("power_state", "running", choices=("running", "stopped", "deallocated"))
    generalized = r.flag("generalized", False)
    if generalized and power_state == "running":
        raise ScenarioError(f"{where}: a generalized VM cannot be running (Azure never starts one)")
    spec = VmSpec(
        name=name,
        os=os_type,
        size=r.text("size", "Standard_D2s_v5"),
        location=r.text("location", rg_location),
        tags=r.strings("tags"),
        provisioning_state=r.text(
            "provisioning_state", "Succeeded", choices=("Succeeded", "Failed", "Creating")
        ),
        power_state=power_state,
        generalized=generalized,
        admin_user=r.text("admin_user", "azureuser"),
        vm_agent_status=agent_status,
        vm_agent_version=agent_version,
        os_disk=os_disk,
        data_disks=data_disks,
        extensions=tuple(extensions),
        guest=r.mapping("guest"),
        encryption_at_host=r.flag("encryption_at_host", False),
        security_type=r.text(
            "security_type", "Standard", choices=("Standard", "TrustedLaunch", "ConfidentialVM")
        ),
        hyper_v_generation=r.text("hyper_v_generation", "V2", choices=("V1", "V2")),
        plan=plan,
        os_type_reported=r.flag("os_type_reported", True),
        architecture=r.text("architecture", "x64", choices=("x64", "Arm64")),
        identity=_identity(r.child("identity")),
    )
    r.done()
    return spec


def _identity(r: Reader) -> IdentitySpec:
    spec = IdentitySpec(
        imds=r.text("imds", "reachable", choices=IMDS_MODES),
        smbios=r.text("smbios", "as-is", choices=SMBIOS_MODES),
        vm_id=r.guid("vm_id", "") if r.has("vm_id") else "",
    )
    r.done()
    return spec


def _gallery(data: Any, where: str) -> GallerySpec:
    r = Reader(data, where)
    images = []
    for i, item in enumerate(r.items("images")):
        g = Reader(item, f"{r.where('images')}[{i}]")
        plan = _plan(g)
        security = g.optional_text("security_type")
        if security is not None and security not in GALLERY_SECURITY_TYPES:
            allowed = ", ".join(GALLERY_SECURITY_TYPES)
            raise ScenarioError(f"{g.where('security_type')}: expected one of {allowed}, got {security!r}")
        images.append(
            GalleryImageSpec(
                name=g.name(),
                os=g.text("os", choices=("Linux", "Windows")),
                os_state=g.text("os_state", "Generalized", choices=("Generalized", "Specialized")),
                hyper_v_generation=g.text("hyper_v_generation", "V2", choices=("V1", "V2")),
                publisher=g.text("publisher", "imageready"),
                offer=g.text("offer", "azsim"),
                sku=g.text("sku", g.data.get("name", "image")),
                security_type=security,
                architecture=g.text("architecture", "x64", choices=("x64", "Arm64")),
                plan=plan,
            )
        )
        g.done()
    spec = GallerySpec(name=r.name(), images=tuple(images))
    r.done()
    return spec


def parse_resource_group(data: Any, where: str) -> ResourceGroupSpec:
    r = Reader(data, where)
    name = r.rg_name()
    location = r.text("location", "westeurope")
    vms = tuple(_vm(item, f"{r.where('vms')}[{i}]", location) for i, item in enumerate(r.items("vms")))
    disks = tuple(
        _disk(item, f"{r.where('disks')}[{i}]", os_default=None) for i, item in enumerate(r.items("disks"))
    )
    snapshots = tuple(
        _disk(item, f"{r.where('snapshots')}[{i}]", os_default=None)
        for i, item in enumerate(r.items("snapshots"))
    )
    galleries = tuple(
        _gallery(item, f"{r.where('galleries')}[{i}]") for i, item in enumerate(r.items("galleries"))
    )
    des_list = []
    for i, item in enumerate(r.items("disk_encryption_sets")):
        d = Reader(item, f"{r.where('disk_encryption_sets')}[{i}]")
        des_name = d.name()
        des_list.append(
            DiskEncryptionSetSpec(
                name=des_name,
                key_url=d.text("key_url", f"https://azsim-vault.vault.azure.net/keys/{des_name}/1"),
            )
        )
        d.done()
    points = []
    for i, item in enumerate(r.items("restore_points")):
        p = Reader(item, f"{r.where('restore_points')}[{i}]")
        point = DiskRestorePointSpec(
            collection=p.text("collection"), point=p.text("point"), name=p.name(), source=p.text("source")
        )
        if not re.match(r"^disks/[^/]+$", point.source):
            raise ScenarioError(f"{p.where('source')}: expected disks/NAME, got {point.source!r}")
        points.append(point)
        p.done()
    spec = ResourceGroupSpec(
        name=name,
        location=location,
        tags=r.strings("tags"),
        vms=vms,
        disks=disks,
        snapshots=snapshots,
        galleries=galleries,
        disk_encryption_sets=tuple(des_list),
        restore_points=tuple(points),
    )
    r.done()
    _check_names(spec, where)
    return spec


def _check_names(rg: ResourceGroupSpec, where: str) -> None:
    """Names unique per type (case-insensitively, as in ARM) and DES references resolvable."""
    vm_disks = [vm.os_disk for vm in rg.vms] + [d for vm in rg.vms for d in vm.data_disks]
    for label, names in (
        ("vm", [vm.name for vm in rg.vms]),
        ("disk", [d.name for d in (*rg.disks, *vm_disks)]),
        ("snapshot", [s.name for s in rg.snapshots]),
        ("gallery", [g.name for g in rg.galleries]),
    ):
        seen: set[str] = set()
        for name in names:
            if name.lower() in seen:
                raise ScenarioError(f"{where}: two {label}s named {name!r}")
            seen.add(name.lower())
    des_names = {d.name.lower() for d in rg.disk_encryption_sets}
    for disk in (*rg.disks, *rg.snapshots, *vm_disks):
        if disk.disk_encryption_set and disk.disk_encryption_set.lower() not in des_names:
            raise ScenarioError(
                f"{where}: disk {disk.name!r} names disk_encryption_set "
                f"{disk.disk_encryption_set!r}, which is not in disk_encryption_sets"
            )

"""Scenario files: load, validate, and turn into typed specs (schema: scenarios/README.md).

Every mapping is read through :class:`_Reader`, which refuses keys it was not asked for, so a typo
(``sise_gb``) is an error naming its path instead of a silently different test.
"""

from __future__ import annotations

import fnmatch
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from azsim.faults import Fault, FaultError, parse_fault
from azsim.guestapi import IMDS_MODES, SMBIOS_MODES
from azsim.throttling import Limits, ThrottlingError, parse_limits

DEFAULT_TENANT = "11111111-2222-3333-4444-555555555555"
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
DEFAULT_CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
DEFAULT_OBJECT_ID = "99999999-8888-7777-6666-555555555555"
#: seconds each kind of operation takes unless the scenario says otherwise
DEFAULT_TIMINGS = {
    "deallocate": 0.2,
    "power_off": 0.2,
    "start": 0.2,
    "restart": 0.2,
    "run_command": 0.2,
    "create": 0.2,
    "delete": 0.2,
    # ARM waits this long for an operation to finish before answering 202 (see README)
    "settle": 0.5,
}
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9_.()\-]{1,90}$")
#: Char.IsLetterOrDigit: the Unicode letter categories and decimal digits
_LETTER_OR_DIGIT = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd"})


def valid_resource_group_name(name: str) -> bool:
    """Microsoft, "Naming rules and restrictions for Azure resources" (resourcegroups): 1-90
    underscores, hyphens, periods, parentheses, and letters or digits as defined by
    Char.IsLetterOrDigit; can't end with a period."""
    return (
        0 < len(name) <= 90
        and not name.endswith(".")
        and all(c in "_-.()" or unicodedata.category(c) in _LETTER_OR_DIGIT for c in name)
    )


_CREATE_OPTIONS = ("Copy", "Restore", "Import", "FromImage", "Empty", "Attach")


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message is one line naming the file and path."""


class _Reader:
    """Typed access to one mapping of the scenario; ``done()`` rejects keys nobody read."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(f"{path}: expected a mapping, got {type(data).__name__}")
        self.data = data
        self.path = path
        self._read: set[str] = set()

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self.data.get(key)

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def skip(self, key: str) -> None:
        """Accept ``key`` without reading it."""
        self._read.add(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def text(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                raise ScenarioError(f"{self.where(key)}: required")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ScenarioError(f"{self.where(key)}: expected a string, got {value!r}")
        value = str(value)
        if choices and value not in choices:
            raise ScenarioError(f"{self.where(key)}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def optional_text(self, key: str) -> str | None:
        """The value as a string, or None when the key is absent or empty."""
        if self.data.get(key) is None:
            self._read.add(key)
            return None
        return self.text(key) or None

    def guid(self, key: str, default: str) -> str:
        value = self.text(key, default)
        if not _GUID.match(value):
            raise ScenarioError(f"{self.where(key)}: expected a GUID, got {value!r}")
        return value.lower()

    def name(self, key: str = "name") -> str:
        value = self.text(key)
        if not _NAME.match(value) or value.endswith("."):
            raise ScenarioError(f"{self.where(key)}: {value!r} is not a valid Azure resource name")
        return value

    def rg_name(self, key: str = "name") -> str:
        """A resource group's name: Unicode letters and digits too (docs/azsim-rules.md, NAME-1)."""
        value = self.text(key)
        if not valid_resource_group_name(value):
            raise ScenarioError(f"{self.where(key)}: {value!r} is not a valid resource group name")
        return value

    def number(self, key: str, default: float, *, minimum: float = 0) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ScenarioError(f"{self.where(key)}: expected a number >= {minimum}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ScenarioError(f"{self.where(key)}: expected a whole number >= {minimum}, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.where(key)}: expected true or false, got {value!r}")
        return value

    def items(self, key: str) -> list[Any]:
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ScenarioError(f"{self.where(key)}: expected a list, got {type(value).__name__}")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ScenarioError(f"{self.where(key)}: expected a mapping, got {type(value).__name__}")
        return dict(value)

    def strings(self, key: str) -> dict[str, str]:
        result = {}
        for name, value in self.mapping(key).items():
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ScenarioError(f"{self.where(key)}.{name}: expected a string, got {value!r}")
            result[str(name)] = str(value)
        return result

    def child(self, key: str) -> _Reader:
        return _Reader(self.mapping(key), self.where(key))

    def done(self) -> None:
        for key in self.data:
            if key not in self._read:
                raise ScenarioError(f"{self.where(str(key))}: unknown key")


@dataclass(frozen=True)
class Principal:
    client_id: str
    object_id: str
    display_name: str
    denied_actions: tuple[str, ...]
    #: from `role_definitions` (Azure custom role JSON files): the actions granted, None = all
    allowed_actions: tuple[str, ...] | None = None
    not_actions: tuple[str, ...] = ()

    def may(self, action: str) -> bool:
        """Whether the principal's role definitions grant ``action`` (Azure's wildcards)."""
        wanted = action.lower()
        if wanted in {a.lower() for a in self.denied_actions}:
            return False
        if self.allowed_actions is None:
            return True
        granted = any(fnmatch.fnmatchcase(wanted, pattern.lower()) for pattern in self.allowed_actions)
        return granted and not any(fnmatch.fnmatchcase(wanted, p.lower()) for p in self.not_actions)


def _role_definitions(files: list[Any], base: Path, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Actions and NotActions of Azure custom role definition files (paths relative to the scenario)."""
    actions: list[str] = []
    not_actions: list[str] = []
    for entry in files:
        path = (base / str(entry)).resolve()
        try:
            role = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ScenarioError(f"{where}: role definition {entry}: {err}") from None
        actions += [str(a) for a in role.get("Actions") or role.get("actions") or []]
        not_actions += [str(a) for a in role.get("NotActions") or role.get("notActions") or []]
    return tuple(actions), tuple(not_actions)


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


@dataclass(frozen=True)
class MarketplaceImageSpec:
    """A platform image a VM may be created from, with what Azure shows of it (REST reference,
    Virtual Machine Images - Get: ``hyperVGeneration``, ``architecture``, the OS disk image)."""

    urn: str  # Publisher:Offer:Sku:Version ("latest" matches any requested version)
    os: str
    hyper_v_generation: str = "V2"
    architecture: str = "x64"
    size_gb: int = 30

    def matches(self, publisher: str, offer: str, sku: str, version: str) -> bool:
        mine = self.urn.lower().split(":")
        theirs = [publisher.lower(), offer.lower(), sku.lower(), version.lower()]
        return mine[:3] == theirs[:3] and (mine[3] == theirs[3] or "latest" in (mine[3], theirs[3]))


@dataclass(frozen=True)
class Scenario:
    source: str
    tenant: str
    subscription_id: str
    subscription_name: str
    principal: Principal
    guests: bool
    timings: dict[str, float]
    token_lifetime: int
    faults: tuple[Fault, ...]
    resource_groups: tuple[ResourceGroupSpec, ...]
    #: ``guest_addresses.swapped``: pairs of "rg/name" whose entries the address map the env
    #: file exports are exchanged (an operator's mistake; Azure has no part in it)
    swapped_addresses: tuple[tuple[str, str], ...] = ()
    #: platform images a VM may be created from (``marketplace:``); none: no VM from an image
    marketplace: tuple[MarketplaceImageSpec, ...] = ()
    #: ARM's request limits (azsim.throttling); Azure's own unless the scenario says otherwise
    throttling: Limits = field(default_factory=Limits)

    def vm_specs(self) -> list[tuple[ResourceGroupSpec, VmSpec]]:
        return [(rg, vm) for rg in self.resource_groups for vm in rg.vms]


def _disk(data: Any, where: str, *, os_default: str | None, lun: bool = False) -> DiskSpec:
    r = _Reader(data, where)
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
    r = _Reader(data, where)
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
        e = _Reader(item, f"{r.where('extensions')}[{i}]")
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
    plan = r.strings("plan") or None
    if plan is not None and set(plan) != {"name", "publisher", "product"}:
        raise ScenarioError(f"{r.where('plan')}: expected exactly name, publisher and product")
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


def _identity(r: _Reader) -> IdentitySpec:
    spec = IdentitySpec(
        imds=r.text("imds", "reachable", choices=IMDS_MODES),
        smbios=r.text("smbios", "as-is", choices=SMBIOS_MODES),
        vm_id=r.guid("vm_id", "") if r.has("vm_id") else "",
    )
    r.done()
    return spec


def _gallery(data: Any, where: str) -> GallerySpec:
    r = _Reader(data, where)
    images = []
    for i, item in enumerate(r.items("images")):
        g = _Reader(item, f"{r.where('images')}[{i}]")
        plan = g.strings("plan") or None
        if plan is not None and set(plan) != {"name", "publisher", "product"}:
            raise ScenarioError(f"{g.where('plan')}: expected exactly name, publisher and product")
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


def _resource_group(data: Any, where: str) -> ResourceGroupSpec:
    r = _Reader(data, where)
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
        d = _Reader(item, f"{r.where('disk_encryption_sets')}[{i}]")
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
        p = _Reader(item, f"{r.where('restore_points')}[{i}]")
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


def _vm_pair(item: Any, where: str, rgs: tuple[ResourceGroupSpec, ...]) -> tuple[str, str]:
    known = {f"{rg.name}/{vm.name}".lower() for rg in rgs for vm in rg.vms}
    if not isinstance(item, list) or len(item) != 2 or not all(isinstance(v, str) for v in item):
        raise ScenarioError(f"{where}: expected a pair [rg/name, rg/name]")
    for value in item:
        if value.lower() not in known:
            raise ScenarioError(f"{where}: {value!r} is not a VM of this scenario")
    if item[0].lower() == item[1].lower():
        raise ScenarioError(f"{where}: a VM cannot swap with itself")
    return item[0].lower(), item[1].lower()


def parse_scenario(data: Any, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate a loaded YAML document. Raises ScenarioError with the file and key path."""
    try:
        r = _Reader(data if data is not None else {}, "")
        for key in r.data:
            if str(key).startswith("x-"):  # a place for YAML anchors, as in compose files
                r.skip(str(key))
        subscription = r.child("subscription")
        sub_id = subscription.guid("id", DEFAULT_SUBSCRIPTION)
        sub_name = subscription.text("name", "azsim")
        subscription.done()
        p = r.child("principal")
        roles = p.items("role_definitions")
        allowed, not_actions = (
            _role_definitions(roles, base_dir or Path.cwd(), p.where("role_definitions"))
            if roles
            else (None, ())
        )
        principal = Principal(
            client_id=p.guid("client_id", DEFAULT_CLIENT_ID),
            object_id=p.guid("object_id", DEFAULT_OBJECT_ID),
            display_name=p.text("display_name", "imageready-ci"),
            denied_actions=tuple(str(a) for a in p.items("denied_actions")),
            allowed_actions=allowed,
            not_actions=not_actions,
        )
        p.done()
        timings_reader = r.child("timings")
        timings = {key: timings_reader.number(key, default) for key, default in DEFAULT_TIMINGS.items()}
        timings_reader.done()
        faults = []
        for i, item in enumerate(r.items("faults")):
            try:
                faults.append(parse_fault(item, f"faults[{i}]"))
            except FaultError as err:
                raise ScenarioError(str(err)) from None
        try:
            throttling = parse_limits(r._get("throttling"), "throttling")
        except ThrottlingError as err:
            raise ScenarioError(str(err)) from None
        rgs = tuple(
            _resource_group(item, f"resource_groups[{i}]")
            for i, item in enumerate(r.items("resource_groups"))
        )
        images = []
        for i, item in enumerate(r.items("marketplace")):
            m = _Reader(item, f"marketplace[{i}]")
            image = m.text("image")
            if len(image.split(":")) != 4:
                raise ScenarioError(f"{m.where('image')}: expected Publisher:Offer:Sku:Version: {image!r}")
            os_type = m.text("os", choices=("Linux", "Windows"))
            images.append(
                MarketplaceImageSpec(
                    urn=image,
                    os=os_type,
                    hyper_v_generation=m.text("hyper_v_generation", "V2", choices=("V1", "V2")),
                    architecture=m.text("architecture", "x64", choices=("x64", "Arm64")),
                    size_gb=m.integer("size_gb", 30 if os_type == "Linux" else 127, minimum=1),
                )
            )
            m.done()
        seen: set[str] = set()
        for rg in rgs:
            if rg.name.lower() in seen:
                raise ScenarioError(f"resource_groups: two resource groups named {rg.name!r}")
            seen.add(rg.name.lower())
        addresses = r.child("guest_addresses")
        swapped = tuple(
            _vm_pair(item, f"{addresses.where('swapped')}[{i}]", rgs)
            for i, item in enumerate(addresses.items("swapped"))
        )
        addresses.done()
        scenario = Scenario(
            source=source,
            tenant=r.guid("tenant", DEFAULT_TENANT),
            subscription_id=sub_id,
            subscription_name=sub_name,
            principal=principal,
            guests=r.text("guests", "all", choices=("all", "none")) == "all",
            timings=timings,
            token_lifetime=r.integer("token_lifetime", 3599, minimum=60),
            faults=tuple(faults),
            resource_groups=rgs,
            swapped_addresses=swapped,
            marketplace=tuple(images),
            throttling=throttling,
        )
        r.done()
    except ScenarioError as err:
        raise ScenarioError(f"{source}: {err}") from None
    return scenario


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ScenarioError(f"{path}: cannot read the scenario ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{path}: not valid YAML{where}") from None
    return parse_scenario(data, str(path), path.resolve().parent)

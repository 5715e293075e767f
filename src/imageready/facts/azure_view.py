"""Reading the ARM facts: the VM (with instance view), disks, snapshots and extensions, in the
REST shape (camelCase) of the Microsoft.Compute REST examples."""

from __future__ import annotations

from typing import Any

from imageready.categories import Category
from imageready.facts import FactsUnavailable, VmFacts
from imageready.facts.view import FactsView

ADE_EXTENSION_TYPES = ("azurediskencryption", "azurediskencryptionforlinux")
COPY_TAG = "imageready-copy-of"


def azure(facts: VmFacts) -> FactsView:
    """Azure's view of the VM (facts.azure) as a strict view: a property a check needs that
    Azure did not return makes it error (category "Azure API error"), never pass."""
    if facts.azure is None:
        raise FactsUnavailable(
            facts.azure_error or f"{facts.vm}: no Azure facts",
            facts.azure_error_category or Category.AZURE_API,
        )
    return FactsView(facts.azure, keys=("azure",), what="Azure fact", category=Category.AZURE_API)


def _vm(facts: VmFacts) -> FactsView:
    vm: FactsView = azure(facts).need("vm", dict)
    return vm


def _props(model: dict[str, Any] | None) -> dict[str, Any]:
    return (model or {}).get("properties") or {}


def _statuses(facts: VmFacts) -> list[str]:
    """The instance view's status codes ("PowerState/running", ...): the instance view and each
    status's code must be there (a missing one is not "nothing to report")."""
    statuses = _vm(facts).need("properties.instanceView.statuses", list)
    codes = []
    for index in range(len(statuses)):
        entry = statuses[index]
        if not isinstance(entry, FactsView):
            raise FactsUnavailable(
                f"{facts.vm}: instance view status {index} is not an object", Category.AZURE_API
            )
        codes.append(entry.need("code", str))
    return codes


def _status(facts: VmFacts, prefix: str) -> str:
    for code in _statuses(facts):
        if code.startswith(prefix + "/"):
            return code.split("/", 1)[1]
    return ""


def provisioning_state(facts: VmFacts) -> str:
    return str(_vm(facts).need("properties.provisioningState", str))


def power_state(facts: VmFacts) -> str:
    """running | stopped | deallocated | starting | stopping | deallocating | unknown (no
    PowerState status among the instance view's statuses)"""
    return _status(facts, "PowerState") or "unknown"


def os_state(facts: VmFacts) -> str:
    """ "generalized" once marked so; "" for a specialized VM: Azure reports an OSState status only
    for a generalized VM (VirtualMachine_Get_InstanceView REST example: none for a specialized
    one), so its absence among statuses that are there is an answer."""
    return _status(facts, "OSState")


def agent_status(facts: VmFacts) -> tuple[str, str]:
    """(displayStatus, version) of the VM agent; ("Unknown", "") when the instance view has no
    vmAgent (Azure leaves it out while no agent reports, e.g. a VM that is off)."""
    agent = _vm(facts).need("properties.instanceView", dict).optional("vmAgent", dict)
    if agent is None:
        return "Unknown", ""
    for status in agent.optional("statuses", list) or []:
        if isinstance(status, FactsView):
            display = status.optional("displayStatus", str)
            if display:
                return display, agent.need("vmAgentVersion", str) if display == "Ready" else ""
    return "Unknown", ""


def tags(facts: VmFacts) -> dict[str, str]:
    """The VM's tags (ARM leaves the property out when there are none)."""
    found = _vm(facts).optional("tags", dict)
    return {str(k): str(v) for k, v in (found.raw if found is not None else {}).items()}


def extensions(facts: VmFacts) -> list[dict[str, Any]]:
    """The VM's extensions as Azure listed them; not listed (absent, null): the checks error."""
    found = azure(facts).need("extensions", list)
    return [dict(e.raw) if isinstance(e, FactsView) else e for e in found]


def extension_type(extension: dict[str, Any]) -> str:
    props = _props(extension)
    return str(props.get("type") or props.get("virtualMachineExtensionType") or "")


def ade_extensions(facts: VmFacts) -> list[dict[str, Any]]:
    return [e for e in extensions(facts) if extension_type(e).lower() in ADE_EXTENSION_TYPES]


def disk_ade_enabled(disk: FactsView) -> bool:
    """Whether Azure Disk Encryption is on: Azure returns ``encryptionSettingsCollection`` only
    for a disk with ADE (Disk_Get REST example: a plain disk has none), so its absence is an
    answer; a disk model without ``properties`` is not."""
    props = disk.need("properties", dict)
    settings = props.optional("encryptionSettingsCollection", dict)
    return False if settings is None else bool(settings.need("enabled", bool))


def disk_sse(disk: FactsView) -> str:
    """The server-side encryption in force: platform key, customer key, or both (informational:
    server-side encryption never blocks a generalize). Older api-versions leave ``encryption``
    out: platform keys, which every managed disk has at least."""
    props = disk.need("properties", dict)
    encryption = props.optional("encryption", dict)
    kind = "EncryptionAtRestWithPlatformKey" if encryption is None else str(encryption.need("type", str))
    return {
        "EncryptionAtRestWithPlatformKey": "SSE with a platform-managed key",
        "EncryptionAtRestWithCustomerKey": "SSE with a customer-managed key",
        "EncryptionAtRestWithPlatformAndCustomerKeys": "SSE with platform and customer keys",
    }.get(kind, kind)


def creation(model: dict[str, Any] | None) -> dict[str, Any]:
    return dict(_props(model).get("creationData") or {})


def lineage_kind(resource_id: str) -> str:
    """disk | snapshot | disk restore point | other, from the resource id's type segments."""
    lower = resource_id.lower()
    if "/providers/microsoft.compute/" in lower:
        if "/diskrestorepoints/" in lower:
            return "disk restore point"
        if "/snapshots/" in lower:
            return "snapshot"
        if "/disks/" in lower:
            return "disk"
    return "other"


def source_id(model: dict[str, Any] | None) -> str:
    """Where a disk or snapshot was copied from (``creationData.sourceResourceId``), or the disk
    a disk restore point was taken of (``properties.sourceResourceId``)."""
    props = _props(model)
    return str(creation(model).get("sourceResourceId") or props.get("sourceResourceId") or "")


def provenance_chain(facts: VmFacts, disk_id: str) -> list[dict[str, Any]]:
    """The OS disk's lineage as far as the gathered facts reach, the OS disk first, up to the
    first source *disk* (the one that decides whether the VM is a copy). Each link: ``kind``,
    ``id``, ``create_option``, ``exists`` (True; False when Azure answered 404; None when it was
    not or could not be read), ``managed_by`` (the VM a disk is attached to; "" unattached),
    ``same_source`` (False when the resource found under that id is not the one the previous
    link was made from: its uniqueId differs from, or cannot be compared with, the recorded
    sourceUniqueId) and ``error``."""
    view = azure(facts)
    disks, sources = view.need("disks", dict), view.need("sources", dict)
    missing = {str(k).lower() for k in view.need("missing_sources", list)}
    unresolved = view.need("unresolved_sources", dict)
    chain: list[dict[str, Any]] = []
    # the uniqueId the previous link recorded for its source (None: it recorded none)
    current, expected_unique = disk_id, None
    seen: set[str] = set()
    while current:
        key = current.lower()
        kind = lineage_kind(current)
        if key in seen:
            chain.append(_link(kind, current, exists=True, error="the lineage loops back to this resource"))
            break
        seen.add(key)
        link = (disks if key in disks else sources).optional((key,), dict)
        if link is None:
            if key in missing:
                chain.append(_link(kind, current, exists=False))
            else:
                why = unresolved.optional((key,), str) or "not looked up"
                chain.append(_link(kind, current, exists=None, error=why))
            break
        props = link.need("properties", dict)
        # a disk restore point has no creationData (its source is a property); disks and
        # snapshots always have one
        created = None if kind == "disk restore point" else props.need("creationData", dict)
        option = "" if created is None else created.need("createOption", str)
        same_source: bool | None = None
        error = ""
        if chain and kind != "disk restore point":  # a restore point has no uniqueId of its own
            unique = props.optional("uniqueId", str)
            same_source = unique is not None and unique == expected_unique
            if expected_unique is None:
                error = "the copy made from it does not record its uniqueId (sourceUniqueId)"
            elif unique is None:
                error = "its uniqueId is not reported, so it cannot be shown to be the source"
        # ARM leaves managedBy out of an unattached disk; the OS disk's own owner is this VM
        owner = link.optional("managedBy", str) if chain and kind == "disk" else None
        chain.append(
            _link(
                kind,
                current,
                exists=True,
                create_option=option,
                managed_by=str(owner or ""),
                same_source=same_source,
                error=error,
            )
        )
        if kind == "disk" and len(chain) > 1:
            break  # the first source disk decides; what it was made from is not needed
        holder = props if created is None else created
        current = str(holder.optional("sourceResourceId", str) or "")
        # absent: checked at the source, if it exists (a deleted source is red for that anyway)
        expected_unique = holder.optional("sourceUniqueId", str) if current else None
    return chain


def _link(
    kind: str,
    resource_id: str,
    *,
    exists: bool | None,
    create_option: str = "",
    managed_by: str = "",
    same_source: bool | None = None,
    error: str = "",
) -> dict[str, Any]:
    return {
        "kind": kind,
        "id": resource_id,
        "create_option": create_option,
        "exists": exists,
        "managed_by": managed_by,
        "same_source": same_source,
        "error": error,
    }


# --- the --capture-as target (facts.capture.capture_facts) ------------------------------------------


def capture(facts: VmFacts) -> FactsView:
    """What the run's --capture-as target holds (``requested``, ``target``, ``ids``, ``found``,
    ``not_found``, ``unreadable``); errors when it was not gathered."""
    view: FactsView = azure(facts).need("capture", dict)
    return view


def capture_resource(facts: VmFacts, role: str) -> FactsView | None:
    """The capture target's ``artifact``, ``gallery`` or ``definition`` as Azure showed it; None
    when Azure answered 404 (an answer: the name is free, the gallery is missing). A resource that
    could not be read, or that the facts do not account for, makes the check error."""
    view = capture(facts)
    why = view.need("unreadable", dict).optional((role,), str)
    if why:
        raise FactsUnavailable(
            f"{facts.vm}: the capture target's {role} could not be read: {why}", Category.AZURE_API
        )
    if role in _strings(view, "not_found"):
        return None
    found: FactsView = view.need(("found", role), dict)
    return found


def capture_target(facts: VmFacts) -> list[str]:
    """The resolved --capture-as: ["image", NAME] or ["gallery", GALLERY, DEFINITION, VERSION]."""
    target = _strings(capture(facts), "target")
    if len(target) != {"image": 2, "gallery": 4}.get(target[0] if target else "", -1):
        raise FactsUnavailable(
            f"Azure fact 'capture.target' is not a capture target: {target}", Category.AZURE_API
        )
    return target


def _strings(view: FactsView, key: str) -> list[str]:
    """A list of strings; any element that is not one makes the reading check error."""
    found = view.need(key, list)
    values = [found[i] for i in range(len(found))]
    if not all(isinstance(value, str) for value in values):
        raise FactsUnavailable(
            f"Azure fact 'capture.{key}' holds a value that is not a string", Category.AZURE_API
        )
    return values


def security_type(facts: VmFacts) -> str:
    """The VM's security type: ``securityProfile.securityType``, Standard when the VM declares
    none (REST reference, Virtual Machines, SecurityProfile.securityType: UEFI settings are "not
    enabled unless this property is set"; a standard VM shows no securityProfile)."""
    props = _vm(facts).need("properties", dict)
    profile = props.optional("securityProfile", dict)
    found = profile.optional("securityType", str) if profile is not None else None
    return str(found or "Standard")


def hyper_v_generation(facts: VmFacts) -> str:
    """V1 or V2, from the instance view (VirtualMachineInstanceView.hyperVGeneration)."""
    return str(_vm(facts).need("properties.instanceView.hyperVGeneration", str))


def os_disk_architecture(facts: VmFacts) -> str:
    """x64 or Arm64, as the OS disk shows it (``supportedCapabilities.architecture``); a disk
    that does not show it makes the reading check error."""
    disk_id = str(_vm(facts).need("properties.storageProfile.osDisk.managedDisk.id", str))
    disk = azure(facts).need("disks", dict).need((disk_id.lower(),), dict)
    return str(disk.need("properties.supportedCapabilities.architecture", str))


def purchase_plan(facts: VmFacts) -> dict[str, str] | None:
    """The VM's Marketplace purchase plan (name, publisher, product); None: ARM shows no ``plan``
    for a VM from an image without one."""
    plan = _vm(facts).optional("plan", dict)
    if plan is None:
        return None
    return {key: str(plan.need(key, str)) for key in ("name", "publisher", "product")}

"""Reading the ARM facts: the VM (with instance view), disks, snapshots and extensions, in the
REST shape (camelCase) of ../shared/azure-examples."""

from __future__ import annotations

from typing import Any

from imageready.facts import VmFacts

ADE_EXTENSION_TYPES = ("azurediskencryption", "azurediskencryptionforlinux")
COPY_TAG = "imageready-copy-of"


def _props(model: dict[str, Any] | None) -> dict[str, Any]:
    return (model or {}).get("properties") or {}


def _statuses(facts: VmFacts) -> list[dict[str, Any]]:
    view = _props(facts.vm_model).get("instanceView") or {}
    return list(view.get("statuses") or [])


def _status(facts: VmFacts, prefix: str) -> str:
    for status in _statuses(facts):
        code = str(status.get("code") or "")
        if code.startswith(prefix + "/"):
            return code.split("/", 1)[1]
    return ""


def provisioning_state(facts: VmFacts) -> str:
    return str(_props(facts.vm_model).get("provisioningState") or "unknown")


def power_state(facts: VmFacts) -> str:
    """running | stopped | deallocated | starting | stopping | deallocating | unknown"""
    return _status(facts, "PowerState") or "unknown"


def os_state(facts: VmFacts) -> str:
    """ "generalized" once marked so; "" for a specialized VM (Azure then reports nothing)."""
    return _status(facts, "OSState")


def agent_status(facts: VmFacts) -> tuple[str, str]:
    agent = (_props(facts.vm_model).get("instanceView") or {}).get("vmAgent") or {}
    version = str(agent.get("vmAgentVersion") or "")
    for status in agent.get("statuses") or []:
        display = str(status.get("displayStatus") or "")
        if display:
            return display, version
    return "Unknown", version


def tags(facts: VmFacts) -> dict[str, str]:
    return dict(facts.vm_model.get("tags") or {})


def extensions(facts: VmFacts) -> list[dict[str, Any]]:
    return list((facts.azure or {}).get("extensions") or [])


def extension_type(extension: dict[str, Any]) -> str:
    props = _props(extension)
    return str(props.get("type") or props.get("virtualMachineExtensionType") or "")


def ade_extensions(facts: VmFacts) -> list[dict[str, Any]]:
    return [e for e in extensions(facts) if extension_type(e).lower() in ADE_EXTENSION_TYPES]


def disk_ade_enabled(disk: dict[str, Any] | None) -> bool:
    settings = _props(disk).get("encryptionSettingsCollection") or {}
    return bool(settings.get("enabled"))


def disk_sse(disk: dict[str, Any] | None) -> str:
    """The server-side encryption in force: platform key, customer key, or both."""
    kind = str((_props(disk).get("encryption") or {}).get("type") or "EncryptionAtRestWithPlatformKey")
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


def _source_unique_id(model: dict[str, Any] | None) -> str:
    props = _props(model)
    return str(creation(model).get("sourceUniqueId") or props.get("sourceUniqueId") or "")


def provenance_chain(facts: VmFacts, disk_id: str) -> list[dict[str, Any]]:
    """The OS disk's lineage as far as the gathered facts reach, the OS disk first. Each link:
    ``kind``, ``id``, ``create_option``, ``exists`` (True; False when Azure answered 404; None
    when it was not or could not be read), ``managed_by`` (the VM a disk is attached to),
    ``same_source`` (False when the resource found under that id is not the one the previous
    link was made from: its uniqueId differs from the recorded sourceUniqueId) and ``error``."""
    azure = facts.azure or {}
    known = {**azure.get("disks", {}), **azure.get("snapshots", {}), **azure.get("sources", {})}
    missing = {k.lower() for k in azure.get("missing_sources", [])}
    unresolved = {str(k).lower(): str(v) for k, v in (azure.get("unresolved_sources") or {}).items()}
    chain: list[dict[str, Any]] = []
    current, expected_unique = disk_id, ""
    seen: set[str] = set()
    while current:
        key = current.lower()
        kind = lineage_kind(current)
        if key in seen:
            chain.append(_link(kind, current, exists=True, error="the lineage loops back to this resource"))
            break
        seen.add(key)
        model = known.get(key)
        if model is None:
            if key in missing:
                chain.append(_link(kind, current, exists=False))
            else:
                chain.append(_link(kind, current, exists=None, error=unresolved.get(key, "not looked up")))
            break
        props = _props(model)
        unique = str(props.get("uniqueId") or "")
        chain.append(
            _link(
                kind,
                current,
                exists=True,
                create_option=str(creation(model).get("createOption") or ""),
                managed_by=str(model.get("managedBy") or ""),
                same_source=None if not (expected_unique and unique) else expected_unique == unique,
            )
        )
        current, expected_unique = source_id(model), _source_unique_id(model)
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

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


def provenance_chain(facts: VmFacts, disk_id: str) -> list[dict[str, Any]]:
    """disk → (snapshot →) source disk, as far as the gathered facts reach. Each link:
    ``kind``, ``id``, ``create_option``, ``exists`` (False when the source is gone)."""
    azure = facts.azure or {}
    known = {**azure.get("disks", {}), **azure.get("snapshots", {}), **azure.get("sources", {})}
    missing = {k.lower() for k in azure.get("missing_sources", [])}
    chain = []
    current = disk_id
    seen: set[str] = set()
    while current and current.lower() not in seen:
        seen.add(current.lower())
        model = known.get(current.lower())
        kind = "snapshot" if "/snapshots/" in current.lower() else "disk"
        if model is None:
            # False: Azure answered 404 (the source was deleted); None: not looked up
            exists = False if current.lower() in missing else None
            chain.append({"kind": kind, "id": current, "create_option": "", "exists": exists})
            break
        data = creation(model)
        option = str(data.get("createOption") or "")
        chain.append({"kind": kind, "id": current, "create_option": option, "exists": True})
        current = str(data.get("sourceResourceId") or "")
    return chain

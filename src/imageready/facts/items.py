"""Item sources: what each ``@pytest.mark.check(..., each=NAME)`` check examines, per VM.

Each returns ``(parameter id, value)`` pairs; the parameter id becomes part of the case id
(``test_server_role_supported[rg/vm-AD-Domain-Services]``), so it names the thing examined.
"""

from __future__ import annotations

import re
from typing import Any

from imageready.facts import VM_STATE, FactsUnavailable, VmFacts, item_source

AGENT_SERVICES = ("RdAgent", "WindowsAzureGuestAgent")
WAAGENT_DEPROVISION_SETTINGS = ("Provisioning.RegenerateSshHostKeyPair", "Provisioning.DeleteRootPassword")


def param_id(text: str) -> str:
    """A readable, stable id fragment: no spaces, no brackets, no colons."""
    cleaned = re.sub(r"[^A-Za-z0-9_.@+-]+", "-", text.strip()).strip("-")
    return cleaned or "unnamed"


def _list(guest: dict[str, Any], key: str) -> list[Any]:
    value = guest.get(key)
    if value is None:
        failed = [e for e in guest.get("errors") or [] if e.get("probe") == key]
        why = failed[0].get("error") if failed else "not reported"
        raise FactsUnavailable(f"guest fact '{key}' unavailable: {why}", "guest facts")
    if not isinstance(value, list):
        raise FactsUnavailable(f"guest fact '{key}' is not a list", "guest facts")
    return value


@item_source("disk")
def disks(facts: VmFacts) -> list[tuple[str, Any]]:
    """The OS disk and each data disk, with the disk resource when it could be read."""
    vm = facts.vm_model
    storage = vm.get("properties", {}).get("storageProfile", {})
    known = (facts.azure or {}).get("disks", {})
    found = []
    entries = [("os", storage.get("osDisk") or {})]
    entries += [("data", d) for d in storage.get("dataDisks") or []]
    for role, entry in entries:
        managed = entry.get("managedDisk") or {}
        disk_id = str(managed.get("id") or "")
        name = str(entry.get("name") or disk_id.rsplit("/", 1)[-1] or "unmanaged")
        found.append(
            (
                param_id(name),
                {
                    "role": role,
                    "name": name,
                    "lun": entry.get("lun"),
                    "id": disk_id,
                    "entry": entry,
                    "disk": known.get(disk_id.lower()),
                },
            )
        )
    return found


@item_source("role")
def roles(facts: VmFacts) -> list[tuple[str, Any]]:
    """Installed Windows roles, role services and features (Install-WindowsFeature names)."""
    features = _list(facts.require_guest(), "features")
    return [(param_id(str(f["name"])), f) for f in sorted(features, key=lambda f: str(f["name"]))]


@item_source("bitlocker_volume")
def bitlocker_volumes(facts: VmFacts) -> list[tuple[str, Any]]:
    volumes = _list(facts.require_guest(), "bitlocker")
    return [(param_id(str(v.get("mount_point", "volume")).rstrip(":")), v) for v in volumes]


@item_source("crypt_volume")
def crypt_volumes(facts: VmFacts) -> list[tuple[str, Any]]:
    volumes = _list(facts.require_guest(), "crypt")
    return [(param_id(str(v.get("name") or v.get("device") or "crypt")), v) for v in volumes]


@item_source("appx_package")
def appx_packages(facts: VmFacts) -> list[tuple[str, Any]]:
    packages = _list(facts.require_guest(), "appx_not_provisioned")
    return [(param_id(f"{p.get('name')}@{p.get('user')}"), p) for p in packages]


@item_source("agent_service")
def agent_services(facts: VmFacts) -> list[tuple[str, Any]]:
    services = facts.require_guest().get("services")
    if not isinstance(services, dict):
        raise FactsUnavailable("guest fact 'services' unavailable", "guest facts")
    return [(name, {"name": name, **(services.get(name) or {})}) for name in AGENT_SERVICES]


@item_source("waagent_setting")
def waagent_settings(facts: VmFacts) -> list[tuple[str, Any]]:
    waagent = facts.require_guest().get("waagent") or {}
    conf = waagent.get("conf") or {}
    return [(key, {"key": key, "value": conf.get(key)}) for key in WAAGENT_DEPROVISION_SETTINGS]


@item_source("swap")
def swaps(facts: VmFacts) -> list[tuple[str, Any]]:
    entries = _list(facts.require_guest(), "swap")
    return [(param_id(str(s.get("path", "swap"))), s) for s in entries]


#: the extra rule file of this run (--scan-rules); set by the plugin at configure time
SCAN_RULES: dict[str, Any] = {"extra": None}


@item_source("scan_rule")
def scan_rules(facts: VmFacts) -> list[tuple[str, Any]]:
    """Every sensitive-data rule for the VM's OS (built-in and --scan-rules), by rule id."""
    from imageready.scan import load_rules, rules_for

    if facts.os_type is None:
        if facts.azure_error:
            raise FactsUnavailable(facts.azure_error, facts.azure_error_category or "Azure API error")
        raise FactsUnavailable(f"{facts.vm}: Azure reports no OS type, so no rules can be chosen", VM_STATE)
    rules = rules_for(facts.os_type, load_rules(SCAN_RULES["extra"]))
    return [(param_id(rule.id), rule) for rule in rules]

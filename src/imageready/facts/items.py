"""Item sources: what each ``@pytest.mark.check(..., each=NAME)`` check examines, per VM.

Each returns ``(parameter id, value)`` pairs; the parameter id becomes part of the case id
(``test_server_role_supported[rg/vm-AD-Domain-Services]``), so it names the thing examined.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from imageready.categories import Category
from imageready.facts import FactsUnavailable, VmFacts, item_source
from imageready.facts.azure_view import azure
from imageready.facts.view import FactsView, guest_view

if TYPE_CHECKING:
    from imageready.options import RunOptions

AGENT_SERVICES = ("RdAgent", "WindowsAzureGuestAgent")
WAAGENT_DEPROVISION_SETTINGS = ("Provisioning.RegenerateSshHostKeyPair", "Provisioning.DeleteRootPassword")


def param_id(text: str) -> str:
    """A readable, stable id fragment: no spaces, no brackets, no colons."""
    cleaned = re.sub(r"[^A-Za-z0-9_.@+-]+", "-", text.strip()).strip("-")
    return cleaned or "unnamed"


def _list(facts: VmFacts, key: str) -> list[FactsView]:
    """The guest's list ``key`` of objects, each a strict view (absent, null, not a list, an
    element that is not an object: error)."""
    found = []
    for index, element in enumerate(guest_view(facts.require_guest()).need(key, list)):
        if not isinstance(element, FactsView):
            raise FactsUnavailable(f"guest fact '{key}.{index}' is not an object", Category.GUEST_FACTS)
        found.append(element)
    return found


@item_source("disk")
def disks(facts: VmFacts) -> list[tuple[str, Any]]:
    """The OS disk and each data disk, with the disk resource when it could be read (None: the
    check reports it unreadable). An unmanaged disk (a VHD in a storage account) has no id."""
    view = azure(facts)
    storage = view.need("vm.properties.storageProfile", dict)
    known = view.need("disks", dict)
    entries = [("os", storage.need("osDisk", dict))]
    # ARM leaves dataDisks out (or empty) for a VM without data disks
    entries += [("data", d) for d in storage.optional("dataDisks", list) or []]
    found = []
    for role, entry in entries:
        if not isinstance(entry, FactsView):
            raise FactsUnavailable(
                f"{facts.vm}: a data disk entry of the VM is not an object", Category.AZURE_API
            )
        managed = entry.optional("managedDisk", dict)
        disk_id = str(managed.need("id", str)) if managed is not None else ""
        name = entry.need("name", str)
        found.append(
            (
                param_id(name),
                {
                    "role": role,
                    "name": name,
                    "id": disk_id,
                    "disk": known.get(disk_id.lower()) if disk_id else None,
                },
            )
        )
    return found


@item_source("role")
def roles(facts: VmFacts) -> list[tuple[str, Any]]:
    """Installed Windows roles, role services and features (Install-WindowsFeature names)."""
    features = _list(facts, "features")
    return [
        (param_id(f.need("name", str)), f) for f in sorted(features, key=lambda f: str(f.need("name", str)))
    ]


@item_source("bitlocker_volume")
def bitlocker_volumes(facts: VmFacts) -> list[tuple[str, Any]]:
    volumes = _list(facts, "bitlocker")
    return [(param_id(v.need("mount_point", str).rstrip(":")), v) for v in volumes]


@item_source("crypt_volume")
def crypt_volumes(facts: VmFacts) -> list[tuple[str, Any]]:
    volumes = _list(facts, "crypt")
    return [
        (param_id(str(v.optional("name", str) or v.optional("device", str) or "crypt")), v) for v in volumes
    ]


@item_source("appx_package")
def appx_packages(facts: VmFacts) -> list[tuple[str, Any]]:
    packages = _list(facts, "appx_not_provisioned")
    return [(param_id(f"{p.need('name', str)}@{p.need('user', str)}"), p) for p in packages]


@item_source("agent_service")
def agent_services(facts: VmFacts) -> list[tuple[str, Any]]:
    services = guest_view(facts.require_guest()).need("services", dict)
    # a service the facts do not list, or list as null, is not installed: a finding, not an error
    return [(name, {"name": name, "installed": services.optional(name, dict)}) for name in AGENT_SERVICES]


@item_source("waagent_setting")
def waagent_settings(facts: VmFacts) -> list[tuple[str, Any]]:
    conf = guest_view(facts.require_guest()).need("waagent.conf", dict)
    # a setting absent from /etc/waagent.conf has waagent's built-in default: the check says so
    return [(key, {"key": key, "value": conf.optional((key,), str)}) for key in WAAGENT_DEPROVISION_SETTINGS]


@item_source("swap")
def swaps(facts: VmFacts) -> list[tuple[str, Any]]:
    entries = _list(facts, "swap")
    return [(param_id(s.need("path", str)), s) for s in entries]


@item_source("scan_rule", with_options=True)
def scan_rules(facts: VmFacts, options: RunOptions) -> list[tuple[str, Any]]:
    """Every sensitive-data rule for the VM's OS (built-in and --scan-rules), by rule id."""
    from imageready.scan import rules_for

    if facts.os_type is None:
        if facts.azure_error:
            raise FactsUnavailable(facts.azure_error, facts.azure_error_category or Category.AZURE_API)
        raise FactsUnavailable(
            f"{facts.vm}: Azure reports no OS type, so no rules can be chosen", Category.VM_STATE
        )
    rules = rules_for(facts.os_type, options.scan_rules)
    return [(param_id(rule.id), rule) for rule in rules]


# --- the capture pre-flight (checks/test_capture.py): not asked unless --capture-as applies ----------

#: what Azure requires of a VM before it makes a managed image of it (docs/azsim-rules.md IMG-2, IMG-3)
MANAGED_IMAGE_RULES = ("security-type", "architecture")
#: what an image definition must share with a VM before a version can be made of it (GAL-2 to GAL-7)
DEFINITION_PROPERTIES = (
    "os-type",
    "os-state",
    "hyper-v-generation",
    "security-type",
    "architecture",
    "purchase-plan",
)


@item_source("managed_image_rule")
def managed_image_rules(facts: VmFacts) -> list[tuple[str, Any]]:
    """One case per property Azure's managed image rules look at."""
    return [(rule, rule) for rule in MANAGED_IMAGE_RULES]


@item_source("definition_property")
def definition_properties(facts: VmFacts) -> list[tuple[str, Any]]:
    """One case per property the image definition and the VM must agree on."""
    return [(prop, prop) for prop in DEFINITION_PROPERTIES]


@item_source("capture_target")
def capture_targets(facts: VmFacts) -> list[tuple[str, Any]]:
    """The artifact this run would make of the VM, named in the case id
    (``[rg/vm-image-NAME]``, ``[rg/vm-gallery-GALLERY-DEFINITION-VERSION]``), so that a verdict
    judged for one capture target never stands for another (the expected case sets differ)."""
    from imageready.facts.azure_view import capture_target

    parts = capture_target(facts)
    return [(param_id("-".join(parts)), parts)]

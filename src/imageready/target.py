"""VmRef: which VM a run is about, parsed and validated before anything connects."""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass

VM_FORMS = "RG/NAME or /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/NAME"

# Azure's naming rules (Microsoft, "Naming rules and restrictions for Azure resources",
# Microsoft.Resources/resourcegroups): a resource group name is 1-90 "underscores, hyphens, periods,
# parentheses, and letters or digits as defined by the Char.IsLetterOrDigit function" (Unicode
# letters included), and "can't end with period" (``valid_resource_group``). VM names here allow
# letters, digits, '_', '-' and '.' (1-64).
_RG = r"[^/\s]{1,90}"
_NAME = r"[A-Za-z0-9_.\-]{1,64}"
_SUB = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_SHORT = re.compile(rf"^(?P<rg>{_RG})/(?P<name>{_NAME})$")
_FULL = re.compile(
    rf"^/subscriptions/(?P<sub>{_SUB})/resourceGroups/(?P<rg>{_RG})"
    rf"/providers/Microsoft\.Compute/virtualMachines/(?P<name>{_NAME})/?$",
    re.IGNORECASE,
)


class TargetError(ValueError):
    """A --vm or --subscription value that cannot be used; the message is one line."""


@dataclass(frozen=True, order=True)
class VmRef:
    """One VM: subscription, resource group and name. ``key`` is the stable test id."""

    subscription: str
    resource_group: str
    name: str

    @property
    def key(self) -> str:
        """``rg/name``: the id used in test ids, waivers, reports and verdict files."""
        return f"{self.resource_group}/{self.name}"

    @property
    def id(self) -> str:
        """The ARM resource id."""
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{self.name}"
        )

    def __str__(self) -> str:
        return self.key


#: Char.IsLetterOrDigit: the Unicode letter categories and decimal digits
_LETTER_OR_DIGIT = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd"})


def valid_resource_group(name: str) -> bool:
    """Azure's rule for a resource group name (see above)."""
    return (
        0 < len(name) <= 90
        and not name.endswith(".")
        and all(c in "_-.()" or unicodedata.category(c) in _LETTER_OR_DIGIT for c in name)
    )


def parse_vm(value: str, default_subscription: str | None) -> VmRef:
    """Parse one ``--vm`` value. Raises TargetError naming the expected forms."""
    text = unicodedata.normalize("NFC", value.strip())
    if text.rstrip("/").endswith(".") or not text:
        raise TargetError(f"--vm {value!r}: expected {VM_FORMS}")
    full = _FULL.match(text)
    if full:
        if not valid_resource_group(full["rg"]):
            raise TargetError(f"--vm {value!r}: {full['rg']!r} is not a valid resource group name")
        return VmRef(full["sub"].lower(), full["rg"], full["name"])
    short = _SHORT.match(text)
    if not short:
        raise TargetError(f"--vm {value!r}: expected {VM_FORMS}")
    if not valid_resource_group(short["rg"]):
        raise TargetError(
            f"--vm {value!r}: {short['rg']!r} is not a valid resource group name (letters or digits, "
            "'_', '-', '.', '(' and ')', up to 90, not ending in '.')"
        )
    if not default_subscription:
        raise TargetError(
            f"--vm {value!r}: no subscription; pass --subscription or set AZURE_SUBSCRIPTION_ID, "
            "or give the full resource id"
        )
    return VmRef(default_subscription, short["rg"], short["name"])


def resolve_subscription(option: str | None) -> str | None:
    """--subscription, else AZURE_SUBSCRIPTION_ID; validated as a GUID."""
    value = option or os.environ.get("AZURE_SUBSCRIPTION_ID") or None
    if value is None:
        return None
    if not re.fullmatch(_SUB, value.strip()):
        source = "--subscription" if option else "AZURE_SUBSCRIPTION_ID"
        raise TargetError(f"{source} {value!r}: expected a subscription id (GUID)")
    return value.strip().lower()


def parse_vms(values: list[str], subscription_option: str | None) -> list[VmRef]:
    """All ``--vm`` values, de-duplicated, in a stable sorted order."""
    subscription = resolve_subscription(subscription_option)
    refs = {parse_vm(v, subscription) for v in values}
    keys: dict[str, VmRef] = {}
    for ref in sorted(refs):
        other = keys.get(ref.key.lower())
        if other is not None and other != ref:
            raise TargetError(f"--vm {ref.id} and {other.id} share the id {ref.key!r}; run them separately")
        keys[ref.key.lower()] = ref
    return sorted(refs, key=lambda r: (r.key.lower(), r.subscription))

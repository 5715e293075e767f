"""The Windows facts script (``windows.ps1``) and the parser for what it prints (SCHEMA.md, "Windows")."""

from __future__ import annotations

from importlib import resources
from typing import Any

from imageready.facts.document import SCHEMA_VERSION, FactsError, Schema, parse_document

__all__ = ["SCHEMA_VERSION", "SCRIPT", "FactsError", "parse"]

_IDENTITY_SLOT = "# IMAGEREADY-IDENTITY-FUNCTION"
_IDENTITY_END = "# imageready: end of the identity function"


def _compose() -> str:
    """windows.ps1 with the identity probe's function in its slot (one source for both)."""
    facts = resources.files("imageready.facts").joinpath("windows.ps1").read_text(encoding="utf-8")
    probe = resources.files("imageready.scripts").joinpath("identity_windows.ps1").read_text(encoding="utf-8")
    start, end = probe.index("function Get-ImagereadyIdentity"), probe.index(_IDENTITY_END)
    if facts.count(_IDENTITY_SLOT) != 1:
        raise RuntimeError("windows.ps1 lost its identity slot")
    return facts.replace(_IDENTITY_SLOT, probe[start:end].rstrip())


#: PowerShell 5.1 source; run it through a Windows guest transport (it reads nothing from stdin).
SCRIPT: str = _compose()

_TOP_LEVEL: Schema = {
    "schema": (int,),
    "os_family": (str,),
    "hostname": (str, None),
    "user": (dict, None),
    "os": (dict, None),
    "features": (list, None),
    "role_details": (dict, None),
    "bitlocker": (list, None),
    "domain": (dict, None),
    "pending_reboot": (dict, None),
    "appx_not_provisioned": (list, None),
    "image_state": (str, None),
    "generalize_count": (int, None),
    "panther": (dict, None),
    "unattend_files": (list, None),
    "services": (dict, None),
    "sysprep_providers_failed": (list, None),
    "identity": (dict, None),
    "errors": (list,),
}
#: keys that hold lists: ConvertTo-Json in Windows PowerShell 5.1 may still print a
#: one-element list as its element, so the parser puts it back in a list
_LISTS = (
    "features",
    "bitlocker",
    "appx_not_provisioned",
    "unattend_files",
    "sysprep_providers_failed",
    "errors",
)


def _unroll(facts: dict[str, Any]) -> None:
    for key in _LISTS:
        if isinstance(facts.get(key), dict | str):
            facts[key] = [facts[key]]
    pending = facts.get("pending_reboot")
    if isinstance(pending, dict) and isinstance(pending.get("reasons"), str):
        pending["reasons"] = [pending["reasons"]]


def parse(stdout: bytes) -> dict[str, Any]:
    """Decode and validate the script's output (one JSON object, schema 1, Windows)."""
    return parse_document(stdout, "Windows", _TOP_LEVEL, _unroll)

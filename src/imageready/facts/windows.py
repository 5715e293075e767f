"""The Windows facts script (``windows.ps1``) and the parser for what it prints (SCHEMA.md, "Windows")."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

#: PowerShell 5.1 source; run it through a Windows guest transport (it reads nothing from stdin).
SCRIPT: str = resources.files("imageready.facts").joinpath("windows.ps1").read_text(encoding="utf-8")

SCHEMA_VERSION = 1

# key -> the JSON types it may hold (None: null, for a probe that failed)
_TOP_LEVEL: dict[str, tuple[type | None, ...]] = {
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


class FactsError(ValueError):
    """The facts output is not what the schema promises; the message is one line."""


def parse(stdout: bytes) -> dict[str, Any]:
    """Decode and validate the script's output (one JSON object, schema 1, Windows)."""
    text = stdout.decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    if not text:
        raise FactsError("the Windows facts script printed nothing")
    try:
        facts = json.loads(text)
    except json.JSONDecodeError as err:
        raise FactsError(f"the Windows facts script did not print one JSON object: {err}") from None
    if not isinstance(facts, dict):
        raise FactsError("the Windows facts script printed JSON that is not an object")
    for key in _LISTS:
        if isinstance(facts.get(key), dict | str):
            facts[key] = [facts[key]]
    pending = facts.get("pending_reboot")
    if isinstance(pending, dict) and isinstance(pending.get("reasons"), str):
        pending["reasons"] = [pending["reasons"]]
    for key, types in _TOP_LEVEL.items():
        if key not in facts:
            raise FactsError(f"Windows facts: {key!r} is missing")
        value = facts[key]
        if not any(value is None if t is None else _is(value, t) for t in types):
            raise FactsError(f"Windows facts: {key!r} has an unexpected type {type(value).__name__}")
    if facts["schema"] != SCHEMA_VERSION or facts["os_family"] != "Windows":
        raise FactsError(
            f"Windows facts: expected schema {SCHEMA_VERSION} for Windows, got schema "
            f"{facts['schema']!r} for {facts['os_family']!r}"
        )
    for entry in facts["errors"]:
        if not isinstance(entry, dict) or not {"probe", "error"} <= entry.keys():
            raise FactsError("Windows facts: an 'errors' entry lacks probe or error")
    return facts


def _is(value: Any, kind: type) -> bool:
    # bool is an int in Python, but not in the schema
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)

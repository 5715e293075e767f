"""The Linux facts script (``linux.sh``) and the parser for what it prints (SCHEMA.md, "Linux")."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

#: POSIX sh source; run it elevated (``sudo -n sh``), or not elevated inside ``self_elevating``.
SCRIPT: str = resources.files("imageready.facts").joinpath("linux.sh").read_text(encoding="utf-8")

_HEREDOC_END = "IMAGEREADY_FACTS_EOF"


def self_elevating(script: str = SCRIPT) -> str:
    """``script`` wrapped to run as root through ``sudo -n`` when the connecting user may, and as
    that user when not: one round trip either way. Run it *not* elevated. A plain ``sudo -n sh``
    would print nothing but sudo's refusal on a guest where sudo wants a password; this way the
    facts still arrive and say so (``sudo_nopasswd: false``), and only the root-only probes are
    missing."""
    if _HEREDOC_END in script:
        raise ValueError(f"the facts script must not contain {_HEREDOC_END}")
    return (
        f"ir_facts=$(cat <<'{_HEREDOC_END}'\n{script}\n{_HEREDOC_END}\n)\n"
        'if [ "$(id -u)" != 0 ] && sudo -n true 2>/dev/null; then exec sudo -n sh -c "$ir_facts"; fi\n'
        'exec sh -c "$ir_facts"\n'
    )


SCHEMA_VERSION = 1

# key -> the JSON types it may hold (None: null, for a probe that failed)
_TOP_LEVEL: dict[str, tuple[type | None, ...]] = {
    "schema": (int,),
    "os_family": (str,),
    "hostname": (str, None),
    "user": (dict, None),
    "os": (dict, None),
    "sudo_nopasswd": (bool, None),
    "waagent": (dict, None),
    "ovf_env_present": (bool, None),
    "cloud_init": (dict, None),
    "sshd": (dict, None),
    "swap": (list, None),
    "crypt": (list, None),
    "root_fs": (dict, None),
    "users": (list, None),
    "errors": (list,),
}


class FactsError(ValueError):
    """The facts output is not what the schema promises; the message is one line."""


def parse(stdout: bytes) -> dict[str, Any]:
    """Decode and validate the script's output (one JSON object, schema 1, Linux)."""
    text = stdout.decode("utf-8", errors="replace").strip()
    if not text:
        raise FactsError("the Linux facts script printed nothing")
    try:
        facts = json.loads(text)
    except json.JSONDecodeError as err:
        raise FactsError(f"the Linux facts script did not print one JSON object: {err}") from None
    if not isinstance(facts, dict):
        raise FactsError("the Linux facts script printed JSON that is not an object")
    for key, types in _TOP_LEVEL.items():
        if key not in facts:
            raise FactsError(f"Linux facts: {key!r} is missing")
        value = facts[key]
        if not any(value is None if t is None else _is(value, t) for t in types):
            raise FactsError(f"Linux facts: {key!r} has an unexpected type {type(value).__name__}")
    if facts["schema"] != SCHEMA_VERSION or facts["os_family"] != "Linux":
        raise FactsError(
            f"Linux facts: expected schema {SCHEMA_VERSION} for Linux, got schema "
            f"{facts['schema']!r} for {facts['os_family']!r}"
        )
    for entry in facts["errors"]:
        if not isinstance(entry, dict) or not {"probe", "error"} <= entry.keys():
            raise FactsError("Linux facts: an 'errors' entry lacks probe or error")
    return facts


def _is(value: Any, kind: type) -> bool:
    # bool is an int in Python, but not in the schema
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)

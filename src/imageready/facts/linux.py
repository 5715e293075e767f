"""The Linux facts script (``linux.sh``) and the parser for what it prints (SCHEMA.md, "Linux")."""

from __future__ import annotations

from importlib import resources
from typing import Any

from imageready.facts.document import SCHEMA_VERSION, FactsError, Schema, parse_document

__all__ = ["SCHEMA_VERSION", "SCRIPT", "FactsError", "parse", "self_elevating"]

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


_TOP_LEVEL: Schema = {
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
    "identity": (dict, None),
    "ovf_env": (dict, None),
    "errors": (list,),
}


def parse(stdout: bytes) -> dict[str, Any]:
    """Decode and validate the script's output (one JSON object, schema 1, Linux)."""
    return parse_document(stdout, "Linux", _TOP_LEVEL)

"""Policy data, not code: the server-role table and its sources (``server_roles.yaml``); the
sensitive-data rules live beside it (``scan_rules.yaml``, loaded by ``imageready.scan.rules``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

POLICY_DIR = Path(__file__).parent
VERDICTS = ("unsupported", "rejected", "conditional")


@dataclass(frozen=True)
class RoleRule:
    """What the policy says about one Install-WindowsFeature name."""

    name: str
    title: str
    verdict: str  # unsupported | rejected | conditional
    source: str  # the source key
    source_text: str  # the source's URL and title
    advice: str
    condition: str = ""  # for conditional rows: a name in CONDITIONS
    note: str = ""
    via: str = ""  # the parent role this row inherits from, if any


class PolicyError(ValueError):
    """The policy data itself is malformed (a defect in this package or a user's override)."""


@functools.cache
def role_rules() -> dict[str, RoleRule]:
    """The server-role table by feature name, parents resolved."""
    data: dict[str, Any] = yaml.safe_load((POLICY_DIR / "server_roles.yaml").read_text("utf-8"))
    sources: dict[str, str] = {k: " ".join(str(v).split()) for k, v in data["sources"].items()}
    rows = {str(row["name"]): row for row in data["roles"]}
    rules: dict[str, RoleRule] = {}
    for name, row in rows.items():
        parent = row.get("parent")
        base = rows[parent] if parent else row
        if parent and parent not in rows:
            raise PolicyError(f"server_roles.yaml: {name}: unknown parent {parent}")
        verdict = str(base.get("verdict", ""))
        if verdict not in VERDICTS:
            raise PolicyError(f"server_roles.yaml: {name}: verdict {verdict!r}")
        source = str(base.get("source", ""))
        if source not in sources:
            raise PolicyError(f"server_roles.yaml: {name}: unknown source {source!r}")
        rules[name.lower()] = RoleRule(
            name=name,
            title=str(row.get("title") or base.get("title") or name),
            verdict=verdict,
            source=source,
            source_text=sources[source],
            advice=str(base.get("advice", "")),
            condition=str(base.get("condition", "")),
            note=str(base.get("note", "")),
            via=str(parent or ""),
        )
    return rules


def role_rule(feature_name: str) -> RoleRule | None:
    return role_rules().get(feature_name.lower())

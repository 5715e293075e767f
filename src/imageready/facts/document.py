"""Reading a facts script's output: one JSON object, checked against the schema of its OS."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from imageready.text import decode_guest, guest_json

SCHEMA_VERSION = 1

#: key -> the JSON types it may hold (None: null, for a probe that failed)
Schema = dict[str, tuple[type | None, ...]]


class FactsError(ValueError):
    """The facts output is not what the schema promises; the message is one line."""


def parse_document(
    stdout: bytes,
    os_family: str,
    schema: Schema,
    normalize: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Decode (UTF-8, a BOM tolerated) and validate one facts document of ``os_family``.
    ``normalize`` may repair the object in place before it is checked."""
    text = decode_guest(stdout).lstrip("\ufeff").strip()
    if not text:
        raise FactsError(f"the {os_family} facts script printed nothing")
    try:
        facts = guest_json(text)
    except json.JSONDecodeError as err:
        raise FactsError(f"the {os_family} facts script did not print one JSON object: {err}") from None
    if not isinstance(facts, dict):
        raise FactsError(f"the {os_family} facts script printed JSON that is not an object")
    if normalize is not None:
        normalize(facts)
    for key, types in schema.items():
        if key not in facts:
            raise FactsError(f"{os_family} facts: {key!r} is missing")
        value = facts[key]
        if not any(value is None if t is None else _is(value, t) for t in types):
            raise FactsError(f"{os_family} facts: {key!r} has an unexpected type {type(value).__name__}")
    if facts["schema"] != SCHEMA_VERSION or facts["os_family"] != os_family:
        raise FactsError(
            f"{os_family} facts: expected schema {SCHEMA_VERSION} for {os_family}, got schema "
            f"{facts['schema']!r} for {facts['os_family']!r}"
        )
    for entry in facts["errors"]:
        if not isinstance(entry, dict) or not {"probe", "error"} <= entry.keys():
            raise FactsError(f"{os_family} facts: an 'errors' entry lacks probe or error")
    return facts


def _is(value: Any, kind: type) -> bool:
    # bool is an int in Python, but not in the schema
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)

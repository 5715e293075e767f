"""How a scenario file is read: every mapping through :class:`Reader`, which refuses keys it was not
asked for, so a typo (``sise_gb``) is an error naming its path instead of a silently different test.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Any

_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9_.()\-]{1,90}$")
#: Char.IsLetterOrDigit: the Unicode letter categories and decimal digits
_LETTER_OR_DIGIT = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd"})


def valid_resource_group_name(name: str) -> bool:
    """Microsoft, "Naming rules and restrictions for Azure resources" (resourcegroups): 1-90
    underscores, hyphens, periods, parentheses, and letters or digits as defined by
    Char.IsLetterOrDigit; can't end with a period."""
    return (
        0 < len(name) <= 90
        and not name.endswith(".")
        and all(c in "_-.()" or unicodedata.category(c) in _LETTER_OR_DIGIT for c in name)
    )


class ScenarioError(ValueError):
    """A scenario that cannot be loaded; the message is one line naming the file and path."""


class Reader:
    """Typed access to one mapping of the scenario; ``done()`` rejects keys nobody read."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ScenarioError(f"{path}: expected a mapping, got {type(data).__name__}")
        self.data = data
        self.path = path
        self._read: set[str] = set()

    def _get(self, key: str) -> Any:
        self._read.add(key)
        return self.data.get(key)

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def skip(self, key: str) -> None:
        """Accept ``key`` without reading it."""
        self._read.add(key)

    def has(self, key: str) -> bool:
        return key in self.data

    def text(self, key: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                raise ScenarioError(f"{self.where(key)}: required")
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ScenarioError(f"{self.where(key)}: expected a string, got {value!r}")
        value = str(value)
        if choices and value not in choices:
            raise ScenarioError(f"{self.where(key)}: expected one of {', '.join(choices)}, got {value!r}")
        return value

    def optional_text(self, key: str) -> str | None:
        """The value as a string, or None when the key is absent or empty."""
        if self.data.get(key) is None:
            self._read.add(key)
            return None
        return self.text(key) or None

    def guid(self, key: str, default: str) -> str:
        value = self.text(key, default)
        if not _GUID.match(value):
            raise ScenarioError(f"{self.where(key)}: expected a GUID, got {value!r}")
        return value.lower()

    def name(self, key: str = "name") -> str:
        value = self.text(key)
        if not _NAME.match(value) or value.endswith("."):
            raise ScenarioError(f"{self.where(key)}: {value!r} is not a valid Azure resource name")
        return value

    def rg_name(self, key: str = "name") -> str:
        """A resource group's name: Unicode letters and digits too (docs/azsim-rules.md, NAME-1)."""
        value = self.text(key)
        if not valid_resource_group_name(value):
            raise ScenarioError(f"{self.where(key)}: {value!r} is not a valid resource group name")
        return value

    def number(self, key: str, default: float, *, minimum: float = 0) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ScenarioError(f"{self.where(key)}: expected a number >= {minimum}, got {value!r}")
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ScenarioError(f"{self.where(key)}: expected a whole number >= {minimum}, got {value!r}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ScenarioError(f"{self.where(key)}: expected true or false, got {value!r}")
        return value

    def items(self, key: str) -> list[Any]:
        value = self._get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ScenarioError(f"{self.where(key)}: expected a list, got {type(value).__name__}")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ScenarioError(f"{self.where(key)}: expected a mapping, got {type(value).__name__}")
        return dict(value)

    def strings(self, key: str) -> dict[str, str]:
        result = {}
        for name, value in self.mapping(key).items():
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ScenarioError(f"{self.where(key)}.{name}: expected a string, got {value!r}")
            result[str(name)] = str(value)
        return result

    def child(self, key: str) -> Reader:
        return Reader(self.mapping(key), self.where(key))

    def done(self) -> None:
        for key in self.data:
            if key not in self._read:
                raise ScenarioError(f"{self.where(str(key))}: unknown key")

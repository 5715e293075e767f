"""Facts that fail closed: a read-only view over a facts document (the guest's JSON, or part of
Azure's view) in which a fact that is absent, null or of the wrong type raises
``FactsUnavailable`` instead of reading as "nothing to report". Absence of evidence is not
evidence of safety: a check built on this view errors on missing data, it never passes.

    domain = guest_facts["domain"]                  # a view; absent or null: error
    joined = guest_facts.need("domain.part_of_domain", bool)
    status = ci.optional("status", str)             # None allowed, stated at the call site

``get`` is as strict as ``[]`` on purpose: ``facts.get("x") or {}`` is the habit that turned
missing data into passes, so it cannot do that here. A fact whose absence means something (a
setting not in a configuration file, a service not installed) is read with ``optional``, where
the check says what absence means.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

from imageready.facts import FactsUnavailable

#: the category of a check that could not judge because its facts are incomplete
GUEST_FACTS = "guest facts"

_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _kind(value: Any) -> str:
    return _NAMES.get(type(value), type(value).__name__)


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # a JSON number: 40 and 40.5 alike
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is dict:
        return isinstance(value, Mapping)
    if kind is list:
        return isinstance(value, list | tuple | FactsList)
    return isinstance(value, kind)


class FactsView(Mapping[str, Any]):
    """A strict, read-only view of one JSON object of facts."""

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        path: str = "",
        what: str = "guest fact",
        category: str = GUEST_FACTS,
        errors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        self._data = data
        self._path = path
        self._what = what
        self._category = category
        # probes that failed on the guest ({"probe": "cloud_init", "error": ...}): why a fact is null
        self._errors = errors if errors is not None else _errors_of(data)

    # --- Mapping ---------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._wrap(key, self._present(key))

    def get(self, key: str, default: Any = None) -> Any:
        """As strict as ``view[key]``: a default would turn missing data into a pass."""
        return self[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        return f"FactsView({self._path or '<root>'}: {dict(self._data)!r})"

    # --- typed access ----------------------------------------------------------------------------

    def need(self, path: str | tuple[str, ...], *types: type) -> Any:
        """The fact at ``path`` ("a.b.c", or a tuple of keys for keys that hold dots); absent,
        null or not of ``types``: FactsUnavailable."""
        head, rest = _split(path)
        value = self[head]
        if rest:
            if not isinstance(value, FactsView):
                raise self._unavailable(head, f"is {_kind(value)}, not an object")
            return value.need(rest, *types)
        return self._typed(head, value, types)

    def optional(self, path: str | tuple[str, ...], *types: type) -> Any:
        """Like ``need``, but an absent or null fact at the last step is None (its parents must
        exist). Use it only where absence means something, and say what at the call site."""
        head, rest = _split(path)
        if rest:
            value = self[head]
            if not isinstance(value, FactsView):
                raise self._unavailable(head, "is not an object")
            return value.optional(rest, *types)
        raw = self._data.get(head)
        if raw is None:
            return None
        return self._typed(head, self._wrap(head, raw), types)

    @property
    def raw(self) -> Mapping[str, Any]:
        """The underlying JSON (for evidence attachments)."""
        return self._data

    # --- internals -------------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def _present(self, key: str) -> Any:
        if key not in self._data:
            raise self._unavailable(key, "is missing")
        value = self._data[key]
        if value is None:
            why = self._why_null(key)
            raise self._unavailable(key, f"is null{f' ({why})' if why else ''}")
        return value

    def _typed(self, key: str, value: Any, types: tuple[type, ...]) -> Any:
        if types and not any(_is(value, t) for t in types):
            expected = " or ".join(_NAMES.get(t, t.__name__) for t in types)
            raise self._unavailable(key, f"is {_kind(value)}, not {expected}")
        return value

    def _wrap(self, key: str, value: Any) -> Any:
        if isinstance(value, Mapping) and not isinstance(value, FactsView):
            return FactsView(
                value, path=self._full(key), what=self._what, category=self._category, errors=self._errors
            )
        if isinstance(value, list):
            return FactsList(value, self._full(key), self._what, self._category, self._errors)
        return value

    def _why_null(self, key: str) -> str:
        full = self._full(key)
        for entry in self._errors:
            probe = str(entry.get("probe") or "")
            if probe == full or full.startswith(probe + ".") or probe.startswith(full + "."):
                return f"the probe failed: {entry.get('error')}"
        return ""

    def _unavailable(self, key: str, problem: str) -> FactsUnavailable:
        return FactsUnavailable(
            f"{self._what} '{self._full(key)}' {problem}: the check cannot judge without it", self._category
        )


class FactsList(Sequence[Any]):
    """A strict, read-only view of a JSON list of facts: its objects are FactsViews."""

    def __init__(
        self, data: list[Any], path: str, what: str, category: str, errors: Sequence[Mapping[str, Any]]
    ) -> None:
        self._data, self._path, self._what, self._category, self._errors = data, path, what, category, errors

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self._wrap(i) for i in range(len(self._data))[index]]
        return self._wrap(index)

    def __len__(self) -> int:
        return len(self._data)

    def _wrap(self, index: int) -> Any:
        value = self._data[index]
        path = f"{self._path}.{index}"
        if value is None:
            raise FactsUnavailable(
                f"{self._what} '{path}' is null: the check cannot judge without it", self._category
            )
        if isinstance(value, Mapping) and not isinstance(value, FactsView):
            return FactsView(value, path=path, what=self._what, category=self._category, errors=self._errors)
        return value

    @property
    def raw(self) -> list[Any]:
        return self._data


def _split(path: str | tuple[str, ...]) -> tuple[str, str | tuple[str, ...]]:
    if isinstance(path, tuple):
        return path[0], path[1:]
    head, _, rest = path.partition(".")
    return head, rest


def _errors_of(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = data.get("errors") if isinstance(data, Mapping) else None
    return [e for e in found if isinstance(e, Mapping)] if isinstance(found, list) else []


def guest_view(guest: Mapping[str, Any]) -> FactsView:
    """The guest facts document as a strict view."""
    return guest if isinstance(guest, FactsView) else FactsView(guest)

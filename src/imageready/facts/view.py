"""Facts that fail closed: a read-only view over a facts document (the guest's JSON, or Azure's
view of the VM) in which a fact that is absent, null or of the wrong type raises
``FactsUnavailable`` instead of reading as "nothing to report". Absence of evidence is not
evidence of safety: a check built on this view errors on missing data, it never passes.

    domain = guest_facts["domain"]                  # a view; absent or null: error
    joined = guest_facts.need("domain.part_of_domain", bool)
    status = ci.optional("status", str)             # None allowed, stated at the call site

``get`` is as strict as ``[]`` on purpose: ``facts.get("x") or {}`` is the habit that turned
missing data into passes, so it cannot do that here. A fact whose absence means something (a
setting not in a configuration file, a service not installed) is read with ``optional``, where
the check says what absence means.

The view also knows what a check read (``recording_reads``): every value it hands out that is
not itself a view, by its path from the document's root. The verdict keeps a digest of those
values per case, so a later actions stage can tell which checks judged facts that have changed.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, overload

from imageready.categories import Category
from imageready.facts import FactsUnavailable

#: a path from a document's root: ("guest", "domain", "part_of_domain"), ("azure", "vm", ...);
#: a list's length is read as (..., "#len")
FactPath = tuple[str | int, ...]
LENGTH = "#len"

_READS: contextvars.ContextVar[set[FactPath] | None] = contextvars.ContextVar(
    "imageready_reads", default=None
)

_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "an object",
}


@contextlib.contextmanager
def recording_reads() -> Iterator[set[FactPath]]:
    """Collect the paths of the facts read through any view while the block runs."""
    reads: set[FactPath] = set()
    token = _READS.set(reads)
    try:
        yield reads
    finally:
        _READS.reset(token)


@contextlib.contextmanager
def not_recording() -> Iterator[None]:
    """The harness's own reads inside a check case's run (the gate's resume, applicability):
    not the case's, so not recorded as its reads."""
    token = _READS.set(None)
    try:
        yield
    finally:
        _READS.reset(token)


#: recorded by whatever reads the guest live rather than through the facts (the sensitive-data
#: scan, testinfra's ``host``): nothing on record can show such a read unchanged later
LIVE: FactPath = ("#live",)


def read_live() -> None:
    """Record that the running check case reads the guest live: a later stage behind its
    verdict runs the case again rather than trust it unchanged."""
    _record(LIVE)


def current_reads() -> set[FactPath] | None:
    """The set ``recording_reads`` is filling in this context (None when nothing records)."""
    return _READS.get()


def _record(path: FactPath) -> None:
    reads = _READS.get()
    if reads is not None:
        reads.add(path)


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


class _Node:
    """What a view and a list share: where they are in the document and how they fail."""

    def __init__(
        self, keys: FactPath, what: str, category: Category, errors: Sequence[Mapping[str, Any]]
    ) -> None:
        self._keys, self._what, self._category, self._errors = keys, what, category, errors

    def _dotted(self, key: str | int | None = None) -> str:
        """The path as messages show it, without the root's label ("domain.part_of_domain")."""
        keys = self._keys[1:] if key is None else (*self._keys[1:], key)
        return ".".join(str(k) for k in keys)

    def _child(self, key: str | int, value: Any) -> Any:
        """A nested object or list as a view; anything else is a leaf, and recorded as read."""
        keys = (*self._keys, key)
        if isinstance(value, Mapping) and not isinstance(value, FactsView):
            return FactsView(value, keys=keys, what=self._what, category=self._category, errors=self._errors)
        if isinstance(value, list):
            _record((*keys, LENGTH))
            return FactsList(value, keys, self._what, self._category, self._errors)
        _record(keys)
        return value

    def _unavailable(self, key: str | int, problem: str) -> FactsUnavailable:
        return FactsUnavailable(
            f"{self._what} '{self._dotted(key)}' {problem}: the check cannot judge without it", self._category
        )


class FactsView(_Node, Mapping[str, Any]):
    """A strict, read-only view of one JSON object of facts."""

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        keys: FactPath = ("guest",),
        what: str = "guest fact",
        category: Category = Category.GUEST_FACTS,
        errors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        # probes that failed on the guest ({"probe": "cloud_init", "error": ...}): why a fact is null
        super().__init__(keys, what, category, errors if errors is not None else _errors_of(data))
        self._data = data

    # --- Mapping ---------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._child(key, self._present(key))

    def get(self, key: str, default: Any = None) -> Any:
        """As strict as ``view[key]``: a default would turn missing data into a pass."""
        return self[key]

    # Iterating, counting or asking membership reads which keys exist: recorded as a read of the
    # whole object (more than was read, never less: a later stage runs the check again when
    # anything under it changed)

    def __iter__(self) -> Iterator[str]:
        _record(self._keys)
        return iter(self._data)

    def __len__(self) -> int:
        _record(self._keys)
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        _record(self._keys)
        return key in self._data

    def __repr__(self) -> str:
        return f"FactsView({self._dotted() or '<root>'}: {dict(self._data)!r})"

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
            _record((*self._keys, head))  # its absence was read, and may change
            return None
        return self._typed(head, self._child(head, raw), types)

    @property
    def raw(self) -> Mapping[str, Any]:
        """The underlying JSON, recorded as a read of all of it (whatever is done with it)."""
        _record(self._keys)
        return self._data

    # --- internals -------------------------------------------------------------------------------

    def _present(self, key: str) -> Any:
        if key not in self._data:
            _record((*self._keys, key))
            raise self._unavailable(key, "is missing")
        value = self._data[key]
        if value is None:
            _record((*self._keys, key))
            why = self._why_null(key)
            raise self._unavailable(key, f"is null{f' ({why})' if why else ''}")
        return value

    def _typed(self, key: str, value: Any, types: tuple[type, ...]) -> Any:
        if types and not any(_is(value, t) for t in types):
            expected = " or ".join(_NAMES.get(t, t.__name__) for t in types)
            raise self._unavailable(key, f"is {_kind(value)}, not {expected}")
        return value

    def _why_null(self, key: str) -> str:
        full = self._dotted(key)
        for entry in self._errors:
            probe = str(entry.get("probe") or "")
            if probe == full or full.startswith(probe + ".") or probe.startswith(full + "."):
                return f"the probe failed: {entry.get('error')}"
        return ""


class FactsList(_Node, Sequence[Any]):
    """A strict, read-only view of a JSON list of facts: its objects are FactsViews."""

    def __init__(
        self,
        data: list[Any],
        keys: FactPath,
        what: str,
        category: Category,
        errors: Sequence[Mapping[str, Any]],
    ) -> None:
        super().__init__(keys, what, category, errors)
        self._data = data

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self._element(i) for i in range(len(self._data))[index]]
        return self._element(index)

    def __len__(self) -> int:
        return len(self._data)

    def _element(self, index: int) -> Any:
        value = self._data[index]
        if value is None:
            _record((*self._keys, index))
            raise self._unavailable(index, "is null")
        return self._child(index, value)

    @property
    def raw(self) -> list[Any]:
        """The underlying JSON list, recorded as a read of all of it."""
        _record(self._keys)
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


def value_at(document: Mapping[str, Any], path: FactPath) -> Any:
    """The value a read of ``path`` saw in ``document`` ({"guest": ..., "azure": ...}): the
    value, the length of a list for ``#len``, or the marker "<absent>"."""
    current: Any = document
    for key in path:
        if key == LENGTH:
            return len(current) if isinstance(current, list) else "<absent>"
        found = (isinstance(current, Mapping) and isinstance(key, str) and key in current) or (
            isinstance(current, list) and isinstance(key, int) and 0 <= key < len(current)
        )
        if not found:
            return "<absent>"
        current = current[key]
    return current

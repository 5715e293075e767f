"""What the command line selected, decided by imageready rather than by pytest's collection.

The gate must know every check case of the whole policy, whatever the command line names. So a
run that targets VMs always collects the whole policy directory (its path is added to pytest's
collection arguments), and the arguments the user gave become a *selection* applied afterwards:
a case they did not name is deselected and reported so (``pytest_deselected``), which keeps that
VM's gate shut. The matching mirrors pytest's own (``_pytest.main.Session.collect``, pytest 8/9):
a directory selects everything under it, a file everything in it, ``file::name`` a function
and all its parametrizations, ``file::name[id]`` exactly one case. A mismatch can only deselect
(the gate stays shut), never add a case the policy does not have.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

#: ini options that decide what is collected: overriding them on the command line (-o) would
#: shrink the policy the gate expects, so a run that targets VMs refuses them
COLLECTION_INI = ("python_files", "python_classes", "python_functions", "norecursedirs")


@dataclass(frozen=True)
class Selector:
    """One collection argument: a path and optional ``::`` parts and ``[parametrization]``."""

    text: str
    path: Path
    parts: tuple[str, ...]
    parametrization: str | None

    @classmethod
    def parse(cls, arg: str, invocation_dir: Path) -> Selector:
        base, bracket, rest = arg.partition("[")
        strpath, *parts = base.split("::")
        return cls(
            text=arg,
            path=Path(os.path.abspath(invocation_dir / strpath)),
            parts=tuple(parts),
            parametrization=f"[{rest}" if bracket else None,
        )

    def selects(self, item: pytest.Item) -> bool:
        if not self.parts:
            return item.path == self.path or item.path.is_relative_to(self.path)
        if item.path != self.path:
            return False
        names = _names_below_file(item)
        if len(names) < len(self.parts):
            return False
        for index, part in enumerate(self.parts):
            name = names[index]
            if index == len(self.parts) - 1:
                if self.parametrization is not None:
                    return name == part + self.parametrization
                return name.split("[")[0] == part
            if name != part:
                return False
        return True


def _names_below_file(item: pytest.Item) -> list[str]:
    chain = item.listchain()
    for index, node in enumerate(chain):
        if isinstance(node, pytest.File):
            return [n.name for n in chain[index + 1 :]]
    return [item.name]


def parse_selection(args: Iterable[str], invocation_dir: Path) -> list[Selector]:
    return [Selector.parse(arg, invocation_dir) for arg in args]


def covers(selectors: Iterable[Selector], directory: Path) -> bool:
    """Whether collecting ``selectors`` already collects all of ``directory``."""
    target = Path(os.path.abspath(directory))
    return any(not s.parts and (target == s.path or target.is_relative_to(s.path)) for s in selectors)


def split(
    items: list[pytest.Item], selectors: list[Selector]
) -> tuple[list[pytest.Item], list[pytest.Item], list[Selector]]:
    """(selected, deselected, selectors that matched nothing)."""
    used: set[int] = set()
    selected: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        hit = False
        for index, selector in enumerate(selectors):
            if selector.selects(item):
                used.add(index)
                hit = True
        (selected if hit else deselected).append(item)
    unused = [s for index, s in enumerate(selectors) if index not in used]
    return selected, deselected, unused


def refused_overrides(override_ini: Iterable[str] | None, checks_ini: str) -> list[str]:
    """The ``-o NAME=VALUE`` overrides that would change what the policy collects."""
    names = {*COLLECTION_INI, checks_ini}
    found = []
    for entry in override_ini or ():
        name = entry.partition("=")[0].strip()
        if name in names:
            found.append(name)
    return found

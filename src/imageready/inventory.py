"""What each collected item is to the gate: a check case of a VM (its ``@pytest.mark.check``
metadata, validated) or an action of a VM; which modules and functions make up the policy; and
the order they run in (``Sorter``: each VM's checks, then its actions)."""

from __future__ import annotations

import fnmatch
import inspect
from pathlib import Path
from typing import Any

import pytest

from imageready.applicability import REQUIREMENTS
from imageready.runstate import ItemInfo, RunState, item_info
from imageready.target import VmRef

SEVERITIES = ("critical", "high", "medium", "low")
OS_VALUES = ("Linux", "Windows", "any")


def check_info(item: pytest.Item, mark: pytest.Mark, vm: VmRef) -> ItemInfo:
    kwargs = mark.kwargs
    problems = [f"'{k}' is required" for k in ("id", "title", "severity", "os", "doc") if not kwargs.get(k)]
    if kwargs.get("severity") and kwargs["severity"] not in SEVERITIES:
        problems.append(f"severity must be one of {', '.join(SEVERITIES)}")
    if kwargs.get("os") and kwargs["os"] not in OS_VALUES:
        problems.append(f"os must be one of {', '.join(OS_VALUES)}")
    if kwargs.get("requires") and kwargs["requires"] not in REQUIREMENTS:
        problems.append(f"requires must be one of {', '.join(REQUIREMENTS)}")
    if problems:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.check: {'; '.join(problems)}")
    return ItemInfo(
        kind="check",
        vm=vm,
        case_id=item.nodeid,
        check_id=str(kwargs["id"]),
        title=str(kwargs["title"]),
        severity=str(kwargs["severity"]),
        os=str(kwargs["os"]),
        doc=str(kwargs["doc"]),
        parameter=case_parameter(item, vm),
        requires=str(kwargs.get("requires") or ""),
    )


def action_info(item: pytest.Item, mark: pytest.Mark | None, vm: VmRef) -> ItemInfo:
    step = item.name
    if mark is not None:
        step = str(mark.kwargs.get("step") or (mark.args[0] if mark.args else item.name))
    return ItemInfo(kind="action", vm=vm, case_id=item.nodeid, step=step)


def case_parameter(item: pytest.Item, vm: VmRef) -> str:
    callspec = getattr(item, "callspec", None)
    ident = str(callspec.id) if callspec is not None else ""
    # pytest writes a test id in ASCII (non-ASCII escaped): a Unicode resource group's key too
    for key in dict.fromkeys((vm.key, vm.key.encode("unicode_escape").decode("ascii"))):
        if ident == key:
            return ""
        if ident.startswith(key + "-"):
            return ident[len(key) + 1 :]
    return ident


def check_functions(module: Any) -> list[str]:
    """Node-id names (``func`` or ``Class::method``) of what ``module`` defines with
    ``@pytest.mark.check``."""

    def marked(obj: Any) -> bool:
        return any(getattr(mark, "name", None) == "check" for mark in getattr(obj, "pytestmark", []))

    found = []
    for name, obj in vars(module).items():
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isfunction(obj) and marked(obj):
            found.append(name)
        elif inspect.isclass(obj):
            found += [
                f"{name}::{attr}"
                for attr, member in vars(obj).items()
                if inspect.isfunction(member)
                and (marked(member) or (marked(obj) and attr.startswith("test")))
            ]
    return sorted(found)


def in_dir(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        return False
    return True


#: pytest's default python_files: a module matching these is policy whatever an ini file says,
#: so a configuration that narrows python_files cannot shrink what the gate expects
DEFAULT_POLICY_FILES = ("test_*.py", "*_test.py")


def policy_modules(rootpath: Path, checks_dir: Path, python_files: tuple[str, ...]) -> list[str]:
    """Node-id paths of every test module in the policy directory (pytest's default module
    patterns plus the configured ones)."""
    if not checks_dir.is_dir():
        return []
    patterns = {*DEFAULT_POLICY_FILES, *python_files}
    modules = []
    for path in sorted(checks_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns):
            modules.append(path.relative_to(rootpath).as_posix())
    return modules


class Sorter:
    """Each VM: its checks, then its actions; stable within each, after pytest's reordering.

    A separate plugin object because the gatekeeper's own modifyitems hook must run first.
    Runs before xdist reports the collection to the controller, so every worker agrees."""

    def __init__(self, state: RunState) -> None:
        self.state = state

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        order = {vm.key: n for n, vm in enumerate(self.state.vms)}

        def key(pair: tuple[int, pytest.Item]) -> tuple[int, int, int]:
            index, item = pair
            info = item_info(item)
            if info is None:
                return (-1, 0, index)
            return (order.get(info.vm.key, len(order)), 0 if info.kind == "check" else 1, index)

        items[:] = [item for _, item in sorted(enumerate(items), key=key)]

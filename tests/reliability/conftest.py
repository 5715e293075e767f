"""Reliability and security, end to end: the harness as an operator runs it (tests/e2e/conftest.py's
``harness``) against an azsim per module, with faults and bad input, checking what it prints, the
exit code, what it leaves in the report directory, and azsim's state (Azure and the guest).

Fast admin access to azsim (status, the request log, faults) goes through its admin API in process
(``azsim.cli.admin_call``), not the CLI: a check before and after every case stays cheap.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from azsim.cli import admin_call
from azsim.server import StateDir
from tests.e2e.conftest import Azsim, Run, start_azsim

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

#: what a crash looks like in pytest's output: never in a one-line ending
CRASH = re.compile(r"Traceback \(most recent call last\)|INTERNALERROR")


class Sim(Azsim):
    """An azsim with its admin API at hand (status, requests, faults) in process."""

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        return admin_call(StateDir(self.state_dir), method, path, body, timeout=30)

    def status(self) -> dict[str, Any]:
        data = self.admin("GET", "/azsim/status")
        return {f"{v['resource_group']}/{v['name']}": v for v in data["vms"]}

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        return list(self.admin("GET", f"/azsim/requests?since={since}")["requests"])

    def add_fault(self, **fault: Any) -> str:
        return str(self.admin("POST", "/azsim/faults", fault)["id"])

    def clear_faults(self) -> None:
        self.admin("DELETE", "/azsim/faults")

    def delete_vm(self, vm: str) -> None:
        rg, name = vm.split("/")
        self.admin("POST", f"/azsim/vms/{rg}/{name}/delete")


def start_sim(scenario: str, state_dir: Path) -> Sim:
    started = start_azsim(REPO / scenario, state_dir)
    return Sim(started.state_dir, started.env)


@pytest.fixture(scope="module")
def sim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    """One azsim per test module, from the module's ``SCENARIO``."""
    started = start_sim(request.module.SCENARIO, tmp_path_factory.mktemp("azsim"))
    try:
        yield started
    finally:
        started.cli("down", check=False)


def assert_one_line(run: Run, pattern: str) -> str:
    """The run ended without a traceback, and says why in one line matching ``pattern``."""
    assert not CRASH.search(run.output), run.output[-4000:]
    lines = [line for line in run.output.splitlines() if re.search(pattern, line)]
    assert lines, f"no line matches {pattern!r}:\n{run.output[-4000:]}"
    return lines[0]


def audit_vm(run: Run, vm: str) -> dict[str, Any]:
    (found,) = [v for v in run.audit()["vms"] if v["vm"] == vm]
    return dict(found)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))

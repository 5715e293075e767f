"""End to end: the real harness (this repository's checks/ and actions/, through the installed
plugin) against a real azsim (ARM over HTTPS, sshd + waagent sandboxes, WS-Man Windows guests).

Each test module names its scenario with ``SCENARIO = "tests/scenarios/NAME.yaml"``; the module
gets one azsim (``azsim`` fixture), started with `azsim up` and stopped with `azsim down`. Tests
drive the harness as a user would, in a subprocess: ``harness(azsim, "--vm", "rg/vm", ...)``.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
AZSIM = [sys.executable, "-m", "azsim"]

#: what every test under tests/e2e/ is (a ``pytestmark`` in a conftest marks nothing: pytest reads
#: it from test modules only, so the marks are added to the items collected here)
E2E_MARKS = (pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            for mark in E2E_MARKS:
                item.add_marker(mark)


@dataclass
class Azsim:
    """A running azsim: its state directory and the environment its `env` file exports."""

    state_dir: Path
    env: dict[str, str]

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AZSIM, *args, "--state-dir", str(self.state_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=check,
        )

    def status(self) -> dict[str, Any]:
        """`azsim status` as JSON, VMs by "rg/name"."""
        data = json.loads(self.cli("status").stdout)
        vms = data.get("vms", data) if isinstance(data, dict) else data
        return {f"{v['resource_group']}/{v['name']}": v for v in vms}

    def snapshot(self) -> dict[str, Any]:
        """What a change would show: per VM its etag (ARM bumps it on every mutation), power and
        OS state, tags, and its guest's power, boots and image state (activity counters left out)."""
        found = {}
        for key, vm in self.status().items():
            guest = vm.get("guest") or {}
            summary = guest.get("summary") or {}
            found[key] = {
                "etag": vm.get("etag"),
                "power_state": vm.get("power_state"),
                "os_state": vm.get("os_state"),
                "tags": vm.get("tags"),
                "guest_running": guest.get("running"),
                "boots": summary.get("boots"),
                "image_state": summary.get("image_state"),
            }
        return found

    def mutations(self, after_seq: int = 0) -> list[str]:
        """ARM requests that could change something (not GETs, not sign-in), after ``after_seq``."""
        return [
            f"{r['method']} {r['path']}"
            for r in self.requests()
            if r.get("kind") != "aad" and r["method"] != "GET" and int(r.get("seq", 0)) > after_seq
        ]

    def last_seq(self) -> int:
        return max((int(r.get("seq", 0)) for r in self.requests()), default=0)

    def admin_run(self, address: str, vm: str, script: str) -> str:
        """``script`` as root on a Linux guest, through our own SSH login as azureuser with
        azsim's key at ``address`` (not through the harness), its stdout."""
        from imageready.guest.ssh import connect_ssh

        key = self.env["IMAGEREADY_SSH_KEY"]
        guest = connect_ssh(address, "azureuser", vm_key=vm, key_path=key, allow_agent=False)
        try:
            return guest.run(script, timeout=30, elevated=True).text()
        finally:
            guest.close()

    def requests(self) -> list[dict[str, Any]]:
        """azsim's request log (every ARM request it answered)."""
        out = self.cli("requests").stdout
        data = json.loads(out)
        return list(data.get("requests", data) if isinstance(data, dict) else data)


def parse_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            values[key] = shlex.split(value)[0] if value else ""
    return values


def start_azsim(scenario: Path, state_dir: Path) -> Azsim:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IMAGEREADY_", "AZSIM_"))}
    subprocess.run(
        [*AZSIM, "up", "--scenario", str(scenario), "--state-dir", str(state_dir)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    env.update(parse_env_file(state_dir / "env"))
    # the pipeline's verdict key (docs/gate.md): every stage of a test holds it, as CI would
    env["IMAGEREADY_VERDICT_KEY"] = secrets.token_hex(32)
    return Azsim(state_dir, env)


@pytest.fixture(scope="module")
def azsim(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    """One azsim per test module, from the module's ``SCENARIO``."""
    scenario = REPO / request.module.SCENARIO
    sim = start_azsim(scenario, tmp_path_factory.mktemp("azsim"))
    try:
        yield sim
    finally:
        sim.cli("down", check=False)


@dataclass
class Run:
    """One harness run: exit code, output, and what it wrote."""

    returncode: int
    stdout: str
    stderr: str
    report_dir: Path

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def verdict(self, vm: str) -> dict[str, Any]:
        rg, name = vm.split("/")
        data: dict[str, Any] = json.loads(
            (self.report_dir / "verdicts" / f"verdict-{rg}__{name}.json").read_text()
        )
        return data

    def audit(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.report_dir / "audit.json").read_text())
        return data

    def outcomes(self) -> dict[str, str]:
        """JUnit outcome per test id (``checks/test_x.py::test_y[rg/vm-param]``)."""
        import xml.etree.ElementTree as ET

        found = {}
        root = ET.parse(self.report_dir / "junit.xml").getroot()  # noqa: S314 - our own output
        for case in root.iter("testcase"):
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            kinds = {child.tag for child in case}
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                if tag in kinds:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
            found[name] = outcome
        return found


def harness_command(*args: str, report_dir: Path) -> list[str]:
    """`python -m pytest <args>` with the report options every harness run here uses."""
    report_dir.mkdir(parents=True, exist_ok=True)
    return [
        sys.executable,
        "-m",
        "pytest",
        *args,
        "-p",
        "no:cacheprovider",
        # one token each: pytest takes a bare existing directory argument for its rootdir
        f"--report-dir={report_dir}",
        f"--junitxml={report_dir / 'junit.xml'}",
        "-o",
        "console_output_style=classic",
    ]


def harness(
    sim: Azsim,
    *args: str,
    report_dir: Path,
    timeout: float = 900,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> Run:
    """Run `pytest <args>` from the repository root (or ``cwd``) against ``sim`` as an operator
    would."""
    done = subprocess.run(
        harness_command(*args, report_dir=report_dir),
        cwd=cwd,
        env={**sim.env, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(done.returncode, done.stdout, done.stderr, report_dir)

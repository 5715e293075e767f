"""The live suite's dry run against a configured subscription prints its plan and exits 0 without
creating anything and without any network I/O (issue 13, "done when").

Each run is a subprocess whose interpreter has an audit hook (``sys.addaudithook``, installed by a
``sitecustomize`` module on its path) that records and blocks every name lookup and every socket
connection: nothing can leave the machine, and the record shows whether anything tried. The ARM
and sign-in endpoints point at 192.0.2.1 (TEST-NET-1, never routed) for good measure. A control
run (the sweeper, which must talk to ARM) proves the hook sees an attempt when there is one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO

SITECUSTOMIZE = """
import json
import os
import sys

_LOG = os.environ["IMAGEREADY_TEST_NET_LOG"]
_WATCHED = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto")


def _hook(event, args):
    if event in _WATCHED:
        with open(_LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps([event, repr(args)[:200]]) + "\\n")
        raise ConnectionRefusedError(f"blocked by the dry-run test: {event}")


sys.addaudithook(_hook)
"""

SUBSCRIPTION = "3b1f5c8e-0d0a-4c6e-9e7e-5f1d2a3b4c5d"
UNROUTABLE = "https://192.0.2.1/"


def configured_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "net.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IMAGEREADY_", "AZSIM_"))}
    env.update(
        {
            "PYTHONPATH": f"{hook_dir}{os.pathsep}{REPO}",
            "IMAGEREADY_TEST_NET_LOG": str(log),
            "IMAGEREADY_LIVE": "1",
            "IMAGEREADY_LIVE_SUBSCRIPTION": SUBSCRIPTION,
            "IMAGEREADY_LIVE_RG_PREFIX": "irlive",
            "IMAGEREADY_LIVE_SUBNET_ID": (
                f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-net/providers/Microsoft.Network"
                "/virtualNetworks/vnet-build/subnets/agents"
            ),
            "IMAGEREADY_LIVE_DRY_RUN": "1",
            "IMAGEREADY_ARM_ENDPOINT": UNROUTABLE,
            "AZURE_AUTHORITY_HOST": UNROUTABLE,
            "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
            "AZURE_CLIENT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "AZURE_CLIENT_SECRET": "not-a-secret",
            "IMAGEREADY_SSH_KEY": str(tmp_path / "no-key"),
            "IMAGEREADY_WINRM_PASSWORD": "not-a-password",
        }
    )
    return env, log


def attempts(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def assert_plan(output: str) -> None:
    assert "dry run, nothing created" in output
    assert "plan for run " in output and f"against azure (subscription {SUBSCRIPTION}, westeurope)" in output
    assert "cost guard: 4 VMs (limit 4), 90 minutes" in output
    for line in (
        "create resource group         irlive-",
        "create virtual machine        lin-orig: Standard_B1s, Linux, Debian:debian-12:12-gen2:latest",
        "create virtual machine        win-orig: Standard_B2s, Windows, MicrosoftWindowsServer:",
        "create snapshot               lin-copy-snap",
        "create gallery image version  gal_live_",
        "then delete resource group irlive-",
    ):
        assert line in output, line


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "tests.live", "plan"],
        [sys.executable, "-m", "pytest", "tests/live/test_live_contract.py", "-p", "no:cacheprovider", "-q"],
    ],
    ids=["cli", "pytest"],
)
def test_the_dry_run_prints_its_plan_and_sends_nothing(tmp_path: Path, command: list[str]) -> None:
    env, log = configured_env(tmp_path)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert_plan(done.stdout + done.stderr)
    assert attempts(log) == [], "the dry run looked up a name or opened a connection"


def test_the_watch_sees_a_run_that_does_talk_to_arm(tmp_path: Path) -> None:
    """The control: the sweeper must ask ARM for resource groups; the hook records the attempt
    (and blocks it), so an empty record above means nothing tried."""
    env, log = configured_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "tests.live", "sweep", "--dry-run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert attempts(log), done.stderr[-2000:]
    assert all(event.startswith("socket.") for event, _ in attempts(log))


def test_the_cost_guard_refuses_a_plan_over_its_vm_limit(tmp_path: Path) -> None:
    env, log = configured_env(tmp_path)
    env["IMAGEREADY_LIVE_MAX_VMS"] = "3"
    done = subprocess.run(
        [sys.executable, "-m", "tests.live", "plan"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 4
    assert "the plan makes 4 VMs, more than IMAGEREADY_LIVE_MAX_VMS=3" in done.stderr
    assert attempts(log) == []

"""azsim instances for tests: started with the real CLI (`azsim up`), stopped with `azsim down`.

Every test talks to azsim over HTTPS with certificate verification on, through the real SDKs
(azure-identity, azure-mgmt-compute) — either via the harness's AzureSession or directly.
"""

# ruff: noqa: S310  (urllib opens https URLs of azsim on loopback only)

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from imageready.azure import AzureSession, resolve_ca_bundle, resolve_cloud
from imageready.target import VmRef

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "tests" / "scenarios"
FLEET = SCENARIOS / "arm-fleet.yaml"


def azsim_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the azsim command line (`python -m azsim`) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "azsim", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def read_env_file(path: Path) -> dict[str, str]:
    """The variables `. STATE/env` would export (values are shell-quoted by azsim)."""
    import shlex

    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            name, _, quoted = line[len("export ") :].partition("=")
            values[name] = shlex.split(quoted)[0] if quoted else ""
    return values


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def port_free(port: int) -> bool:
    """Nothing listens on the port (connections in TIME_WAIT may remain, as TCP wants)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket() as client:
        return client.connect_ex(("127.0.0.1", port)) != 0


class Azsim:
    """One running azsim instance: its environment, admin API and a session factory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = read_env_file(state_dir / "env")
        server = json.loads((state_dir / "server.json").read_text())
        self.pid: int = server["pid"]
        self.port: int = server["port"]
        self.url: str = self.env["AZSIM_URL"]
        self.subscription = self.env["AZURE_SUBSCRIPTION_ID"]
        self.ca_bundle = self.env["IMAGEREADY_CA_BUNDLE"]
        self._context = ssl.create_default_context(cafile=self.ca_bundle)

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"X-Azsim-Admin": self.env["AZSIM_ADMIN_TOKEN"]},
        )
        with urllib.request.urlopen(request, timeout=30, context=self._context) as reply:
            return json.loads(reply.read() or b"null")

    def add_fault(self, **fault: Any) -> str:
        fault_id: str = self.admin("POST", "/azsim/faults", fault)["id"]
        return fault_id

    def clear_faults(self) -> None:
        self.admin("DELETE", "/azsim/faults")

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.admin("GET", f"/azsim/requests?since={since}")["requests"]
        return entries

    def mark(self) -> int:
        """The request log position now; pass to requests(since=...) to see what followed."""
        entries = self.requests()
        return int(entries[-1]["seq"]) if entries else 0

    def vm_status(self, rg: str, name: str) -> dict[str, Any]:
        for vm in self.admin("GET", "/azsim/status")["vms"]:
            if vm["resource_group"] == rg and vm["name"] == name:
                return dict(vm)
        raise KeyError(f"{rg}/{name}")

    def ref(self, name: str, rg: str = "rg-fleet") -> VmRef:
        return VmRef(self.subscription, rg, name)

    def environment(self, **overrides: str) -> mock._patch[Any]:
        """os.environ as after `. STATE/env` (for the duration of a `with`)."""
        return mock.patch.dict(os.environ, {**self.env, **overrides})

    def session(
        self, *, env: dict[str, str] | None = None, ca_bundle: str | None = "", **options: Any
    ) -> AzureSession:
        """An AzureSession built exactly as the harness builds one from the environment
        (DefaultAzureCredential, cloud and CA from the env file); ``ca_bundle=None`` drops the CA."""
        with self.environment(**(env or {})):
            bundle = resolve_ca_bundle() if ca_bundle == "" else ca_bundle
            return AzureSession(self.subscription, cloud=resolve_cloud(), ca_bundle=bundle, **options)


def raw(
    fleet: Azsim,
    session: AzureSession,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: Any = None,
) -> tuple[int, dict[str, str], Any]:
    """One HTTPS request with a real token from the session's credential (no SDK in between)."""
    token = session._credential.get_token("https://management.core.windows.net//.default").token
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{fleet.url}{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **(headers or {})},
    )
    context = ssl.create_default_context(cafile=fleet.ca_bundle)
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            text = reply.read()
            return reply.status, dict(reply.headers.items()), json.loads(text) if text else None
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, dict(err.headers.items()), json.loads(text) if text else None


def start_azsim(state_dir: Path, scenario: Path, *extra: str) -> Azsim:
    result = azsim_cli("up", "--scenario", str(scenario), "--state-dir", str(state_dir), *extra)
    assert result.returncode == 0, result.stderr
    return Azsim(state_dir)


def stop_azsim(instance: Azsim) -> None:
    result = azsim_cli("down", "--state-dir", str(instance.state_dir))
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 10
    while not pid_gone(instance.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_gone(instance.pid), f"azsim pid {instance.pid} still running after down"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    """azsim serving tests/scenarios/arm-fleet.yaml (ARM only), one per test module."""
    instance = start_azsim(tmp_path_factory.mktemp("azsim"), FLEET)
    try:
        yield instance
    finally:
        stop_azsim(instance)


@pytest.fixture
def session(fleet: Azsim) -> Iterator[AzureSession]:
    """The harness's AzureSession against the fleet, short polls for quick tests."""
    with fleet.session(poll_interval=5) as azure:
        yield azure

"""The azsim command line: up, status, requests, fault, down; scenario validation."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from azsim.faults import FaultError, parse_fault
from azsim.scenario import ScenarioError, parse_scenario
from tests.azsim.conftest import FLEET, SCENARIOS, Azsim, azsim_cli, pid_gone, port_free, read_env_file

pytestmark = pytest.mark.azsim
BASIC = SCENARIOS.parent.parent / "scenarios" / "arm-basic.yaml"


def test_up_status_requests_fault_down(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = azsim_cli("up", "--scenario", str(BASIC), "--state-dir", str(state), "--guests", "none")
    assert up.returncode == 0, up.stderr
    instance = Azsim(state)
    assert up.stdout.strip() == (
        f"azsim is up at https://127.0.0.1:{instance.port} with 2 VMs (guests: none); "
        f"use it with: . {state}/env"
    )
    try:
        # the env file: what `. STATE/env` exports, private, and no global REQUESTS_CA_BUNDLE
        env_file = state / "env"
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        assert stat.S_IMODE((state / "ssh" / "id_ed25519").stat().st_mode) == 0o600
        env = read_env_file(env_file)
        root = state.resolve()
        assert env == {
            "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
            "AZURE_CLIENT_ID": "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            "AZURE_CLIENT_SECRET": env["AZURE_CLIENT_SECRET"],
            "AZURE_AUTHORITY_HOST": f"https://localhost:{instance.port}",
            "AZURE_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
            "IMAGEREADY_ARM_ENDPOINT": f"https://127.0.0.1:{instance.port}/",
            "IMAGEREADY_CA_BUNDLE": f"{root}/ca.pem",
            "IMAGEREADY_SSH_KEY": f"{root}/ssh/id_ed25519",
            "IMAGEREADY_WINRM_PASSWORD": env["IMAGEREADY_WINRM_PASSWORD"],
            "IMAGEREADY_GUEST_ADDRESSES": f"{root}/guest-addresses.json",
            "AZSIM_URL": f"https://127.0.0.1:{instance.port}",
            "AZSIM_STATE_DIR": str(root),
            "AZSIM_ADMIN_TOKEN": env["AZSIM_ADMIN_TOKEN"],
            "AZURE_CORE_INSTANCE_DISCOVERY": "false",
        }
        assert len(env["AZURE_CLIENT_SECRET"]) >= 40 and len(env["AZSIM_ADMIN_TOKEN"]) >= 40
        # the secrets appear in no log or argv
        log = (state / "azsim.log").read_text()
        cmdline = Path(f"/proc/{instance.pid}/cmdline").read_bytes().decode()
        for secret in (
            env["AZURE_CLIENT_SECRET"],
            env["IMAGEREADY_WINRM_PASSWORD"],
            env["AZSIM_ADMIN_TOKEN"],
        ):
            assert secret not in log and secret not in cmdline

        status = azsim_cli("status", "--state-dir", str(state))
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["ready"] is True and report["guests"] == "none"
        vms = {vm["name"]: vm for vm in report["vms"]}
        assert vms["lin-golden"]["power_state"] == "running"
        assert vms["lin-golden"]["os_state"] == "specialized"
        assert vms["lin-golden"]["tags"] == {"owner": "platform"}
        assert vms["lin-golden"]["disks"]["data"][0].endswith("/disks/lin-golden-data0")
        assert vms["win-build"]["power_state"] == "deallocated"

        added = azsim_cli("fault", "add", "throttle", "count=2", "retry_after=1", "--state-dir", str(state))
        assert added.returncode == 0 and added.stdout.strip() == "f1"
        listed = json.loads(azsim_cli("fault", "list", "--state-dir", str(state)).stdout)
        assert listed == [{"id": "f1", "kind": "throttle", "status": 429, "retry_after": 1, "remaining": 2}]
        bad = azsim_cli("fault", "add", "throttle", "colour=red", "--state-dir", str(state))
        assert bad.returncode == 2
        assert bad.stderr.strip() == "azsim: fault.colour: unknown key for a throttle fault"
        assert azsim_cli("fault", "clear", "--state-dir", str(state)).returncode == 0
        assert json.loads(azsim_cli("fault", "list", "--state-dir", str(state)).stdout) == []

        with instance.session() as session:
            session.get_vm(instance.ref("lin-golden", "rg-images"))
        logged = json.loads(azsim_cli("requests", "--state-dir", str(state)).stdout)
        assert [(r["kind"], r["method"]) for r in logged] == [("aad", "GET"), ("aad", "POST"), ("arm", "GET")]
        assert logged[-1]["query"] == {"$expand": "instanceView"} and logged[-1]["api_version"]

        again = azsim_cli("up", "--scenario", str(BASIC), "--state-dir", str(state))
        assert again.returncode == 1
        assert again.stderr.strip() == (
            f"azsim: azsim is already running for {state} (pid {instance.pid}); run `azsim down` first"
        )
    finally:
        down = azsim_cli("down", "--state-dir", str(state))
    assert down.returncode == 0 and down.stdout.strip() == f"azsim stopped ({state})"
    deadline = time.monotonic() + 5
    while not pid_gone(instance.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_gone(instance.pid)
    assert port_free(instance.port)
    for gone in ("env", "server.json", "azsim.pid", "secrets.json"):
        assert not (state / gone).exists()
    status = azsim_cli("status", "--state-dir", str(state))
    assert status.returncode == 1
    assert (
        status.stderr.strip() == f"azsim: azsim is not running for {state} (no server.json); run `azsim up`"
    )
    assert azsim_cli("down", "--state-dir", str(state)).stdout.strip() == f"azsim was not running ({state})"


def test_down_falls_back_to_signals_when_azsim_does_not_answer(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert azsim_cli("up", "--scenario", str(FLEET), "--state-dir", str(state)).returncode == 0
    instance = Azsim(state)
    os.kill(instance.pid, signal.SIGSTOP)  # hung: neither the admin API nor SIGTERM gets through
    started = time.monotonic()
    down = azsim_cli("down", "--state-dir", str(state), "--timeout", "1")
    assert down.returncode == 0, down.stderr
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 5
    while not pid_gone(instance.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_gone(instance.pid) and port_free(instance.port)


def test_sigterm_stops_serve_cleanly(tmp_path: Path) -> None:
    state = tmp_path / "state"
    assert azsim_cli("up", "--scenario", str(FLEET), "--state-dir", str(state)).returncode == 0
    instance = Azsim(state)
    os.kill(instance.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while not pid_gone(instance.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid_gone(instance.pid) and port_free(instance.port)
    assert not (state / "server.json").exists()
    assert (state / "azsim.log").read_text().splitlines()[-1] == "azsim: stopping"
    azsim_cli("down", "--state-dir", str(state))


def test_a_bad_scenario_is_one_line_naming_the_key(tmp_path: Path) -> None:
    scenario = tmp_path / "typo.yaml"
    scenario.write_text(
        "resource_groups:\n  - name: rg\n    vms:\n      - {name: vm1, os: Linux, os_disk: {sise_gb: 30}}\n"
    )
    result = azsim_cli("up", "--scenario", str(scenario), "--state-dir", str(tmp_path / "state"))
    assert result.returncode == 2
    assert result.stderr == f"azsim: {scenario}: resource_groups[0].vms[0].os_disk.sise_gb: unknown key\n"
    assert not (tmp_path / "state" / "azsim.pid").exists()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"tenant": "nope"}, "tenant: expected a GUID, got 'nope'"),
        (
            {"resource_groups": [{"name": "rg", "vms": [{"name": "v", "os": "Plan9"}]}]},
            "resource_groups[0].vms[0].os: expected one of Linux, Windows, got 'Plan9'",
        ),
        (
            {
                "resource_groups": [
                    {
                        "name": "rg",
                        "vms": [{"name": "v", "os": "Linux", "power_state": "running", "generalized": True}],
                    }
                ]
            },
            "resource_groups[0].vms[0]: a generalized VM cannot be running (Azure never starts one)",
        ),
        (
            {
                "resource_groups": [
                    {
                        "name": "rg",
                        "vms": [
                            {
                                "name": "v",
                                "os": "Linux",
                                "os_disk": {"encryption": "customer", "disk_encryption_set": "des-x"},
                            }
                        ],
                    }
                ]
            },
            "resource_groups[0]: disk 'v-osdisk' names disk_encryption_set 'des-x', which is not in "
            "disk_encryption_sets",
        ),
        (
            {
                "resource_groups": [
                    {
                        "name": "rg",
                        "vms": [
                            {
                                "name": "v",
                                "os": "Linux",
                                "data_disks": [{"name": "a", "lun": 0}, {"name": "b", "lun": 0}],
                            }
                        ],
                    }
                ]
            },
            "resource_groups[0].vms[0].data_disks: two data disks share a lun ([0, 0])",
        ),
        (
            {"faults": [{"kind": "lro_failed", "operation": "reboot"}]},
            "faults[0].operation: expected one of deallocate, powerOff, start, restart, runCommand, "
            "createVm, createDisk, createSnapshot, createImage, createGalleryImageVersion, got 'reboot'",
        ),
        ({"timings": {"deallocate": -1}}, "timings.deallocate: expected a number >= 0, got -1"),
    ],
    ids=["tenant", "os", "generalized-running", "des", "lun", "fault", "timing"],
)
def test_scenario_validation_messages(document: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(document, "s.yaml")
    assert str(caught.value) == f"s.yaml: {message}"


def test_scenario_defaults_and_fault_parsing() -> None:
    scenario = parse_scenario({"resource_groups": [{"name": "rg", "vms": [{"name": "v", "os": "Windows"}]}]})
    vm = scenario.resource_groups[0].vms[0]
    assert (vm.power_state, vm.generalized, vm.admin_user, vm.os_disk.name) == (
        "running",
        False,
        "azureuser",
        "v-osdisk",
    )
    assert scenario.timings["deallocate"] == 0.2 and scenario.guests is True
    assert scenario.token_lifetime >= 300
    fault = parse_fault({"kind": "delete_vm", "vm": "rg/v", "after_seconds": 3})
    assert (fault.after_seconds, fault.after_requests) == (3, None)
    with pytest.raises(FaultError, match="required for a delete_vm fault"):
        parse_fault({"kind": "delete_vm"})


def test_a_missing_guest_module_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    from azsim import guests

    monkeypatch.setitem(guests.GUEST_CLASSES, "Windows", "azsim.no_such_module:WindowsGuest")
    with pytest.raises(guests.GuestSetupError) as caught:
        guests.load_guest_class("Windows")
    assert str(caught.value) == (
        "Windows guests need azsim.no_such_module, which cannot be imported (No module named "
        "'azsim.no_such_module'); run `azsim up --guests none` for ARM only"
    )

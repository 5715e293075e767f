"""Sysprep on an azsim Windows guest, as the harness sees it through WinRM (and ARM's callback)."""

from __future__ import annotations

import json
import time
from importlib import resources
from typing import Any

import pytest
from conftest_windows import Booted, boot_windows, windows_tls, winrm_password

from azsim.windows import catalog
from azsim.windows.guest import WindowsGuest
from imageready.facts import windows as windows_facts
from imageready.guest.base import GuestDisconnected, GuestTimeout, GuestUnreachable

__all__ = ["boot_windows", "windows_tls", "winrm_password"]
pytestmark = pytest.mark.azsim

SCRIPTS = resources.files("imageready.scripts")
GENERALIZE = SCRIPTS.joinpath("sysprep_generalize.ps1").read_text(encoding="utf-8")
STATUS = SCRIPTS.joinpath("sysprep_status.ps1").read_text(encoding="utf-8")
SHUTDOWN = SCRIPTS.joinpath("shutdown.ps1").read_text(encoding="utf-8")
REMOVE_PANTHER = SCRIPTS.joinpath("remove_panther.ps1").read_text(encoding="utf-8")
FAST = {"sysprep": {"seconds": 0.3}}


def _run_json(booted: Booted, script: str, timeout: float = 20) -> dict[str, Any]:
    with booted.connect("https") as guest:
        result = guest.run(script, timeout=timeout)
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def _wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_generalize_succeeds_then_the_guest_powers_off(boot_windows, winrm_password) -> None:
    booted = boot_windows(FAST)
    assert _run_json(booted, REMOVE_PANTHER) == {"existed": True, "removed_files": 4, "exists": False}
    report = _run_json(booted, GENERALIZE)
    assert report == {
        "exit_code": 0,
        "image_state": "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE",
        "succeeded_tag": True,
        "setuperr": [],
    }
    assert booted.guest.running and booted.shutdowns == []  # /quit: it stays up
    assert booted.machine.history[-1].handler == "sysprep-start"
    assert booted.machine.state.generalize_count == 999

    with booted.connect("https") as guest:
        assert guest.run(SHUTDOWN, timeout=10).exit_code == 0
    assert booted.guest.running  # the power goes after shutdown's /t delay
    _wait_for(lambda: booted.shutdowns == [1.0], seconds=10)
    assert not booted.guest.running
    with pytest.raises(GuestUnreachable):
        booted.connect("https")


def test_sysprep_with_shutdown_drops_the_connection(boot_windows, winrm_password) -> None:
    booted = boot_windows(FAST)
    guest = booted.connect("http")
    script = '& "$env:WINDIR\\System32\\Sysprep\\sysprep.exe" /generalize /oobe /shutdown /mode:vm /quiet'
    with pytest.raises(GuestDisconnected):
        guest.run(script, timeout=20)
    _wait_for(lambda: booted.shutdowns == [1.0])  # ARM hears of it just after the drop
    assert not booted.guest.running
    machine = booted.machine
    assert machine.image_state == catalog.IMAGE_STATE_RESEAL_TO_OOBE
    assert machine.files.is_file(catalog.SUCCEEDED_TAG)
    # the state survives on disk: a new guest on the same state directory sees it
    again = WindowsGuest(booted.guest.ctx)
    assert again.machine.image_state == catalog.IMAGE_STATE_RESEAL_TO_OOBE


def test_appx_failure(boot_windows, winrm_password) -> None:
    booted = boot_windows({"sysprep": {"outcome": "fail-appx", "seconds": 0.3}})
    report = _run_json(booted, GENERALIZE)
    assert report["exit_code"] != 0 and report["succeeded_tag"] is False
    assert report["image_state"] == "IMAGE_STATE_COMPLETE"
    errors = "\n".join(report["setuperr"])
    assert (
        "was installed for a user, but not provisioned for all users. This package will not function properly"
        in errors
    )
    assert "SYSPRP Failed to remove apps for the current user: 0x80073cf2." in errors
    assert booted.guest.running and booted.shutdowns == []
    log = booted.machine.files.read(catalog.SETUPACT_LOG)
    assert "0x80073cf2" in log
    # the next facts run shows the failed provider
    with booted.connect("https") as guest:
        facts = windows_facts.parse(guest.run(windows_facts.SCRIPT, timeout=30).stdout)
    assert {"name": "AppxSysprep.dll", "detail": "SysprepGeneralizeValidate"} in facts[
        "sysprep_providers_failed"
    ]


def test_a_package_not_provisioned_fails_sysprep_even_when_the_outcome_is_success(
    boot_windows, winrm_password
) -> None:
    booted = boot_windows(
        {**FAST, "users": [{"name": "builder"}], "appx": [{"name": "Contoso.Tool", "user": "builder"}]}
    )
    report = _run_json(booted, GENERALIZE)
    assert report["image_state"] == "IMAGE_STATE_COMPLETE"
    assert any("SYSPRP Package Contoso.Tool was installed for a user" in line for line in report["setuperr"])


def test_hang_hits_the_deadline_and_sysprep_dies_with_its_shell(boot_windows, winrm_password) -> None:
    booted = boot_windows({"sysprep": {"outcome": "hang"}})
    with booted.connect("https") as guest, pytest.raises(GuestTimeout):
        guest.run(GENERALIZE, timeout=2)
    assert booted.machine.image_state == "IMAGE_STATE_COMPLETE"
    assert not booted.machine.files.is_file(catalog.SUCCEEDED_TAG)
    status = _run_json(booted, STATUS)
    assert status == {
        "image_state": "IMAGE_STATE_COMPLETE",
        "succeeded_tag": False,
        "setuperr": [],
        "running": False,
    }


def test_start_process_without_waiting_dies_when_the_shell_closes(boot_windows, winrm_password) -> None:
    # WinRS runs a shell's processes in one job object: closing the shell kills them
    booted = boot_windows({"sysprep": {"seconds": 1.0}})
    script = (
        '$p = Start-Process -FilePath "$env:WINDIR\\System32\\Sysprep\\sysprep.exe" '
        "-ArgumentList '/generalize','/oobe','/shutdown','/mode:vm' -PassThru\n"
        "@{ pid = $p.Id } | ConvertTo-Json -Compress"
    )
    assert "pid" in _run_json(booted, script)
    time.sleep(1.5)
    assert booted.machine.image_state == "IMAGE_STATE_COMPLETE" and booted.shutdowns == []


def test_sysprep_as_system_is_refused(boot_windows) -> None:
    booted = boot_windows(FAST)
    code, stdout, _ = booted.guest.run_command(GENERALIZE, timeout=20)
    report = json.loads(stdout)
    assert code == 0 and report["exit_code"] != 0
    assert report["image_state"] == "IMAGE_STATE_COMPLETE"
    assert any("must not run as LocalSystem" in line for line in report["setuperr"])
    assert booted.machine.history[-1].user == "NT AUTHORITY\\SYSTEM"


@pytest.mark.parametrize(
    ("spec", "logged"),
    [
        ({"upgraded": True}, "Sysprep will not run on an upgraded OS"),
        ({"generalize_count": 0}, "SLReArmWindows', returned error code -1073425657"),
        ({"bitlocker": [{"mount": "C:", "status": "FullyEncrypted"}]}, "BitLocker is on for the OS volume"),
        ({"sysprep_providers_failed": ["Contoso.dll"]}, "from C:\\Windows\\System32\\Contoso.dll"),
    ],
    ids=["upgraded", "no-generalize-count", "bitlocker-on", "failed-provider"],
)
def test_refusals(boot_windows, winrm_password, spec: dict[str, Any], logged: str) -> None:
    booted = boot_windows({**FAST, **spec})
    report = _run_json(booted, GENERALIZE)
    assert report["exit_code"] != 0 and report["image_state"] == "IMAGE_STATE_COMPLETE"
    assert any(logged in line for line in report["setuperr"])


def test_invalid_flags(boot_windows, winrm_password) -> None:
    booted = boot_windows(FAST)
    report = _run_json(booted, GENERALIZE.replace("'/quit', ", ""))
    assert report["exit_code"] == 87
    assert any("exactly one of /shutdown, /reboot and /quit" in line for line in report["setuperr"])


def test_a_resealed_machine_that_boots_again_specializes(boot_windows, winrm_password) -> None:
    # sysprep /quit, then a reboot before capture: OOBE runs and the image is no longer generalized
    booted = boot_windows(FAST)
    assert _run_json(booted, GENERALIZE)["image_state"] == "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
    booted.guest.stop()
    booted.guest.start()
    assert _run_json(booted, STATUS)["image_state"] == "IMAGE_STATE_COMPLETE"


def test_one_sysprep_at_a_time_and_it_dies_with_its_shell(boot_windows, winrm_password) -> None:
    booted = boot_windows({"sysprep": {"outcome": "hang"}})
    background = (
        'Start-Process -FilePath "$env:WINDIR\\System32\\Sysprep\\sysprep.exe" '
        "-ArgumentList '/generalize','/oobe','/quit'"
    )
    # a shell that stays open keeps its background sysprep alive
    protocol = booted.raw_session("http").protocol
    shell = protocol.open_shell()
    command = protocol.run_command(shell, "powershell.exe", ["-Command", "-"])
    protocol.send_command_input(shell, command, background.encode(), end=True)
    assert protocol.get_command_output(shell, command)[2] == 0
    assert booted.machine.running_processes("sysprep")
    with booted.connect("https") as guest:
        second = guest.run(background, timeout=10)
    assert second.exit_code == 1 and b"Another instance of sysprep is running." in second.stderr
    protocol.close_shell(shell)
    assert not booted.machine.running_processes("sysprep")

"""Sysprep on an azsim Windows guest, as the harness sees it through WinRM (and ARM's callback)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from importlib import resources
from typing import Any

import pytest
from conftest_windows import Booted, boot_windows, windows_tls, winrm_password

from azsim.windows import catalog
from azsim.windows.guest import WindowsGuest
from imageready.facts import windows as windows_facts
from imageready.guest.base import GuestDisconnected, GuestTimeout, GuestUnreachable
from imageready.steps.sysprep_run import sysprep_script

__all__ = ["boot_windows", "windows_tls", "winrm_password"]
pytestmark = pytest.mark.azsim

SCRIPTS = resources.files("imageready.scripts")
GENERALIZE = SCRIPTS.joinpath("sysprep_generalize.ps1").read_text(encoding="utf-8")
STATUS = SCRIPTS.joinpath("sysprep_status.ps1").read_text(encoding="utf-8")
SHUTDOWN = SCRIPTS.joinpath("shutdown.ps1").read_text(encoding="utf-8")
REMOVE_PANTHER = SCRIPTS.joinpath("remove_panther.ps1").read_text(encoding="utf-8")
PREPARE = SCRIPTS.joinpath("sysprep_prepare.ps1").read_text(encoding="utf-8")
OLD_TAG = {"path": "C:\\Windows\\System32\\Sysprep\\Sysprep_succeeded.tag", "content": ""}
FAST = {"sysprep": {"seconds": 0.3}}


def _run_json(booted: Booted, script: str, timeout: float = 20) -> dict[str, Any]:
    with booted.connect("https") as guest:
        result = guest.run(script, timeout=timeout)
    assert result.exit_code == 0, result.stderr
    return dict(json.loads(result.stdout))


def _when(text: str) -> dt.datetime:
    """PowerShell's round-trip UTC format (7 fraction digits) as a datetime (microseconds)."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(f"{whole}.{fraction[:6]}+00:00")


def _wait_for(condition: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_generalize_succeeds_then_the_guest_powers_off(boot_windows, winrm_password) -> None:
    booted = boot_windows(FAST)
    assert _run_json(booted, REMOVE_PANTHER) == {"existed": True, "removed_files": 4, "exists": False}
    report = _run_json(booted, GENERALIZE)
    written = report.pop("succeeded_tag_written")
    assert report == {
        "exit_code": 0,
        "image_state": "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE",
        "succeeded_tag": True,
        "setuperr": [],
    }
    assert _when(written) == dt.datetime.fromtimestamp(
        booted.machine.files.written(catalog.SUCCEEDED_TAG), dt.UTC
    )
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
        "succeeded_tag_written": None,
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


def test_generalize_streams_the_reseal_before_shutdown_drops_the_connection(
    boot_windows, winrm_password
) -> None:
    # with /shutdown no report arrives: the readings the script streams while sysprep runs are the
    # harness's only sight of the reseal
    booted = boot_windows({"sysprep": {"seconds": 1.0}})
    readings: list[dict[str, Any]] = []

    def reading(line: str) -> None:
        kind, _, payload = line.partition(" ")
        assert kind == "sysprep", line
        readings.append(json.loads(payload))

    with booted.connect("https") as guest, pytest.raises(GuestDisconnected):
        guest.run(
            sysprep_script(("/generalize", "/oobe", "/shutdown", "/quiet")), timeout=20, on_progress=reading
        )
    _wait_for(lambda: booted.shutdowns == [1.0])
    states = [r["image_state"] for r in readings]
    assert states[0] == "IMAGE_STATE_COMPLETE" and states[-1] == "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE", (
        states
    )
    assert "IMAGE_STATE_UNDEPLOYABLE" in states
    assert readings[-1]["succeeded_tag_written"] is not None
    assert not booted.guest.running


def test_prepare_reads_the_clock_then_deletes_an_old_succeeded_tag(boot_windows, winrm_password) -> None:
    booted = boot_windows({**FAST, "files": [OLD_TAG]})
    planted = booted.machine.files.written(catalog.SUCCEEDED_TAG)
    before = dt.datetime.now(dt.UTC)
    prepared = _run_json(booted, PREPARE)
    started = _when(prepared.pop("started"))
    assert prepared == {
        "image_state": "IMAGE_STATE_COMPLETE",
        "panther_existed": True,
        "removed_files": 4,
        "unattend_existed": False,
        "tag_existed": True,
        "exists": False,
    }
    assert not booted.machine.files.is_file(catalog.SUCCEEDED_TAG)
    assert dt.datetime.fromtimestamp(planted, dt.UTC) < before - dt.timedelta(microseconds=1) < started
    # the next sysprep's tag is written after that clock reading
    report = _run_json(booted, GENERALIZE)
    assert _when(report["succeeded_tag_written"]) >= started
    # and sysprep found no tag to delete when it began (Microsoft's FCreateTagFile log line)
    log = booted.machine.files.read(catalog.SETUPACT_LOG)
    assert "Sysprep_succeeded.tag does not already exist, no need to delete anything" in log


def test_sysprep_deletes_an_old_tag_early_even_when_it_then_fails(boot_windows, winrm_password) -> None:
    booted = boot_windows({"sysprep": {"outcome": "fail-appx", "seconds": 0.3}, "files": [OLD_TAG]})
    report = _run_json(booted, GENERALIZE)
    assert report["exit_code"] != 0 and report["image_state"] == "IMAGE_STATE_COMPLETE"
    assert report["succeeded_tag"] is False and report["succeeded_tag_written"] is None
    assert "SYSPRP FCreateTagFile:Tag file" in booted.machine.files.read(catalog.SETUPACT_LOG)


def test_an_old_tag_survives_a_sysprep_refused_as_system(boot_windows) -> None:
    # refused at ValidateUser, before FCreateTagFile: the old tag stays, and proves nothing
    booted = boot_windows({**FAST, "files": [OLD_TAG]})
    code, stdout, _ = booted.guest.run_command(GENERALIZE, timeout=20)
    report = json.loads(stdout)
    assert code == 0 and report["exit_code"] != 0 and report["image_state"] == "IMAGE_STATE_COMPLETE"
    assert report["succeeded_tag"] is True


@pytest.mark.parametrize(
    ("after", "image_state"),
    [(0.3, "IMAGE_STATE_COMPLETE"), (2.2, "IMAGE_STATE_UNDEPLOYABLE")],
    ids=["while-validating", "in-the-generalize-pass"],
)
def test_a_power_off_from_outside_mid_sysprep_leaves_no_reseal(
    boot_windows, winrm_password, after: float, image_state: str
) -> None:
    # an operator's stop (ARM powerOff, deallocate) ends sysprep with the machine
    booted = boot_windows({"sysprep": {"seconds": 4.0}})
    errors: list[Exception] = []

    def run() -> None:
        try:
            with booted.connect("https") as guest:
                guest.run(GENERALIZE.replace("'/quit'", "'/shutdown'"), timeout=20)
        except Exception as exc:  # the connection drops with the power
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(after)
    booted.guest.stop()
    worker.join(30)
    assert errors and isinstance(errors[0], (GuestDisconnected, GuestUnreachable)), errors
    machine = booted.machine
    assert machine.image_state == image_state
    assert not machine.files.is_file(catalog.SUCCEEDED_TAG)
    assert not machine.running_processes("sysprep")
    assert booted.shutdowns == []  # not sysprep's shutdown: ARM did it

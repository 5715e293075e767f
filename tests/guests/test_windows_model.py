"""The Windows machine model's parts: scenario validation, command lines, script views, handlers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from conftest_windows import ADMIN, boot_windows, windows_tls, winrm_password

from azsim.windows import cmdline, powershell
from azsim.windows.model import FileSystem, Registry, build_machine
from azsim.windows.powershell import ScriptCall, ScriptResult, ScriptView
from azsim.windows.spec import GuestSpecError, parse_spec

__all__ = ["boot_windows", "windows_tls", "winrm_password"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"hostnam": "X"}, r"guest\.hostnam: unknown key"),
        ({"roles": ["Web-Servr"]}, r"guest\.roles\[0\]: unknown feature 'Web-Servr'"),
        (
            {"bitlocker": [{"mount": "C:", "encrypted": True}]},
            r"guest\.bitlocker\[0\]\.encrypted: unknown key",
        ),
        (
            {"bitlocker": [{"mount": "C:", "status": "Encrypted"}]},
            r"guest\.bitlocker\[0\]\.status: 'Encrypted'",
        ),
        ({"sysprep": {"outcome": "explode"}}, r"guest\.sysprep\.outcome: 'explode' is not one of"),
        ({"sysprep": {"seconds": True}}, r"guest\.sysprep\.seconds: expected a number"),
        ({"generalize_count": -1}, r"guest\.generalize_count: must be 0 or more"),
        (
            {"role_state": {"WDS": {"initialized": True}}},
            r"guest\.role_state\.WDS: WDS is not in guest\.roles",
        ),
        ({"appx": [{"name": "A", "user": "ghost"}]}, r"guest\.appx\[0\]\.user: 'ghost' is not"),
        ({"version": "10.0.1"}, r"guest\.version: '10\.0\.1' is not one of"),
        (
            {"files": [{"path": "Windows\\x.txt"}]},
            r"guest\.files\[0\]\.path: .* not an absolute Windows path",
        ),
        ({"pending_reboot": ["Because"]}, r"guest\.pending_reboot\[0\]"),
        ({"services": {"RdAgent": "Sleeping"}}, r"guest\.services\.RdAgent\.status"),
        ({"winrm": {"kerberos": True}}, r"guest\.winrm\.kerberos: unknown key"),
    ],
)
def test_spec_errors_name_the_key(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(GuestSpecError, match=message):
        parse_spec(spec, "win-vm", ADMIN)


def test_spec_defaults_and_yaml_spellings() -> None:
    spec = parse_spec(
        {"bitlocker": [{"mount": "C:", "protection": False}], "roles": ["FS-DFS-Replication"]},
        "a-long-vm-name-x",
        ADMIN,
    )
    assert spec.hostname == "A-LONG-VM-NAME-"  # NetBIOS: 15 characters
    assert spec.bitlocker[0].protection == "Off"  # YAML reads `Off` as false
    assert {"FS-DFS-Replication", "File-Services", "FileAndStorage-Services"} <= set(spec.features)
    assert spec.sysprep_outcome == "succeed" and spec.winrm_basic is False


def test_registry_and_files_are_case_insensitive() -> None:
    registry = Registry()
    registry.set("HKLM:\\SOFTWARE\\Contoso", "Value", 1)
    assert registry.get("HKEY_LOCAL_MACHINE\\software\\contoso", "value") == 1
    assert registry.subkeys("hklm\\software") == ["Contoso"]
    files = FileSystem()
    files.write("C:/Windows//Panther\\unattend.xml", "x")
    assert files.is_file("c:\\windows\\panther\\UNATTEND.XML") and files.is_dir("C:\\Windows")
    assert files.remove("C:\\WINDOWS\\panther") == 1 and not files.exists("C:\\Windows\\Panther")


def test_command_lines() -> None:
    encoded = base64.b64encode("Write-Output 1".encode("utf-16-le")).decode()
    call = cmdline.parse("powershell.exe", ["-NoProfile", "-e", encoded])
    assert call == cmdline.PowerShellCall(script="Write-Output 1", encoded=True, from_stdin=False)
    assert cmdline.parse("PowerShell", ["-Command", "-"]).from_stdin  # type: ignore[union-attr]
    assert cmdline.parse("cmd", ["/c", "whoami"]) == cmdline.CmdCall(("whoami",), "whoami")
    with pytest.raises(cmdline.CommandLineError, match="too long"):
        cmdline.parse("echo", ["x" * 8200])
    with pytest.raises(cmdline.CommandLineError, match="invalid Base64"):
        cmdline.parse("powershell", ["-EncodedCommand", "%%%"])
    assert cmdline.split_windows('a "b c" d') == ["a", "b c", "d"]


def test_script_view_ignores_comments_and_expands_paths() -> None:
    view = ScriptView(
        '<# Get-BitLockerVolume #>\n# Get-WindowsFeature\n$p = "$env:WINDIR\\Panther" # trailing\n'
        "Write-Output 'a # not a comment'"
    )
    assert not view.asks("Get-BitLockerVolume", "Get-WindowsFeature")
    assert view.paths() == ["C:\\Windows\\Panther"]
    assert "a # not a comment" in view.literals
    assert view.cmdlets() == ["Write-Output"]


def test_plugged_handler_goes_first(boot_windows, winrm_password, monkeypatch: pytest.MonkeyPatch) -> None:
    class ScanAnswer:
        name = "scan"

        def matches(self, view: ScriptView) -> bool:
            return view.asks("Invoke-ImagereadyScan")

        def run(self, call: ScriptCall) -> ScriptResult:
            return ScriptResult(stdout=json.dumps({"user": call.account}))

    monkeypatch.setattr(powershell, "_PLUGGED", [])
    powershell.register_handler(ScanAnswer())
    booted = boot_windows()
    with booted.connect("http") as guest:
        result = guest.run("Invoke-ImagereadyScan -Roots 'C:\\'", timeout=10)
    assert json.loads(result.stdout) == {"user": f"WIN-VM\\{ADMIN}"}
    assert booted.handlers_run() == ["scan"]


def test_machine_state_round_trips_through_json(tmp_path) -> None:
    spec = parse_spec({"roles": ["Web-Server"], "upgraded": True, "pending_reboot": True}, "win-vm", ADMIN)
    machine = build_machine(spec, ADMIN)
    machine.state_path = tmp_path / "m.json"
    machine.save()
    loaded = type(machine).load(tmp_path / "m.json")
    assert loaded.is_upgraded() and loaded.state.features == machine.state.features
    assert loaded.files.to_json() == machine.files.to_json()
    assert loaded.registry.to_json() == machine.registry.to_json()

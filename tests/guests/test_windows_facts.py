"""The Windows facts script, answered by the azsim model, through WinRM and Run Command."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest_windows import ADMIN, Booted, boot_windows, windows_tls, winrm_password

from imageready.facts import windows as windows_facts

__all__ = ["boot_windows", "windows_tls", "winrm_password"]
pytestmark = pytest.mark.azsim


def _facts(booted: Booted) -> dict[str, Any]:
    with booted.connect("https") as guest:
        result = guest.run(windows_facts.SCRIPT, timeout=30)
    assert result.exit_code == 0, result.stderr
    return windows_facts.parse(result.stdout)


def test_clean_guest(boot_windows, winrm_password) -> None:
    facts = _facts(boot_windows())
    assert facts["schema"] == 1 and facts["os_family"] == "Windows"
    assert facts["hostname"] == "WIN-VM"
    assert facts["user"]["name"] == f"WIN-VM\\{ADMIN}"
    assert facts["user"]["sid"].startswith("S-1-5-21-") and facts["user"]["sid"].endswith("-500")
    assert facts["user"]["is_admin"] is True and facts["user"]["is_system"] is False
    assert facts["os"] == {
        "caption": "Microsoft Windows Server 2022 Datacenter",
        "version": "10.0.20348",
        "build": "20348",
        "installation_type": "Server",
        "upgraded": False,
    }
    names = {f["name"] for f in facts["features"]}
    assert {"FileAndStorage-Services", "Storage-Services", "PowerShell"} <= names
    assert not names & {"Web-Server", "WDS", "Hyper-V", "BitLocker"}
    assert facts["role_details"] == {}
    assert facts["bitlocker"] == []  # no BitLocker feature: no BitLocker volumes
    assert facts["domain"] == {"part_of_domain": False, "domain": "WORKGROUP"}
    assert facts["pending_reboot"] == {"pending": False, "reasons": []}
    assert facts["appx_not_provisioned"] == []
    assert facts["image_state"] == "IMAGE_STATE_COMPLETE"
    assert facts["generalize_count"] == 1000
    # Azure leaves Panther with setup logs and the cached answer file
    assert facts["panther"] == {"exists": True, "file_count": 4}
    assert facts["unattend_files"] == ["C:\\Windows\\Panther\\Unattend.xml"]
    assert facts["services"] == {
        "RdAgent": {"status": "Running", "start_type": "Automatic"},
        "WindowsAzureGuestAgent": {"status": "Running", "start_type": "Automatic"},
        "cdrom": {"status": "Running", "start_type": "System"},
    }
    assert facts["sysprep_providers_failed"] == []
    assert facts["errors"] == []


STAGED: list[tuple[str, dict[str, Any], str, Any]] = [
    ("version", {"version": "10.0.17763"}, "os.caption", "Microsoft Windows Server 2019 Datacenter"),
    ("upgraded", {"upgraded": True}, "os.upgraded", True),
    ("hostname", {"hostname": "IMG-BUILDER-01"}, "hostname", "IMG-BUILDER-01"),
    ("roles", {"roles": ["Web-Server", "DHCP"]}, "features.Web-Server", "Role"),
    ("role-service", {"roles": ["FS-DFS-Namespace"]}, "features.File-Services", "Role Service"),
    (
        "wds",
        {"roles": ["WDS"], "role_state": {"WDS": {"initialized": True}}},
        "role_details.WDS",
        {"initialized": True},
    ),
    (
        "hyper-v",
        {"roles": ["Hyper-V"], "role_state": {"Hyper-V": {"virtual_switches": 2}}},
        "role_details.Hyper-V",
        {"virtual_switches": 2},
    ),
    (
        "iis",
        {"roles": ["Web-Server"], "role_state": {"Web-Server": {"encrypted_credentials": True}}},
        "role_details.Web-Server",
        {"encrypted_credentials": True},
    ),
    (
        "bitlocker",
        {"bitlocker": [{"mount": "C:", "status": "DecryptionInProgress", "percent": 37.5}]},
        "bitlocker.0",
        {
            "mount_point": "C:",
            "volume_type": "OperatingSystem",
            "protection_status": "On",
            "encryption_percentage": 37.5,
            "volume_status": "DecryptionInProgress",
            "encryption_method": "XtsAes128",
        },
    ),
    ("domain", {"domain": {"joined": True, "name": "corp.example.com"}}, "domain.part_of_domain", True),
    (
        "pending-reboot",
        {"pending_reboot": ["WindowsUpdate RebootRequired", "PendingFileRenameOperations"]},
        "pending_reboot",
        {"pending": True, "reasons": ["WindowsUpdate RebootRequired", "PendingFileRenameOperations"]},
    ),
    (
        "appx",
        {"users": [{"name": "builder"}], "appx": [{"name": "Contoso.Tool", "user": "builder"}]},
        "appx_not_provisioned",
        [{"name": "Contoso.Tool", "user": "WIN-VM\\builder"}],
    ),
    ("appx-provisioned", {"appx": [{"name": "Contoso.Ok", "provisioned": True}]}, "appx_not_provisioned", []),
    (
        "image-state",
        {
            "registry": {
                "HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State": {
                    "ImageState": "IMAGE_STATE_UNDEPLOYABLE"
                }
            }
        },
        "image_state",
        "IMAGE_STATE_UNDEPLOYABLE",
    ),
    ("generalize-count", {"generalize_count": 0}, "generalize_count", 0),
    ("no-panther", {"panther": False}, "panther", {"exists": False, "file_count": 0}),
    (
        "unattend",
        {
            "panther": False,
            "files": [{"path": "C:\\Windows\\System32\\Sysprep\\unattend.xml", "content": "<unattend/>"}],
        },
        "unattend_files",
        ["C:\\Windows\\System32\\Sysprep\\Unattend.xml"],
    ),
    (
        "service-stopped",
        {"services": {"RdAgent": "Stopped"}},
        "services.RdAgent",
        {"status": "Stopped", "start_type": "Automatic"},
    ),
    (
        "service-missing",
        {"services": {"WindowsAzureGuestAgent": "Missing"}},
        "services.WindowsAzureGuestAgent",
        None,
    ),
    (
        "cdrom-disabled",
        {"services": {"cdrom": {"status": "Stopped", "start_type": "Disabled"}}},
        "services.cdrom.start_type",
        "Disabled",
    ),
    (
        "provider-failed",
        {"sysprep_providers_failed": [{"name": "Contoso.dll", "detail": "ContosoGeneralize"}]},
        "sysprep_providers_failed",
        [{"name": "Contoso.dll", "detail": "ContosoGeneralize"}],
    ),
]


def _dig(facts: dict[str, Any], path: str) -> Any:
    value: Any = facts
    for part in path.split("."):
        if isinstance(value, list) and part.isdigit():
            value = value[int(part)]
        elif isinstance(value, list):  # a feature by name -> its type
            value = next(f["feature_type"] for f in value if f["name"] == part)
        else:
            value = value[part]
    return value


@pytest.mark.parametrize(("spec", "path", "expected"), [s[1:] for s in STAGED], ids=[s[0] for s in STAGED])
def test_staged_guest(boot_windows, winrm_password, spec: dict[str, Any], path: str, expected: Any) -> None:
    facts = _facts(boot_windows(spec))
    assert _dig(facts, path) == expected
    assert facts["errors"] == []


def test_a_broken_probe_is_null_with_an_error_and_the_others_still_answer(
    boot_windows, winrm_password
) -> None:
    booted = boot_windows({"cmdlet_errors": {"Get-WindowsFeature": "Access is denied. (0x80070005)"}})
    facts = _facts(booted)
    assert facts["features"] is None and facts["role_details"] is None
    assert {"probe": "features", "error": "Access is denied. (0x80070005)"} in facts["errors"]
    assert facts["image_state"] == "IMAGE_STATE_COMPLETE" and facts["domain"] is not None


def test_facts_as_system_through_run_command(boot_windows) -> None:
    booted = boot_windows()
    code, stdout, stderr = booted.guest.run_command(windows_facts.SCRIPT, timeout=30)
    facts = windows_facts.parse(stdout.encode())
    assert (code, stderr) == (0, "")
    assert facts["user"] == {
        "name": "NT AUTHORITY\\SYSTEM",
        "sid": "S-1-5-18",
        "is_admin": True,
        "is_system": True,
    }
    assert booted.machine.history[-1].user == "NT AUTHORITY\\SYSTEM"
    assert booted.machine.history[-1].via == "run-command"


def test_the_script_is_read_only(boot_windows, winrm_password) -> None:
    booted = boot_windows({"roles": ["Web-Server"], "pending_reboot": True})
    before = (booted.machine.registry.to_json(), booted.machine.files.to_json())
    _facts(booted)
    _facts(booted)
    assert (booted.machine.registry.to_json(), booted.machine.files.to_json()) == before


def test_the_model_answers_by_capability_not_by_text(boot_windows, winrm_password) -> None:
    # reworded, reordered, commented: still the same questions, so the same answers
    reworded = (
        "# which OS is this?\n$o = Get-CimInstance Win32_OperatingSystem\n"
        "$b = Get-BitLockerVolume  # volumes\n"
        "$d = Get-CimInstance -ClassName Win32_ComputerSystem\n"
        "$key = 'HKLM:\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State'\n"
        "$s = (Get-ItemProperty $key).ImageState\n"
        "@{ x = 1 } | ConvertTo-Json -Compress\n"
    )
    booted = boot_windows({"bitlocker": [{"mount": "C:", "status": "FullyEncrypted"}]})
    with booted.connect("http") as guest:
        result = guest.run(reworded, timeout=10)
    answered = json.loads(result.stdout)
    assert set(answered) == {"schema", "os_family", "os", "bitlocker", "domain", "image_state", "errors"}
    assert answered["bitlocker"][0]["volume_status"] == "FullyEncrypted"
    # commented out, a probe is not asked for
    with booted.connect("http") as guest:
        result = guest.run(
            reworded.replace("$b = Get-BitLockerVolume", "# $b = Get-BitLockerVolume"), timeout=10
        )
    assert "bitlocker" not in json.loads(result.stdout)


class TestParse:
    def test_single_element_lists_are_lists_again(self) -> None:
        keys = ("hostname", "user", "os", "role_details", "domain", "image_state", "identity")
        raw = {key: None for key in keys}
        raw |= {"schema": 1, "os_family": "Windows", "generalize_count": 5, "panther": None, "services": None}
        raw |= {"features": {"name": "DNS", "display_name": "DNS Server", "feature_type": "Role"}}
        raw |= {"bitlocker": [], "appx_not_provisioned": [], "unattend_files": "C:\\unattend.xml"}
        raw |= {"sysprep_providers_failed": [], "errors": {"probe": "os", "error": "boom"}}
        raw |= {"pending_reboot": {"pending": True, "reasons": "CBS RebootPending"}}
        facts = windows_facts.parse(b"\xef\xbb\xbf" + json.dumps(raw).encode())
        assert facts["features"][0]["name"] == "DNS"
        assert facts["unattend_files"] == ["C:\\unattend.xml"]
        assert facts["errors"] == [{"probe": "os", "error": "boom"}]
        assert facts["pending_reboot"]["reasons"] == ["CBS RebootPending"]

    @pytest.mark.parametrize(
        ("stdout", "message"),
        [
            (b"", "printed nothing"),
            (b"WARNING: something\r\n{", "did not print one JSON object"),
            (b"[1]", "not an object"),
            (b'{"schema": 1, "os_family": "Windows"}', "'hostname' is missing"),
        ],
    )
    def test_bad_output_is_one_line(self, stdout: bytes, message: str) -> None:
        with pytest.raises(windows_facts.FactsError, match=message) as caught:
            windows_facts.parse(stdout)
        assert "\n" not in str(caught.value)

    def test_linux_output_is_refused(self) -> None:
        raw = dict.fromkeys(windows_facts._TOP_LEVEL)
        raw |= {"schema": 1, "os_family": "Linux", "errors": []}
        with pytest.raises(windows_facts.FactsError, match="for 'Linux'"):
            windows_facts.parse(json.dumps(raw).encode())

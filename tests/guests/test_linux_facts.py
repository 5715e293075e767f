"""The Linux facts script, run for real (elevated, over SSH) in sandbox guests staged per fact."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from azsim.linuxguest import LinuxGuest
from imageready.facts import linux
from imageready.facts.linux import FactsError, parse
from imageready.guest.ssh import SshGuest

FAKE_CLOUD_INIT = "#!/bin/sh\n[ \"$1\" = status ] && echo 'status: done'\n"


def facts_of(ssh: SshGuest, prefix: str = "") -> dict[str, Any]:
    result = ssh.run(prefix + linux.SCRIPT, timeout=60, elevated=True, purpose="facts")
    assert result.exit_code == 0, result.stderr
    return parse(result.stdout)


def disk_writes(guest: LinuxGuest) -> dict[str, int]:
    """Every path in the VM's overlay upper layer with its mtime: what the guest has written."""
    upper = guest.ctx.state_dir / "disk/upper"
    return {str(path.relative_to(upper)): path.lstat().st_mtime_ns for path in upper.rglob("*")}


def test_clean_guest(vm_and_ssh: tuple[LinuxGuest, SshGuest]) -> None:
    guest, ssh = vm_and_ssh
    before = disk_writes(guest)
    facts = facts_of(ssh)
    assert disk_writes(guest) == before  # read-only: nothing written to the disk
    assert facts["errors"] == []
    assert facts["hostname"] == "vm1"
    assert facts["user"] == {"name": "azureuser", "uid": 1000, "is_root": False, "elevated": True}
    assert facts["os"]["id"] == "debian" and facts["os"]["version_id"] == "12"
    assert facts["os"]["kernel"] == os.uname().release
    assert facts["sudo_nopasswd"] is True
    assert facts["waagent"]["installed"] is True
    assert facts["waagent"]["path"] == "/usr/sbin/waagent"
    assert facts["waagent"]["version"] == "2.7.3.0"
    assert facts["waagent"]["conf"]["Provisioning.RegenerateSshHostKeyPair"] == "y"
    assert facts["ovf_env_present"] is True
    assert facts["cloud_init"] == {
        "installed": False,
        "status": None,
        "disabled": False,
        "instance_dirs": [],
    }
    assert facts["sshd"] == {"client_alive_interval": 0, "source": "sshd -T"}
    assert facts["swap"] == []
    assert facts["crypt"] == []
    assert facts["root_fs"] == {"device": "overlay", "fstype": "overlay"}
    users = {u["name"]: u for u in facts["users"]}
    assert set(users) == {"root", "azureuser"}
    assert users["azureuser"] == {
        "name": "azureuser",
        "uid": 1000,
        "home": "/home/azureuser",
        "shell": "/bin/bash",
        "password": "locked",
    }


def test_staged_guest_shows_each_fact(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    guest = linux_vm(
        {
            "hostname": "lin-staged",
            "client_alive_interval": 180,
            "swap_on_os_disk": True,
            "waagent_conf": {"Provisioning.RegenerateSshHostKeyPair": "n", "OS.New.Key": "1"},
            "users": [
                {"name": "builder", "password_hash": "$6$abcdefgh$" + "y" * 86},
                {"name": "nopass", "password_hash": ""},
            ],
            "files": [
                {"path": "/usr/bin/cloud-init", "content": FAKE_CLOUD_INIT, "mode": "0755"},
                {"path": "/etc/cloud/cloud-init.disabled", "content": ""},
                {
                    "path": "/var/lib/cloud/instances/iid-azure-1/user-data.txt",
                    "content": "#cloud-config\n",
                },
                {
                    "path": "/etc/crypttab",
                    "content": "# <target> <source>\ndata1 UUID=1234-abcd none luks\n",
                },
            ],
        }
    )
    with ssh_to(guest) as ssh:
        facts = facts_of(ssh)
    assert facts["errors"] == []
    assert facts["hostname"] == "lin-staged"
    assert facts["sshd"] == {"client_alive_interval": 180, "source": "sshd -T"}
    assert facts["swap"] == [{"path": "/swapfile", "type": "file", "size_kb": 1020, "on_os_disk": True}]
    assert facts["waagent"]["conf"]["Provisioning.RegenerateSshHostKeyPair"] == "n"
    assert facts["waagent"]["conf"]["OS.New.Key"] == "1"
    assert facts["cloud_init"] == {
        "installed": True,
        "status": "done",
        "disabled": True,
        "instance_dirs": ["iid-azure-1"],
    }
    assert facts["crypt"] == [
        {"name": "data1", "source": "crypttab", "device": "UUID=1234-abcd", "mountpoint": None}
    ]
    passwords = {u["name"]: u["password"] for u in facts["users"]}
    assert passwords == {
        "root": "locked",
        "azureuser": "locked",
        "builder": "set",
        "nopass": "locked",
    }
    assert "yyyy" not in json.dumps(facts)  # never a hash, only its kind


def test_guest_without_waagent(linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]) -> None:
    guest = linux_vm({"remove_packages": ["waagent"]})
    with ssh_to(guest) as ssh:
        facts = facts_of(ssh)
    assert facts["errors"] == []
    assert facts["waagent"] == {"installed": False, "path": None, "version": None, "conf": {}}
    assert not guest.exists("/usr/sbin/waagent")


def test_sshd_config_is_read_when_sshd_t_is_not_allowed(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    guest = linux_vm({"client_alive_interval": 120})
    with ssh_to(guest) as ssh:
        # not elevated: sshd -T needs root, so the script falls back to the config files
        result = ssh.run(linux.SCRIPT, timeout=60)
    facts = parse(result.stdout)
    assert facts["sshd"] == {"client_alive_interval": 120, "source": "config"}
    assert facts["user"]["elevated"] is False
    # /etc/shadow is unreadable: the accounts are listed, their password kind is null + an error
    assert {u["name"]: u["password"] for u in facts["users"]} == {"root": None, "azureuser": None}
    # /var/lib/waagent is root's: whether ovf-env.xml exists is unknown (null), never "absent"
    assert [e["probe"] for e in facts["errors"]] == ["users.password", "ovf_env"]
    assert "Permission denied" in facts["errors"][0]["error"]
    assert facts["ovf_env"] is None and "Permission denied" in facts["errors"][1]["error"]


def test_sh_fallback_prints_valid_json_without_python(
    vm_and_ssh: tuple[LinuxGuest, SshGuest],
) -> None:
    guest, ssh = vm_and_ssh
    facts = facts_of(ssh, prefix="IMAGEREADY_FACTS_PYTHON=; export IMAGEREADY_FACTS_PYTHON\n")
    assert facts["hostname"] == "vm1"
    assert facts["user"]["name"] == "azureuser"
    assert facts["os"]["pretty_name"] == "Debian GNU/Linux 12 (bookworm)"
    assert facts["waagent"]["installed"] is True
    assert facts["ovf_env_present"] is True
    assert facts["sshd"] is None
    assert {e["probe"] for e in facts["errors"]} >= {"sshd", "swap", "users", "ovf_env"}
    # identity without python3: this guest has neither curl nor wget for IMDS; SMBIOS is read
    assert facts["identity"]["imds"] is None and facts["identity"]["imds_error"]
    assert facts["identity"]["smbios_uuid"] == guest.ctx.vm_platform.vm_id.upper()


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        (b"", "printed nothing"),
        (b"not json", "did not print one JSON object"),
        (b"[1, 2]", "not an object"),
        (b'{"schema": 1}', "'os_family' is missing"),
    ],
)
def test_parse_rejects_what_the_schema_does_not_promise(stdout: bytes, message: str) -> None:
    with pytest.raises(FactsError, match=message):
        parse(stdout)


def _valid() -> dict[str, Any]:
    return {
        "schema": 1,
        "os_family": "Linux",
        "hostname": "h",
        "user": None,
        "os": None,
        "sudo_nopasswd": None,
        "waagent": None,
        "ovf_env_present": None,
        "cloud_init": None,
        "sshd": None,
        "swap": None,
        "crypt": None,
        "root_fs": None,
        "users": None,
        "identity": None,
        "ovf_env": None,
        "errors": [],
    }


def test_parse_checks_types_and_schema_version() -> None:
    assert parse(json.dumps(_valid()).encode())["hostname"] == "h"
    wrong_type = {**_valid(), "swap": "none"}
    with pytest.raises(FactsError, match="'swap' has an unexpected type str"):
        parse(json.dumps(wrong_type).encode())
    bool_as_int = {**_valid(), "schema": True}
    with pytest.raises(FactsError, match="'schema' has an unexpected type bool"):
        parse(json.dumps(bool_as_int).encode())
    windows = {**_valid(), "os_family": "Windows"}
    with pytest.raises(FactsError, match="expected schema 1 for Linux"):
        parse(json.dumps(windows).encode())
    bad_error = {**_valid(), "errors": [{"probe": "x"}]}
    with pytest.raises(FactsError, match="lacks probe or error"):
        parse(json.dumps(bad_error).encode())


def test_script_is_posix_sh() -> None:
    script = Path(linux.__file__).with_name("linux.sh")
    assert script.read_text() == linux.SCRIPT
    assert subprocess.run(["sh", "-n", str(script)], check=False).returncode == 0

"""Linux guests prove which VM they are (IMDS in the guest's own network, the SMBIOS UUID in its
/sys), and the SSH transport runs nothing on a connection that has not proven it: real sandboxes,
real sshd, real waagent, the harness's own transport and facts script."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest

from azsim.guestapi import Platform
from azsim.linuxguest import LinuxGuest
from imageready.facts import linux
from imageready.guest.identity import (
    ExpectedIdentity,
    GuestIdentityError,
    Pins,
    parse_probe,
    probe_script,
    verify,
)
from imageready.guest.ssh import SshGuest

MARKER = "/var/tmp/imageready-was-here"


def expected_of(guest: LinuxGuest) -> ExpectedIdentity:
    platform = guest.ctx.vm_platform
    return ExpectedIdentity(guest.name, platform.vm_id, platform.name, platform.resource_id)


def probe(ssh: SshGuest) -> dict[str, Any]:
    result = ssh.run(probe_script("Linux"), timeout=30)
    assert result.exit_code == 0, result.stderr
    found = parse_probe(result.stdout)
    assert isinstance(found, dict), result.stdout
    return found


def facts_of(ssh: SshGuest) -> dict[str, Any]:
    result = ssh.run(linux.self_elevating(), timeout=60, purpose="facts")
    assert result.exit_code == 0, result.stderr
    return linux.parse(result.stdout)


def test_each_guest_reads_its_own_vm(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    first, second = linux_vm(name="vm1"), linux_vm(name="vm2")
    for guest in (first, second):
        platform = guest.ctx.vm_platform
        ssh = ssh_to(guest)
        seen = probe(ssh)
        imds = {"vmId": platform.vm_id, "name": platform.name, "resourceId": platform.resource_id}
        assert seen["imds"] == imds
        assert seen["smbios_uuid"] == platform.vm_id.upper()
        # the facts carry the same reading, in their one round trip
        assert facts_of(ssh)["identity"] == seen
        # /sys/class/dmi/id/product_uuid is root's, as on Linux; the admin reads it through sudo
        assert ssh.run(f"cat {'/sys/class/dmi/id/product_uuid'}", timeout=10).exit_code != 0
        # Run Command runs in the same network, and sees the same IMDS
        code, out, _ = guest.run_command(
            "python3 -c \"import urllib.request as u; print(u.urlopen(u.Request('http://169.254.169.254/"
            "metadata/instance/compute/vmId?api-version=2021-02-01&format=text', "
            "headers={'Metadata': 'true'})).read().decode())\"",
            30,
        )
        assert (code, out.strip()) == (0, platform.vm_id)
        # its own network: a loopback and nothing else
        code, out, _ = guest.run_command("cat /proc/net/dev", 30)
        assert [line.split(":")[0].strip() for line in out.splitlines()[2:]] == ["lo"]
    assert first.ctx.vm_platform.vm_id != second.ctx.vm_platform.vm_id
    # nothing of it reaches the host: its own network has no 169.254.169.254
    assert not _host_has_imds_address()


def _host_has_imds_address() -> bool:
    import subprocess

    shown = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return "169.254.169.254" in shown


def test_smbios_proves_when_imds_is_unreachable(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    platform = dataclasses.replace(Platform.for_vm("rg-test", "vm1"), imds="unreachable", smbios="swapped")
    guest = linux_vm(platform=platform)
    seen = probe(ssh_to(guest))
    assert seen["imds"] is None and "unreachable" in seen["imds_error"]
    proof = verify(expected_of(guest), seen, address="test")
    assert (proof.read_from, proof.smbios_byte_order, proof.vm_id) == ("smbios", "swapped", platform.vm_id)


def test_a_guest_that_cannot_prove_anything(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    platform = dataclasses.replace(Platform.for_vm("rg-test", "vm1"), imds="unreachable", smbios="unreadable")
    guest = linux_vm(platform=platform)
    ssh = ssh_to(guest, expected=expected_of(guest))
    with pytest.raises(GuestIdentityError, match="cannot prove it is rg-test/vm1") as caught:
        ssh.run(f"touch {MARKER}", timeout=30)
    assert "IMDS URLError" in str(caught.value) and "SMBIOS UUID cat:" in str(caught.value)
    assert not guest.exists(MARKER)


def test_ssh_runs_nothing_on_another_vm(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    mine, other = linux_vm(name="vm1"), linux_vm(name="vm2")
    # the address leads to vm2, the guest is asked to be vm1 (a swapped address map)
    ssh = ssh_to(other, expected=expected_of(mine))
    with pytest.raises(GuestIdentityError) as caught:
        ssh.run(f"touch {MARKER}", timeout=30)
    message = str(caught.value)
    assert mine.ctx.vm_platform.vm_id in message and other.ctx.vm_platform.vm_id in message
    assert other.endpoints()["ssh"] in message
    for module_call in (lambda: ssh.run("true", timeout=10), lambda: ssh.testinfra_host.file("/etc").exists):
        with pytest.raises(GuestIdentityError):  # refused for good, testinfra's commands too
            module_call()
    assert not other.exists(MARKER) and not mine.exists(MARKER)


def test_a_new_connection_that_lands_elsewhere_fails_before_any_change(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    mine, other = linux_vm(name="vm1"), linux_vm(name="vm2")
    ssh = ssh_to(mine, expected=expected_of(mine))
    assert ssh.run("true", timeout=30).exit_code == 0
    assert ssh.proof is not None and ssh.proof.read_from == "imds"
    pins = ssh.pins()
    assert pins.ssh_host_key.startswith("ssh-")
    # the connection drops; the address now leads elsewhere (a port forward restarted)
    ssh.close()
    ssh.port = int(other.endpoints()["ssh"].rsplit(":", 1)[1])
    with pytest.raises(GuestIdentityError, match="another machine answers: the host key is"):
        ssh.run(f"touch {MARKER}", timeout=30)
    assert not other.exists(MARKER)
    # without a pin (a copy carries its source's host keys) the vmId still tells them apart
    fresh = ssh_to(other, expected=expected_of(mine), pins=Pins())
    with pytest.raises(GuestIdentityError, match="is another VM"):
        fresh.run(f"touch {MARKER}", timeout=30)
    assert not other.exists(MARKER)


def test_a_reconnect_to_the_same_vm_proves_again(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    guest = linux_vm()
    ssh = ssh_to(guest, expected=expected_of(guest))
    ssh.run("true", timeout=30)
    first = ssh._client().get_transport()
    ssh.close()
    assert ssh.run("true", timeout=30).exit_code == 0
    second = ssh._client().get_transport()
    assert second is not first and not ssh.binding.needs_proof(second)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("ovf_env", "expect"),
    [
        ({}, {"present": True, "parses": True, "user_name": "azureuser", "error": None}),
        ({"state": "missing"}, {"present": False, "parses": None, "user_name": None, "error": None}),
        ({"state": "unparseable"}, {"present": True, "parses": False, "user_name": None}),
        (
            {"state": "no-platform-settings"},
            {
                "present": True,
                "parses": False,
                "user_name": None,
                "error": "[ProtocolError] Failed to validate OVF: PlatformSettingsSection not found",
            },
        ),
        ({"user": "builder"}, {"present": True, "parses": True, "user_name": "builder", "error": None}),
    ],
    ids=["provisioned", "missing", "unparseable", "no-platform-settings", "other-user"],
)
def test_the_user_waagent_would_delete(
    linux_vm: Callable[..., LinuxGuest],
    ssh_to: Callable[..., SshGuest],
    ovf_env: dict[str, str],
    expect: dict[str, Any],
) -> None:
    guest = linux_vm(spec={"ovf_env": ovf_env, "users": [{"name": "builder"}]})
    facts = facts_of(ssh_to(guest))
    found = facts["ovf_env"]
    assert {key: found[key] for key in expect} == expect, found
    assert found["path"] == "/var/lib/waagent/ovf-env.xml"
    if found["present"]:
        assert found["parser"] == "waagent 2.7.3.0"  # waagent's own OvfEnv, by waagent's python
    if ovf_env.get("state") == "unparseable":
        assert found["error"].startswith("ExpatError: ")
    # only the user name leaves the guest: never the file's other content
    assert "ssh-ed25519" not in json.dumps(found)


def test_waagent_skips_the_user_the_facts_say_it_cannot_read(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    """The reason IR-LNX-007 fails on such a file: the real waagent 2.7 prints 'ovf-env.xml is not
    found', skips the user and exits 0."""
    guest = linux_vm(spec={"ovf_env": {"state": "no-platform-settings"}})
    ssh = ssh_to(guest)
    done = ssh.run("waagent -deprovision+user -force; echo exit=$?", timeout=120, elevated=True)
    text = done.stdout.decode() + done.stderr.decode()
    assert "ovf-env.xml is not found" in text and "Skip delete user" in text and "exit=0" in text
    assert guest.exists("/home/azureuser")

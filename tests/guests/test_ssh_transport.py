"""The harness's SSH transport, run for real (testinfra's paramiko backend) against a sandbox VM."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from azsim.linuxguest import LinuxGuest
from imageready.guest.base import (
    GuestAuthError,
    GuestDisconnected,
    GuestTimeout,
    GuestUnreachable,
    parse_address,
)
from imageready.guest.ssh import (
    KEY_ENV,
    GuestHostKeyRejected,
    SshGuest,
    connect_ssh,
)
from tests.descriptors import descriptors_past_fd_setsize

Vm = tuple[LinuxGuest, SshGuest]


def other_key(tmp_path: Path) -> Path:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "not_authorised"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def keygen_fingerprint(public_line: bytes) -> str:
    """``ssh-ed25519 SHA256:...`` as OpenSSH's ssh-keygen computes it (independent of us)."""
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", "-"],
        input=public_line,
        capture_output=True,
        check=True,
    ).stdout.decode()
    bits, fingerprint, *_ = out.split()
    assert bits
    return f"ssh-ed25519 {fingerprint}"


def test_runs_scripts_and_reuses_one_connection(vm_and_ssh: Vm) -> None:
    _, ssh = vm_and_ssh
    first = ssh.run("echo out; echo err >&2; exit 3", timeout=30)
    assert (first.exit_code, first.stdout, first.stderr) == (3, b"out\n", b"err\n")
    assert not first.ok
    transport = ssh._backend.client.get_transport()
    second = ssh.run("id -un", timeout=30)
    assert second.stdout == b"azureuser\n" and second.ok
    assert ssh._backend.client.get_transport() is transport
    binary = bytes(range(256)) * 1000
    echoed = ssh.run("cat", timeout=30, stdin=binary)
    assert echoed.stdout == binary


def test_runs_when_the_harness_holds_more_descriptors_than_select_can_watch(vm_and_ssh: Vm) -> None:
    """A harness with a large fleet's sessions open numbers its next descriptors past FD_SETSIZE."""
    _, ssh = vm_and_ssh
    with descriptors_past_fd_setsize():
        result = ssh.run("sleep 0.3; echo late", timeout=30)
    assert result.stdout == b"late\n" and result.ok


def test_elevated_runs_as_root_with_the_script_quoted(vm_and_ssh: Vm) -> None:
    _, ssh = vm_and_ssh
    result = ssh.run("""printf '%s|' "it's" "$(id -u)" '$HOME' \\"q\\" """, timeout=30, elevated=True)
    assert result.stdout == b"""it's|0|$HOME|"q"|"""


@pytest.mark.parametrize("elevated", [False, True], ids=["user", "sudo"])
def test_command_past_its_deadline_fails_clearly_and_is_killed(vm_and_ssh: Vm, elevated: bool) -> None:
    guest, ssh = vm_and_ssh
    started = time.monotonic()
    with pytest.raises(GuestTimeout) as err:
        # a compound script: its children must die too, not only its shell
        ssh.run("sleep 300; echo never", timeout=1.5, purpose="the facts script", elevated=elevated)
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "\n" not in message
    assert "rg-test/vm1" in message and "the facts script" in message and "1.5 s" in message
    assert err.value.category == "timeout"
    # the command was signalled, and the connection still serves the next command
    assert ssh.run("echo alive", timeout=30).stdout == b"alive\n"
    time.sleep(0.3)
    _, out, _ = guest.run_command("ps -e -o args= | grep -c '^sleep 300' || true", 30)
    assert out.strip() == "0"


def test_bad_credentials_give_one_line(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest], tmp_path: Path
) -> None:
    guest = linux_vm()
    wrong = other_key(tmp_path)
    with pytest.raises(GuestAuthError) as err:
        ssh_to(guest, key_path=wrong).connect()
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"rg-test/vm1: ssh azureuser@{guest.endpoints()['ssh']}: the guest refused the "
        f"credentials (tried key file {wrong})"
    )
    assert "PRIVATE KEY" not in message
    assert err.value.category == "guest authentication"


def test_missing_or_absent_credentials_are_one_line(
    linux_vm: Callable[..., LinuxGuest],
    ssh_to: Callable[..., SshGuest],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guest = linux_vm()
    with pytest.raises(GuestAuthError, match=r"key file .*/nope not found$"):
        ssh_to(guest, key_path=tmp_path / "nope").connect()
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(GuestAuthError, match="no SSH credential: set IMAGEREADY_SSH_KEY"):
        ssh_to(guest, key_path=None).connect()


def test_key_from_the_environment(
    linux_vm: Callable[..., LinuxGuest],
    ssh_keypair: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guest = linux_vm()
    monkeypatch.setenv(KEY_ENV, str(ssh_keypair[0]))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with connect_ssh(guest.endpoints()["ssh"], "azureuser", vm_key=guest.name) as ssh:
        assert ssh.run("hostname", timeout=30).stdout == b"vm1\n"
        assert repr(ssh) == f"SshGuest(rg-test/vm1 azureuser@{guest.endpoints()['ssh']})"


def test_host_key_is_recorded_and_strict_mode_checks_it(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest], tmp_path: Path
) -> None:
    guest = linux_vm()
    public = guest.read_path("/etc/ssh/ssh_host_ed25519_key.pub")
    assert public is not None
    expected = keygen_fingerprint(public)

    with ssh_to(guest) as ssh:
        ssh.connect()
        assert ssh.identity.evidence == {"ssh_host_key": expected}
        assert ssh.identity.transport == "ssh" and ssh.identity.user == "azureuser"

    known = tmp_path / "known_hosts"
    host, port = guest.endpoints()["ssh"].rsplit(":", 1)
    key_type, key_b64 = public.split()[:2]
    known.write_bytes(b"[%s]:%s %s %s\n" % (host.encode(), port.encode(), key_type, key_b64))
    with ssh_to(guest, known_hosts=known, strict=True) as ssh:
        assert ssh.run("true", timeout=30).ok

    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(GuestHostKeyRejected) as err:
        ssh_to(guest, known_hosts=empty, strict=True).connect()
    assert str(err.value) == (
        f"rg-test/vm1: ssh azureuser@{guest.endpoints()['ssh']}: host key {expected} is not in known_hosts"
    )

    impostor = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    changed = tmp_path / "changed_known_hosts"
    changed.write_bytes(b"[%s]:%s %s\n" % (host.encode(), port.encode(), impostor))
    offered = re.escape(f", the server offered {expected}")
    with pytest.raises(GuestHostKeyRejected, match=f"host key changed: known_hosts has .*{offered}$"):
        ssh_to(guest, known_hosts=changed, strict=False).connect()


def test_unreachable_guest(linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]) -> None:
    guest = linux_vm()
    ssh = ssh_to(guest)
    guest.stop()
    with pytest.raises(GuestUnreachable) as err:
        ssh.run("true", timeout=30)
    assert str(err.value) == f"rg-test/vm1: ssh azureuser@{guest.endpoints()['ssh']}: connection refused"


def test_connection_lost_mid_command(vm_and_ssh: Vm) -> None:
    guest, ssh = vm_and_ssh
    with pytest.raises(GuestDisconnected) as err:
        ssh.run("(sleep 0.5; poweroff) & sleep 30", timeout=30, elevated=True, purpose="shutdown")
    assert "\n" not in str(err.value) and "rg-test/vm1" in str(err.value)
    assert guest.shutdowns.wait()  # type: ignore[attr-defined]
    # after the guest comes back, the same SshGuest reconnects by itself
    guest.start()
    assert ssh.run("echo back", timeout=30).stdout == b"back\n"


def test_progress_lines_stream_before_the_command_ends(vm_and_ssh: Vm) -> None:
    _, ssh = vm_and_ssh
    seen: list[tuple[str, float]] = []
    started = time.monotonic()
    result = ssh.run(
        "echo 'PROGRESS scanning /etc' >&2; echo noise >&2; sleep 1; echo 'PROGRESS done' >&2",
        timeout=30,
        on_progress=lambda line: seen.append((line, time.monotonic() - started)),
    )
    assert [line for line, _ in seen] == ["scanning /etc", "done"]
    assert seen[0][1] < result.duration - 0.5  # it arrived while the command still ran
    assert result.stderr == b"PROGRESS scanning /etc\nnoise\nPROGRESS done\n"


def test_testinfra_modules_share_the_connection(vm_and_ssh: Vm) -> None:
    _, ssh = vm_and_ssh
    host = ssh.testinfra_host
    assert host.file("/etc/hostname").content_string == "vm1\n"
    assert host.user("azureuser").home == "/home/azureuser"
    assert host.file("/etc/sudoers.d/waagent").exists
    transport = ssh._backend.client.get_transport()
    assert ssh.run("true", timeout=30).ok
    assert ssh._backend.client.get_transport() is transport


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.4", ("10.0.0.4", 22)),
        ("127.0.0.1:2222", ("127.0.0.1", 2222)),
        ("[::1]:2200", ("::1", 2200)),
        ("fe80::1", ("fe80::1", 22)),
        ("vm.example.internal", ("vm.example.internal", 22)),
    ],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address, 22) == expected


@pytest.mark.parametrize("address", ["", "host:port", "[::1]:x"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError, match="expected HOST or HOST:PORT"):
        parse_address(address, 22)

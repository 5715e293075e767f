"""azsim Linux guests: cached image, sandbox isolation, provisioning, power, real waagent."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from azsim.guestapi import GuestContext
from azsim.linux.rootfs import ensure_rootfs, recipe_key
from azsim.linux.spec import GuestSpecError, parse_spec
from azsim.linuxguest import GuestCommandTimeout, LinuxGuest
from imageready.guest.base import GuestAuthError, GuestUnreachable
from imageready.guest.ssh import SshGuest

HOST_KEY_TYPES = ("rsa", "ecdsa", "ed25519")


def port_open(endpoint: str) -> bool:
    host, port = endpoint.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


# --- the image cache ---------------------------------------------------------------------


def test_second_use_of_the_image_reuses_the_cache(linux_rootfs: Path) -> None:
    messages: list[str] = []
    started = time.monotonic()
    again = ensure_rootfs(linux_rootfs.parent, progress=messages.append)
    assert again == linux_rootfs
    assert messages == []  # no "building" line: nothing was built
    assert time.monotonic() - started < 1.0
    assert linux_rootfs.name == f"rootfs-{recipe_key()}"
    # the cached image is generalized: no host keys shared between VMs
    assert not list((linux_rootfs / "etc/ssh").glob("ssh_host_*"))


FAKE_DEBOOTSTRAP = """#!/bin/sh
# stand-in for debootstrap (... SUITE TARGET MIRROR): slow, and counts its runs
echo run >> {counter}
sleep 1
while [ $# -gt 2 ]; do shift; done
mkdir -p "$1/etc/ssh" "$1/var/cache/apt/archives"
"""


def test_parallel_workers_build_the_image_once(tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    fake = tmp_path / "debootstrap"
    fake.write_text(FAKE_DEBOOTSTRAP.format(counter=counter))
    fake.chmod(0o755)
    cache = tmp_path / "cache"
    code = (
        "import sys; from pathlib import Path; from azsim.linux.rootfs import ensure_rootfs; "
        "print(ensure_rootfs(Path(sys.argv[1]), progress=lambda _: None))"
    )
    env = {**os.environ, "AZSIM_DEBOOTSTRAP": str(fake)}
    workers = [
        subprocess.Popen([sys.executable, "-c", code, str(cache)], env=env, stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    paths = {w.communicate(timeout=60)[0].decode().strip() for w in workers}
    assert all(w.returncode == 0 for w in workers)
    assert paths == {str(cache / f"rootfs-{recipe_key()}")}
    assert counter.read_text().splitlines() == ["run"]
    assert not list(cache.glob(".build-*"))  # the temporary build directory was renamed


# --- scenario spec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"colour": "blue"}, "guest.colour: unknown key"),
        (
            {"files": [{"path": "/x", "content": "", "perms": "0600"}]},
            "guest.files[0].perms: unknown key",
        ),
        ({"files": [{"path": "relative", "content": ""}]}, "guest.files[0].path"),
        ({"files": [{"path": "/a/../etc/shadow"}]}, "guest.files[0].path"),
        ({"files": [{"path": "/x", "mode": "rw"}]}, "guest.files[0].mode"),
        ({"users": [{"name": "Bad Name"}]}, "guest.users[0].name"),
        ({"client_alive_interval": "3m"}, "guest.client_alive_interval"),
        ({"remove_packages": ["waagent; rm -rf /"]}, "guest.remove_packages"),
        ({"waagent_conf": {"Bad Key": "y"}}, "guest.waagent_conf.Bad Key"),
    ],
)
def test_invalid_guest_spec_names_the_key(raw: dict[str, object], message: str) -> None:
    with pytest.raises(GuestSpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(raw, vm_name="vm1")


def test_password_hash_never_in_an_error_or_repr() -> None:
    secret = "$6$salt$notarealhash value"
    with pytest.raises(GuestSpecError) as err:
        parse_spec({"users": [{"name": "builder", "password_hash": secret}]}, vm_name="vm1")
    assert "notarealhash" not in str(err.value)
    spec = parse_spec({"users": [{"name": "b", "password_hash": "$6$s$h"}]}, vm_name="vm1")
    assert "$6$s$h" not in repr(spec)


def test_spec_is_checked_when_the_guest_is_created(tmp_path: Path) -> None:
    ctx = GuestContext("rg", "vm1", "azureuser", tmp_path, {"swap": True}, tmp_path, tmp_path)
    with pytest.raises(GuestSpecError, match=r"guest\.swap: unknown key"):
        LinuxGuest(ctx)


# --- isolation -----------------------------------------------------------------------------


def test_host_files_are_invisible_and_guest_writes_stay_in_its_state_dir(
    linux_vm: Callable[..., LinuxGuest], linux_rootfs: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "host-only-marker"
    marker.write_text("host")
    guest = linux_vm()
    code, out, _ = guest.run_command(
        f"test -e {marker} && echo HOST-FILE-SEEN; test -e /work && echo HOST-WORK-SEEN; "
        "echo guest > /etc/written-inside; cat /proc/1/cmdline | tr '\\0' ' '; echo; "
        "cat /proc/self/mountinfo",
        timeout=30,
    )
    assert code == 0
    assert "HOST-FILE-SEEN" not in out and "HOST-WORK-SEEN" not in out
    assert "azsim-init" in out  # PID 1 is the sandbox's init, not the host's
    mount_sources = {line.split(" - ")[1].split()[1] for line in out.splitlines() if " - " in line}
    # sys: the tmpfs that holds the VM's SMBIOS UUID, not the host's sysfs
    assert mount_sources <= {"overlay", "proc", "dev", "devpts", "run", "tmp", "sys"}, mount_sources
    assert guest.read_path("/etc/written-inside") == b"guest\n"
    assert not (linux_rootfs / "etc/written-inside").exists()  # the cache stays pristine
    assert not Path("/etc/written-inside").exists()
    assert (guest.ctx.state_dir / "disk/upper/etc/written-inside").exists()


def test_guest_root_cannot_reach_the_host_through_the_kernel(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    guest = linux_vm()
    attempts = (
        "mknod /tmp/disk b 254 0 && echo MKNOD;"  # a host disk device node
        "echo 1 > /proc/sys/vm/drop_caches && echo SYSCTL;"  # a host-wide kernel knob
        "umount /proc/sys && echo UMOUNT;"  # undoing the read-only /proc/sys
        "mount -t tmpfs x /mnt && echo MOUNT;"
    )
    code, out, err = guest.run_command(attempts, timeout=30)
    assert out == "" and "Operation not permitted" in err
    with ssh_to(guest) as ssh:  # root through sudo is no stronger
        over_ssh = ssh.run(attempts, timeout=30, elevated=True)
    assert over_ssh.stdout == b""
    assert code != 0 and over_ssh.exit_code != 0


def test_guest_has_its_own_hostname_and_pid_namespace(linux_vm: Callable[..., LinuxGuest]) -> None:
    guest = linux_vm({"hostname": "lin-golden"})
    code, out, _ = guest.run_command("hostname; cat /etc/hostname; ps -e -o pid= | wc -l", timeout=30)
    assert code == 0
    name, file_name, processes = out.split()
    assert (name, file_name) == ("lin-golden", "lin-golden")
    assert int(processes) < 10  # init, sshd and this command: not the host's processes
    assert socket.gethostname() != "lin-golden"


# --- provisioning, power ----------------------------------------------------------------------


def test_provisioning_stages_files_and_users(linux_vm: Callable[..., LinuxGuest]) -> None:
    guest = linux_vm(
        {
            "users": [
                {"name": "builder", "password_hash": "$6$abcdefgh$" + "x" * 86},
                {"name": "svc", "shell": "/usr/sbin/nologin"},
            ],
            "files": [
                {
                    "path": "/home/builder/.aws/credentials",
                    "content": "[default]\nk=v\n",
                    "mode": "0600",
                    "owner": "builder",
                },
                {"path": "/opt/app/.env", "content": "TOKEN=abc\n"},
            ],
        }
    )
    code, out, _ = guest.run_command(
        "stat -c '%a %U %G' /home/builder/.aws/credentials /home/builder/.aws /opt/app/.env; "
        "cut -d: -f1,2 /etc/shadow | grep -E '^(builder|svc|azureuser):' "
        "| sed 's/:\\$6\\$.*/:hash/'; "
        "getent passwd svc | cut -d: -f7",
        timeout=30,
    )
    assert code == 0, out
    assert out.splitlines() == [
        "600 builder builder",
        "755 builder builder",
        "644 root root",
        "azureuser:*",
        "builder:hash",
        "svc:!",
        "/usr/sbin/nologin",
    ]
    assert guest.read_path("/home/builder/.aws/credentials") == b"[default]\nk=v\n"
    ovf = guest.read_path("/var/lib/waagent/ovf-env.xml") or b""
    assert b"<UserName>azureuser</UserName>" in ovf and b"PlatformSettingsSection" in ovf


def test_stop_closes_the_port_and_start_boots_the_same_disk(
    linux_vm: Callable[..., LinuxGuest],
) -> None:
    guest = linux_vm()
    endpoint = guest.endpoints()["ssh"]
    guest.run_command("echo kept > /root/note; cat /etc/ssh/ssh_host_ed25519_key.pub > /root/hostkey", 30)
    guest.stop()
    assert not guest.running
    assert not port_open(endpoint)
    assert guest.read_path("/root/note") == b"kept\n"  # the outside view works while stopped
    guest.stop()  # idempotent
    guest.start()
    guest.start()  # idempotent
    assert guest.running and port_open(guest.endpoints()["ssh"])
    code, out, _ = guest.run_command(
        "cat /root/note; cmp -s /root/hostkey /etc/ssh/ssh_host_ed25519_key.pub && echo same", 30
    )
    assert (code, out) == (0, "kept\nsame\n")  # not provisioned again: same host keys
    assert guest.shutdowns.count == 0  # type: ignore[attr-defined]


def test_poweroff_inside_the_guest_tells_arm(linux_vm: Callable[..., LinuxGuest]) -> None:
    guest = linux_vm()
    endpoint = guest.endpoints()["ssh"]
    guest.run_command("poweroff", timeout=30)
    assert guest.shutdowns.wait()  # type: ignore[attr-defined]
    assert not guest.running
    assert not port_open(endpoint)


def test_reboot_inside_the_guest_comes_back(linux_vm: Callable[..., LinuxGuest]) -> None:
    guest = linux_vm()
    assert guest.boots == 1
    guest.run_command("echo before > /root/note; reboot", timeout=30)
    deadline = time.monotonic() + 15
    while guest.boots < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert guest.boots == 2
    assert guest.running and port_open(guest.endpoints()["ssh"])
    assert guest.read_path("/root/note") == b"before\n"
    assert guest.shutdowns.count == 0  # type: ignore[attr-defined]


def test_run_command_is_root_and_has_a_deadline(linux_vm: Callable[..., LinuxGuest]) -> None:
    guest = linux_vm()
    assert guest.run_command("id -u; echo err >&2; exit 7", timeout=30) == (7, "0\n", "err\n")
    started = time.monotonic()
    with pytest.raises(GuestCommandTimeout, match="rg-test/vm1: Run Command did not finish within 1 s"):
        guest.run_command("sleep 60", timeout=1)
    assert time.monotonic() - started < 5
    _, out, _ = guest.run_command("ps -e -o args= | grep -c '^sleep 60' || true", timeout=30)
    assert out.strip() == "0"  # the abandoned command was killed
    summary = guest.summary()
    assert summary["running"] is True and summary["ssh"] == guest.endpoints()["ssh"]
    assert summary["rootfs"] == recipe_key()


# --- the real waagent --------------------------------------------------------------------------

WATCHED_HOST_PATHS = [
    "/etc/passwd",
    "/etc/shadow",
    "/etc/group",
    "/etc/gshadow",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssh",
    "/root",
    "/home",
    "/var/lib/waagent",
    "/var/lib/dhcp",
    "/var/log/waagent.log",
]


def snapshot(paths: list[str], root: Path = Path("/")) -> dict[str, str]:
    """path -> content digest (files), listing (directories) or "absent"."""
    seen: dict[str, str] = {}
    for name in paths:
        path = root / name.lstrip("/")
        if path.is_dir() and not path.is_symlink():
            for child in sorted(path.iterdir()):
                seen[str(child.relative_to(root))] = _digest(child)
        seen[name] = _digest(path)
    return seen


def _digest(path: Path) -> str:
    if path.is_symlink():
        return f"link {os.readlink(path)}"
    if path.is_dir():
        return "dir " + " ".join(sorted(p.name for p in path.iterdir()))
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return "absent" if not path.exists() else "other"


def test_waagent_deprovision_removes_user_and_host_keys_inside_only(
    linux_vm: Callable[..., LinuxGuest],
    ssh_to: Callable[..., SshGuest],
    linux_rootfs: Path,
) -> None:
    guest = linux_vm()
    host_before = snapshot(WATCHED_HOST_PATHS)
    cache_before = snapshot(["/etc", "/root", "/home", "/var/lib"], root=linux_rootfs)
    hostname_before = socket.gethostname()
    for key_type in HOST_KEY_TYPES:
        assert guest.exists(f"/etc/ssh/ssh_host_{key_type}_key")
    assert guest.exists("/home/azureuser/.ssh/authorized_keys")

    with ssh_to(guest) as ssh:
        result = ssh.run("waagent -deprovision+user -force", timeout=120, elevated=True)
    assert result.exit_code == 0, result.stderr

    # checked from outside: waagent exits 0 even when it did nothing
    passwd = (guest.read_path("/etc/passwd") or b"").decode()
    assert "azureuser:" not in passwd
    assert not guest.exists("/home/azureuser")
    for key_type in HOST_KEY_TYPES:
        assert not guest.exists(f"/etc/ssh/ssh_host_{key_type}_key")
    assert guest.listdir("/var/lib/waagent") == []  # waagent empties its lib dir (ovf-env.xml)
    assert not guest.exists("/root/.bash_history")
    assert guest.listdir("/var/lib/dhcp") == []  # DHCP leases
    assert "azureuser" not in (guest.read_path("/etc/sudoers.d/waagent") or b"").decode()
    shadow = (guest.read_path("/etc/shadow") or b"").decode()
    assert shadow.startswith("root:*LOCK*:")
    assert guest.read_path("/etc/hostname") == b"localhost.localdomain"

    # and nothing on the host (or in the shared image) changed
    assert snapshot(WATCHED_HOST_PATHS) == host_before
    assert snapshot(["/etc", "/root", "/home", "/var/lib"], root=linux_rootfs) == cache_before
    assert socket.gethostname() == hostname_before

    # sshd has no host keys left to accept anyone with; after a boot (which makes new ones, as
    # the agent would) the admin's key no longer logs in: the user is gone for real
    with pytest.raises(GuestUnreachable, match="SSH handshake failed"):
        ssh_to(guest).connect()
    guest.stop()
    guest.start()
    with pytest.raises(GuestAuthError, match="refused the credentials"):
        ssh_to(guest).connect()


def test_stopped_guest_is_unreachable_over_ssh(
    linux_vm: Callable[..., LinuxGuest], ssh_to: Callable[..., SshGuest]
) -> None:
    guest = linux_vm()
    ssh = ssh_to(guest)
    guest.stop()
    with pytest.raises(GuestUnreachable, match="connection refused"):
        ssh.connect()


def test_provisioning_failure_is_one_line(linux_vm: Callable[..., LinuxGuest]) -> None:
    from azsim.linux.sandbox import SandboxError

    guest = linux_vm({"files": [{"path": "/x", "owner": "ghost"}]}, start=False)
    with pytest.raises(SandboxError) as err:
        guest.start()
    assert "\n" not in str(err.value)
    assert "rg-test/vm1" in str(err.value) and "provisioning failed" in str(err.value)
    assert not guest.running

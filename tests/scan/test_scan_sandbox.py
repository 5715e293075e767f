"""The Linux scan end to end: an azsim sandbox guest (real sshd, real waagent, Debian) reached over
SSH by ``SshGuest`` and scanned by ``scan_guest``; then the same scan right after the real
``waagent -deprovision+user`` in the same session, as the Linux action runs it."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from test_scan_linux import fake, linux_plants

from azsim.guestapi import GuestContext
from azsim.linux.rootfs import cache_dir_from_env, ensure_rootfs
from azsim.linuxguest import LinuxGuest
from imageready.guest.ssh import SshGuest
from imageready.scan import DeprovisionContext, ScanResult, load_rules, rules_for, scan_guest

pytestmark = [pytest.mark.root, pytest.mark.slow]
ADMIN = "azureuser"
#: files the sandbox provides itself (accounts, host keys) and /tmp, a tmpfs there (not on disk)
NOT_PLANTED = ("/etc/passwd", "/etc/shadow", "/etc/ssh/ssh_host_ed25519_key", "/tmp/script_4711.sh")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LinuxGuest, SshGuest, list[str]]]:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("debootstrap") is None:
        pytest.skip("Linux sandboxes need root, util-linux unshare and debootstrap")
    rootfs = ensure_rootfs(cache_dir_from_env())
    base = tmp_path_factory.mktemp("scan-sandbox")
    key = ed25519.Ed25519PrivateKey.generate()
    key_path = base / "id_ed25519"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    plants = linux_plants()
    files = [{"path": p, "content": c} for p, c in plants.files.items() if p not in NOT_PLANTED]
    files.append({"path": "/var/tmp/script_4711.sh", "content": "#!/bin/sh\n"})
    files.append({"path": f"/home/{ADMIN}/.bash_history", "content": "sudo -i\n"})
    files += [{"path": path, "symlink": target} for path, target in plants.links.items()]
    # what a mount hides, what is too large, what cannot be read, what is not the image
    hidden, resource, data = (f"ghp_{fake(36)}" for _ in range(3))
    files.append({"path": "/var/cache/app/left.py", "content": f'T = "{hidden}"\n'})
    files.append({"path": "/var/log/app/huge.log", "content": "x\n", "size": 9 * 1024**3})
    shadow_hash = f"$6${fake(8)}${fake(86)}"
    spec = {
        "files": files,
        "users": [{"name": "builder", "shell": "/bin/bash", "password_hash": shadow_hash}],
        "mounts": [
            {"path": "/var/cache/app", "type": "tmpfs"},
            {
                "path": "/mnt",
                "type": "resource-disk",
                "files": [{"path": "/leak.txt", "content": f"{resource}\n"}],
            },
            {
                "path": "/data",
                "type": "data-disk",
                "files": [
                    {"path": "/app/ok.txt", "content": f"{data}\n"},
                    {"path": "/app/bad.conf", "content": "x\n"},
                ],
                "unreadable": ["/app/bad.conf"],
            },
        ],
    }
    ctx = GuestContext(
        resource_group="rg-scan",
        vm_name="lin-scan",
        admin_user=ADMIN,
        state_dir=base / "vm",
        spec=spec,
        tls_cert=base / "unused.pem",
        tls_key=base / "unused.key",
        ssh_public_key=public.decode() + " scan-test",
        cache_dir=rootfs.parent,
    )
    guest = LinuxGuest(ctx)
    ssh = None
    try:
        guest.start()
        host, port = guest.endpoints()["ssh"].rsplit(":", 1)
        ssh = SshGuest(
            host,
            int(port),
            ADMIN,
            vm_key=guest.name,
            key_path=key_path,
            connect_timeout=5.0,
            allow_agent=False,
        )
        yield guest, ssh, [*plants.secrets, shadow_hash, hidden, resource, data]
    finally:
        if ssh is not None:
            ssh.close()
        guest.close()


def run_scan(ssh: SshGuest, *, run_first: str | None = None) -> ScanResult:
    context = DeprovisionContext(
        action="waagent-deprovision+user", provisioned_user=ADMIN, regenerate_host_keys=True
    )
    if run_first is not None:
        context = DeprovisionContext(action="none")  # after the action, whatever is found persists
    return scan_guest(
        ssh,
        rules_for("Linux", load_rules()),
        key=bytes(range(32)),
        deadline=time.monotonic() + 240,
        context=context,
        run_first=run_first,
    )


def test_every_rule_is_found_on_a_real_guest_and_marked_by_fate(sandbox) -> None:  # type: ignore[no-untyped-def]
    _, ssh, secrets = sandbox
    result = run_scan(ssh)
    assert result.complete, result.errors
    assert result.stats["engine"] == "python"
    assert "/tmp" in result.stats["excluded_paths"] and "/proc" in result.stats["excluded_paths"]
    plants = linux_plants()
    found = {(f.rule_id, f.path) for f in result.findings}
    for rule in rules_for("Linux", load_rules()):
        paths = {path for rule_id, path in found if rule_id == rule.id}
        assert paths, f"{rule.id}: nothing found"
        if plants.expected[rule.id] not in NOT_PLANTED:
            assert plants.expected[rule.id] in paths
    assert plants.extra <= found, sorted(plants.extra - found)  # archives, UTF-16, links, escapes
    # a tmpfs over /var/cache/app hides a file on the disk: read through the second mount
    assert ("github-token", "/var/cache/app/left.py") in found
    assert not any(path.startswith("/mnt/") for _, path in found)  # the resource disk
    assert ("github-token", "/data/app/ok.txt") in found  # a data disk is part of the image
    excluded = {e.path: e.reason for e in result.excluded}
    assert (
        excluded["/mnt"].startswith("the Azure resource disk (/dev/loop")
        and "resource-part1" in excluded["/mnt"]
    )
    unread = {n.path: n.reason for n in result.not_scanned}
    assert unread.keys() == {"/var/log/app/huge.log", "/data/app/bad.conf"}, unread
    assert unread["/var/log/app/huge.log"].startswith("larger than the 8 GiB bound")
    assert unread["/data/app/bad.conf"].startswith("I/O error")
    assert not result.coverage(None, "rg-scan/lin-scan").complete
    fate = {f.path: f for f in result.findings}
    assert fate[f"/home/{ADMIN}/.bash_history"].removed_by_action  # the provisioned user's home
    assert fate["/var/lib/waagent/ovf-env.xml"].removed_by_action
    assert not fate["/home/builder/.bash_history"].removed_by_action  # every other user's stays
    shadow = [f for f in result.findings if f.rule_id == "shadow-unlocked-password"]
    assert [f.detail for f in shadow] == ["account=builder"] and not shadow[0].removed_by_action
    summaries = "\n".join(f.summary() for f in result.findings) + repr(result)
    for secret in secrets:
        assert secret[:12] not in summaries and secret[-12:] not in summaries


def test_the_rescan_after_waagent_sees_only_what_persists(sandbox) -> None:  # type: ignore[no-untyped-def]
    guest, ssh, _ = sandbox
    result = run_scan(ssh, run_first="export HISTSIZE=0; waagent -deprovision+user -force")
    assert result.complete, result.errors
    assert result.stats["run_first_exit"] == 0
    paths = {f.path for f in result.findings}
    assert not any(p.startswith(("/var/lib/waagent", f"/home/{ADMIN}")) for p in paths)
    assert "/root/.bash_history" not in paths
    assert not any(p.startswith("/etc/ssh/ssh_host_") for p in paths)  # Debian: RegenerateSshHostKeyPair=y
    assert {"/home/builder/.bash_history", "/opt/app/deploy.py"} <= paths  # deprovision leaves these
    assert not guest.exists(f"/home/{ADMIN}")

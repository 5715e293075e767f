"""Nothing skipped in silence (Linux program): what is excluded is a mount proven off the image,
what a mount hides is read beneath it or listed, and whatever cannot be read in full is listed
as not scanned with its reason; the engine turns any such entry into an incomplete scan unless a
waiver names the path.

Trees are planted under tmp_path and scanned as a guest would be (``root`` pointed at them).
Mounts happen only inside a private mount namespace (``unshare --mount``) this test starts; the
program may enter one of its own to bind a disk read-only, never the host's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_scan_linux import KEY, LINUX_RULES, fake, write_tree

from imageready.gate import Waiver, WaiverBook
from imageready.scan import DeprovisionContext
from imageready.scan.findings import parse_scan_output
from imageready.scan.remote import linux_program, linux_script

PASSWD = b"root:x:0:0::/root:/bin/bash\n"


def token() -> str:
    return "ghp_" + fake(36)


def scan(root: Path, *, prefix: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """The python program over ``root``, optionally under ``prefix`` (unshare, setpriv)."""
    program = linux_program(LINUX_RULES, KEY, root=str(root), deadline=120, **options)
    proc = subprocess.run(
        [*(prefix or []), "sh", "-c", linux_script()],
        input=program,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-800:]
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def unread(document: dict[str, Any]) -> dict[str, str]:
    return {entry["path"]: entry["reason"] for entry in document["not_scanned"]}


def found(document: dict[str, Any]) -> set[str]:
    return {f["path"] for f in document["findings"]}


def test_files_over_the_bound_and_archives_past_theirs_are_not_scanned(tmp_path: Path) -> None:
    import gzip

    root = tmp_path / "root"
    small, big = token(), token()
    write_tree(
        root,
        {
            "/etc/passwd": PASSWD,
            "/var/log/big.log": b"x" * 4096 + f"\n{big}\n".encode(),
            "/var/log/ok.log": f"{small}\n".encode(),
            "/var/log/bomb.log.gz": gzip.compress(b"A" * 200_000 + f"\n{token()}\n".encode()),
        },
    )
    for engine in ("python", "sh"):
        program_options = {"max_file_size": 2048, "max_expanded": 100_000}
        document = scan(root, **program_options) if engine == "python" else _sh(root, **program_options)
        listed = unread(document)
        assert listed["/var/log/big.log"].startswith("larger than the 2"), (engine, listed)
        assert "expands beyond" in listed["/var/log/bomb.log.gz"], (engine, listed)
        assert "/var/log/ok.log" in found(document) and "/var/log/big.log" not in found(document)
        assert document["not_scanned_total"] == 2 and document["complete"] is True


def _sh(root: Path, prefix: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """The sh fallback over ``root``, with a PATH of the tools it needs and no python3."""
    from test_scan_linux import TOOLS

    tools = root.parent / f"{root.name}-tools"
    tools.mkdir(exist_ok=True)
    for tool in TOOLS:
        found_at = shutil.which(tool)
        if found_at and not (tools / tool).exists():
            (tools / tool).symlink_to(found_at)
    program = linux_program(LINUX_RULES, KEY, root=str(root), deadline=120, **options)
    proc = subprocess.run(
        [*(prefix or []), str(tools / "sh"), "-c", linux_script()], input=program, capture_output=True,
        env={"PATH": str(tools)}, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-800:]
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def test_a_large_file_is_read_in_chunks_to_its_end(tmp_path: Path) -> None:
    """Past grep's bound the python program streams the file: a secret at its very end is found
    (grep_max is lowered here so that a 3 MB file takes that path)."""
    root = tmp_path / "root"
    value = token()
    write_tree(root, {"/etc/passwd": PASSWD, "/var/log/huge.log": b"y" * 3_000_000 + f"\n{value}\n".encode()})
    document = scan(root, grep_max=1_048_576)
    assert "/var/log/huge.log" in found(document) and document["stats"]["streamed_files"] == 1


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.parametrize("engine", ["python", "sh"])
def test_unreadable_files_and_directories_are_listed(tmp_path: Path, engine: str) -> None:
    """Root without CAP_DAC_OVERRIDE (setpriv) meets mode 000 as any process would."""
    root = tmp_path / "root"
    write_tree(
        root, {"/etc/passwd": PASSWD, "/opt/locked.conf": f"{token()}\n".encode(), "/srv/box/a": b"x\n"}
    )
    (root / "opt/locked.conf").chmod(0)
    (root / "srv/box").chmod(0)
    no_override = [
        str(shutil.which("setpriv")),
        "--bounding-set=-dac_override,-dac_read_search",
        "--inh-caps=-dac_override,-dac_read_search",
    ]
    try:
        document = scan(root, prefix=no_override) if engine == "python" else _sh(root, no_override)
    finally:
        (root / "opt/locked.conf").chmod(0o644)
        (root / "srv/box").chmod(0o755)
    listed = unread(document)
    assert listed["/opt/locked.conf"] == "permission denied", listed
    assert listed["/srv/box"].startswith("cannot list: "), listed
    result = parse_scan_output(document, "Linux", DeprovisionContext("none"))
    assert not result.coverage(None, "rg/vm").complete  # the check errors every case on this


def test_a_path_waiver_completes_the_scan_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_tree(root, {"/etc/passwd": PASSWD, "/var/log/big.log": b"x" * 4096})
    document = scan(root, max_file_size=1024)
    result = parse_scan_output(document, "Linux", DeprovisionContext("none"))
    assert not result.coverage(None, "rg/vm").complete
    expires = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    waiver = Waiver(
        "IR-SCAN", "rotated daily, nothing in it", "jane@contoso.example", expires, path="/var/log/*.log"
    )
    other = Waiver("IR-SCAN", "whole rule", "x@contoso.example", expires, parameter="github-token")
    book = WaiverBook([waiver, other])
    coverage = result.coverage(book, "rg/vm")
    assert coverage.complete and [w for _, w in coverage.waived] == [waiver]
    assert book.find("IR-SCAN", "rg/vm", "github-token") is other  # a path waiver waives no case
    assert book.find("IR-SCAN", "rg/vm", "jwt") is None
    assert not result.coverage(
        WaiverBook([Waiver("IR-SCAN", "r", "a", expires, path="/var/log/*.gz")]), "rg/vm"
    ).complete
    expired = Waiver("IR-SCAN", "old", "a", dt.datetime(2000, 1, 1, tzinfo=dt.UTC), path="/var/log/big.log")
    assert not result.coverage(WaiverBook([expired]), "rg/vm").complete


def test_what_the_action_removes_does_not_keep_the_scan_incomplete(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_tree(root, {"/etc/passwd": PASSWD, "/var/lib/waagent/big.bin": b"x" * 4096})
    document = scan(root, max_file_size=1024)
    context = DeprovisionContext(action="waagent-deprovision+user")
    result = parse_scan_output(document, "Linux", context)
    assert result.not_scanned[0].removal_note and result.coverage(None, "rg/vm").complete
    assert "removed: waagent deletes /var/lib/waagent" in result.not_scanned[0].summary()


# --- mounts -------------------------------------------------------------------------------------

needs_namespaces = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("mkfs.ext4") is None,
    reason="needs root, unshare and e2fsprogs",
)


def in_namespace(tmp_path: Path, setup: str, root: Path, *, drop_sys_admin: bool = False) -> dict[str, Any]:
    """Run ``setup`` (sh, with $ROOT) then the python program, inside a private mount namespace.
    /sys is covered there so that /dev/disk/azure links alone prove the resource disk."""
    program = tmp_path / "program.bin"
    program.write_bytes(linux_program(LINUX_RULES, KEY, root=str(root), deadline=120))
    script = tmp_path / "script.sh"
    script.write_text(linux_script())
    run = (
        f"setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin sh {script}"
        if drop_sys_admin
        else f"sh {script}"
    )
    body = f"set -e\nROOT={root}\n{setup}\nmount -t tmpfs nosys /sys\n{run} < {program}\n"
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", body],
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-800:]
    document: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return document


@needs_namespaces
def test_what_a_tmpfs_hides_is_read_from_the_disk_beneath(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_tree(root, {"/etc/passwd": PASSWD, "/var/cache/app/left.py": f'T = "{token()}"\n'.encode()})
    setup = 'mount -t tmpfs cover "$ROOT/var/cache/app"'
    document = in_namespace(tmp_path, setup, root)
    assert "/var/cache/app/left.py" in found(document)
    assert {"path": "/var/cache/app", "reason": "tmpfs file system, not on a disk of the image"} in document[
        "excluded"
    ]
    beneath = {u["path"]: u for u in document["stats"]["underlay"]}
    assert beneath["/var/cache/app"]["via"].startswith("through a private read-only bind of ")
    # without CAP_SYS_ADMIN it cannot bind: listed, not passed
    document = in_namespace(tmp_path, setup, root, drop_sys_admin=True)
    assert "/var/cache/app/left.py" not in found(document)
    assert unread(document)["/var/cache/app"].startswith("hidden under the tmpfs mounted over it")


@needs_namespaces
def test_a_second_mount_of_the_disk_is_read_through(tmp_path: Path) -> None:
    """As in azsim's sandbox: the disk also mounted elsewhere, read-only, before a tmpfs hid a
    directory of it; without CAP_SYS_ADMIN the program reads beneath through that mount."""
    base = tmp_path / "disk"
    root = base / "root"
    write_tree(root, {"/etc/passwd": PASSWD, "/tmp/packer-provision.sh": b"#!/bin/sh\n"})
    setup = (
        f"mount -t tmpfs disk {base} && mkdir -p {root}/tmp {root}/etc {root}/run\n"
        f'echo "{PASSWD.decode().strip()}" > {root}/etc/passwd\n'
        f'printf "#!/bin/sh\\n" > {root}/tmp/packer-provision.sh\n'
        f"mount -t tmpfs run {root}/run && mkdir -p {root}/run/second\n"
        f"mount --bind {base} {root}/run/second\n"
        f"mount -t tmpfs tmp {root}/tmp"
    )
    document = in_namespace(tmp_path, setup, root, drop_sys_admin=True)
    assert "/tmp/packer-provision.sh" in found(document), document["not_scanned"]
    assert not unread(document)


@needs_namespaces
def test_the_resource_disk_is_excluded_when_its_device_proves_it(tmp_path: Path) -> None:
    """A loop-mounted ext4 at /mnt that /dev/disk/azure/resource-part1 names (as WALinuxAgent's
    udev rules name Azure's resource disk) is left out, with the proof in the reason; what it
    hides on the OS disk is read beneath it. The same disk without the link, and an empty /mnt
    with cloud-init configured and ResourceDisk.MountPoint pointing at it, are scanned."""
    image = tmp_path / "resource.img"
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image), "4M"], check=True, capture_output=True)
    root = tmp_path / "root"
    beneath, on_disk = token(), token()
    write_tree(
        root,
        {
            "/etc/passwd": PASSWD,
            "/etc/waagent.conf": b"ResourceDisk.MountPoint=/mnt\n",
            "/etc/cloud/cloud.cfg": b"mounts: []\n",
            "/mnt/on-os-disk.txt": f"{beneath}\n".encode(),
            "/mnt/resource/leftover.txt": f"{on_disk}\n".encode(),
        },
    )
    (root / "dev/disk/azure").mkdir(parents=True)
    mount = f'mount -o loop {image} "$ROOT/mnt" && echo {token()} > "$ROOT/mnt/on-resource.txt"'
    link = 'ln -s "$(findmnt -n -o SOURCE --mountpoint "$ROOT/mnt")" "$ROOT/dev/disk/azure/resource-part1"'
    document = in_namespace(tmp_path, f"{mount}\n{link}", root)
    reasons = {e["path"]: e["reason"] for e in document["excluded"]}
    assert (
        reasons["/mnt"].startswith("the Azure resource disk (/dev/loop")
        and "resource-part1" in reasons["/mnt"]
    )
    assert "/mnt/on-resource.txt" not in found(document)
    assert "/mnt/on-os-disk.txt" in found(document)  # on the OS disk, under the mount point
    # no link: the same ext4 is a data disk of the image
    (root / "dev/disk/azure/resource-part1").unlink()
    document = in_namespace(tmp_path, mount, root)
    assert "/mnt" not in {e["path"] for e in document["excluded"]}
    assert "/mnt/on-resource.txt" in found(document)
    # nothing mounted: /mnt is a plain directory of the OS disk, whatever cloud-init or waagent say
    document = scan(root)
    assert document["excluded"] == [] and {"/mnt/on-os-disk.txt", "/mnt/resource/leftover.txt"} <= found(
        document
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))


def test_waiver_files_take_a_path_for_the_scan_only(tmp_path: Path) -> None:
    from imageready.gate import WaiverError, load_waivers

    good = tmp_path / "w.yaml"
    good.write_text(
        "waivers:\n  - {check: IR-SCAN, path: 'C:/logs/*.log', reason: r, approver: a, expires: 2099-01-01}\n"
    )
    (waiver,) = load_waivers(good)
    assert waiver.path == "C:/logs/*.log" and waiver.as_record()["path"] == "C:/logs/*.log"
    assert WaiverBook([waiver]).find_path("IR-SCAN", "rg/w", "c:\\LOGS\\app.log") is waiver
    for bad in (
        "{check: IR-LNX-002, path: /x, reason: r, approver: a, expires: 2099-01-01}",
        "{check: IR-SCAN, path: /x, fingerprint: 0123456789abcdef, reason: r, approver: a, "
        "expires: 2099-01-01}",
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(f"waivers:\n  - {bad}\n")
        with pytest.raises(WaiverError, match="'path' is for check IR-SCAN alone"):
            load_waivers(path)

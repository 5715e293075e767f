"""The record of what happened is never lost after an irreversible step.

Four runs of the actions on four clean Windows copies, each broken once the VM has changed:

- the report directory's disk fills up while the VM is being deallocated (a tmpfs of 48 MiB, filled
  to the last byte): the room reserved for the record before the first action takes the journal
  and the audit, and the run ends as if nothing had happened (exit 0, every sink written);
- ``audit.json`` turns into a directory once the VM is generalized: the audit goes to
  ``audit-<run>.json`` (with its SHA-256 and HTML), the run says so in one line and exits 11;
- the harness crashes in a report hook right after generalize (INTERNALERROR): the audit of what
  happened is written all the same, the run exits 11, ``imageready-report --from-journal`` rebuilds
  the same steps, and the same command finishes the job;
- the harness is killed (SIGKILL) while Azure deallocates the VM: no audit, but the journal;
  ``imageready-report --from-journal`` rebuilds it (the step under way shown interrupted, the run
  marked incomplete) and the same command finishes the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes
from tests.e2e.conftest import REPO, Run, harness_command

from .conftest import Sim, assert_one_line

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

SCENARIO = "tests/scenarios/reliability-record.yaml"
RG = "rg-record"
REPORT_TOOL = str(Path(sys.executable).with_name("imageready-report"))


def journal(report_dir: Path) -> list[dict[str, Any]]:
    """Every whole entry of every journal file in ``report_dir`` so far."""
    entries = []
    for path in sorted((report_dir / "journal").glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


def step_seen(vm: str, step: str, status: str) -> Callable[[list[dict[str, Any]]], bool]:
    def seen(entries: list[dict[str, Any]]) -> bool:
        return any(
            e.get("kind") == "step"
            and e.get("vm") == vm
            and e.get("step") == step
            and (e.get("record") or {}).get("status") == status
            for e in entries
        )

    return seen


@contextmanager
def background(sim: Sim, *args: str, report_dir: Path, env: dict[str, str] | None = None) -> Iterator[Any]:
    """The harness run in the background (its pid, and a ``finish()`` giving its Run)."""
    out, err = report_dir.with_suffix(".stdout"), report_dir.with_suffix(".stderr")
    with out.open("w") as stdout, err.open("w") as stderr:
        process = subprocess.Popen(
            harness_command(*args, report_dir=report_dir),
            cwd=REPO,
            env={**sim.env, **(env or {})},
            stdout=stdout,
            stderr=stderr,
            text=True,
        )

    class Handle:
        pid = process.pid

        @staticmethod
        def wait_journal(predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 180) -> None:
            deadline = time.monotonic() + timeout
            while not predicate(journal(report_dir)):
                assert process.poll() is None, f"the run ended first:\n{err.read_text()[-3000:]}"
                assert time.monotonic() < deadline, "the journal never showed it"
                time.sleep(0.05)

        @staticmethod
        def finish(timeout: float = 300) -> Run:
            process.wait(timeout)
            return Run(process.returncode, out.read_text(), err.read_text(), report_dir)

    try:
        yield Handle
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(60)


def audit_of(path: Path) -> dict[str, Any]:
    body = path.read_bytes()
    recorded = path.with_name(path.name + ".sha256").read_text().split()[0]
    assert recorded == hashlib.sha256(body).hexdigest(), f"{path} does not match its SHA-256"
    data: dict[str, Any] = json.loads(body)
    return data


def statuses(audit: dict[str, Any], vm: str) -> dict[str, str]:
    (found,) = [v for v in audit["vms"] if v["vm"] == vm]
    return {step["step"]: step["status"] for step in found["actions"]}


def report_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([REPORT_TOOL, *args], capture_output=True, text=True, timeout=120, check=False)


@contextmanager
def small_disk(path: Path, size: str = "48m") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> int:
    """Write to ``directory`` until its disk is full, to the last byte; the bytes written."""
    written = 0
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1024 * 1024, 65536, 4096, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    written += os.write(fd, block)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written


def test_a_disk_that_fills_up_mid_actions_keeps_the_whole_record(sim: Sim, tmp_path: Path) -> None:
    vm = f"{RG}/win-full"
    with small_disk(tmp_path / "disk") as disk:
        report_dir = disk / "out"
        with background(sim, "--vm", vm, "--apply", report_dir=report_dir) as run:
            run.wait_journal(step_seen(vm, "deallocate", "running"))
            assert fill(disk) > 0
            done = run.finish()
        assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize < 20 * 2**20
        assert "the room reserved for the record is in use now" in done.output, done.output[-3000:]
        assert done.returncode == exitcodes.GREEN, done.output[-3000:]
        assert statuses(audit_of(report_dir / "audit.json"), vm) == {
            "lock": "done",
            "guest": "done",
            "deallocate": "done",
            "generalize": "done",
            "verify": "done",
            "capture": "skipped",
            "unlock": "done",
        }
        assert (report_dir / "junit.xml").stat().st_size > 0
    assert sim.status()[vm]["os_state"] == "generalized"


def test_audit_json_taken_after_generalize_goes_to_its_own_name(sim: Sim, tmp_path: Path) -> None:
    vm = f"{RG}/win-taken"
    report_dir = tmp_path / "out"
    with background(sim, "--vm", vm, "--apply", report_dir=report_dir) as run:
        run.wait_journal(step_seen(vm, "generalize", "done"))
        (report_dir / "audit.json").mkdir()
        done = run.finish()
    line = assert_one_line(
        done, r"RECORD INCOMPLETE: audit.json could not be written .*: the audit is audit-\w+\.json"
    )
    assert done.returncode == exitcodes.ACTION_FAILED, done.output[-3000:]
    name = line.rsplit("the audit is ", 1)[1].strip()
    audit = audit_of(report_dir / name)
    assert statuses(audit, vm)["generalize"] == "done"
    assert (report_dir / name.replace(".json", ".html")).stat().st_size > 1000
    assert sim.status()[vm]["os_state"] == "generalized"


def test_a_crash_after_generalize_still_writes_the_audit_and_exits_11(sim: Sim, tmp_path: Path) -> None:
    vm = f"{RG}/win-crash"
    report_dir = tmp_path / "out"
    with background(
        sim,
        "--vm",
        vm,
        "--apply",
        "-p",
        "tests.reliability.crash_plugin",
        report_dir=report_dir,
        env={"IR_TEST_CRASH_AFTER": "test_marked_generalized"},
    ) as run:
        done = run.finish()
    assert "INTERNALERROR" in done.output and "simulated harness crash" in done.output
    assert done.returncode == exitcodes.ACTION_FAILED, done.output[-3000:]
    written = audit_of(report_dir / "audit.json")
    steps = statuses(written, vm)
    assert {k: steps[k] for k in ("lock", "guest", "deallocate", "generalize")} == dict.fromkeys(
        ("lock", "guest", "deallocate", "generalize"), "done"
    )
    rebuilt = report_tool(str(report_dir), "--from-journal")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert statuses(audit_of(report_dir / "audit.json"), vm) == steps
    again = harness_again(sim, vm, report_dir)
    assert again.returncode == exitcodes.GREEN, again.output[-3000:]
    assert statuses(again.audit(), vm)["generalize"] == "already done"


def test_sigkill_mid_deallocate_leaves_a_journal_that_rebuilds_the_audit(sim: Sim, tmp_path: Path) -> None:
    vm = f"{RG}/win-kill"
    report_dir = tmp_path / "out"
    with background(sim, "--vm", vm, "--apply", report_dir=report_dir) as run:
        run.wait_journal(step_seen(vm, "deallocate", "running"))
        os.kill(run.pid, signal.SIGKILL)
        killed = run.finish()
    assert killed.returncode == -signal.SIGKILL
    assert not (report_dir / "audit.json").exists()
    rebuilt = report_tool(str(report_dir), "--from-journal")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "the run did not finish" in rebuilt.stdout
    audit = audit_of(report_dir / "audit.json")
    assert audit["incomplete"].startswith("rebuilt from the journal")
    assert statuses(audit, vm) == {"lock": "done", "guest": "done", "deallocate": "interrupted"}
    assert "Incomplete" in (report_dir / "audit.html").read_text()
    again = harness_again(sim, vm, report_dir)
    assert again.returncode == exitcodes.GREEN, again.output[-3000:]
    assert sim.status()[vm]["os_state"] == "generalized"


def harness_again(sim: Sim, vm: str, report_dir: Path) -> Run:
    """The same command once more, in the same report directory (the first run's verdict is
    there: a VM it generalized is resumed under it)."""
    done = subprocess.run(
        harness_command("--vm", vm, "--apply", report_dir=report_dir),
        cwd=REPO,
        env=sim.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Run(done.returncode, done.stdout, done.stderr, report_dir)

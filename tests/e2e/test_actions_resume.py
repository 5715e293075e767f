"""A run killed at a step boundary (SIGKILL: a crash; SIGTERM: a cancelled CI job), then the same
command again: the second run finishes the job, reports each step the first one finished as
"already done" with the first run's tag, and takes over the lease of the killed run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes
from imageready.steps import ORDER
from imageready.steps.lease import LEASE_TAG, Lease

from .after_generalize import assert_no_vm_write_after_generalize
from .conftest import REPO, Azsim, Run, harness, harness_command

SCENARIO = "tests/scenarios/actions-resume.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

DONE_LINE = re.compile(r"\] (\S+): step (\w+): done in ")


@dataclass
class Watched:
    """A harness run in the background whose progress lines (stderr) are read as they come."""

    process: subprocess.Popen[str]
    report_dir: Path
    stdout_path: Path
    lines: list[str] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)
    _reader: threading.Thread | None = None

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = 180) -> None:
        """Until a progress line containing ``text`` came (the run goes on meanwhile)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and self._reader_done()):
                    raise AssertionError(f"no line with {text!r}; run said:\n{''.join(self.lines)[-3000:]}")
                self._changed.wait(min(left, 0.5))

    def _reader_done(self) -> bool:
        return self._reader is not None and not self._reader.is_alive()

    def finish(self, timeout: float = 300) -> Run:
        try:
            self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        assert self._reader is not None
        self._reader.join(30)
        stdout = self.stdout_path.read_text()
        return Run(self.process.returncode, stdout, "".join(self.lines), self.report_dir)

    def __enter__(self) -> Watched:
        return self

    def __exit__(self, *exc: object) -> None:
        """Whatever happened in the test: no harness process outlives it."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # a stopped process cannot die of SIGKILL late
            self.process.kill()
        self.process.wait(60)
        if self._reader is not None:
            self._reader.join(30)

    def done_steps(self, vm: str) -> list[str]:
        return [m.group(2) for line in self.lines if (m := DONE_LINE.search(line)) and m.group(1) == vm]


def start_harness(sim: Azsim, *args: str, report_dir: Path) -> Watched:
    """``harness`` (tests/e2e/conftest.py) in the background: the same command, the same files."""
    command = harness_command(*args, report_dir=report_dir)
    stdout_path = report_dir.with_name(report_dir.name + ".stdout")
    with stdout_path.open("w") as stdout:
        process = subprocess.Popen(
            command, cwd=REPO, env=sim.env, stdout=stdout, stderr=subprocess.PIPE, text=True, bufsize=1
        )
    watched = Watched(process, report_dir, stdout_path)
    watched._reader = threading.Thread(target=watched._read, daemon=True)
    watched._reader.start()
    return watched


def steps_of(run: Run, vm: str) -> dict[str, dict[str, Any]]:
    (found,) = [v for v in run.audit()["vms"] if v["vm"] == vm]
    return {step["step"]: step for step in found["actions"]}


CASES = [
    pytest.param(
        "rg-resume/lin-kill-lock", "step lock: done in ", signal.SIGKILL, id="sigkill-after-lock-linux"
    ),
    pytest.param(
        "rg-resume/lin-kill-guest", "step guest: done in ", signal.SIGKILL, id="sigkill-after-guest-linux"
    ),
    pytest.param(
        "rg-resume/lin-kill-waagent",
        "new login as azureuser refused",
        signal.SIGKILL,
        id="sigkill-inside-guest-after-waagent-linux",
    ),
    pytest.param(
        "rg-resume/win-kill-dealloc",
        "step deallocate: done in ",
        signal.SIGKILL,
        id="sigkill-after-deallocate-windows",
    ),
    pytest.param(
        "rg-resume/win-term-guest", "step guest: done in ", signal.SIGTERM, id="sigterm-after-guest-windows"
    ),
    pytest.param(
        "rg-resume/win-kill-sysprep",
        "sysprep.exe /generalize /oobe /quit /mode:vm /quiet started",
        signal.SIGKILL,
        id="sigkill-inside-sysprep-quit-windows",
    ),
]
#: /quit keeps a sysprepped machine up until the harness powers it off, so a run killed while
#: sysprep works leaves something the next run can look at (see docs/actions.md)
EXTRA_ARGS = {"rg-resume/win-kill-sysprep": ("--sysprep-args=/generalize /oobe /quit /mode:vm",)}


@pytest.mark.parametrize(("vm", "line", "kill"), CASES)
def test_a_run_killed_at_a_step_boundary_is_finished_by_the_same_command(
    azsim: Azsim, tmp_path: Path, vm: str, line: str, kill: signal.Signals
) -> None:
    command = ("--vm", vm, "--apply", *EXTRA_ARGS.get(vm, ()))
    report_dir = tmp_path / "reports"
    with start_harness(azsim, *command, report_dir=report_dir) as first:
        first.wait_for(f"{vm}: {line}")
        os.kill(first.process.pid, kill)
        killed = first.finish(timeout=120)
    finished = first.done_steps(vm)
    first_run = _verdict_run(report_dir, vm)
    tags = azsim.status()[vm]["tags"]
    lease = Lease.parse(tags.get(LEASE_TAG))
    guest_tag = tags.get("imageready-step-guest", "")  # started or done by the first run, or none
    if kill == signal.SIGKILL:
        assert killed.returncode == -signal.SIGKILL
        # a crash leaves its lease behind, naming the dead process
        assert lease is not None and (lease.run_id, lease.pid) == (first_run, first.process.pid)
    else:
        # a cancelled job unwinds: it releases the lease and writes its audit, with the steps it
        # finished (and the one it was in, if any, as interrupted)
        assert killed.returncode == exitcodes.INTERRUPTED, killed.output[-3000:]
        assert lease is None, "SIGTERM did not release the lease"
        recorded = steps_of(killed, vm)
        assert [name for name, s in recorded.items() if s["status"] == "done"] == finished
        assert {s["status"] for s in recorded.values()} <= {"done", "interrupted"}

    # the kill may land after the first run generalized the VM (it goes on from the line it printed)
    generalized_first = azsim.status()[vm]["os_state"] == "generalized"

    again = harness(azsim, *command, report_dir=report_dir)  # the same command

    assert again.returncode == exitcodes.GREEN, again.output[-4000:]
    state = azsim.status()[vm]
    assert (state["power_state"], state["os_state"]) == ("deallocated", "generalized")
    # the final lease of whichever run generalized it stays (the VM takes no change); it claims no
    # capture, so it binds nobody
    left = Lease.parse(state["tags"].get(LEASE_TAG))
    assert left is not None and left.then == "none", state["tags"]
    assert left.run_id == (first_run if generalized_first else again.audit()["run_id"])
    assert_no_vm_write_after_generalize(azsim, vm)
    steps = steps_of(again, vm)
    assert list(steps) == list(ORDER)
    for name in ORDER:
        if name in finished and name not in ("lock", "unlock", "verify"):
            assert steps[name]["status"] == "already done", (name, steps[name])
            recorded = (
                "recorded on the VM before generalize: started"
                if name == "generalize"
                else "recorded on the VM: done"
            )
            assert f"({recorded} run={first_run} " in steps[name]["detail"], steps[name]
        else:
            assert steps[name]["status"] in ("done", "already done", "skipped"), (name, steps[name])
    if guest_tag.startswith("started ") and vm.startswith("rg-resume/lin-"):
        # killed inside the guest step: the admin login is gone, Run Command proves the post-state
        assert steps["guest"]["status"] == "already done"
        assert (
            "Run Command confirms the user, host keys and waagent state are gone" in steps["guest"]["detail"]
        )
    elif guest_tag.startswith("started "):
        # killed while sysprep ran: the re-run looked at what it left, followed it, powered it off
        assert steps["guest"]["status"] == "done"
        assert steps["guest"]["evidence"]["resumed"]["tag"]["run"] == first_run
        assert "(/quit); shutting it down" in steps["guest"]["detail"]
    if kill == signal.SIGKILL and generalized_first:
        # nothing to take over: the VM takes no lease, and the first run's final lease claims no
        # capture; the lock step says what it found
        assert steps["lock"]["detail"].startswith(f"no lease written: {vm} is generalized"), steps["lock"]
        assert f"the final lease of run {first_run} by " in steps["lock"]["detail"]
    elif kill == signal.SIGKILL:
        assert f"took over the lease of run {first_run}" in steps["lock"]["detail"]
        assert f"pid {first.process.pid}) until" in steps["lock"]["detail"]
        assert "that process is gone" in again.stderr  # said loudly, not only in the audit
    if guest_tag.startswith("started ") and "gate OPEN (via checks)" in again.stdout:
        # killed before the guest step changed anything the guest shows (ImageState still
        # complete, ovf-env.xml still there): nothing resumes, this run's own checks decide
        assert "resuming run" not in again.stdout
        outcomes = {c["outcome"] for c in again.verdict(vm)["checks"]}
        assert "passed" in outcomes and again.verdict(vm)["green"] is True
    elif guest_tag:  # the guest was (being) generalized under the first run's verdict
        assert f"resuming run {first_run}" in again.stdout
    else:
        assert "gate OPEN (via checks)" in again.stdout


def _verdict_run(report_dir: Path, vm: str) -> str:
    """The first run's id, from the verdict it wrote before its first change."""
    import json

    rg, name = vm.split("/")
    data = json.loads((report_dir / "verdicts" / f"verdict-{rg}__{name}.json").read_text())
    return str(data["run_id"])

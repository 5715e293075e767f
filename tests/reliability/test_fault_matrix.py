"""The fault matrix: each azsim fault in the checks phase and at each action step, one VM per row.

A row's fault is scoped to its VM, so a few harness runs cover every row: the checks rows in one
run (and two more, over Run Command and against an azsim that is killed), the action rows in one
``--apply --capture-as image:...`` run. A fault is armed before the run, or when the run reaches
the row's step (the journal shows it ``running``), or when azsim's request log shows the VM read
(for faults that must land mid-run). Then each row must have:

- recovered within bounded retries (the VM's own exit code is 0, every step done), or ended with a
  one-line cause of the expected kind and the VM's expected exit code (``vms[].exit_code`` in the
  audit, the code a run of that VM alone ends with; the run's own code is the most severe of them);
- no green for a step that did not happen: every step the audit calls done is true in azsim
  (deallocated, generalized, the image there), and nothing the audit does not call done happened;
- a re-run of the same command, the faults cleared, finishes the job (exit 0; the VM generalized and
  captured) — or, for a VM deleted mid-run, says in one line that it is gone.

The checks rows and the killed rows run from test_fault_matrix_checks.py (another module, so that
xdist's loadscope can give it the other worker). Each test writes the matrix it ran (fault, phase,
how it was injected, outcome, exit code, re-run) into docs/reliability.md between its markers; the
rest of that page is prose.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes
from tests.e2e.conftest import REPO, Run, harness_command

from .conftest import CRASH, Sim

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root, pytest.mark.slow]

SCENARIO = "tests/scenarios/reliability-faults.yaml"
KILLED_SCENARIO = "tests/scenarios/reliability-killed.yaml"
RG = "rg-faults"
DOC = REPO / "docs" / "reliability.md"
BEGIN, END = "<!-- fault-matrix:begin -->", "<!-- fault-matrix:end -->"
#: the deadline of every Azure operation in the matrix's runs (a generalize delayed 120 s ends here)
LRO_DEADLINE = 8
CAPTURE = "image:{vm}-img"
IMAGE_API = "2024-07-01"
#: cause keywords: what a one-line ending must say, by the kind of cause
CAUSES = {
    "Azure unavailable": r"kept answering 500|InternalServerError",
    "permission": r"permission denied: the signed-in identity lacks",
    "deadline": r"deadline",
    "operation failed in Azure": r"failed in Azure",
    "VM gone": r"not found",
    "guest unreachable": r"needs an SSH or WinRM session|no connection|handshake|TimeoutError",
    "connection dropped": r"connection dropped|reset|closed|connection failed",
    "Azure unreachable": r"cannot reach Azure Resource Manager",
    "failed image left": r"exists in provisioning state Failed",
}


#: the faults issue 14 names: each in the checks phase and in an action step
ISSUE_FAULTS = (
    "latency",
    "429 + Retry-After",
    "5xx burst",
    "LRO failed",
    "LRO never ends",
    "VM deleted mid-run",
    "token expiry",
    "forbidden",
    "SSH dropped mid-command",
    "WinRM dropped mid-command",
    "guest unreachable",
    "simulator killed",
)


@dataclass
class Row:
    vm: str  # the VM's name in the scenario
    fault: str  # the fault as issue 14 names it
    phase: str  # "checks" or the action step it hits
    injected: str  # how azsim injects it, for the reader
    faults: list[dict[str, Any]] = field(default_factory=list)
    #: faults armed before the run whatever the trigger: a latency that holds the run at the step
    #: before, so that the row's own fault is in place when its step begins
    before: list[dict[str, Any]] = field(default_factory=list)
    #: (step, status): arm ``faults`` when the journal shows the VM's step so; "read": when
    #: azsim's request log shows the VM read; None: before the run
    trigger: tuple[str, str] | str | None = None
    #: extra action at the trigger (delete the VM)
    then: str = ""
    expect: str = "recovered"  # or a key of CAUSES
    code: int = exitcodes.GREEN  # the VM's exit code in the run
    rerun: int | None = None  # the VM's exit code when the same command runs again (None: no re-run)
    # filled in by the test
    outcome: str = ""
    seen_code: int | None = None
    seen_rerun: int | None = None

    @property
    def key(self) -> str:
        return f"{RG}/{self.vm}"


def fault(kind: str, **keys: Any) -> dict[str, Any]:
    return {"kind": kind, **keys}


CHECK_ROWS = [
    Row(
        "c-latency",
        "latency",
        "checks",
        "every ARM GET of the VM waits 1 s",
        [fault("latency", seconds=1, method="GET")],
    ),
    Row(
        "c-throttle",
        "429 + Retry-After",
        "checks",
        "2 x 429, Retry-After: 1",
        [fault("throttle", count=2, retry_after=1)],
    ),
    Row("c-5xx-burst", "5xx burst", "checks", "3 x 503", [fault("error", status=503, count=3)]),
    Row(
        "c-5xx-down",
        "5xx, lasting",
        "checks",
        "500 on every request of the VM",
        [fault("error", status=500)],
        expect="Azure unavailable",
        code=exitcodes.INFRASTRUCTURE_ERROR,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "c-forbidden",
        "forbidden",
        "checks",
        "403 on virtualMachines/read",
        [fault("forbidden", action="Microsoft.Compute/virtualMachines/read")],
        expect="permission",
        code=exitcodes.INFRASTRUCTURE_ERROR,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "c-winrm-drop",
        "WinRM dropped mid-command",
        "checks",
        "the facts command's connection reset",
        [fault("guest_drop")],
    ),
    Row(
        "lin-c-ssh-drop",
        "SSH dropped mid-command",
        "checks",
        "the facts command's connection reset (idle 0.3 s)",
        [fault("guest_drop", idle=0.3)],
    ),
    Row(
        "c-unreachable",
        "guest unreachable",
        "checks",
        "connections to the guest go nowhere",
        [fault("guest_unreachable")],
        expect="guest unreachable",
        code=exitcodes.INFRASTRUCTURE_ERROR,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "c-deleted",
        "VM deleted mid-run",
        "checks",
        "deleted once its first read arrived",
        [fault("latency", seconds=0.5, method="GET")],
        trigger="read",
        then="delete",
        expect="VM gone",
        code=exitcodes.RED_CHECKS,
        rerun=exitcodes.RED_CHECKS,
    ),
    Row(
        "c-token",
        "token expiry",
        "checks",
        "every token issued so far expires once the VM is read (CAE challenge)",
        [fault("latency", seconds=0.5, method="GET")],
        trigger="read",
        then="token_expiry",
    ),
]
#: the checks over Run Command (--transport run-command): the only long-running operation a
#: checks phase starts
RUN_COMMAND_ROWS = [
    Row(
        "c-lro-failed",
        "LRO failed",
        "checks",
        "Run Command (the facts) ends Failed",
        [fault("lro_failed", operation="runCommand")],
        expect="operation failed in Azure",
        code=exitcodes.INFRASTRUCTURE_ERROR,
        rerun=exitcodes.INFRASTRUCTURE_ERROR,
    ),
    Row(
        "c-lro-never",
        "LRO never ends",
        "checks",
        f"Run Command stays InProgress (--lro-deadline {LRO_DEADLINE})",
        [fault("lro_never_ends", operation="runCommand")],
        expect="deadline",
        code=exitcodes.INFRASTRUCTURE_ERROR,
        rerun=exitcodes.INFRASTRUCTURE_ERROR,
    ),
]
ACTION_ROWS = [
    Row(
        "a-lock-forbidden",
        "forbidden",
        "lock",
        "403 on virtualMachines/write",
        [fault("forbidden", action="Microsoft.Compute/virtualMachines/write")],
        expect="permission",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "a-lock-5xx",
        "5xx burst",
        "lock",
        "2 x 503 on the tag PATCH",
        [fault("error", status=503, count=2, method="PATCH")],
    ),
    Row(
        "a-lock-429",
        "429 + Retry-After",
        "lock",
        "2 x 429 on the tag PATCH",
        [fault("throttle", count=2, retry_after=1, method="PATCH")],
    ),
    Row(
        "a-guest-winrm-drop",
        "WinRM dropped mid-command",
        "guest",
        "a connection of the sysprep step reset",
        [fault("guest_drop")],
        trigger=("lock", "running"),
        before=[fault("latency", seconds=1, method="PATCH", count=1)],
        expect="connection dropped",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "lin-a-guest-ssh-drop",
        "SSH dropped mid-command",
        "guest",
        "an SSH connection of the guest step reset once idle 0.1 s (it lands on the new-login proof)",
        [fault("guest_drop", idle=0.1)],
        trigger=("lock", "running"),
        before=[fault("latency", seconds=1, method="PATCH", count=1)],
    ),
    Row(
        "a-guest-unreachable",
        "guest unreachable",
        "guest",
        "connections to the guest go nowhere",
        [fault("guest_unreachable")],
        trigger=("lock", "running"),
        before=[fault("latency", seconds=1, method="PATCH", count=1)],
        expect="guest unreachable",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "a-dealloc-failed",
        "LRO failed",
        "deallocate",
        "deallocate ends Failed",
        [fault("lro_failed", operation="deallocate")],
        expect="operation failed in Azure",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "a-dealloc-never",
        "LRO never ends",
        "deallocate",
        f"deallocate stays InProgress (--lro-deadline {LRO_DEADLINE})",
        [fault("lro_never_ends", operation="deallocate")],
        expect="deadline",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "a-dealloc-latency",
        "latency",
        "deallocate",
        "the deallocate request waits 2 s",
        [fault("latency", seconds=2, operation="deallocate")],
    ),
    Row(
        "a-gen-delay",
        "latency",
        "generalize",
        f"generalize (synchronous) answered after 120 s (--lro-deadline {LRO_DEADLINE})",
        [fault("latency", seconds=120, operation="generalize", count=1)],
        expect="deadline",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "a-gen-5xx",
        "5xx burst",
        "generalize",
        "2 x 500 on generalize",
        [fault("error", status=500, count=2, operation="generalize")],
    ),
    Row(
        "a-verify-forbidden",
        "forbidden",
        "generalize / verify",
        "403 on virtualMachines/read once generalize starts (its first read or verify's)",
        [fault("forbidden", action="Microsoft.Compute/virtualMachines/read")],
        trigger=("generalize", "running"),
        before=[fault("latency", seconds=1, operation="generalize", count=1)],
        expect="permission",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "a-capture-failed",
        "LRO failed",
        "capture",
        "the image creation ends Failed (the Failed image stays in Azure)",
        [fault("lro_failed", operation="createImage")],
        expect="failed image left",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.RED_CHECKS,  # the capture pre-flight check: the name is taken
    ),
    Row(
        "a-capture-never",
        "LRO never ends",
        "capture",
        f"the image creation stays InProgress (--lro-deadline {LRO_DEADLINE})",
        [fault("lro_never_ends", operation="createImage")],
        expect="deadline",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "a-deleted",
        "VM deleted mid-run",
        "deallocate",
        "deleted while the deallocate step runs",
        [],
        trigger=("deallocate", "running"),
        then="delete",
        expect="VM gone",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.RED_CHECKS,
    ),
    Row(
        "a-token",
        "token expiry",
        "lock to unlock",
        "every token issued so far expires when its lock starts (CAE challenge)",
        [],
        trigger=("lock", "running"),
        then="token_expiry",
    ),
]
KILLED_ROWS = [
    Row(
        "c-killed",
        "simulator killed",
        "checks",
        "azsim SIGKILLed once the VM was read",
        [],
        trigger="read",
        then="kill",
        expect="Azure unreachable",
        code=exitcodes.INFRASTRUCTURE_ERROR,
        rerun=exitcodes.GREEN,
    ),
    Row(
        "a-killed",
        "simulator killed",
        "deallocate",
        "azsim SIGKILLed while Azure deallocates",
        [],
        trigger=("deallocate", "running"),
        then="kill",
        expect="Azure unreachable",
        code=exitcodes.ACTION_FAILED,
        rerun=exitcodes.GREEN,
    ),
]
ROWS = CHECK_ROWS + RUN_COMMAND_ROWS + ACTION_ROWS + KILLED_ROWS


def scoped(row: Row, spec: dict[str, Any]) -> dict[str, Any]:
    """A row's fault, scoped to its VM (a token expiry is azsim-wide: it has no VM)."""
    return spec if spec["kind"] == "token_expiry" else {**spec, "vm": row.key}


def journal_statuses(report_dir: Path) -> dict[tuple[str, str], set[str]]:
    """(vm, step) -> every status the run's journal shows so far (whole lines only)."""
    seen: dict[tuple[str, str], set[str]] = {}
    for path in sorted((report_dir / "journal").glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("kind") == "step":
                status = (entry.get("record") or {}).get("status")
                seen.setdefault((entry.get("vm"), entry.get("step")), set()).add(status)
    return seen


class Injector:
    """Arms each row's fault when its run gets there, from a thread polling azsim and the journal.

    A row with no trigger is armed before the run; with ``"read"`` its faults are armed before the
    run (a latency, so that the run is still on the VM) and its ``then`` fires once azsim's request
    log shows the VM read; with ``(step, status)`` both wait for the journal to show the step so.
    """

    def __init__(self, sim: Sim, rows: list[Row], report_dir: Path, kill: Callable[[], None]) -> None:
        self.sim, self.report_dir, self.kill = sim, report_dir, kill
        self.since = max((int(r["seq"]) for r in sim.requests()), default=0)
        self.pending = [row for row in rows if row.trigger is not None]
        self.fired: list[str] = []
        for row in rows:
            early = row.faults if row.trigger is None or row.trigger == "read" else []
            for spec in [*row.before, *early]:
                sim.add_fault(**scoped(row, spec))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fault-injector", daemon=True)

    def __enter__(self) -> Injector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _watch(self) -> None:
        while self.pending and not self._stop.wait(0.05):
            try:
                read = {
                    r["path"].rsplit("/", 1)[-1].lower()
                    for r in self.sim.requests(self.since)
                    if r["method"] == "GET" and "/virtualmachines/" in r["path"].lower()
                }
            except OSError:
                read = set()  # azsim killed: only journal triggers are left
            steps = journal_statuses(self.report_dir)
            for row in list(self.pending):
                if row.trigger == "read":
                    due = row.vm.lower() in read
                else:
                    assert isinstance(row.trigger, tuple)
                    step, status = row.trigger
                    due = status in steps.get((row.key, step), set())
                if due:
                    self.pending.remove(row)
                    self._fire(row)

    def _fire(self, row: Row) -> None:
        if row.trigger != "read":
            for spec in row.faults:
                self.sim.add_fault(**scoped(row, spec))
        if row.then == "delete":
            self.sim.delete_vm(row.key)
        elif row.then == "token_expiry":
            self.sim.add_fault(kind="token_expiry")
        elif row.then == "kill":
            self.kill()
        self.fired.append(row.vm)


def run_harness(sim: Sim, args: list[str], report_dir: Path, timeout: float = 600) -> Run:
    started = time.monotonic()
    done = subprocess.run(
        harness_command(*args, report_dir=report_dir),
        cwd=REPO,
        env=sim.env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    print(f"harness {' '.join(args)}: exit {done.returncode} in {time.monotonic() - started:.1f} s")
    return Run(done.returncode, done.stdout, done.stderr, report_dir)


def vm_args(rows: list[Row]) -> list[str]:
    return [arg for row in rows for arg in ("--vm", row.key)]


def steps_of(run: Run, vm: str) -> dict[str, str]:
    (found,) = [v for v in run.audit()["vms"] if v["vm"] == vm]
    return {step["step"]: step["status"] for step in found.get("actions", [])}


def cause_line(run: Run, row: Row) -> str | None:
    """The one line of the run's output that names this VM and a cause of the expected kind."""
    pattern = re.compile(CAUSES[row.expect]) if row.expect in CAUSES else None
    for line in run.output.splitlines():
        if pattern and row.key in line and pattern.search(line):
            return line
    return None


def image_names(sim: Sim, rows: list[Row]) -> set[str]:
    """The images azsim holds of ``rows``' captures."""
    from azure.core.exceptions import ResourceNotFoundError

    from tests.e2e.test_actions_apply import compute

    client, found = compute(sim), set()
    for row in rows:
        try:
            image = client.images.get(RG, f"{row.vm}-img")
        except ResourceNotFoundError:
            continue
        if image.provisioning_state == "Succeeded":  # a failed creation leaves a Failed image
            found.add(str(image.name))
    return found


def judge(row: Row, run: Run, state: dict[str, Any], images: set[str], *, apply: bool) -> None:
    """Fill in what the row saw, and hold the run to 'no green for a step that did not happen'."""
    assert (run.report_dir / "audit.json").exists(), run.output[-6000:]
    (record,) = [v for v in run.audit()["vms"] if v["vm"] == row.key]
    row.seen_code = int(record["exit_code"])
    steps = steps_of(run, row.key)
    done = {step for step, status in steps.items() if status in ("done", "already done")}
    vm = state.get(row.key)
    if apply:
        # every step the audit calls done is true in azsim, and generalize/capture happened only
        # if the audit says so (a VM deleted mid-run is gone either way)
        if vm is not None:
            assert ("deallocate" in done) <= (vm["power_state"] == "deallocated"), (row.vm, steps, vm)
            assert ("generalize" in done) <= (vm["os_state"] == "generalized"), (row.vm, steps, vm)
        assert ("capture" in done) == (f"{row.vm}-img" in images), (row.vm, steps, images)
        if row.expect != "recovered" and row.seen_code != exitcodes.GREEN:
            assert set(steps.values()) & {"failed", "interrupted"}, (row.vm, steps)
    else:
        assert not done, (row.vm, steps)  # checks only: nothing changed
        if vm is not None:
            assert vm["os_state"] == "specialized" and not vm["tags"], (row.vm, vm)
    if row.seen_code == exitcodes.GREEN and (not apply or done >= set(steps) - {"skipped"}):
        row.outcome = "recovered"
    elif (line := cause_line(run, row)) is not None:
        assert len(line) < 2000, line
        row.outcome = f"ended: {row.expect}"
    else:
        row.outcome = "ended without a cause line"


def expected_outcome(row: Row) -> str:
    return "recovered" if row.expect == "recovered" else f"ended: {row.expect}"


def assert_faults_hit(sim: Sim, rows: list[Row]) -> None:
    """Every counted fault a row armed was used up: a row never 'recovers' from a fault that
    did not happen."""
    left = [f for f in sim.admin("GET", "/azsim/faults")["faults"] if f.get("remaining")]
    for row in rows:
        kinds = {spec["kind"] for spec in row.faults}  # not ``before``: it only holds the run
        unused = [f for f in left if f.get("vm") == row.key and f["kind"] in kinds]
        assert not unused, (row.vm, unused)


def assert_rows(rows: list[Row], run: Run) -> None:
    assert not CRASH.search(run.output), run.output[-6000:]
    seen = [(row.vm, row.outcome, row.seen_code) for row in rows]
    wanted = [(row.vm, expected_outcome(row), row.code) for row in rows]
    wrong = {vm for (vm, *got), (_, *want) in zip(seen, wanted, strict=True) if got != want}
    said = [line for line in run.output.splitlines() if any(f"{RG}/{vm}" in line for vm in wrong)]
    assert seen == wanted, "\n".join(said)[-8000:]
    # the run's own code is the most severe of its VMs' codes
    assert run.returncode == exitcodes.most_severe(row.code for row in rows), run.output[-4000:]


def rerun_and_judge(sim: Sim, rows: list[Row], args: list[str], report_dir: Path, *, apply: bool) -> Run:
    """The same command once more, faults cleared, for the rows that name a re-run outcome."""
    again = [row for row in rows if row.rerun is not None]
    sim.clear_faults()
    run = run_harness(sim, [*vm_args(again), *args], report_dir)
    assert not CRASH.search(run.output), run.output[-6000:]
    state, images = sim.status(), image_names(sim, again) if apply else set()
    for row in again:
        (record,) = [v for v in run.audit()["vms"] if v["vm"] == row.key]
        row.seen_rerun = int(record["exit_code"])
        if row.seen_rerun == exitcodes.GREEN and apply:
            assert state[row.key]["os_state"] == "generalized", (row.vm, state[row.key])
            assert f"{row.vm}-img" in images, row.vm
        if row.rerun == exitcodes.RED_CHECKS and row.expect == "VM gone":
            assert row.key not in state and cause_line(run, row), run.output[-4000:]
    assert [(r.vm, r.seen_rerun) for r in again] == [(r.vm, r.rerun) for r in again], run.output[-8000:]
    return run


#: the doc's tables: one per test, each between its own markers
TABLES = {
    "checks": CHECK_ROWS,
    "run-command": RUN_COMMAND_ROWS,
    "actions": ACTION_ROWS,
    "killed": KILLED_ROWS,
}
HEADER = "| fault | phase | injected | outcome | exit code | re-run exit code |\n|---|---|---|---|---|---|\n"


#: exit code -> its name in imageready.exitcodes (and docs/ci/exit-codes.md)
CODE_NAMES = {v: k for k, v in vars(exitcodes).items() if k.isupper() and type(v) is int}


def code_name(code: int | None) -> str:
    return "—" if code is None else f"{code} `{CODE_NAMES[code]}`"


def render(rows: list[Row], *, seen: bool) -> str:
    """A table of ``rows``: what they saw (``seen``) or what they expect; the same text when the
    run held, so the committed page is what a passing run writes."""
    lines = []
    for row in rows:
        outcome = row.outcome if seen else expected_outcome(row)
        code = row.seen_code if seen else row.code
        rerun = row.seen_rerun if seen else row.rerun
        cells = [row.fault, row.phase, row.injected, outcome, code_name(code), code_name(rerun)]
        lines.append("| " + " | ".join(cells) + " |")
    return HEADER + "\n".join(lines) + "\n"


def markers(table: str) -> tuple[str, str]:
    return f"<!-- fault-matrix:{table}:begin -->", f"<!-- fault-matrix:{table}:end -->"


def doc_table(text: str, table: str) -> str:
    begin, end = markers(table)
    assert begin in text and end in text, f"docs/reliability.md lacks the {table} markers"
    return text.split(begin, 1)[1].split(end, 1)[0].strip("\n") + "\n"


def write_table(table: str) -> None:
    """Write the table a run saw into docs/reliability.md (under a lock: xdist workers share it)."""
    import fcntl

    begin, end = markers(table)
    with DOC.open("r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = handle.read()
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        new = f"{head}{begin}\n{render(TABLES[table], seen=True)}{end}{tail}"
        if new != text:
            handle.seek(0)
            handle.write(new)
            handle.truncate()


def test_the_page_shows_the_matrix_as_defined() -> None:
    """docs/reliability.md holds every table as a passing run writes it (each row's expectation),
    at least 22 rows, every fault of issue 14 in the checks phase and in an action step."""
    text = DOC.read_text(encoding="utf-8")
    for table, rows in TABLES.items():
        assert doc_table(text, table) == render(rows, seen=False), f"the {table} table is stale"
    assert len(ROWS) >= 22
    for phase in ("checks", "actions"):
        hit = {row.fault for row in ROWS if (row.phase == "checks") == (phase == "checks")}
        assert set(ISSUE_FAULTS) <= hit, (phase, set(ISSUE_FAULTS) - hit)
    assert len({row.vm for row in ROWS}) == len(ROWS)


def no_kill() -> None:
    raise AssertionError("this row kills nothing")


def test_action_step_faults(sim: Sim, tmp_path: Path) -> None:
    rows, report_dir = ACTION_ROWS, tmp_path / "out"
    args = ["--apply", "--capture-as", CAPTURE, "--lro-deadline", str(LRO_DEADLINE)]
    with Injector(sim, rows, report_dir, no_kill) as injector:
        run = run_harness(sim, [*vm_args(rows), *args], report_dir)
    assert sorted(injector.fired) == sorted(r.vm for r in rows if r.trigger), injector.pending
    assert_faults_hit(sim, rows)
    state, images = sim.status(), image_names(sim, rows)
    for row in rows:
        judge(row, run, state, images, apply=True)
    assert_rows(rows, run)
    # the same command in the same report directory: a half-done VM resumes under its verdict
    rerun_and_judge(sim, rows, args, report_dir, apply=True)
    write_table("actions")

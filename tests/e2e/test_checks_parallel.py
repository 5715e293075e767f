"""Facts and scans of a fleet gathered at once (issue 15), against
tests/scenarios/checks-parallel.yaml: six Windows copies behind 0.2 s of ARM latency, one of which
Azure will not show its OS disk, each taking 1.5 s to scan.

azsim's request log shows when each VM's facts were read: the harness sends all of one VM's
reads with one correlation id, so each id's first and last request bound that VM's gathering.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes

from .conftest import Azsim, harness

SCENARIO = "tests/scenarios/checks-parallel.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

RG = "rg-par"
FLEET = [f"{RG}/win-{i}" for i in range(6)]
BROKEN = f"{RG}/win-4"
SELECTION = "checks/test_target_state.py"


def vm_args() -> list[str]:
    return [arg for vm in FLEET for arg in ("--vm", vm)]


def facts_spans(azsim: Azsim, after_seq: int) -> list[tuple[float, float]]:
    """(start, end) of each VM's facts: requests grouped by correlation id, more than one each."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in azsim.requests():
        if entry.get("kind") == "arm" and int(entry["seq"]) > after_seq:
            groups.setdefault(entry["correlation_id"], []).append(entry)
    return [
        (min(e["time"] - e["duration"] for e in group), max(e["time"] for e in group))
        for group in groups.values()
        if len(group) > 1
    ]


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


@pytest.mark.parametrize(("max_parallel", "at_least", "at_most"), [(2, 2, 2), (16, 4, 6)])
def test_facts_of_a_fleet_are_gathered_at_once_within_the_bound(
    azsim: Azsim, tmp_path: Path, max_parallel: int, at_least: int, at_most: int
) -> None:
    seq = azsim.last_seq()
    run = harness(
        azsim, SELECTION, *vm_args(), f"--max-parallel={max_parallel}", report_dir=tmp_path / "report"
    )
    # win-4's refused disk read is an infrastructure error ("Azure permission"), which wins
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR, run.output[-3000:]
    spans = facts_spans(azsim, seq)
    assert len(spans) == len(FLEET), spans
    assert at_least <= most_at_once(spans) <= at_most, spans


def test_the_audit_reads_the_fleet_s_final_state_at_once(azsim: Azsim, tmp_path: Path) -> None:
    """At the end the audit reads what Azure shows of each VM (one read each, on its own
    correlation id): together, not one ARM round trip per VM after another."""
    seq = azsim.last_seq()
    run = harness(azsim, SELECTION, *vm_args(), "--max-parallel=16", report_dir=tmp_path / "report")
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR, run.output[-3000:]
    groups: dict[str, list[dict[str, Any]]] = {}
    for entry in azsim.requests():
        if entry.get("kind") == "arm" and int(entry["seq"]) > seq:
            groups.setdefault(entry["correlation_id"], []).append(entry)
    finals = [
        (group[0]["time"] - group[0]["duration"], group[0]["time"])
        for group in groups.values()
        if len(group) == 1 and "/virtualMachines/" in group[0]["path"] and group[0]["method"] == "GET"
    ]
    assert len(finals) >= len(FLEET), finals
    assert most_at_once(finals[-len(FLEET) :]) >= 3, finals


def test_one_vm_s_broken_azure_errors_that_vm_only(azsim: Azsim, tmp_path: Path) -> None:
    """Fail closed per VM under concurrency: every case of the VM whose disk Azure refuses errors
    or fails (never passes, as when VMs were read one by one); the five others pass; the run
    ends 12 (a refused read is not a finding on the VM)."""
    run = harness(azsim, SELECTION, *vm_args(), report_dir=tmp_path / "report")
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR, run.output[-3000:]  # "Azure permission"
    outcomes = run.outcomes()
    for vm in FLEET:
        mine = {case: outcome for case, outcome in outcomes.items() if f"[{vm}" in case}
        assert mine, vm
        if vm == BROKEN:
            assert set(mine.values()) == {"error", "failed"}, mine
            verdict = run.verdict(vm)
            assert verdict["status"] == "red", verdict["status"]
            assert "Microsoft.Compute/disks/read" in str(verdict)  # why, in the harness's one line
        else:
            assert set(mine.values()) <= {"passed", "skipped"}, (vm, mine)
            # one module of the policy ran: its cases passed, the gate waits for the rest
            assert run.verdict(vm)["status"] == "incomplete", vm


def test_max_parallel_is_validated(azsim: Azsim, tmp_path: Path) -> None:
    run = harness(azsim, SELECTION, *vm_args(), "--max-parallel=0", report_dir=tmp_path / "report")
    assert run.returncode == exitcodes.USAGE_ERROR
    assert "--max-parallel 0: expected 1 or more" in run.output


def scan_ends(azsim: Azsim) -> dict[str, list[float]]:
    """When each VM's guest finished a sensitive-data scan (the Windows model's script history)."""
    ends = {}
    for vm in FLEET:
        state = azsim.state_dir / "guests" / RG / vm.split("/")[1] / "windows-model.json"
        history = json.loads(state.read_text())["history"]
        ends[vm] = [run["at"] for run in history if run["handler"] == "scan"]
    return ends


def test_the_scans_of_a_fleet_run_together(azsim: Azsim, tmp_path: Path) -> None:
    """Each scan takes 1.5 s on these guests; one after another, the fleet's would end 1.5 s or
    more apart. They start together at the first scan case, so they end within one scan's time."""
    before = scan_ends(azsim)
    run = harness(
        azsim,
        "checks/test_sensitive_data.py",
        *vm_args(),
        "--max-parallel=16",
        report_dir=tmp_path / "report",
    )
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR, run.output[-3000:]  # win-4, as above
    ends = [t for vm, times in scan_ends(azsim).items() for t in times[len(before[vm]) :]]
    assert len(ends) >= len(FLEET) - 1, ends
    assert max(ends) - min(ends) < 1.5, sorted(ends)
    clean = {case: o for case, o in run.outcomes().items() if BROKEN not in case}
    assert clean and set(clean.values()) <= {"passed", "skipped"}, clean

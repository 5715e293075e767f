"""The fault matrix's checks rows (SSH and WinRM, Run Command) and azsim killed mid-run: the rows,
the injection and the page are in test_fault_matrix.py; this module runs apart from it so that
pytest-xdist (--dist loadscope) can run it on the other worker, against its own azsim."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from . import test_fault_matrix as matrix
from .conftest import CRASH, Sim, start_sim

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root, pytest.mark.slow]

SCENARIO = matrix.SCENARIO


def test_checks_phase_faults(sim: Sim, tmp_path: Path) -> None:
    rows, report_dir = matrix.CHECK_ROWS, tmp_path / "out"
    with matrix.Injector(sim, rows, report_dir, matrix.no_kill) as injector:
        run = matrix.run_harness(sim, matrix.vm_args(rows), report_dir)
    assert sorted(injector.fired) == sorted(r.vm for r in rows if r.trigger), injector.pending
    matrix.assert_faults_hit(sim, rows)
    state = sim.status()
    for row in rows:
        matrix.judge(row, run, state, set(), apply=False)
    matrix.assert_rows(rows, run)
    matrix.rerun_and_judge(sim, rows, [], tmp_path / "again", apply=False)
    matrix.write_table("checks")


def test_checks_over_run_command_faults(sim: Sim, tmp_path: Path) -> None:
    rows, report_dir = matrix.RUN_COMMAND_ROWS, tmp_path / "out"
    args = ["--transport", "run-command", "--lro-deadline", str(matrix.LRO_DEADLINE)]
    with matrix.Injector(sim, rows, report_dir, matrix.no_kill):
        run = matrix.run_harness(sim, [*matrix.vm_args(rows), *args], report_dir)
    matrix.assert_faults_hit(sim, rows)
    state = sim.status()
    for row in rows:
        matrix.judge(row, run, state, set(), apply=False)
    matrix.assert_rows(rows, run)
    matrix.rerun_and_judge(sim, rows, args, tmp_path / "again", apply=False)
    matrix.write_table("run-command")


def test_simulator_killed(tmp_path: Path) -> None:
    """azsim SIGKILLed in the checks phase and while it deallocates: one line, then the same
    command against azsim started again finishes the job."""
    state_dir = tmp_path / "azsim"
    holder: dict[str, Sim] = {"sim": start_sim(matrix.KILLED_SCENARIO, state_dir)}
    key = holder["sim"].env["IMAGEREADY_VERDICT_KEY"]

    def kill() -> None:
        os.kill(int((state_dir / "azsim.pid").read_text()), signal.SIGKILL)

    def restart() -> Sim:
        again = start_sim(matrix.KILLED_SCENARIO, state_dir)
        again.env["IMAGEREADY_VERDICT_KEY"] = key  # the pipeline's key stays
        holder["sim"] = again
        return again

    try:
        for row, args in (
            (matrix.KILLED_ROWS[0], []),
            (
                matrix.KILLED_ROWS[1],
                ["--apply", "--capture-as", matrix.CAPTURE, "--lro-deadline", str(matrix.LRO_DEADLINE)],
            ),
        ):
            sim, report_dir = holder["sim"], tmp_path / row.vm
            with matrix.Injector(sim, [row], report_dir, kill):
                run = matrix.run_harness(sim, [*matrix.vm_args([row]), *args], report_dir)
            assert not CRASH.search(run.output), run.output[-6000:]
            assert run.returncode == row.code, run.output[-6000:]
            line = matrix.cause_line(run, row) or ""
            assert line, run.output[-6000:]
            (record,) = [v for v in run.audit()["vms"] if v["vm"] == row.key]
            row.seen_code = int(record["exit_code"])
            row.outcome = f"ended: {row.expect}"
            sim = restart()
            again = matrix.run_harness(sim, [*matrix.vm_args([row]), *args], report_dir)
            (record,) = [v for v in again.audit()["vms"] if v["vm"] == row.key]
            row.seen_rerun = int(record["exit_code"])
            assert row.seen_rerun == row.rerun, again.output[-6000:]
            if args:
                assert sim.status()[row.key]["os_state"] == "generalized"
    finally:
        holder["sim"].cli("down", check=False)
    matrix.write_table("killed")

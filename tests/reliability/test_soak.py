"""The soak: check runs one after another, each with one random transient fault (a latency, 429s
with Retry-After, a 5xx burst, a guest connection reset, every token expired), against one azsim.

The runs happen in one long-lived process (``soak_driver``, ``pytest.main`` in a loop) so that what a
run leaves behind adds up where it can be seen: every run must end without a crash, either green
(recovered) or 12 with every red case an infrastructure error (never a finding, never a pass it
could not prove: a connection reset during the SSH scan is not read again, unlike the facts);
after each run the driver holds no child process and no listening socket; its memory, descriptors
and threads, and azsim's, stay flat.

``make test`` runs a short soak (``IMAGEREADY_SOAK_RUNS``, default 16); the full one is 200 runs:

    IMAGEREADY_SOAK_RUNS=200 .venv/bin/pytest tests/reliability/test_soak.py

The faults are drawn from ``IMAGEREADY_SOAK_SEED`` (default: a fresh seed); the seed is printed and
named in every failure, so a failing soak can be run again as it was.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from azsim.cli import admin_call
from azsim.server import StateDir
from imageready import exitcodes
from tests.e2e.conftest import REPO

from .conftest import CRASH, Sim

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root, pytest.mark.slow]

SCENARIO = "tests/scenarios/reliability-soak.yaml"
VMS = ["rg-soak/win-soak", "rg-soak/lin-soak"]
RUNS = int(os.environ.get("IMAGEREADY_SOAK_RUNS", "16"))
#: runs before memory is measured (imports, caches and connection pools fill up first)
WARMUP = 4
#: how much the driver's resident memory may grow after the warm-up, whatever the number of runs
RSS_GROWTH_KIB = 48 * 1024
GREEN_OUTCOMES = ("passed", "skipped", "not_applicable")


def proc_status(pid: int) -> dict[str, int]:
    """Resident memory (KiB), threads and descriptors of a process."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {
        "rss_kib": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def descendants(pid: int) -> int:
    """How many processes descend from ``pid`` (guest sessions azsim forked, say)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    found, frontier = 0, {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found += len(frontier)
    return found


def assert_infrastructure_only(report_dir: Path, record: dict[str, Any], why: str) -> None:
    """A run that did not recover ended on the environment, never on the VM: every case that is
    not green errored with an infrastructure category, and nothing passed that it could not prove."""
    audit = json.loads((report_dir / "audit.json").read_text(encoding="utf-8"))
    red = [c for v in audit["vms"] for c in v["checks"] if c["outcome"] not in GREEN_OUTCOMES]
    assert red, (record, why)
    for case in red:
        assert case["outcome"] == "error" and case["category"] in exitcodes.INFRA_CATEGORIES, (
            case,
            record,
            why,
        )


def test_check_runs_under_random_transient_faults(sim: Sim, tmp_path: Path) -> None:
    seed = int(os.environ.get("IMAGEREADY_SOAK_SEED") or secrets.randbelow(2**32))
    print(f"soak: {RUNS} runs, seed {seed} (IMAGEREADY_SOAK_SEED={seed} runs it again)")
    azsim_pid = int(admin_call(StateDir(sim.state_dir), "GET", "/azsim/status", None, timeout=30)["pid"])
    azsim_before = proc_status(azsim_pid)
    forked_before = descendants(azsim_pid)
    out = tmp_path / "driver.out"
    with out.open("w") as stdout:
        driver = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.reliability.soak_driver",
                str(sim.state_dir),
                str(tmp_path),
                str(RUNS),
                str(seed),
                *VMS,
            ],
            cwd=REPO,
            env=sim.env,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            timeout=60 + 20 * RUNS,
            check=False,
        )
    output = out.read_text()
    why = f"seed {seed}; the driver's output: {out}\n{output[-4000:]}"
    assert driver.returncode == 0, why
    assert not CRASH.search(output), why
    records: list[dict[str, Any]] = [
        json.loads(line) for line in (tmp_path / "soak.jsonl").read_text().splitlines()
    ]
    assert len(records) == RUNS, why
    for record in records:
        assert record["exit"] in (exitcodes.GREEN, exitcodes.INFRASTRUCTURE_ERROR), (record, why)
        if record["exit"] == exitcodes.INFRASTRUCTURE_ERROR:
            assert_infrastructure_only(tmp_path / f"run-{record['run']:03d}", record, why)
        assert record["children"] == [] and record["listening"] == 0, (record, why)
    settled = records[min(WARMUP, RUNS - 1)]
    last = records[-1]
    assert last["rss_kib"] - settled["rss_kib"] < RSS_GROWTH_KIB, ([r["rss_kib"] for r in records], why)
    assert last["fds"] <= settled["fds"] + 4, ([r["fds"] for r in records], why)
    assert last["threads"] <= settled["threads"] + 2, ([r["threads"] for r in records], why)
    # azsim, which answered every run, kept no more than a bounded amount either
    azsim_after = proc_status(azsim_pid)
    assert azsim_after["fds"] <= azsim_before["fds"] + 16, (azsim_before, azsim_after, why)
    assert azsim_after["threads"] <= azsim_before["threads"] + 8, (azsim_before, azsim_after, why)
    assert descendants(azsim_pid) <= forked_before, why
    kinds = {(r["fault"] or {}).get("kind", "none") for r in records}
    ended = sum(r["exit"] != exitcodes.GREEN for r in records)
    print(
        f"soak: {RUNS} runs, {RUNS - ended} recovered, {ended} ended 12; seed {seed}, "
        f"faults {sorted(kinds)}, "
        f"driver RSS {settled['rss_kib'] // 1024} -> {last['rss_kib'] // 1024} MiB, "
        f"azsim RSS {azsim_before['rss_kib'] // 1024} -> {azsim_after['rss_kib'] // 1024} MiB"
    )
    assert re.search(r"soak: \d+ check runs, seed \d+", output), why

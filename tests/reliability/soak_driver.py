"""The soak's driver: many check runs of the real harness, one after another in this one process
(``pytest.main``, as a CI agent's long-lived worker would not, but as a leak would show), each with
one random transient fault armed in azsim first. After each run it writes one JSON line: the run's
exit code, the fault, and this process's resident memory, open descriptors, threads, child
processes and listening sockets.

    python -m tests.reliability.soak_driver STATE_DIR REPORT_ROOT RUNS SEED VM [VM ...]

The environment is azsim's (its ``env`` file); stdout carries the harness output, the JSON lines
go to REPORT_ROOT/soak.jsonl.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from azsim.cli import admin_call
from azsim.server import StateDir


def transient_fault(rng: random.Random, vm: str) -> dict[str, Any] | None:
    """One bounded, transient fault (or none): the harness must recover from each."""
    kind = rng.choice(["none", "latency", "throttle", "error", "guest_drop", "token_expiry"])
    if kind == "latency":
        return {
            "kind": kind,
            "vm": vm,
            "method": "GET",
            "seconds": rng.choice([0.2, 0.5]),
            "count": rng.randint(1, 3),
        }
    if kind == "throttle":
        return {"kind": kind, "vm": vm, "count": rng.randint(1, 2), "retry_after": 1}
    if kind == "error":
        return {
            "kind": kind,
            "vm": vm,
            "status": rng.choice([500, 502, 503, 504]),
            "count": rng.randint(1, 2),
        }
    if kind == "guest_drop":
        return {"kind": kind, "vm": vm, "count": 1, "idle": 0.3}
    if kind == "token_expiry":
        return {"kind": kind}
    return None


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def children() -> list[int]:
    """Processes whose parent is this one (a leftover guest session, a stuck helper)."""
    me, found = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(entry.name))
    return found


def listening_sockets() -> int:
    """Listening TCP sockets this process holds (a server left behind)."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                count += 1
    return count


def main(argv: list[str]) -> int:
    state_dir, report_root, runs, seed, vms = (
        Path(argv[0]),
        Path(argv[1]),
        int(argv[2]),
        int(argv[3]),
        argv[4:],
    )
    state = StateDir(state_dir)
    rng = random.Random(seed)
    print(f"soak: {runs} check runs, seed {seed}", flush=True)
    with (report_root / "soak.jsonl").open("w", encoding="utf-8") as log:
        for number in range(runs):
            vm = vms[number % len(vms)]
            fault = transient_fault(rng, vm)
            admin_call(state, "DELETE", "/azsim/faults", None, timeout=30)
            if fault is not None:
                admin_call(state, "POST", "/azsim/faults", fault, timeout=30)
            started = time.monotonic()
            code = pytest.main(
                [
                    "--vm",
                    vm,
                    "-p",
                    "no:cacheprovider",
                    f"--report-dir={report_root / f'run-{number:03d}'}",
                    "-q",
                    "-o",
                    "console_output_style=classic",
                ]
            )
            record = {
                "run": number,
                "vm": vm,
                "fault": fault,
                "exit": int(code),
                "seconds": round(time.monotonic() - started, 2),
                "rss_kib": _status_kib("VmRSS"),
                "fds": len(os.listdir("/proc/self/fd")),
                "threads": threading.active_count(),
                "children": children(),
                "listening": listening_sockets(),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"soak run {number}: {json.dumps(record)}", flush=True)
    admin_call(state, "DELETE", "/azsim/faults", None, timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fleet benchmark: the checks phase and the apply phase of the harness against azsim.

For each row it writes a scenario of N clean copies (Linux sandboxes up to ``--linux-max``, the
rest Windows model guests), starts azsim with every ARM request delayed by a latency fault, runs
the harness as an operator would (``python -m pytest --vm ...``) and reads back what it cost: wall
time, the harness's CPU and peak RSS (its process tree, from ``wait4``), azsim's request log (ARM
requests, 429s, and, per VM, the sequential rounds of the facts' reads, grouped by the
correlation id the harness gives each VM's facts) and the guests' own counters. Each figure is
printed with the command that reproduces it.

    .venv/bin/python benchmarks/fleet_bench.py                 # the table of benchmarks/README.md
    .venv/bin/python benchmarks/fleet_bench.py --rows 16@200   # one row
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = ".venv/bin/python benchmarks/fleet_bench.py"
PYTHON = sys.executable
RG = "rg-bench"
#: what `make bench` runs: (VMs, ARM latency in ms, -n workers); trimmed to fit 10 minutes on 2 cores
DEFAULT_ROWS = "1@0,1@50,1@200,16@0,16@50,16@200,16@200n2,64@50,64@200,200@50"
DEFAULT_APPLY = "1,16"
#: one VM's own operation time in the apply rows: sysprep 5 s + deallocate 3 s + capture 4 s
APPLY_SECONDS = 12


@dataclass
class Row:
    vms: int
    latency_ms: int
    workers: int = 0
    phase: str = "checks"
    figures: dict[str, Any] = field(default_factory=dict)
    command: str = ""


def parse_rows(text: str) -> list[Row]:
    rows = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        vms, _, rest = item.partition("@")
        latency, _, workers = rest.partition("n")
        rows.append(Row(int(vms), int(latency or 0), int(workers or 0)))
    return rows


# --- the scenario ---------------------------------------------------------------------------


def scenario(
    vms: int, linux_max: int, latency_ms: int, *, apply: bool, throttling: str
) -> tuple[str, list[str]]:
    """A scenario of ``vms`` clean copies (disk <- snapshot <- golden disk) and their names."""
    linux = min(linux_max, vms // 2) if vms > 1 else 0
    names = [f"lin-{i:03d}" for i in range(linux)] + [f"win-{i:03d}" for i in range(vms - linux)]
    lines = [
        "subscription: {name: azsim-bench}",
        "principal: {display_name: imageready-bench}",
        # operation times of the apply rows: deallocate 3 s, capture 4 s (sysprep 5 s, below)
        "timings: {deallocate: 3, power_off: 1, start: 1, create: 4, settle: 0.5}"
        if apply
        else "timings: {deallocate: 0.2, power_off: 0.2, start: 0.2, create: 0.2, settle: 0.5}",
        *([f"throttling: {throttling}"] if throttling else []),
        f"faults: [{{kind: latency, seconds: {latency_ms / 1000}}}]" if latency_ms else "faults: []",
        "resource_groups:",
        f"  - name: {RG}",
        "    location: westeurope",
        "    disks:",
        "      - {name: lin-golden, os: Linux, size_gb: 30, create_option: FromImage, "
        'image: "Debian:debian-12:12-gen2:latest"}',
        "      - {name: win-golden, os: Windows, size_gb: 127, create_option: FromImage, "
        'image: "MicrosoftWindowsServer:WindowsServer:2022-datacenter-azure-edition:latest"}',
        "    snapshots:",
        "      - {name: snap-lin, os: Linux, size_gb: 30, create_option: Copy, source: disks/lin-golden}",
        "      - {name: snap-win, os: Windows, size_gb: 127, create_option: Copy, source: disks/win-golden}",
        "    galleries:",
        "      - name: galBench",
        "        images: [{name: ws2022, os: Windows, os_state: Generalized}]",
        "    vms:",
    ]
    for name in names:
        if name.startswith("lin"):
            lines += [
                f"      - name: {name}",
                "        os: Linux",
                "        admin_user: azureuser",
                "        os_disk: {size_gb: 30, create_option: Copy, source: snapshots/snap-lin}",
                "        guest:",
                "          client_alive_interval: 120",
                "          files:",
                '            - {path: /etc/sudoers.d/zz-log, mode: "0440", '
                'content: "Defaults logfile=/var/log/sudo.log, !loglinelen\\n"}',
            ]
        else:
            lines += [
                f"      - name: {name}",
                "        os: Windows",
                "        admin_user: imageadmin",
                "        os_disk: {size_gb: 127, create_option: Copy, source: snapshots/snap-win}",
                "        guest:",
                "          roles: [Web-Server]",
            ]
            if apply:
                lines.append("          sysprep: {outcome: succeed, seconds: 5}")
    return "\n".join(lines) + "\n", names


# --- azsim ------------------------------------------------------------------------------------


class Azsim:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env: dict[str, str] = {}

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            [PYTHON, "-m", "azsim", *args, "--state-dir", str(self.state_dir)],
            env=self.env or _clean_env(),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            raise RuntimeError(f"azsim {' '.join(args)}: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def up(self, scenario_file: Path) -> None:
        self.cli("up", "--scenario", str(scenario_file), "--timeout", "600")
        env = _clean_env()
        for line in (self.state_dir / "env").read_text().splitlines():
            if line.startswith("export "):
                key, _, value = line[len("export ") :].partition("=")
                env[key] = shlex.split(value)[0] if value else ""
        self.env = env

    def down(self) -> None:
        try:
            self.cli("down")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"warning: azsim down: {exc}", file=sys.stderr)

    def requests(self) -> list[dict[str, Any]]:
        data = json.loads(self.cli("requests"))
        return list(data.get("requests", data) if isinstance(data, dict) else data)

    def status(self) -> dict[str, Any]:
        data = json.loads(self.cli("status"))
        return {f"{v['resource_group']}/{v['name']}": v for v in data["vms"]}


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IMAGEREADY_", "AZSIM_"))}


# --- measuring one harness run ------------------------------------------------------------------


def run_measured(argv: list[str], env: dict[str, str]) -> tuple[int, float, float, float, str]:
    """(exit code, wall s, CPU s of the process tree, peak RSS MiB of its largest process, output)."""
    with tempfile.TemporaryFile() as out:
        started = time.monotonic()
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    return process.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text


def sequential_rounds(entries: list[dict[str, Any]]) -> int:
    """The longest chain of requests of which each started after the one before it ended."""
    spans = sorted((e["time"] - e["duration"], e["time"]) for e in entries)
    rounds, end = 0, float("-inf")
    for start, stop in spans:
        if start >= end - 0.002:  # a new round starts after the last one ended
            rounds, end = rounds + 1, stop
        else:
            end = min(end, stop)
    return rounds


def guest_trips(sim: Azsim, names: list[str]) -> float:
    """Guest scripts per VM (facts and scan): Windows model guests count their scripts."""
    status = sim.status()
    counts = [
        int(status[f"{RG}/{name}"]["guest"]["summary"]["scripts_run"])
        for name in names
        if name.startswith("win") and "guest" in status.get(f"{RG}/{name}", {})
    ]
    return sum(counts) / len(counts) if counts else float("nan")


def harness_argv(names: list[str], report_dir: Path, workers: int, extra: list[str]) -> list[str]:
    vms = [f"--vm={RG}/{name}" for name in names]
    xdist = ["-n", str(workers)] if workers else []
    return [
        PYTHON,
        "-m",
        "pytest",
        *vms,
        *xdist,
        *extra,
        "-q",
        "-p",
        "no:cacheprovider",
        f"--report-dir={report_dir}",
        "-o",
        "console_output_style=classic",
    ]


def measure_checks(row: Row, args: argparse.Namespace, work: Path) -> None:
    text, names = scenario(row.vms, args.linux_max, row.latency_ms, apply=False, throttling=args.throttling)
    tag = f"{row.vms}vm-{row.latency_ms}ms-n{row.workers}"
    scenario_file = work / f"{tag}.yaml"
    scenario_file.write_text(text)
    sim = Azsim(work / f"azsim-{tag}")
    sim.up(scenario_file)
    try:
        before = max((int(r["seq"]) for r in sim.requests()), default=0)
        trips_before = guest_trips(sim, names)
        argv = harness_argv(names, work / f"report-{tag}", row.workers, ["checks", *args.harness_args])
        code, wall, cpu, rss, output = run_measured(argv, sim.env)
        if code not in (0, 1):
            # measured all the same: the table shows the exit code, so a row that did not run
            # clean is never read as a clean figure
            tail = [line for line in output.splitlines() if line.strip()][-5:]
            print(f"  {tag}: the harness exited {code}: " + " | ".join(tail)[-600:], file=sys.stderr)
        log = [r for r in sim.requests() if int(r["seq"]) > before and r.get("kind") == "arm"]
        by_correlation: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for entry in log:
            by_correlation[entry["correlation_id"]].append(entry)
        facts_groups = [group for group in by_correlation.values() if len(group) > 1]
        rounds = max((sequential_rounds(group) for group in facts_groups), default=0)
        row.figures = {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "cpu_per_vm_s": round(cpu / row.vms, 3),
            "arm_per_vm": round(len(log) / row.vms, 1),
            "rounds_per_vm": rounds,
            "guest_per_vm": round(guest_trips(sim, names) - trips_before, 1),
            "throttled": sum(1 for entry in log if entry["status"] == 429),
            "peak_rss_mib": round(rss),
            "exit": code,
        }
        workers = f"n{row.workers}" if row.workers else ""
        row.command = f"{BENCH} --rows {row.vms}@{row.latency_ms}{workers} --apply-rows ''"
    finally:
        sim.down()


def measure_apply(vms: int, args: argparse.Namespace, work: Path) -> Row:
    """The actions stage alone, behind the checks stage's verdicts, one xdist worker per VM (up
    to 16): sysprep 5 s, deallocate 3 s and a managed image 4 s as azsim's operation times; its
    wall time against the slowest VM's own operation time."""
    row = Row(vms, args.apply_latency_ms, workers=min(vms, 16) if vms > 1 else 0, phase="apply")
    text, names = scenario(vms, 0, row.latency_ms, apply=True, throttling=args.throttling)
    tag = f"apply-{vms}"
    scenario_file = work / f"{tag}.yaml"
    scenario_file.write_text(text)
    sim = Azsim(work / f"azsim-{tag}")
    sim.up(scenario_file)
    # both stages share a verdict key, as a pipeline's stages do (an unsigned verdict is refused)
    env = {**sim.env, "IMAGEREADY_VERDICT_KEY": secrets.token_hex(32)}
    try:
        reports = work / f"report-{tag}"
        # the checks stage checks the capture target too (IR-CAP-*): the verdict covers it
        capture = "--capture-as=image:img-{vm}"
        code, *_, output = run_measured(harness_argv(names, reports, 0, ["checks", capture]), env)
        if code != 0:
            print(output[-3000:], file=sys.stderr)
            raise RuntimeError(f"{tag}: the checks stage exited {code}")
        stage = ["actions", "--apply", f"--verdict={reports / 'verdicts'}", capture]
        code, wall, cpu, rss, output = run_measured(harness_argv(names, reports, row.workers, stage), env)
        if code != 0:
            print(output[-3000:], file=sys.stderr)
            raise RuntimeError(f"{tag}: the actions stage exited {code}")
        own = APPLY_SECONDS
        row.figures = {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "op_s": own,
            "ratio": round(wall / own, 2),
            "peak_rss_mib": round(rss),
        }
        row.command = f"{BENCH} --rows '' --apply-rows {vms}"
    finally:
        sim.down()
    return row


def floor(row: Row, one_vm: Row | None, cores: int) -> float:
    """The latency chain of one VM (its sequential ARM rounds at this latency, plus the time one
    VM waits on its guest and azsim with no ARM latency: the 1-VM 0 ms row's wall minus its CPU)
    plus the harness CPU of this row spread over the machine's cores."""
    waiting = max(0.0, one_vm.figures["wall_s"] - one_vm.figures["cpu_s"]) if one_vm is not None else 0.0
    rounds = row.figures.get("rounds_per_vm", 0)
    return float(rounds * row.latency_ms / 1000 + waiting + row.figures["cpu_s"] / cores)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", default=DEFAULT_ROWS, help=f"checks rows VMS@MS[nWORKERS] (default {DEFAULT_ROWS})"
    )
    parser.add_argument("--apply-rows", default=DEFAULT_APPLY, help="apply rows: fleet sizes (default 1,16)")
    parser.add_argument("--apply-latency-ms", type=int, default=50)
    parser.add_argument("--linux-max", type=int, default=2, help="Linux sandboxes per fleet (default 2)")
    parser.add_argument(
        "--throttling", default="", help="azsim's throttling (default: the scenario's default)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("harness_args", nargs="*", help="extra harness arguments (after --)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    rows = parse_rows(args.rows)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imageready-bench-") as tmp:
        work = Path(tmp)
        for row in rows:
            measure_checks(row, args, work)
            print(f"  {row.vms} VMs @ {row.latency_ms} ms -n {row.workers}: {row.figures}", file=sys.stderr)
        applied = []
        for size in filter(None, (s.strip() for s in args.apply_rows.split(","))):
            applied.append(measure_apply(int(size), args, work))
            print(f"  apply {size}: {applied[-1].figures}", file=sys.stderr)
    zero = next((r for r in rows if r.vms == 1 and r.workers == 0 and r.latency_ms == 0), None)
    print(
        f"\nimageready fleet benchmark: {platform.node()}, {cores} cores, Python "
        f"{platform.python_version()}, azsim throttling {args.throttling or 'azure'}, "
        f"{time.monotonic() - started:.0f} s\n"
    )
    header = (
        "phase",
        "VMs",
        "ARM latency",
        "-n",
        "wall s",
        "harness CPU s (per VM)",
        "ARM req/VM",
        "seq. ARM rounds/VM",
        "guest scripts/VM",
        "429s",
        "peak RSS MiB",
        "floor s",
        "wall/floor",
        "reproduce",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        f = row.figures
        base = floor(row, zero, cores)
        cells = [
            "checks",
            row.vms,
            f"{row.latency_ms} ms",
            row.workers,
            f"{f['wall_s']}" + (f" (exit {f['exit']})" if f["exit"] not in (0, 1) else ""),
            f"{f['cpu_s']} ({f['cpu_per_vm_s']})",
            f["arm_per_vm"],
            f["rounds_per_vm"],
            f["guest_per_vm"],
            f["throttled"],
            f["peak_rss_mib"],
            f"{base:.1f}",
            f"{f['wall_s'] / base:.2f}",
            f"`{row.command}`",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    for row in applied:
        f = row.figures
        cells = [
            "apply",
            row.vms,
            f"{row.latency_ms} ms",
            row.workers,
            f["wall_s"],
            f["cpu_s"],
            "",
            "",
            "",
            "",
            f["peak_rss_mib"],
            f"{f['op_s']} (one VM's operations)",
            f["ratio"],
            f"`{row.command}`",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in [*rows, *applied]], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

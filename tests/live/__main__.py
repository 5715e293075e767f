"""The live suite's command line (docs/live-tests.md).

    python -m tests.live plan                 print what a run would create, and exit (no network)
    python -m tests.live sweep [--all] [--dry-run]
                                              delete resource groups earlier runs of this prefix
                                              left behind (past their expiry; --all: every one)

Both read the same environment as the suite (IMAGEREADY_LIVE=1, IMAGEREADY_LIVE_SUBSCRIPTION,
IMAGEREADY_LIVE_RG_PREFIX, ...). ``plan`` builds no client at all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from tests.live.config import LiveConfigError, from_env
from tests.live.plan import LiveBudgetError, build_plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.live", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("plan", help="print what a run would create, and exit without a request")
    sweeper = commands.add_parser("sweep", help="delete what earlier runs of this prefix left behind")
    sweeper.add_argument("--all", action="store_true", help="every group of this prefix, expired or not")
    sweeper.add_argument("--dry-run", action="store_true", help="list them, delete nothing")
    args = parser.parse_args(argv)
    try:
        config = from_env()
        plan = build_plan(config)
        plan.guard()
    except (LiveConfigError, LiveBudgetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    if args.command == "plan":
        print("dry run, nothing created")
        print(plan.render())
        return 0
    # imported only here: the plan above must never depend on a network-facing module
    from tests.live.arm import LiveArm
    from tests.live.lab import sweep

    arm = LiveArm(os.environ, config.subscription, deadline=lambda: config.max_minutes * 60.0)
    try:
        swept = sweep(
            arm, config.prefix, now=dt.datetime.now(dt.UTC), everything=args.all, dry_run=args.dry_run
        )
    finally:
        arm.close()
    verb = "would delete" if args.dry_run else "deleted"
    for name in swept:
        print(f"{verb} resource group {name}")
    print(f"{len(swept)} leftover resource group(s) of prefix {config.prefix}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

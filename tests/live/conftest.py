"""The live contract suite's fixtures: one configuration, one target (azsim by default, a real
subscription with IMAGEREADY_LIVE=1), one lab per run whose resource group is always deleted.

With IMAGEREADY_LIVE_DRY_RUN=1 the suite prints its plan and ends (exit code 0) before any
fixture that could open a connection: no client is built, no request is sent.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, Azsim, Run, harness_command, start_azsim
from tests.live.config import LiveConfig, LiveConfigError, from_env
from tests.live.plan import LivePlan, build_plan

SCENARIO = REPO / "tests" / "scenarios" / "live.yaml"


def live_config() -> LiveConfig:
    try:
        return from_env(azsim_subscription="00000000-0000-0000-0000-00000000011e")
    except LiveConfigError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session", autouse=True)
def live_plan() -> LivePlan:
    """The run's plan; a dry run prints it and stops here, before anything connects."""
    config = live_config()
    plan = build_plan(config)
    plan.guard()
    if config.dry_run:
        pytest.exit("dry run, nothing created\n" + plan.render(), returncode=0)
    return plan


@dataclass
class Target:
    """Where the suite runs: the environment the harness gets, and azsim when it is the target."""

    env: dict[str, str]
    azsim: Azsim | None = None
    report_root: Path = field(default_factory=Path)

    def harness(self, *args: str, name: str, timeout: float, extra_env: dict[str, str] | None = None) -> Run:
        """imageready as an operator runs it, in a subprocess killed at ``timeout`` seconds (the
        time guard's remainder: a stuck run still leaves time to delete what it made)."""
        import subprocess

        report_dir = self.report_root / name
        done = subprocess.run(
            harness_command(*args, report_dir=report_dir),
            cwd=REPO,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(done.returncode, done.stdout, done.stderr, report_dir)


@pytest.fixture(scope="module")
def target(live_plan: LivePlan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    reports = tmp_path_factory.mktemp("live-reports")
    if live_plan.config.live:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZSIM_")}
        for name in ("IMAGEREADY_SSH_KEY", "IMAGEREADY_WINRM_PASSWORD"):
            if not env.get(name):
                raise pytest.UsageError(f"{name} is required with IMAGEREADY_LIVE=1 (docs/live-tests.md)")
        env["AZURE_SUBSCRIPTION_ID"] = live_plan.config.subscription
        yield Target(env, None, reports)
        return
    sim = start_azsim(SCENARIO, tmp_path_factory.mktemp("azsim-live"))
    try:
        yield Target(dict(sim.env), sim, reports)
    finally:
        sim.cli("down", check=False)


def started_at() -> dt.datetime:
    return dt.datetime.now(dt.UTC)

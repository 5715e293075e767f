"""The live suite's configuration and cost guard, on their own: no network, no azsim."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from tests.live import config as config_module
from tests.live.config import LiveConfigError, from_env
from tests.live.plan import CostGuard, LiveBudgetError, build_plan

SUBSCRIPTION = "3b1f5c8e-0d0a-4c6e-9e7e-5f1d2a3b4c5d"
SUBNET = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-net/providers/Microsoft.Network"
    "/virtualNetworks/vnet-build/subnets/agents"
)
LIVE = {
    "IMAGEREADY_LIVE": "1",
    "IMAGEREADY_LIVE_SUBSCRIPTION": SUBSCRIPTION,
    "IMAGEREADY_LIVE_RG_PREFIX": "irlive",
    "IMAGEREADY_LIVE_SUBNET_ID": SUBNET,
}


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("IMAGEREADY_LIVE_SUBSCRIPTION", "IMAGEREADY_LIVE_SUBSCRIPTION is required with IMAGEREADY_LIVE=1"),
        ("IMAGEREADY_LIVE_RG_PREFIX", "IMAGEREADY_LIVE_RG_PREFIX is required with IMAGEREADY_LIVE=1"),
        ("IMAGEREADY_LIVE_SUBNET_ID", "IMAGEREADY_LIVE_SUBNET_ID is required with IMAGEREADY_LIVE=1"),
    ],
)
def test_a_live_run_needs_its_subscription_prefix_and_subnet(missing: str, message: str) -> None:
    env = {k: v for k, v in LIVE.items() if k != missing}
    with pytest.raises(LiveConfigError, match=message):
        from_env(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMAGEREADY_LIVE_MAX_VMS", "0"),
        ("IMAGEREADY_LIVE_MAX_VMS", "many"),
        ("IMAGEREADY_LIVE_MAX_MINUTES", "5"),
        ("IMAGEREADY_LIVE_RG_PREFIX", "rg live"),
        ("IMAGEREADY_LIVE_LINUX_SIZE", "B1s; rm -rf /"),
    ],
)
def test_a_malformed_setting_is_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(LiveConfigError, match=name):
        from_env({**LIVE, name: value})


def test_without_live_the_suite_targets_azsim() -> None:
    config = from_env({}, azsim_subscription="00000000-0000-0000-0000-00000000011e")
    assert (config.target, config.live, config.prefix) == ("azsim", False, "rg-live")
    assert from_env(LIVE).target == "azure"


def test_the_guard_admits_the_planned_vms_and_refuses_one_more() -> None:
    guard = CostGuard(build_plan(from_env(LIVE)))
    planned = [name for m in guard.plan.machines for name in (m.original, m.copy)]
    assert len(planned) == 4
    for name in planned:
        guard.admit_vm(name)
    with pytest.raises(LiveBudgetError, match="refusing VM extra: the run may create 4"):
        guard.admit_vm("extra")


def test_the_guard_refuses_a_plan_over_the_vm_limit() -> None:
    with pytest.raises(LiveBudgetError, match="the plan makes 4 VMs, more than IMAGEREADY_LIVE_MAX_VMS=3"):
        CostGuard(build_plan(from_env({**LIVE, "IMAGEREADY_LIVE_MAX_VMS": "3"})))


def test_the_guard_stops_the_run_at_its_time_limit() -> None:
    config = from_env({**LIVE, "IMAGEREADY_LIVE_MAX_MINUTES": "30"})
    guard = CostGuard(build_plan(config))
    assert config.expires == config.started + dt.timedelta(minutes=30)
    assert guard.seconds_left(config.started + dt.timedelta(minutes=29)) == pytest.approx(60.0)
    with pytest.raises(LiveBudgetError, match="past the time limit of 30 minutes"):
        guard.seconds_left(config.expires)


def test_every_setting_is_documented_with_its_default() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "live-tests.md").read_text(encoding="utf-8")
    names = [
        v for k, v in vars(config_module).items() if k.isupper() and str(v).startswith("IMAGEREADY_LIVE")
    ]
    assert len(names) == 10
    for name in names:
        assert f"`{name}`" in doc, name
    defaults = from_env(LIVE)
    for default in (defaults.location, defaults.linux_size, defaults.windows_size):
        assert f"`{default}`" in doc, default
    for default in (defaults.max_vms, defaults.max_minutes):
        assert f"| `{default}` |" in doc, default

"""The main job end to end: a clean Linux copy and a clean Windows copy checked and generalized."""

from __future__ import annotations

from pathlib import Path

from imageready import exitcodes

from .conftest import Azsim, harness

SCENARIO = "scenarios/demo.yaml"


def test_demo_fleet_plan_then_apply(azsim: Azsim, tmp_path: Path) -> None:
    vms = ["rg-images/lin-web-copy", "rg-images/win-app-copy"]
    args = [a for vm in vms for a in ("--vm", vm)]
    before, seq = azsim.snapshot(), azsim.last_seq()
    plan = harness(azsim, *args, report_dir=tmp_path / "plan")
    assert plan.returncode == exitcodes.GREEN, plan.output[-3000:]
    assert azsim.snapshot() == before, "a run without --apply changed azsim's state"
    assert azsim.mutations(seq) == [], "a run without --apply sent a mutating request"
    applied = harness(azsim, *args, "--apply", report_dir=tmp_path / "apply")
    assert applied.returncode == exitcodes.GREEN, applied.output[-3000:]
    after = azsim.status()
    for vm in vms:
        assert after[vm]["os_state"] == "generalized"
        assert after[vm]["power_state"] == "deallocated"

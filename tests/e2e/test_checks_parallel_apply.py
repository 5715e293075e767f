"""With --apply in one run, a VM's sensitive-data scan is taken when its own cases come, right
before its actions, not ahead while the VMs before it are generalized (the scan would be that much
older at its own generalize). Against tests/scenarios/checks-parallel.yaml, whose scans take 1.5 s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes

from .conftest import Azsim, harness

SCENARIO = "tests/scenarios/checks-parallel.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root, pytest.mark.slow]

RG = "rg-par"
FIRST, SECOND = f"{RG}/win-0", f"{RG}/win-1"


def history(azsim: Azsim, vm: str) -> list[dict[str, Any]]:
    """The scripts the Windows model answered for ``vm``, each with when it ended."""
    state = azsim.state_dir / "guests" / RG / vm.split("/")[1] / "windows-model.json"
    return list(json.loads(state.read_text())["history"])


def test_with_apply_each_vm_is_scanned_right_before_its_own_actions(azsim: Azsim, tmp_path: Path) -> None:
    run = harness(azsim, "--vm", FIRST, "--vm", SECOND, "--apply", report_dir=tmp_path / "report")
    assert run.returncode == exitcodes.GREEN, run.output[-4000:]
    first_sysprep = min(r["at"] for r in history(azsim, FIRST) if r["handler"].startswith("sysprep"))
    second_scans = [r["at"] for r in history(azsim, SECOND) if r["handler"] == "scan"]
    assert len(second_scans) == 1, second_scans
    assert second_scans[0] > first_sysprep, (second_scans, first_sysprep)

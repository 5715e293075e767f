"""The custom roles in docs/rbac/ are exactly enough: azsim grants the principal only the actions of
the role file, so a missing permission fails here as it would in Azure (403 naming the action)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from imageready import exitcodes

from .conftest import REPO, Azsim, harness, start_azsim

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

VMS = ["--vm", "rg-rbac/lin-copy", "--vm", "rg-rbac/win-copy"]


def _azsim_with_role(role: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    sim = start_azsim(REPO / f"tests/scenarios/rbac-{role}.yaml", tmp_path_factory.mktemp("azsim"))
    try:
        yield sim
    finally:
        sim.cli("down", check=False)


@pytest.fixture(scope="module")
def checks_role(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    yield from _azsim_with_role("checks", tmp_path_factory)


@pytest.fixture(scope="module")
def actions_role(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    yield from _azsim_with_role("actions", tmp_path_factory)


def test_checks_role_is_enough_for_the_checks_stage(checks_role: Azsim, tmp_path: Path) -> None:
    run = harness(checks_role, "checks", *VMS, report_dir=tmp_path)
    assert run.returncode == exitcodes.GREEN, run.output[-3000:]
    assert "AuthorizationFailed" not in run.output


def test_checks_role_reads_the_capture_target(checks_role: Azsim, tmp_path: Path) -> None:
    """A checks stage with --capture-as reads the target (checks/test_capture.py)."""
    run = harness(checks_role, "checks", *VMS, "--capture-as=image:{vm}-rbac", report_dir=tmp_path)
    assert run.returncode == exitcodes.GREEN, run.output[-3000:]
    assert "AuthorizationFailed" not in run.output
    cases = [c for vm in ("rg-rbac/lin-copy", "rg-rbac/win-copy") for c in run.verdict(vm)["checks"]]
    assert any(c["check_id"] == "IR-CAP-004" and c["outcome"] == "passed" for c in cases)


def test_checks_role_cannot_change_anything(checks_role: Azsim, tmp_path: Path) -> None:
    before = checks_role.snapshot()
    run = harness(checks_role, *VMS, "--apply", report_dir=tmp_path)
    assert run.returncode == exitcodes.ACTION_FAILED
    assert "'Microsoft.Compute/virtualMachines/write'" in run.output and "AuthorizationFailed" in run.output
    assert checks_role.snapshot() == before


def test_actions_role_is_enough_to_generalize_and_capture(actions_role: Azsim, tmp_path: Path) -> None:
    run = harness(actions_role, *VMS, "--apply", "--capture-as", "image:{vm}-rbac", report_dir=tmp_path)
    assert run.returncode == exitcodes.GREEN, run.output[-3000:]
    status = actions_role.status()
    assert all(status[vm]["os_state"] == "generalized" for vm in ("rg-rbac/lin-copy", "rg-rbac/win-copy"))

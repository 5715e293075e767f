"""Verdict files carry a green gate from a checks stage to a later actions stage, and only when
they are green, fresh, for the same VM (vmId) and from the same policy."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from imageready import exitcodes

from .conftest import SUB, Project, write_signed

VERDICTS = "reports/out/verdicts"


def checks_stage(project: Project, *vms: str) -> None:
    args = [a for vm in vms for a in ("--vm", f"rg/{vm}")]
    project.run("checks", *args, "--change-ticket", "CHG-1234")


def test_verdict_records_what_the_board_needs(project: Project) -> None:
    checks_stage(project, "good")
    verdict = project.verdict("good")
    assert verdict["green"] is True and verdict["status"] == "green"
    assert verdict["resource_id"] == (
        f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/good"
    )
    assert verdict["vm_id"] == "vmid-good"
    assert verdict["policy_digest"].startswith("sha256:")
    assert verdict["harness_version"]
    assert verdict["operator"]["upn"] == "tester@example.com"
    assert verdict["change_ticket"] == "CHG-1234"
    assert verdict["created_at"].endswith("Z")
    outcomes = {c["case_id"]: c["outcome"] for c in verdict["checks"]}
    assert outcomes == {
        "checks/test_basic.py::test_always[rg/good]": "passed",
        "checks/test_basic.py::test_not_bad[rg/good]": "passed",
        "checks/test_basic.py::test_windows_only[rg/good]": "not_applicable",
        "checks/test_more.py::test_more[rg/good]": "passed",
    }


def test_green_verdict_opens_a_later_actions_stage(project: Project) -> None:
    checks_stage(project, "good")
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    # these checks read nothing the verdict records (no facts), so each runs again: nothing on
    # record proves it unchanged since the checks stage; then the action
    result.assert_outcomes(passed=4)
    assert result.ret == exitcodes.GREEN
    assert project.acted("good")
    result.stdout.fnmatch_lines(["*gate OPEN (via verdict)*", "*verdict*accepted (green*"])


def test_red_verdict_is_refused(project: Project) -> None:
    checks_stage(project, "bad")
    assert project.verdict("bad")["green"] is False
    result = project.run("actions", "--vm", "rg/bad", "--apply", "--verdict", VERDICTS)
    # the red check runs again (nothing on record proves it unchanged) and fails again
    result.assert_outcomes(passed=2, failed=2)
    assert result.ret == exitcodes.RED_CHECKS
    assert not project.acted("bad")
    result.stdout.fnmatch_lines(["*refused: it is not green (checks/test_basic.py::test_not_bad*"])


def test_stale_verdict_is_refused(project: Project) -> None:
    checks_stage(project, "good")
    path = project.root / VERDICTS / "verdict-rg__good.json"
    data = json.loads(path.read_text())
    old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=30)
    data["created_at"] = old.isoformat().replace("+00:00", "Z")
    write_signed(path, data)  # a verdict 30 h old, as its checks stage signed it
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", str(path))
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*refused: stale: created 30.0 h ago, the limit is 24.0 h*"])
    fresh = project.run(
        "actions", "--vm", "rg/good", "--apply", "--verdict", str(path), "--verdict-max-age", "48h"
    )
    fresh.assert_outcomes(passed=4)


def test_verdict_for_a_recreated_vm_is_refused(project: Project) -> None:
    checks_stage(project, "good")
    project.fleet(good={"os": "Linux", "vmId": "vmid-good", "liveVmId": "vmid-new"})
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*made for vmId vmid-good, but rg/good now has vmId vmid-new*"])


def test_verdict_from_another_policy_is_refused(project: Project) -> None:
    checks_stage(project, "good")
    with (project.root / "checks" / "test_more.py").open("a") as f:
        f.write("\n# policy edited after the checks stage\n")
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*policy digest sha256:* differs from this run's sha256:*"])


def test_verdict_for_another_vm_does_not_open_this_one(project: Project) -> None:
    checks_stage(project, "good")
    source = project.root / VERDICTS / "verdict-rg__good.json"
    result = project.run("actions", "--vm", "rg/other", "--apply", "--verdict", str(source))
    assert not project.acted("other")
    result.stdout.fnmatch_lines(["*no verdict for /subscriptions/*/virtualMachines/other in --verdict*"])


def test_tampered_verdict_file_gives_a_clear_reason(project: Project) -> None:
    bad = project.root / "garbage.json"
    bad.write_text("{not json")
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", str(bad))
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*--verdict *garbage.json: not JSON*"])


def test_live_failure_beats_a_green_verdict(project: Project) -> None:
    checks_stage(project, "good")
    project.write(
        "checks/test_more.py",
        """
        import pytest

        @pytest.mark.check(id="T-010", title="t", severity="low", os="any", doc="https://x")
        def test_more(vm):
            assert False, "found something new"
        """,
    )
    # the digest changed too, but even a matching verdict must not outvote a live red check
    result = project.run("--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*test_more[[]rg/good[]]: failed: *found something new*"])


def test_missing_verdict_path_is_a_usage_error(project: Project) -> None:
    result = project.run("actions", "--vm", "rg/good", "--verdict", "nope.json")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --verdict nope.json: no such file or directory"])


def test_two_verdicts_for_one_vm_are_refused(project: Project) -> None:
    """Which of two would win is an accident of file names: an old green copy beside a new red
    verdict must not be the one that opens the gate."""
    checks_stage(project, "good")
    directory = project.root / VERDICTS
    (directory / "verdict-RG__good-old.json").write_text((directory / "verdict-rg__good.json").read_text())
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*two verdicts for /subscriptions/*/good: *; pass the one this stage*"])


def test_a_signed_verdict_needs_the_key_even_when_unsigned_ones_are_trusted(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks_stage(project, "good")
    monkeypatch.delenv("IMAGEREADY_VERDICT_KEY")
    relaxed = ("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS, "--accept-unsigned-verdicts")
    result = project.run(*relaxed)
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*it is signed, but this run has no verdict key to check it with*"])
    # an unsigned one is trusted when told so (a pipeline without a key)
    path = project.root / VERDICTS / "verdict-rg__good.json"
    document = json.loads(path.read_text())
    document.pop("signature")
    path.write_text(json.dumps(document))
    assert project.run(*relaxed).ret == exitcodes.GREEN
    assert project.acted("good")

"""Waivers: a waived failure counts as passed-with-waiver and is named in every report; an
expired waiver is ignored, loudly."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from imageready import exitcodes

from .conftest import Project

FUTURE = (dt.date.today() + dt.timedelta(days=30)).isoformat()
PAST = (dt.date.today() - dt.timedelta(days=1)).isoformat()


def waiver_file(project: Project, expires: str, suffix: str = "yaml", **extra: str) -> str:
    if suffix == "toml":
        lines = [
            "[[waivers]]",
            'check = "T-002"',
            f'parameter = "{extra.get("parameter", "*")}"',
            'vm = "rg/bad"',
            'reason = "known false positive, INC-42"',
            'approver = "jane.doe@example.com"',
            f"expires = {expires}",
        ]
    else:
        lines = [
            "waivers:",
            "  - check: T-002",
            f"    parameter: '{extra.get('parameter', '*')}'",
            "    vm: rg/bad",
            "    reason: known false positive, INC-42",
            "    approver: jane.doe@example.com",
            f"    expires: {expires}",
        ]
    path = project.write(f"waivers.{suffix}", "\n".join(lines) + "\n")
    return str(path)


def test_waived_failure_passes_with_waiver_and_is_named(project: Project) -> None:
    waivers = waiver_file(project, FUTURE)
    result = project.run("--vm", "rg/bad", "--apply", "--waivers", waivers)
    # green for the gate and the exit code, yet never a plain pass: WAIVED in the terminal's
    # line and counts, and a JUnit property on the case
    assert result.parseoutcomes() == {"passed": 3, "skipped": 1, "waived": 1}
    assert result.ret == exitcodes.GREEN
    assert project.acted("bad")
    result.stdout.fnmatch_lines(["*1 waived*"])
    junit = project.root / "reports" / "out" / "junit.xml"
    case = next(c for c in ET.parse(junit).iter("testcase") if c.get("name") == "test_not_bad[rg/bad]")  # noqa: S314
    properties = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert properties["imageready-status"] == "waived"
    assert case.find("failure") is None and case.find("error") is None
    result.stdout.fnmatch_lines(
        ["*waiver applied: checks/test_basic.py::test_not_bad[[]rg/bad[]] by jane.doe@example.com*"]
    )
    verdict = project.verdict("bad")
    assert verdict["green"] is True
    case = next(c for c in verdict["checks"] if c["check_id"] == "T-002")
    assert case["outcome"] == "waived"
    assert case["waiver"]["approver"] == "jane.doe@example.com"
    assert "rg/bad is bad" in case["message"]  # the finding stays on record
    assert verdict["waivers_applied"][0]["reason"] == "known false positive, INC-42"


def test_toml_waivers_work_too(project: Project) -> None:
    result = project.run("--vm", "rg/bad", "--apply", "--waivers", waiver_file(project, FUTURE, "toml"))
    assert project.acted("bad")
    assert result.ret == exitcodes.GREEN


def test_expired_waiver_is_ignored_loudly(project: Project) -> None:
    waivers = waiver_file(project, PAST)
    result = project.run("--vm", "rg/bad", "--apply", "--waivers", waivers)
    assert not project.acted("bad")
    assert result.ret == exitcodes.RED_CHECKS
    result.stdout.fnmatch_lines(["*EXPIRED waiver ignored: T-002 [[]rg/bad *] by jane.doe@example.com*"])


def test_waiver_for_another_parameter_does_not_apply(project: Project) -> None:
    waivers = waiver_file(project, FUTURE, parameter="something-else")
    project.run("--vm", "rg/bad", "--apply", "--waivers", waivers)
    assert not project.acted("bad")


def test_waiver_never_turns_an_error_green(project: Project) -> None:
    project.write(
        "checks/test_basic.py",
        """
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("boom")

        @pytest.mark.check(id="T-002", title="t", severity="low", os="any", doc="https://x")
        def test_not_bad(vm, broken):
            pass
        """,
    )
    project.run("--vm", "rg/bad", "--apply", "--waivers", waiver_file(project, FUTURE))
    assert not project.acted("bad")


def test_bad_waiver_file_is_a_usage_error(project: Project) -> None:
    path = project.write("waivers.yaml", "waivers:\n  - check: T-002\n    reason: x\n")
    result = project.run("--vm", "rg/bad", "--waivers", str(path))
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --waivers *waivers.yaml: waiver 1: 'approver' is required"])

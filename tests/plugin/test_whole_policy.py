"""No wrong green from a partial run (issue 11, holes 1-3): the gate expects the whole policy
whatever the command line selects or overrides, and a verdict opens a later stage only when it
covers that whole set and its derived fields agree with its own cases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes

from .conftest import CHECKS_BASIC, Project, write_signed

VERDICTS = "reports/out/verdicts"
EVERY_FUNCTION_BUT_ONE = (
    "checks/test_basic.py::test_always",
    "checks/test_basic.py::test_windows_only",
    "checks/test_more.py::test_more",
    "actions",
)


def _verdict_path(project: Project, name: str = "good") -> Path:
    return project.root / VERDICTS / f"verdict-rg__{name}.json"


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    write_signed(path, data)  # consistent edits by a key holder: the rules beneath the signature


# --- hole 1: selecting check functions by node id ------------------------------------------------


def test_hole1_node_ids_leaving_out_one_function_keep_the_gate_shut(project: Project) -> None:
    # every module named, one function of one module left out: the red one
    result = project.run(*EVERY_FUNCTION_BUT_ONE, "--vm", "rg/bad", "--apply")
    assert not project.acted("bad")
    assert result.ret == exitcodes.ACTIONS_BLOCKED
    result.stdout.fnmatch_lines(["*test_not_bad[[]rg/bad[]]: deselected (left out by the command line*"])
    verdict = project.verdict("bad")
    assert verdict["green"] is False and verdict["status"] == "incomplete"
    assert "checks/test_basic.py::test_not_bad[rg/bad]" in verdict["expected_cases"]


def test_hole1_node_id_of_one_parametrized_case_keeps_the_gate_shut(project: Project) -> None:
    result = project.run(
        "checks/test_basic.py::test_always[rg/good]", "actions", "--vm", "rg/good", "--apply"
    )
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*test_more[[]rg/good[]]: deselected*"])
    assert project.verdict("good")["status"] == "incomplete"


def test_hole1_a_node_id_that_matches_nothing_is_a_usage_error(project: Project) -> None:
    result = project.run("checks/test_basic.py::test_nothing_like_this", "--vm", "rg/good")
    assert result.ret == exitcodes.USAGE_ERROR
    result.stderr.fnmatch_lines(["*not found: checks/test_basic.py::test_nothing_like_this*"])


@pytest.mark.parametrize(
    "narrowing",
    [["--ignore=checks/test_more.py"], ["--ignore-glob=*test_more*"], ["-m", "not check"]],
    ids=["ignore", "ignore-glob", "marker"],
)
def test_hole1_other_narrowings_keep_the_gate_shut(project: Project, narrowing: list[str]) -> None:
    result = project.run(*narrowing, "--vm", "rg/good", "--apply")
    assert not project.acted("good")
    assert result.ret != exitcodes.GREEN
    assert project.verdict("good")["green"] is False


def test_hole1_a_check_function_pytest_does_not_collect_keeps_the_gate_shut(project: Project) -> None:
    # the project's own ini narrows python_functions: the check named check_* is not collected
    project.pytester.makeini(
        """
        [pytest]
        testpaths = checks actions
        python_functions = test_*
        """
    )
    project.write(
        "checks/test_more.py",
        """
        import pytest

        @pytest.mark.check(id="T-010", title="t", severity="low", os="any", doc="https://x")
        def test_more(vm):
            pass

        @pytest.mark.check(id="T-011", title="named unlike a test", severity="high", os="any", doc="https://x")
        def check_not_collected(vm):
            assert False
        """,
    )
    result = project.run("--vm", "rg/good", "--apply")
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*checks/test_more.py::check_not_collected: a check that produced no case*"])
    assert project.verdict("good")["missing_functions"] == ["checks/test_more.py::check_not_collected"]


def test_hole1_the_full_run_is_still_green(project: Project) -> None:
    # the selection mechanism must not turn a whole run red
    result = project.run("--vm", "rg/good", "--apply")
    assert result.ret == exitcodes.GREEN
    assert project.acted("good")
    assert project.verdict("good")["status"] == "green"


# --- hole 2: ini overrides that shrink the policy -----------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "python_files=test_basic.py",
        "python_functions=test_always",
        "python_classes=Nothing",
        "norecursedirs=checks",
        "imageready_checks_dir=checks/sub",
    ],
)
def test_hole2_ini_overrides_that_narrow_the_policy_are_refused(project: Project, override: str) -> None:
    name = override.split("=")[0]
    for flag in (["-o", override], [f"--override-ini={override}"]):
        result = project.run(*flag, "--vm", "rg/bad", "--apply")
        assert result.ret == exitcodes.USAGE_ERROR, result.stdout.str()
        result.stderr.fnmatch_lines([f"ERROR: -o {name}: a run with --vm may not override*"])
        assert not project.acted("bad")


def test_hole2_another_ini_file_or_rootdir_is_refused(project: Project, tmp_path: Path) -> None:
    # a configuration file of one's own (-c) with narrow python_files, or a rootdir whose
    # checks/ holds one permissive check: either would stand in for the policy
    other = project.root / "narrow.ini"
    other.write_text("[pytest]\ntestpaths = checks actions\npython_files = test_more.py\n")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "checks").mkdir(parents=True)
    (elsewhere / "checks" / "test_ok.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.check(id='X', title='x', severity='low', os='any', doc='https://x')\n"
        "def test_ok(vm):\n    pass\n"
    )
    for args, flag in (
        (["-c", str(other), f"--rootdir={project.root}"], "-c/--config-file"),
        ([f"--rootdir={elsewhere}", str(elsewhere / "checks"), "actions"], "--rootdir"),
    ):
        result = project.run(*args, "--vm", "rg/bad", "--apply")
        assert result.ret == exitcodes.USAGE_ERROR, result.stdout.str()
        assert not project.acted("bad")
        result.stderr.fnmatch_lines([f"ERROR: {flag} cannot be combined with --vm*"])


def test_a_pinned_policy_digest_refuses_another_policy(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = project.run("checks", "--vm", "rg/good")
    digest = project.verdict("good")["policy_digest"]
    assert first.ret == exitcodes.GREEN
    monkeypatch.setenv("IMAGEREADY_POLICY_DIGEST", digest)
    assert project.run("--vm", "rg/good", "--apply").ret == exitcodes.GREEN
    # one check made permissive: the pin no longer matches, nothing runs
    project.write("checks/test_basic.py", CHECKS_BASIC.replace('assert "bad" not in', "assert True or"))
    result = project.run("--vm", "rg/bad", "--apply")
    assert result.ret == exitcodes.USAGE_ERROR
    assert not project.acted("bad")
    result.stderr.fnmatch_lines([f"*not the {digest} this pipeline pins (IMAGEREADY_POLICY_DIGEST)*"])


def test_hole2_overrides_unrelated_to_collection_still_work(project: Project) -> None:
    result = project.run("-o", "console_output_style=classic", "--vm", "rg/good", "--apply")
    assert result.ret == exitcodes.GREEN
    assert project.acted("good")


# --- hole 3: verdicts prove completeness and consistency ----------------------------------------


def test_hole3_verdict_of_a_partial_checks_run_is_refused(project: Project) -> None:
    project.run(*EVERY_FUNCTION_BUT_ONE[:-1], "--vm", "rg/good")
    assert project.verdict("good")["status"] == "incomplete"
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert not project.acted("good")
    assert result.ret == exitcodes.ACTIONS_BLOCKED
    result.stdout.fnmatch_lines(["*refused: it is not green (checks/test_basic.py::test_not_bad*deselected*"])


def test_hole3_flipped_green_and_status_are_refused(project: Project) -> None:
    project.run("checks", "--vm", "rg/bad")
    path = _verdict_path(project, "bad")

    def flip(data: dict[str, Any]) -> None:
        data["green"], data["status"], data["blockers"] = True, "green", []

    _edit(path, flip)
    result = project.run("actions", "--vm", "rg/bad", "--apply", "--verdict", str(path))
    assert not project.acted("bad")
    result.stdout.fnmatch_lines(
        [
            "*refused: its derived fields disagree with its cases: "
            "it says status 'green', green True, but*'red'*"
        ]
    )


def test_hole3_a_case_removed_from_the_verdict_is_refused(project: Project) -> None:
    # consistent in itself (the failed case and its expected entry removed, digest recomputed):
    # the actions stage compares with the set the policy expects of the VM now
    from imageready.gate import expected_digest, gate_blockers

    project.run("checks", "--vm", "rg/bad")
    path = _verdict_path(project, "bad")
    failed = "checks/test_basic.py::test_not_bad[rg/bad]"

    def drop(data: dict[str, Any]) -> None:
        data["checks"] = [c for c in data["checks"] if c["case_id"] != failed]
        data["expected_cases"] = [c for c in data["expected_cases"] if c != failed]
        data["expected_digest"] = expected_digest(data["expected_cases"])
        data["green"], data["status"], data["blockers"] = True, "green", gate_blockers([])

    _edit(path, drop)
    result = project.run("actions", "--vm", "rg/bad", "--apply", "--verdict", str(path))
    assert not project.acted("bad")
    result.stdout.fnmatch_lines(
        [
            "*refused: it does not cover the checks this run expects"
            "*checks/test_basic.py::test_not_bad[[]rg/bad[]]*"
        ]
    )


def test_hole3_cases_not_matching_the_expected_set_are_refused(project: Project) -> None:
    project.run("checks", "--vm", "rg/good")
    path = _verdict_path(project)
    _edit(path, lambda data: data["expected_cases"].append("checks/test_basic.py::test_extra[rg/good]"))
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", str(path))
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*refused: its derived fields disagree with its cases: its cases are not*"])


def test_hole3_verdict_of_another_harness_version_is_refused(project: Project) -> None:
    project.run("checks", "--vm", "rg/good")
    path = _verdict_path(project)
    _edit(path, lambda data: data.update(harness_version="0.0.1"))
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", str(path))
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*refused: it was made by imageready 0.0.1, this is *"])


def test_hole3_created_at_without_utc_offset_is_one_line(project: Project) -> None:
    project.run("checks", "--vm", "rg/good")
    path = _verdict_path(project)
    _edit(path, lambda data: data.update(created_at="2026-12-07T10:00:00"))
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", str(path))
    assert not project.acted("good")
    assert result.ret == exitcodes.ACTIONS_BLOCKED
    result.stdout.fnmatch_lines(["*refused: created_at 2026-12-07T10:00:00 has no UTC offset*"])


def test_hole3_actions_stage_that_cannot_collect_the_policy_refuses_the_verdict(project: Project) -> None:
    project.run("checks", "--vm", "rg/good")
    result = project.run(
        "actions", "--ignore=checks/test_more.py", "--vm", "rg/good", "--apply", "--verdict", VERDICTS
    )
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*cannot be compared: this run did not collect the whole policy*"])


def test_hole3_actions_stage_writes_no_verdict_over_the_checks_stage(project: Project) -> None:
    project.run("checks", "--vm", "rg/good")
    before = _verdict_path(project).read_text()
    result = project.run("actions", "--vm", "rg/good", "--apply", "--verdict", VERDICTS)
    assert result.ret == exitcodes.GREEN
    assert _verdict_path(project).read_text() == before

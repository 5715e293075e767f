"""The gate, fail closed, proven with pytester: every outcome that must keep a VM's actions from
running does, the blocked action fails naming the cause, and nothing else is affected."""

from __future__ import annotations

import pytest

from imageready import exitcodes

from .conftest import Project


def test_all_green_runs_the_actions(project: Project) -> None:
    result = project.run("--vm", "rg/good", "--apply")
    result.assert_outcomes(passed=4, skipped=1)  # T-003 is Windows-only: not applicable
    assert result.ret == exitcodes.GREEN
    assert project.acted("good")
    result.stdout.fnmatch_lines(["*rg/good: checks green; gate OPEN (via checks)*"])


def test_not_applicable_skip_keeps_the_gate_green(project: Project) -> None:
    result = project.run("--vm", "rg/good", "--apply", "-rs")
    result.stdout.fnmatch_lines(["*not applicable: Windows-only check, rg/good runs Linux*"])
    assert project.verdict("good")["green"] is True
    outcomes = {c["check_id"]: c["outcome"] for c in project.verdict("good")["checks"]}
    assert outcomes["T-003"] == "not_applicable"


def test_failed_check_blocks_and_names_it(project: Project) -> None:
    result = project.run("--vm", "rg/bad", "--apply")
    result.assert_outcomes(passed=2, failed=2, skipped=1)
    assert result.ret == exitcodes.RED_CHECKS
    assert not project.acted("bad")
    assert not project.fixture_ran("bad"), "a blocked action's fixtures must not run"
    result.stdout.fnmatch_lines(
        [
            "*BLOCKED by the gate of rg/bad: step 'touch' did not run.*",
            "*checks/test_basic.py::test_not_bad[[]rg/bad[]]: failed: *rg/bad is bad*",
        ]
    )


def test_errored_check_blocks(project: Project) -> None:
    project.write(
        "checks/test_more.py",
        """
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("cannot reach the guest")

        @pytest.mark.check(id="T-010", title="t", severity="low", os="any", doc="https://x")
        def test_more(vm, broken):
            pass
        """,
    )
    result = project.run("--vm", "rg/good", "--apply")
    result.assert_outcomes(passed=2, errors=1, failed=1, skipped=1)
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*test_more[[]rg/good[]]: errored: *cannot reach the guest*"])


def test_infrastructure_error_has_its_own_exit_code(project: Project) -> None:
    project.write(
        "checks/test_more.py",
        """
        import pytest
        from imageready.facts import FactsUnavailable

        @pytest.mark.check(id="T-010", title="t", severity="low", os="any", doc="https://x")
        def test_more(vm):
            raise FactsUnavailable("guest 127.0.0.1:22 refused the connection", "guest unreachable")
        """,
    )
    result = project.run("--vm", "rg/good")
    assert result.ret == exitcodes.INFRASTRUCTURE_ERROR


@pytest.mark.parametrize(
    ("decorator", "word"),
    [
        ('@pytest.mark.xfail(reason="known")', "marked xfail"),
        ('@pytest.mark.skip(reason="later")', "skipped"),
        ('@pytest.mark.skipif(True, reason="not today")', "skipped"),
    ],
    ids=["xfail", "skip", "skipif"],
)
def test_xfail_and_other_skips_block(project: Project, decorator: str, word: str) -> None:
    project.write(
        "checks/test_more.py",
        f"""
        import pytest

        {decorator}
        @pytest.mark.check(id="T-010", title="t", severity="low", os="any", doc="https://x")
        def test_more(vm):
            assert False
        """,
    )
    result = project.run("--vm", "rg/good", "--apply")
    assert not project.acted("good")
    result.stdout.fnmatch_lines([f"*test_more[[]rg/good[]]: {word}*"])
    assert result.ret == exitcodes.RED_CHECKS


def test_a_skip_inside_a_check_blocks_even_if_it_claims_not_applicable(project: Project) -> None:
    project.write(
        "checks/test_more.py",
        """
        import pytest

        @pytest.mark.check(id="T-010", title="t", severity="low", os="any", doc="https://x")
        def test_more(vm):
            pytest.skip("not applicable: trust me")
        """,
    )
    result = project.run("--vm", "rg/good", "--apply")
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*test_more[[]rg/good[]]: skipped*"])


def test_deselected_with_k_blocks(project: Project) -> None:
    result = project.run("--vm", "rg/good", "--apply", "-k", "not test_always")
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*test_always[[]rg/good[]]: deselected (left out by the command line*"])
    assert result.ret == exitcodes.ACTIONS_BLOCKED


def test_deselect_option_blocks(project: Project) -> None:
    result = project.run(
        "--vm", "rg/good", "--apply", "--deselect", "checks/test_more.py::test_more[rg/good]"
    )
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*test_more[[]rg/good[]]: deselected*"])


def test_subset_of_check_files_blocks(project: Project) -> None:
    result = project.run("checks/test_basic.py", "actions", "--vm", "rg/good", "--apply")
    assert not project.acted("good")
    # the whole policy is collected anyway; what the command line left out is deselected
    result.stdout.fnmatch_lines(["*checks/test_more.py::test_more[[]rg/good[]]: deselected*"])


def test_actions_alone_without_a_verdict_are_blocked(project: Project) -> None:
    result = project.run("actions", "--vm", "rg/good", "--apply")
    result.assert_outcomes(failed=1)
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*no check of rg/good ran in this run*--verdict*"])
    assert result.ret == exitcodes.ACTIONS_BLOCKED


def test_exitfirst_leaves_later_checks_unrun_and_the_gate_shut(project: Project) -> None:
    result = project.run("--vm", "rg/bad", "--vm", "rg/good", "--apply", "-x")
    assert not project.acted("good") and not project.acted("bad")
    assert result.ret == exitcodes.RED_CHECKS


def test_without_apply_actions_only_plan(project: Project) -> None:
    result = project.run("--vm", "rg/good", "-rs")
    result.assert_outcomes(passed=3, skipped=2)
    assert result.ret == exitcodes.GREEN
    assert not project.acted("good")
    result.stdout.fnmatch_lines(["*PLAN only (no --apply)*"])
    result.stdout.fnmatch_lines(["*plan: would touch*"])


def test_one_red_vm_never_blocks_another(project: Project) -> None:
    result = project.run("--vm", "rg/bad", "--vm", "rg/good", "--apply")
    assert project.acted("good")
    assert not project.acted("bad")
    result.stdout.fnmatch_lines(["*rg/bad: checks red; gate SHUT*", "*rg/good: checks green; gate OPEN*"])


def test_each_vm_runs_its_checks_then_its_actions(project: Project) -> None:
    result = project.run("--vm", "rg/good", "--vm", "rg/bad", "--co", "-q")
    ids = [line for line in result.outlines if "::" in line]
    bad = [i for i in ids if "rg/bad" in i]
    good = [i for i in ids if "rg/good" in i]
    assert ids == bad + good  # sorted by VM id
    for group in (bad, good):
        kinds = ["actions/" in i for i in group]
        assert kinds == sorted(kinds), "a VM's actions come after all its checks"


def test_case_ids_are_stable_vm_keys(project: Project) -> None:
    result = project.run("--vm", "rg/good", "--co", "-q")
    result.stdout.fnmatch_lines(
        [
            "checks/test_basic.py::test_always[[]rg/good[]]",
            "actions/test_act.py::test_act[[]rg/good[]]",
        ]
    )


def test_an_incomplete_checks_run_never_exits_green(project: Project) -> None:
    # every case that ran passed, but a policy module was left out: the verdict is not green
    result = project.run("checks/test_basic.py", "--vm", "rg/good")
    result.assert_outcomes(passed=2, skipped=1)
    assert result.ret == exitcodes.RED_CHECKS
    assert project.verdict("good")["status"] == "incomplete"

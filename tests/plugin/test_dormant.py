"""Installed next to an unrelated project, the plugin changes nothing in its sessions: it is
dormant unless the run targets VMs (--vm) or the ini names a policy directory."""

from __future__ import annotations

import re

import pytest

from .conftest import Project

UNRELATED_CONFTEST = """
import pytest

@pytest.fixture
def run():
    return "the project's own run"

@pytest.fixture
def facts():
    return {"answer": 42}
"""

UNRELATED_CHECKS = """
import signal

import pytest


def test_uses_its_own_fixtures(run, facts):
    assert run == "the project's own run" and facts["answer"] == 42


def test_sigterm_is_left_alone():
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_allure_capture_left_as_set(request):
    assert request.config.getoption("attach_capture") is True


def test_an_undefined_fixture_errors(lease):
    pass


def test_plain_failure():
    assert 1 == 2


@pytest.mark.parametrize("n", [1, 2])
def test_parametrized(n):
    assert n
"""


def _outcome_lines(result: pytest.RunResult) -> list[str]:
    """The per-test result lines (-rA), without durations."""
    lines = [re.sub(r" in [0-9.]+s", "", line) for line in result.outlines]
    return sorted(line for line in lines if re.match(r"^(PASSED|FAILED|ERROR|SKIPPED) ", line))


def test_an_unrelated_project_runs_exactly_as_without_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -rA -p no:cacheprovider\n")
    pytester.makeconftest(UNRELATED_CONFTEST)
    pytester.mkdir("checks")
    (pytester.path / "checks" / "test_things.py").write_text(UNRELATED_CHECKS)
    alluredir = str(pytester.path / "allure")
    with_plugin = pytester.runpytest_subprocess("--alluredir", alluredir)
    without = pytester.runpytest_subprocess("--alluredir", alluredir, "-p", "no:imageready")
    assert with_plugin.ret == without.ret == pytest.ExitCode.TESTS_FAILED
    assert (
        with_plugin.parseoutcomes()
        == without.parseoutcomes()
        == {
            "passed": 5,
            "failed": 1,
            "errors": 1,
        }
    )
    assert _outcome_lines(with_plugin) == _outcome_lines(without)
    assert "fixture 'lease' not found" in with_plugin.stdout.str()
    # no imageready fixture, marker or summary section appears in the session
    fixtures = pytester.runpytest_subprocess("--fixtures")
    assert "guest_facts" not in fixtures.stdout.str() and "vm_actions" not in fixtures.stdout.str()
    markers = pytester.runpytest_subprocess("--markers")
    assert "imageready pre-flight check" not in markers.stdout.str()
    assert "imageready gate" not in with_plugin.stdout.str()


def test_the_ini_key_or_vm_wakes_it(pytester: pytest.Pytester) -> None:
    """The same project, marked as a policy directory: imageready is active (its markers exist)."""
    pytester.makeini("[pytest]\nimageready_checks_dir = checks\n")
    markers = pytester.runpytest_subprocess("--markers")
    assert "imageready pre-flight check" in markers.stdout.str()


@pytest.mark.parametrize(
    "name",
    ["imageready-gatekeeper", "imageready-sorter", "imageready.recording", "imageready.allure_support"],
)
def test_no_part_of_the_gate_can_be_switched_off(project: Project, name: str) -> None:
    """-p no:NAME blocks a plugin by name and pluggy then skips it without a word: the gate, the
    record or the redaction would be gone, and an action would run behind a red check."""
    result = project.run("--vm", "rg/bad", "--apply", "-p", f"no:{name}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert not project.acted("bad")
    result.stderr.fnmatch_lines([f"*-p no:{name}: *cannot be switched off*"])

"""What an engineer finds in Allure after an imageready run: labels from each check's metadata,
the VM readable, blocked actions as complete results, redacted output, the run's environment,
and results written where CI expects them."""

from __future__ import annotations

import datetime as dt
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from imageready import allure_support, exitcodes

from .conftest import ReportProject, labels, run_node

SECRET = "Tr0ub4dor-and-3"


def test_each_case_carries_its_check_metadata_and_the_vm(report_project: ReportProject) -> None:
    report_project.fleet(**{"web-01": {"os": "Linux"}, "leaky-01": {"os": "Linux"}})
    result = report_project.run("--vm", "rg/web-01", "--vm", "rg/leaky-01", "--apply")
    assert result.ret == exitcodes.RED_CHECKS

    sensitive = report_project.result("test_sensitive_data[rg/leaky-01]")
    assert sensitive["status"] == "failed"
    assert labels(sensitive, "epic") == ["imageready"]
    assert labels(sensitive, "feature") == ["pre-flight checks"]
    assert labels(sensitive, "story") == ["No sensitive data on the OS disk"]
    assert labels(sensitive, "severity") == ["blocker"]  # critical -> blocker
    assert labels(sensitive, "tag") == ["RPT-010"]
    assert labels(sensitive, "vm") == ["rg/leaky-01"]
    assert sensitive["parameters"] == [{"name": "vm", "value": "rg/leaky-01"}]
    assert sensitive["links"][0]["url"].startswith("https://learn.microsoft.com/")

    provisioned = report_project.result("test_provisioned[rg/web-01]")
    assert labels(provisioned, "severity") == ["critical"]  # high -> critical
    evidence = [a for a in provisioned["attachments"] if a["name"].startswith("evidence:")]
    assert len(evidence) == 1

    done = report_project.result("test_generalize[rg/web-01]")
    assert done["status"] == "passed"
    assert labels(done, "feature") == ["actions"]
    assert labels(done, "story") == ["generalize"]
    assert [s["name"] for s in done["steps"]] == ["deallocate rg/web-01", "generalize rg/web-01"]
    assert done["steps"][0]["attachments"][0]["name"] == "deallocate log"


def test_a_blocked_action_is_a_complete_result(report_project: ReportProject) -> None:
    """The gate reports a blocked action without allure-pytest's setup and teardown hooks; the
    result still has its name, suites, history id and labels, and says why it was blocked."""
    report_project.fleet(**{"leaky-01": {"os": "Linux"}})
    report_project.run("--vm", "rg/leaky-01", "--apply")
    blocked = report_project.result("test_generalize[rg/leaky-01]")
    assert blocked["status"] == "failed"
    assert blocked["statusDetails"]["message"].startswith("Failed: BLOCKED by the gate of rg/leaky-01")
    assert blocked["fullName"] == "actions.test_generalize#test_generalize"
    assert blocked["historyId"] and blocked["testCaseId"]
    assert labels(blocked, "suite") == ["test_generalize"]
    assert labels(blocked, "parentSuite") == ["actions"]
    assert labels(blocked, "vm") == ["rg/leaky-01"]
    assert labels(blocked, "severity") == ["critical"]
    assert blocked["parameters"] == [{"name": "vm", "value": "rg/leaky-01"}]


def test_a_waived_failure_is_passed_and_says_who_waived_it(report_project: ReportProject) -> None:
    """The gate turns a waived failure into a pass after allure-pytest saw it fail: the Allure
    result must agree with pytest and the verdict, and keep the finding and the waiver."""
    expires = (dt.date.today() + dt.timedelta(days=10)).isoformat()
    waivers = report_project.write(
        "waivers.yaml",
        "waivers:\n  - {check: RPT-010, vm: rg/leaky-01, reason: INC-7 key is a decoy, "
        f"approver: cab@example.com, expires: {expires}}}\n",
    )
    report_project.fleet(**{"leaky-01": {"os": "Linux"}})
    result = report_project.run("--vm", "rg/leaky-01", "--waivers", str(waivers))
    assert result.ret == exitcodes.GREEN
    waived = report_project.result("test_sensitive_data[rg/leaky-01]")
    assert waived["status"] == "passed"
    message = waived["statusDetails"]["message"]
    assert message.startswith("WAIVED RPT-010 [rg/leaky-01 *] by cab@example.com until")
    assert "1 private key found" in message
    assert "waived" in labels(waived, "tag")
    (attachment,) = [a for a in waived["attachments"] if a["name"] == "waivers"]
    record = json.loads((report_project.report_dir / "allure-results" / attachment["source"]).read_text())
    assert record[0]["approver"] == "cab@example.com"


def test_results_and_junit_go_to_the_report_dir_replacing_the_last_run(report_project: ReportProject) -> None:
    report_project.fleet(**{"web-01": {"os": "Linux"}})
    stale = report_project.report_dir / "allure-results" / "stale-result.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    result = report_project.run("--vm", "rg/web-01")
    assert result.ret == exitcodes.GREEN
    assert not stale.exists(), "results of an earlier run must not reach this run's report"
    assert len(report_project.results()) == 4
    junit = ET.parse(report_project.report_dir / "junit.xml").getroot()  # noqa: S314 (pytest wrote it)
    cases = {case.get("name") for case in junit.iter("testcase")}
    assert "test_sensitive_data[rg/web-01]" in cases and "test_generalize[rg/web-01]" in cases


def test_explicit_paths_win(report_project: ReportProject, tmp_path: Path) -> None:
    report_project.fleet(**{"web-01": {"os": "Linux"}})
    results, junit = tmp_path / "elsewhere", tmp_path / "ci.xml"
    report_project.run("--vm", "rg/web-01", f"--alluredir={results}", f"--junitxml={junit}")
    assert len(report_project.results(results)) == 4
    assert junit.exists()
    assert not (report_project.report_dir / "allure-results").exists()
    assert not (report_project.report_dir / "junit.xml").exists()


def test_a_run_without_vm_gets_no_default_paths(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert not (pytester.path / "reports").exists()


def test_captured_output_and_steps_are_redacted(
    report_project: ReportProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEREADY_WINRM_PASSWORD", SECRET)
    report_project.write(
        "checks/test_chatty.py",
        f"""
        import logging
        import sys

        import pytest

        from imageready.allure_support import step


        @pytest.mark.check(id="RPT-030", title="Chatty", severity="low", os="any", doc="https://x")
        def test_chatty(vm):
            print("connecting with password {SECRET}")
            sys.stderr.write("winrm password={SECRET}\\n")
            logging.getLogger("imageready").warning("auth {SECRET}")
            with step("log in with {SECRET}"):
                pass
            assert False, "login failed for {SECRET}"
        """,
    )
    report_project.fleet(**{"web-01": {"os": "Linux"}})
    report_project.run("--vm", "rg/web-01")
    chatty = report_project.result("test_chatty[rg/web-01]")
    names = sorted(a["name"] for a in chatty["attachments"])
    assert names == ["log", "stderr", "stdout"], "allure-pytest's raw attachments must be off"
    stdout = next(a for a in chatty["attachments"] if a["name"] == "stdout")
    text = (report_project.report_dir / "allure-results" / stdout["source"]).read_text()
    assert "connecting with password ***" in text
    assert chatty["steps"][0]["name"] == "log in with ***"
    assert chatty["statusDetails"]["message"].startswith("AssertionError: login failed for ***")
    for path in (report_project.report_dir / "allure-results").iterdir():
        assert SECRET not in path.read_text(), f"{path.name} holds the secret"


def test_environment_properties_and_categories_once_per_run(
    report_project: ReportProject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGEREADY_SSH_PASSWORD", SECRET)
    report_project.fleet(**{"web-01": {"os": "Linux"}, "web-02": {"os": "Linux"}})
    report_project.run("--vm", "rg/web-01", "--vm", "rg/web-02", "--change-ticket", f"CHG-7 {SECRET}")
    results = report_project.report_dir / "allure-results"
    env = parse_properties((results / "environment.properties").read_text())
    assert env["vm"] == "rg/web-01, rg/web-02"
    assert env["subscription"] == "00000000-0000-0000-0000-0000000000aa"
    assert env["change.ticket"] == "CHG-7 ***"
    assert env["operator"].startswith("tester@example.com (")
    assert env["policy.digest"].startswith("sha256:")
    assert env["harness.version"] and env["mode"] == "plan (no --apply)"
    assert json.loads((results / "categories.json").read_text()) == allure_support.CATEGORIES


@pytest.mark.parametrize("explicit_dir", [False, True], ids=["default-dir", "alluredir"])
def test_under_xdist_only_the_controller_cleans_and_writes_run_files(
    report_project: ReportProject, explicit_dir: bool
) -> None:
    """Each xdist worker configures allure-pytest again; one that cleaned the results directory
    would delete what the others wrote (xdist starts a replacement for a crashed worker late)."""
    seen = report_project.root / "clean-seen"
    conftest = report_project.root / "conftest.py"
    conftest.write_text(
        conftest.read_text()
        + f"""

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    role = config.workerinput["workerid"] if hasattr(config, "workerinput") else "controller"
    with open({str(seen)!r}, "a") as out:
        out.write(f"{{role}} {{config.option.clean_alluredir}}\\n")
"""
    )
    report_project.fleet(**{name: {"os": "Linux"} for name in ("web-01", "web-02", "web-03")})
    stale = report_project.report_dir / "allure-results" / "stale-result.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    args = ["-n", "2"]
    if explicit_dir:
        args += [f"--alluredir={stale.parent}", "--clean-alluredir"]
    for name in ("web-01", "web-02", "web-03"):
        args += ["--vm", f"rg/{name}"]
    result = report_project.run(*args, subprocess=True)
    assert result.ret == exitcodes.GREEN
    assert sorted(seen.read_text().splitlines()) == ["controller True", "gw0 False", "gw1 False"]
    assert not stale.exists()
    assert len(report_project.results()) == 12
    results = report_project.report_dir / "allure-results"
    env = parse_properties((results / "environment.properties").read_text())
    assert env["vm"] == "rg/web-01, rg/web-02, rg/web-03"
    assert (results / "categories.json").exists()
    assert (report_project.report_dir / "junit.xml").exists()


@pytest.mark.parametrize(
    "values",
    [
        {"plain": "value", "vm": "rg/web-01, rg/web-02"},
        {"colon:and=equals": "sha256:abc=def", "lead": "  two spaces", "hash#": "#!x"},
        {"line": "first\nsecond\ttab\\backslash", "unicode": "Zoë ☃ 𝄞"},
    ],
)
def test_properties_round_trip_through_allure(values: dict[str, str]) -> None:
    assert parse_properties(allure_support.properties(values)) == values


def parse_properties(text: str) -> dict[str, str]:
    """Parse with Allure 3's own reader, as the report will."""
    script = f"""
import {{ parseProperties }} from "{_allure_reader()}";
let input = "";
for await (const chunk of process.stdin) input += chunk;
process.stdout.write(JSON.stringify(parseProperties(input)));
"""
    parsed: dict[str, str] = json.loads(run_node(script, text))
    return parsed


def _allure_reader() -> str:
    from .conftest import NODE_MODULES

    return (NODE_MODULES / "@allurereport" / "reader" / "dist" / "properties.js").as_uri()


def test_fixture_tear_downs_have_names_and_statuses(report_project: ReportProject) -> None:
    """pytest's own post-finalizer is no tear-down of the fixture (allure-pytest showed it as
    '<fixture>::<lambda>' of unknown status); a yield fixture's tear-down is named after it."""
    report_project.write(
        "checks/test_with_fixture.py",
        """
        import pytest


        @pytest.fixture
        def session_file(vm):
            yield f"{vm.key}.txt"


        @pytest.mark.check(id="RPT-040", title="With a fixture", severity="low", os="any", doc="https://x")
        def test_with_fixture(vm, session_file):
            assert session_file.endswith(".txt")
        """,
    )
    report_project.fleet(**{"web-01": {"os": "Linux"}})
    report_project.run("--vm", "rg/web-01")
    case = report_project.result("test_with_fixture[rg/web-01]")
    results = report_project.report_dir / "allure-results"
    mine = [
        json.loads(p.read_text())
        for p in results.glob("*-container.json")
        if case["uuid"] in json.loads(p.read_text()).get("children", [])
    ]
    befores = [(b["name"], b["status"]) for c in mine for b in c.get("befores", [])]
    afters = [(a["name"], a.get("status")) for c in mine for a in c.get("afters", [])]
    assert ("session_file", "passed") in befores
    assert afters == [("session_file (tear-down)", "passed")]

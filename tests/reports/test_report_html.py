"""`make report` turns a run's Allure results into one self-contained HTML file, offline; that
file and the audit HTML, opened in headless Chromium, show the VM, every check and every action.

``assert_run_visible_in_browser(report_dir)`` needs only a report directory (allure-results,
junit.xml, audit.json, audit.html): point it at a real azsim run as well."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes

from .conftest import REPO, ReportProject

REPORT_SCRIPT = REPO / "scripts" / "report.sh"
SCREENSHOTS = REPO / "reports" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
RENDER_DEADLINE = 30.0

# expand every collapsed group of the report's tree; returns how many it opened
EXPAND_TREE = """
let opened = 0;
for (const section of document.querySelectorAll('[data-testid=tree-section]')) {
  const next = section.nextElementSibling;
  if (!next || next.getAttribute('data-testid') !== 'tree-content') {
    section.querySelector('[data-testid=tree-section-title]').click();
    opened++;
  }
}
return opened;
"""


SCROLL_TO_TOP = """
window.scrollTo(0, 0);
document.querySelectorAll('[data-tree-scroll-container]').forEach((e) => e.scrollTo(0, 0));
"""


def run_report_script(report_dir: Path) -> subprocess.CompletedProcess[str]:
    """scripts/report.sh without a network: proves the report is built offline."""
    return subprocess.run(
        ["unshare", "--net", "bash", str(REPORT_SCRIPT), str(report_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.root
def test_report_is_one_self_contained_file_built_offline(report_project: ReportProject) -> None:
    report_project.fleet(**{"web-01": {"os": "Linux"}})
    report_project.run("--vm", "rg/web-01")
    done = run_report_script(report_project.report_dir)
    assert done.returncode == 0, done.stderr
    index = report_project.report_dir / "allure-report" / "index.html"
    assert done.stdout.splitlines() == [
        f"Allure report: {index}",
        f"audit report:  {report_project.report_dir / 'audit.html'}",
    ]
    page = index.read_text()
    assert len(page) > 100_000  # the app, its styles and the data are inside
    for external in ('<script src="http', '<link href="http', 'src="./', 'href="./'):
        assert external not in page


def test_no_results_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", str(REPORT_SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: no Allure results in {tmp_path}/allure-results: run pytest with --vm RG/NAME first "
        "(--report-dir picks the directory)"
    ]


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.root
def test_allure_and_audit_html_show_every_vm_check_and_action(report_project: ReportProject) -> None:
    report_project.fleet(
        **{"web-01": {"os": "Linux"}, "leaky-01": {"os": "Linux"}, "down-01": {"os": "Linux"}}
    )
    result = report_project.run(
        "--vm",
        "rg/web-01",
        "--vm",
        "rg/leaky-01",
        "--vm",
        "rg/down-01",
        "--apply",
        "--change-ticket",
        "CHG-42",
    )
    assert result.ret == exitcodes.INFRASTRUCTURE_ERROR  # down-01's guest did not answer
    assert_run_visible_in_browser(report_project.report_dir, screenshot_prefix="pytester-")
    for name in ("allure-report", "allure-action", "allure-categories", "audit-report"):
        assert (SCREENSHOTS / f"pytester-{name}.png").stat().st_size > 20_000


# --- the helper: any run's report directory -----------------------------------------------------


def assert_run_visible_in_browser(report_dir: Path, *, screenshot_prefix: str = "") -> None:
    """Build the Allure HTML of ``report_dir`` and open it and ``audit.html`` in headless
    Chromium: every VM, every case pytest ran (junit.xml) and every action step the audit
    recorded must be on screen. Screenshots go to reports/screenshots/."""
    done = run_report_script(report_dir)
    assert done.returncode == 0, done.stderr
    cases = junit_cases(report_dir / "junit.xml")
    audit = json.loads((report_dir / "audit.json").read_text())
    vms = [vm["vm"] for vm in audit["vms"]]
    assert cases and vms
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as driver:
        from selenium.webdriver.common.by import By

        driver.get((report_dir / "allure-report" / "index.html").as_uri())
        wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "[data-testid=tree-leaf-title]"))
        wait_for(lambda: driver.execute_script(EXPAND_TREE) == 0)
        sections = visible_texts(driver, "[data-testid=tree-section-title]")
        leaves = visible_texts(driver, "[data-testid=tree-leaf-title]")
        assert set(vms) <= sections, sections
        assert {"pre-flight checks", "actions"} <= sections
        missing = sorted(set(cases) - leaves)
        assert not missing, f"cases not shown in the Allure report: {missing}"
        driver.execute_script(SCROLL_TO_TOP)
        driver.save_screenshot(str(SCREENSHOTS / f"{screenshot_prefix}allure-report.png"))

        # one action's page, with its steps when the action recorded them in its body
        action = _an_action(report_dir, cases)
        if action is not None:
            leaf = next(
                e
                for e in driver.find_elements(By.CSS_SELECTOR, "[data-testid=tree-leaf]")
                if e.find_element(By.CSS_SELECTOR, "[data-testid=tree-leaf-title]").text.strip() == action
            )
            driver.execute_script("arguments[0].click();", leaf)
            steps = _allure_step_names(report_dir, action)
            wait_for(lambda: all(step in body_text(driver) for step in steps) and action in body_text(driver))
            driver.save_screenshot(str(SCREENSHOTS / f"{screenshot_prefix}allure-action.png"))
            driver.back()
            wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "[data-testid=nav-tab-categories]"))

        driver.find_element(By.CSS_SELECTOR, "[data-testid=nav-tab-categories]").click()
        red = [c for c, outcome in cases.items() if outcome != "passed"]
        if red:
            wait_for(lambda: "Blocked by the gate" in body_text(driver) or "errors" in body_text(driver))
        driver.save_screenshot(str(SCREENSHOTS / f"{screenshot_prefix}allure-categories.png"))

        driver.get((report_dir / "audit.html").as_uri())
        text = wait_for(lambda: body_text(driver) if audit["vms"][0]["vm"] in body_text(driver) else "")
        for vm in audit["vms"]:
            assert vm["vm"] in text
            assert vm["verdict"] in text
            for check in vm["checks"]:
                assert check["case_id"] in text, check["case_id"]
            for step in vm["actions"]:
                assert str(step["step"]) in text
            if not vm["actions"]:
                assert "No action ran for this VM in this run." in text
        full_page_screenshot(driver, SCREENSHOTS / f"{screenshot_prefix}audit-report.png")


def _allure_results(report_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in (report_dir / "allure-results").glob("*-result.json")]


def _an_action(report_dir: Path, cases: dict[str, str]) -> str | None:
    """A passed action case, one with steps if there is one."""
    actions = [
        r
        for r in _allure_results(report_dir)
        if {"name": "feature", "value": "actions"} in r["labels"] and cases.get(r["name"]) == "passed"
    ]
    actions.sort(key=lambda r: (not r.get("steps"), str(r["name"])))
    return str(actions[0]["name"]) if actions else None


def _allure_step_names(report_dir: Path, name: str) -> list[str]:
    result = next(r for r in _allure_results(report_dir) if r["name"] == name)
    return [str(step["name"]) for step in result.get("steps", [])]


def junit_cases(path: Path) -> dict[str, str]:
    """Test case name -> outcome, from pytest's own JUnit XML (independent of Allure)."""
    outcomes = {}
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314 (pytest wrote it)
        children = {child.tag for child in case}
        outcome = next((tag for tag in ("failure", "error", "skipped") if tag in children), "passed")
        outcomes[str(case.get("name"))] = outcome
    return outcomes


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium, headless, a fresh profile, nothing fetched in the background."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are missing: run `make bootstrap`")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="imageready-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        # the report's page asks for an analytics script: resolve no name, so nothing leaves
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--window-size=1400,1400",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(probe: Callable[[], Any], deadline: float = RENDER_DEADLINE) -> Any:
    """The report draws itself with JavaScript: poll until ``probe`` is truthy."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"the page did not render within {deadline:.0f} s")
        time.sleep(0.2)


def visible_texts(driver: Any, selector: str) -> set[str]:
    from selenium.webdriver.common.by import By

    return {e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()}


def body_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)  # rendered, visible text only


def full_page_screenshot(driver: Any, path: Path) -> None:
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(1400, min(max(height, 800), 2000))  # the top: run, verdicts, first VM
    driver.save_screenshot(str(path))

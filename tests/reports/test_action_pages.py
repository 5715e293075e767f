"""An action case's Allure page reads as the procedure: the real action chain, run by the harness
against azsim, shows on each action's page the steps its set-up went through, in the order they
ran, each with its status and its evidence attached; no anonymous ``<lambda>`` tear-down, no
unknown status, and ``host`` names the VM, not the machine running pytest.

One azsim for the module: the plan (no --apply) first, then the run that generalizes the VM."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes
from imageready.steps import ORDER
from tests.e2e.conftest import REPO, Azsim, Run, harness, start_azsim

from .test_report_html import SCREENSHOTS, chromium, run_report_script, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root, pytest.mark.slow]

SCENARIO = REPO / "tests" / "scenarios" / "actions-apply.yaml"
VM = "rg-act/lin-clean"
#: each step's case in actions/test_generalize.py
CASES = {
    "lock": "test_lease_taken",
    "guest": "test_guest_generalized",
    "deallocate": "test_deallocated",
    "generalize": "test_marked_generalized",
    "verify": "test_os_state_generalized",
    "capture": "test_captured",
    "unlock": "test_lease_released",
}


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    started = start_azsim(SCENARIO, tmp_path_factory.mktemp("azsim"))
    try:
        yield started
    finally:
        started.cli("down", check=False)


@pytest.fixture(scope="module")
def plan(sim: Azsim, tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = harness(sim, "--vm", VM, "--capture-as=image:img-pages", report_dir=tmp_path_factory.mktemp("plan"))
    assert run.returncode == exitcodes.GREEN, run.output[-3000:]
    return run


@pytest.fixture(scope="module")
def applied(sim: Azsim, plan: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    args = ("--vm", VM, "--apply", "--capture-as=image:img-pages")
    run = harness(sim, *args, report_dir=tmp_path_factory.mktemp("apply"))
    assert run.returncode == exitcodes.GREEN, run.output[-3000:]
    return run


def action_results(run: Run) -> dict[str, dict[str, Any]]:
    """The Allure result of each action case of ``VM``, by step name."""
    by_name = {result["name"]: result for result in all_results(run)}
    return {step: by_name[f"{case}[{VM}]"] for step, case in CASES.items()}


def all_results(run: Run) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in (run.report_dir / "allure-results").glob("*-result.json")]


def containers(run: Run) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in (run.report_dir / "allure-results").glob("*-container.json")]


def test_each_action_page_lists_the_steps_it_went_through_in_run_order_with_evidence(applied: Run) -> None:
    results = action_results(applied)
    audit = {s["step"]: s for s in applied.audit()["vms"][0]["actions"]}
    sources: dict[str, list[str]] = {}
    for index, (step, result) in enumerate(results.items()):
        assert result["status"] == "passed", result.get("statusDetails")
        chain = ORDER[: index + 1]
        assert [s["name"] for s in result["steps"]] == [f"{name}: done" for name in chain]
        for shown in result["steps"]:
            name = shown["name"].split(":", 1)[0]
            assert shown["status"] == "passed"
            assert shown["parameters"] == [{"name": "detail", "value": audit[name]["detail"]}]
            assert shown["start"] <= shown["stop"]
            (record,) = [a for a in shown["attachments"] if a["name"] == f"{name} record"]
            evidence = json.loads((applied.report_dir / "allure-results" / record["source"]).read_text())
            assert (evidence["step"], evidence["status"], evidence["azure"]) == (
                name,
                "done",
                audit[name]["azure"],
            )
            sources.setdefault(name, []).append(record["source"])
        # in run order: each step started after the one before it ended
        starts = [s["start"] for s in result["steps"]]
        stops = [s["stop"] for s in result["steps"]]
        assert all(stop <= start for stop, start in zip(stops, starts[1:], strict=False)), result["steps"]
        assert step == chain[-1]
    # every page that went through a step has its own copy of its evidence (Allure 3 shows a
    # file on one page only)
    for name, found in sources.items():
        assert len(set(found)) == len(found) == len(ORDER) - ORDER.index(name), (name, found)


def test_no_set_up_or_tear_down_entry_without_a_name_or_a_status(applied: Run) -> None:
    action_uuids = {r["uuid"] for r in action_results(applied).values()}
    fixtures = []
    for container in containers(applied):
        entries = container.get("befores", []) + container.get("afters", [])
        if action_uuids & set(container.get("children", [])):
            # the action fixtures' set-up became the cases' steps; nothing else wraps them
            assert entries == [], container
        fixtures += entries
    assert fixtures, "the checks' fixtures still show their set-up"
    for entry in fixtures:
        assert "<lambda>" not in entry["name"], entry
        assert entry.get("status") in ("passed", "failed", "broken", "skipped"), entry


def test_host_is_the_vm_resource_id(applied: Run) -> None:
    vm_id = (
        "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-act"
        "/providers/Microsoft.Compute/virtualMachines/lin-clean"
    )
    results = all_results(applied)
    assert len(results) > len(CASES)  # the checks too
    for result in results:
        hosts = [label["value"] for label in result["labels"] if label["name"] == "host"]
        assert hosts == [vm_id], (result["name"], hosts, socket.gethostname())


def test_a_plan_shows_each_step_planned(plan: Run) -> None:
    results = action_results(plan)
    for index, result in enumerate(results.values()):
        assert result["status"] == "skipped"
        shown = result["steps"]
        assert [s["name"] for s in shown] == [f"{name}: planned" for name in ORDER[: index + 1]]
        assert {s["status"] for s in shown} == {"skipped"}
        assert all(s["statusDetails"]["message"] == s["parameters"][0]["value"] for s in shown)


@pytest.mark.browser
def test_the_last_action_page_in_chromium_reads_as_the_procedure(applied: Run, tmp_path: Path) -> None:
    """Build the Allure HTML, open the page of the case that went through all seven steps, open
    one step, and check what a reader sees (the screenshot is kept in reports/screenshots/, from
    where docs/img/allure-action.png is refreshed)."""
    done = run_report_script(applied.report_dir)
    assert done.returncode == 0, done.stderr
    case = f"{CASES['unlock']}[{VM}]"
    screenshot = tmp_path / "action-page.png"
    with chromium() as driver:
        from selenium.webdriver.common.by import By

        driver.get((applied.report_dir / "allure-report" / "index.html").as_uri())
        leaf = wait_for(lambda: _leaf(driver, case))
        driver.execute_script("arguments[0].click();", leaf)
        titles = wait_for(lambda: _texts(driver, "[data-testid=test-result-step-title]"))
        assert titles == [f"{name}: done" for name in ORDER]
        headers = driver.find_elements(By.CSS_SELECTOR, "[data-testid=test-result-step-header]")
        driver.execute_script("arguments[0].click();", headers[ORDER.index("deallocate")])
        wait_for(lambda: "deallocate record" in _body(driver))
        attachment = driver.find_element(By.XPATH, "//*[normalize-space(text())='deallocate record']")
        driver.execute_script("arguments[0].click();", attachment)
        wait_for(lambda: '"step": "deallocate"' in _body(driver))  # the record, opened on the page
        driver.save_screenshot(str(screenshot))
        text = _body(driver)
        assert "PowerState/deallocated" in text  # the step's detail
        assert "missed" not in text  # Allure 3's word for an attachment it has no file for
        assert "<lambda>" not in text
        assert "Tear down" not in text and "Set up" not in text
        unknown = driver.find_elements(By.CSS_SELECTOR, "[data-testid*=status-unknown]")
        assert not unknown, [e.get_attribute("data-testid") for e in unknown]
        assert driver.find_elements(By.CSS_SELECTOR, "[data-testid=test-result-status-passed]")
    assert screenshot.stat().st_size > 20_000
    _attach_to_this_test(screenshot)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS / "allure-action-procedure.png").write_bytes(screenshot.read_bytes())


def _leaf(driver: Any, name: str) -> Any:
    """The tree leaf of case ``name``, once the report has drawn its tree (groups opened)."""
    from selenium.webdriver.common.by import By

    for section in driver.find_elements(By.CSS_SELECTOR, "[data-testid=tree-section]"):
        following = driver.execute_script("return arguments[0].nextElementSibling", section)
        if following is None or following.get_attribute("data-testid") != "tree-content":
            driver.execute_script(
                "arguments[0].querySelector('[data-testid=tree-section-title]').click()", section
            )
    for leaf in driver.find_elements(By.CSS_SELECTOR, "[data-testid=tree-leaf]"):
        if leaf.find_element(By.CSS_SELECTOR, "[data-testid=tree-leaf-title]").text.strip() == name:
            return leaf
    return None


def _texts(driver: Any, selector: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text.strip() for e in driver.find_elements(By.CSS_SELECTOR, selector) if e.is_displayed()]


def _body(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return str(driver.find_element(By.TAG_NAME, "body").text)


def _attach_to_this_test(screenshot: Path) -> None:
    """When this suite itself runs with Allure, its report shows what the browser saw."""
    try:
        import allure
    except ImportError:  # pragma: no cover - allure-pytest is a dev dependency
        return
    allure.attach.file(str(screenshot), name="action page", attachment_type=allure.attachment_type.PNG)

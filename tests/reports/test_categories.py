"""Allure's categories sort a red run by cause: blocked by the gate, sensitive data, Azure,
the guest, a timeout. Proven on real allure-pytest results, with Allure 3's own matcher (what
`make report` renders) and with Allure 2's rule (a regex must match the whole text)."""

from __future__ import annotations

import json
import re
from typing import Any

from imageready import allure_support

from .conftest import CHECKS_ENVIRONMENT, NODE_MODULES, REPO, ReportProject, run_node

EXPECTED = {
    "test_sensitive_data[rg/leaky-01]": "Sensitive data found",
    "test_guest_answers[rg/down-01]": "Guest unreachable",
    "test_environment[rg/azure-01]": "Azure API error",
    "test_environment[rg/azuretimeout-01]": "Timeout",
    "test_environment[rg/guesttimeout-01]": "Timeout",
    "test_environment[rg/facts-01]": "Guest unreachable",
    "test_environment[rg/rawtimeout-01]": "Timeout",
    "test_environment[rg/stuck-01]": "Timeout",
    "test_environment[rg/unready-01]": "Check failed: VM not ready",
}
RED_VMS = (
    "leaky-01",
    "down-01",
    "azure-01",
    "azuretimeout-01",
    "guesttimeout-01",
    "facts-01",
    "rawtimeout-01",
    "stuck-01",
    "unready-01",
)


def test_the_repository_copy_is_the_one_the_run_writes() -> None:
    assert json.loads((REPO / "reports" / "categories.json").read_text()) == allure_support.CATEGORIES


def test_each_red_case_lands_in_the_category_of_its_cause(report_project: ReportProject) -> None:
    report_project.write("checks/test_environment.py", CHECKS_ENVIRONMENT)
    vms = ("web-01", *RED_VMS)
    report_project.fleet(**{name: {"os": "Linux"} for name in vms})
    args = ["--apply"]
    for name in vms:
        args += ["--vm", f"rg/{name}"]
    report_project.run(*args)
    results = report_project.results()
    expected = dict(EXPECTED)
    expected.update({f"test_generalize[rg/{name}]": "Blocked by the gate" for name in RED_VMS})

    allure3 = allure3_categories(results)
    allure2 = {str(r["name"]): allure2_categories(r) for r in results}
    for result in results:
        name = str(result["name"])
        want = expected.get(name)
        assert allure3[name] == want, (name, result.get("statusDetails"))
        assert allure2[name] == ({want} if want else set()), (name, result.get("statusDetails"))
    assert len([n for n in allure3 if allure3[n]]) == len(expected)


def test_the_trace_names_the_case_and_the_category(report_project: ReportProject) -> None:
    report_project.write("checks/test_environment.py", CHECKS_ENVIRONMENT)
    report_project.fleet(**{"facts-01": {"os": "Linux"}})
    report_project.run("--vm", "rg/facts-01")
    trace = report_project.result("test_environment[rg/facts-01]")["statusDetails"]["trace"]
    assert trace.endswith(
        "imageready check: checks/test_environment.py::test_environment[rg/facts-01]\n"
        "imageready category: guest unreachable"
    )


def allure2_categories(result: dict[str, Any]) -> set[str]:
    """Allure 2's rule: status listed, and each given regex matches the whole message/trace."""
    details = result.get("statusDetails") or {}
    found = set()
    for category in allure_support.CATEGORIES:
        if result["status"] not in category["matchedStatuses"]:
            continue
        pairs = (("messageRegex", "message"), ("traceRegex", "trace"))
        if all(
            key not in category or re.fullmatch(category[key], details.get(field) or "") is not None
            for key, field in pairs
        ):
            found.add(category["name"])
    return found


def allure3_categories(results: list[dict[str, Any]]) -> dict[str, str | None]:
    """Allure 3's matcher (core-api) with reports/categories.json, as allurerc.mjs loads it."""
    core_api = (NODE_MODULES / "@allurereport" / "core-api" / "dist" / "categories.js").as_uri()
    rules = json.dumps(str(REPO / "reports" / "categories.json"))
    script = f"""
import {{ readFileSync }} from "node:fs";
import {{ normalizeCategoriesConfig, matchCategory }} from "{core_api}";
let input = "";
for await (const chunk of process.stdin) input += chunk;
const categories = normalizeCategoriesConfig(JSON.parse(readFileSync({rules}, "utf-8")));
const out = {{}};
for (const r of JSON.parse(input)) {{
  const data = {{ status: r.status, labels: r.labels, message: r.statusDetails?.message,
                 trace: r.statusDetails?.trace, flaky: false }};
  out[r.name] = matchCategory(categories, data)?.name ?? null;
}}
process.stdout.write(JSON.stringify(out));
"""
    matched: dict[str, str | None] = json.loads(run_node(script, json.dumps(results)))
    return matched

"""Allure for engineers: labels, readable parameters, categories and the run's environment.

Every check and action case gets epic/feature/story/severity labels from its metadata, the check
id as a tag, the VM as a ``vm`` label and a readable ``vm`` parameter, and the VM's resource id as
its ``host`` (not the name of the machine running pytest). Captured output is attached redacted
(allure-pytest's own raw attachments are turned off). The controller writes
``environment.properties`` and ``categories.json`` once per run.

An action case's page reads as the procedure (``imageready.allure_procedure``): the steps its
set-up went through (lock, guest, ...) are its own steps, in the order they ran, each with its
status, detail and evidence attached, instead of one "Set up" entry per chained fixture in no
particular order; pytest's internal post-finalizer is not shown as an anonymous ``<lambda>``
tear-down of unknown status.

In an imageready run (``--vm`` given) Allure results go to ``<report-dir>/allure-results``,
replaced each run, unless ``--alluredir`` is given; JUnit XML goes to ``<report-dir>/junit.xml``
unless ``--junitxml`` is given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from imageready import allure_procedure
from imageready.options import RunOptions
from imageready.redact import one_line, redact, redactor
from imageready.runstate import CASE_WAIVERS, RUN, ItemInfo, RunState, item_info
from imageready.text import printable

EPIC = "imageready"
FEATURES = {"check": "pre-flight checks", "action": "actions"}
#: imageready severity -> Allure severity. A critical check guards against an image that
#: cannot work or leaks data: Allure's "blocker". Actions are irreversible: "critical".
SEVERITIES = {"critical": "blocker", "high": "critical", "medium": "normal", "low": "minor"}
ACTION_SEVERITY = "critical"
WAIVER_SECTION = "imageready waiver"  # the report section the gate adds to a waived failure

#: lines appended to the trace of a failed or broken case, which categories.json matches on:
#: "imageready check: <case id>" (or "action"), and the error's category when it has one
CHECK_LINE = "imageready check: "
CATEGORY_LINE = "imageready category: "

_ANY_TEXT = r"[\s\S]*"  # Allure 2 full-matches a regex, Allure 3 searches: match the whole text
_BROKEN = ["broken", "failed"]
_TIMEOUT_MESSAGE = r"(\S*Timeout\w*|socket\.timeout|Failed: Timeout)\b"

#: Allure's categories.json (reports/categories.json is the same list, for Allure 3's config).
#: Two rules with one name form one category: the trace line our hook adds, or the class name in
#: the message for errors raised past it.
CATEGORIES: list[dict[str, Any]] = [
    {
        "name": "Blocked by the gate",
        "matchedStatuses": ["failed"],
        "messageRegex": rf"^(Failed: )?BLOCKED by the gate{_ANY_TEXT}",
    },
    {
        "name": "Sensitive data found",
        "matchedStatuses": ["failed"],
        "traceRegex": rf"{_ANY_TEXT}{CHECK_LINE}\S*\btest_sensitive_data\b{_ANY_TEXT}",
    },
    {
        "name": "Azure API error",
        "matchedStatuses": _BROKEN,
        "traceRegex": rf"{_ANY_TEXT}{CATEGORY_LINE}Azure {_ANY_TEXT}",
    },
    {
        "name": "Azure API error",
        "matchedStatuses": _BROKEN,
        "messageRegex": (
            rf"^(imageready\.azure_errors\.Azure(?!Timeout)\w*|azure\.core\.exceptions\.\w+):{_ANY_TEXT}"
        ),
    },
    {
        "name": "Guest unreachable",
        "matchedStatuses": _BROKEN,
        "traceRegex": rf"{_ANY_TEXT}{CATEGORY_LINE}guest (unreachable|authentication){_ANY_TEXT}",
    },
    {
        "name": "Guest unreachable",
        "matchedStatuses": _BROKEN,
        "messageRegex": (
            rf"^imageready\.guest\.base\.Guest(Error|Unreachable|AuthError|Disconnected):{_ANY_TEXT}"
        ),
    },
    {
        "name": "Timeout",
        "matchedStatuses": _BROKEN,
        "traceRegex": rf"{_ANY_TEXT}{CATEGORY_LINE}timeout{_ANY_TEXT}",
    },
    {
        "name": "Timeout",
        "matchedStatuses": _BROKEN,
        "messageRegex": rf"^{_TIMEOUT_MESSAGE}{_ANY_TEXT}",
    },
    {
        # any other failed check is a finding on the VM (clearer than Allure's "Product errors");
        # last, and excluding the causes above, so that Allure 2 too files a case only once
        "name": "Check failed: VM not ready",
        "matchedStatuses": ["failed"],
        "messageRegex": rf"^(?!{_TIMEOUT_MESSAGE}){_ANY_TEXT}",
        "traceRegex": (
            rf"^(?!{_ANY_TEXT}{CATEGORY_LINE}){_ANY_TEXT}{CHECK_LINE}(?!\S*\btest_sensitive_data\b){_ANY_TEXT}"
        ),
    },
]


# --- where results go ------------------------------------------------------------------------


def default_outputs(config: pytest.Config, options: RunOptions) -> None:
    """Before allure-pytest and junitxml configure themselves (the plugin's first configure
    hook calls this): default their output paths."""
    option = config.option
    is_worker = hasattr(config, "workerinput")
    if is_worker and getattr(option, "clean_alluredir", False):
        # each xdist worker configures allure-pytest: only the controller may clean, or a late
        # worker deletes what an early one already wrote
        option.clean_alluredir = False
    if hasattr(option, "attach_capture"):
        option.attach_capture = False  # raw captured output: we attach it redacted instead
    if not options.vms:
        return  # not an imageready run (e.g. the project's own tests): no default paths
    report_dir = options.report_dir
    if not is_worker and not option.collectonly:
        # before allure-pytest and junitxml create anything in it: the record needs a directory
        # that can take it, or the run stops here, before anything connects
        from imageready import reportdir

        reportdir.reset()
        try:
            reportdir.check_report_dir(report_dir, need=reportdir.reserve_bytes(len(options.vms)))
        except reportdir.ReportDirError as exc:
            raise pytest.UsageError(str(exc)) from None
    if hasattr(option, "allure_report_dir") and not option.allure_report_dir:
        option.allure_report_dir = str(report_dir / "allure-results")
        option.clean_alluredir = not is_worker and not option.collectonly
    if hasattr(option, "xmlpath") and not option.xmlpath and not option.collectonly:
        option.xmlpath = str(report_dir / "junit.xml")


def allure_results_dir(config: pytest.Config) -> Path | None:
    """Where this run's Allure results go, or None when Allure is off."""
    value = getattr(config.option, "allure_report_dir", None)
    return Path(value).absolute() if value else None


# --- per case ------------------------------------------------------------------------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # tryfirst wrapper: this runs after allure-pytest has recorded the phase's status
    report = yield
    info = item_info(item)
    result = _current_allure_result(item.config)
    if info is None or result is None:
        return report
    if report.when == "setup":
        _label(item, info, result)
    if call.excinfo is not None and result.statusDetails is not None:
        _mark_trace(result, info, call.excinfo.value)
    waiver = next((str(text) for name, text in report.sections if name == WAIVER_SECTION), None)
    if waiver is not None and report.passed and result.status in ("failed", "broken"):
        _show_waived(result, waiver)
    if report.when == "setup" and info.kind == "action":
        result.steps[:0] = allure_procedure.procedure(item)
    _own_host(result, info)
    _redact_result(result)
    if report.when == "teardown":
        _attach_captured(report)
        _attach_waivers(item)
    return report


def _current_allure_result(config: pytest.Config) -> Any:
    """allure-pytest's result for the running case (its internals: covered by tests/reports)."""
    listener = config.pluginmanager.get_plugin("allure_listener")
    logger = getattr(listener, "allure_logger", None)
    return logger.get_test(None) if logger is not None else None


def _allure() -> Any:
    """allure-pytest's API (it has no type information)."""
    import allure

    return allure


def _label(item: pytest.Item, info: ItemInfo, result: Any) -> None:
    allure = _allure()
    dynamic = allure.dynamic
    dynamic.epic(EPIC)
    dynamic.feature(FEATURES[info.kind])
    dynamic.label("vm", info.vm.key)
    if info.kind == "check":
        dynamic.story(info.title)
        dynamic.severity(allure.severity_level(SEVERITIES.get(info.severity, "normal")))
        dynamic.tag(info.check_id)
        dynamic.link(info.doc, name=f"{info.check_id}: {info.doc}")
    else:
        dynamic.story(info.step)
        dynamic.severity(allure.severity_level(ACTION_SEVERITY))
    dynamic.parameter("vm", info.vm.key)
    for parameter in result.parameters:
        if parameter.name == "vm":
            parameter.value = info.vm.key  # not the VmRef dataclass repr nor a quoted string
    if not result.fullName:
        _describe_unprotocolled(item, result)


def _describe_unprotocolled(item: pytest.Item, result: Any) -> None:
    """A blocked action never reaches allure-pytest's setup/teardown hooks (the gate reports it
    without running its fixtures): give it the names and suites allure-pytest would have."""
    import allure_commons.model2
    import allure_commons.utils
    import allure_pytest.utils

    commons: Any = allure_commons
    pytest_utils: Any = allure_pytest.utils
    result.name = item.name
    result.fullName = pytest_utils.allure_full_name(item)
    result.titlePath = pytest_utils.allure_title_path(item)
    result.testCaseId = commons.utils.md5(result.fullName)
    result.historyId = commons.utils.md5(result.fullName, item.nodeid)
    for name, value in pytest_utils.allure_suite_labels(item):
        result.labels.append(commons.model2.Label(name=name, value=value))


def _own_host(result: Any, info: ItemInfo) -> None:
    """The ``host`` label is the VM the case is about: allure-pytest sets the name of the machine
    running pytest (at its teardown hook, so this runs again in each phase)."""
    import allure_commons.model2

    model2: Any = allure_commons.model2
    labels = result.labels
    labels[:] = [label for label in labels if label.name != "host" or label.value == info.vm.id]
    if not any(label.name == "host" for label in labels):
        after_vm = next((i + 1 for i, label in enumerate(labels) if label.name == "vm"), len(labels))
        labels.insert(after_vm, model2.Label(name="host", value=info.vm.id))


def _mark_trace(result: Any, info: ItemInfo, error: BaseException) -> None:
    """Name the case and the error's category in the trace, for categories.json to match."""
    details = result.statusDetails
    lines = [f"imageready {info.kind}: {info.case_id}"]
    category = getattr(error, "category", None)
    if isinstance(category, str) and category:
        lines.append(f"{CATEGORY_LINE}{category}")
    footer = "\n".join(lines)
    trace = details.trace or ""
    if footer not in trace:
        details.trace = f"{trace.rstrip()}\n\n{footer}".lstrip()


def _show_waived(result: Any, note: str) -> None:
    """The gate turned this failure into a pass under a waiver (after allure-pytest recorded it
    as failed): say so, as pytest and the gate do, keeping the finding."""
    result.status = "passed"
    result.statusDetails.message = f"{note}\n\n{result.statusDetails.message or ''}".rstrip()


def _attach_waivers(item: pytest.Item) -> None:
    waivers = item.stash.get(CASE_WAIVERS, [])
    if waivers:
        allure = _allure()
        allure.dynamic.tag("waived")
        allure.attach(
            redact(json.dumps(waivers, indent=2, sort_keys=True)),
            name="waivers",
            attachment_type=allure.attachment_type.JSON,
        )


def _redact_result(result: Any) -> None:
    """Mask known secrets in what allure-pytest copied from pytest: messages, traces (source
    lines included), parameter values and step names."""
    mask = redactor()
    items = [result]
    while items:
        current = items.pop()
        details = getattr(current, "statusDetails", None)
        if details is not None:
            details.message = _text(details.message, mask) if details.message else details.message
            details.trace = _text(details.trace, mask) if details.trace else details.trace
        for parameter in getattr(current, "parameters", None) or []:
            parameter.value = printable(mask(str(parameter.value)))
        if getattr(current, "name", None):
            current.name = printable(mask(str(current.name)))
        items.extend(getattr(current, "steps", None) or [])


def _text(text: str, mask: Callable[[str], str] = redact) -> str:
    """A multi-line text for Allure: redacted, and escaped (control and bidi characters, and lone
    surrogates, which would also make allure-pytest's UTF-8 writer fail)."""
    return printable(mask(text), multiline=True)


def _attach_captured(report: pytest.TestReport) -> None:
    allure = _allure()
    for name, text in (("log", report.caplog), ("stdout", report.capstdout), ("stderr", report.capstderr)):
        if text:
            allure.attach(_text(text), name=name, attachment_type=allure.attachment_type.TEXT)


# --- action pages: the procedure, in the order it ran (imageready.allure_procedure) ------------


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_fixture_setup(
    fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
) -> Generator[None, object, object]:
    # tryfirst wrapper: around allure-pytest's, so this sees what it recorded for the fixture
    item = request.node
    shown_before = len(item.stash.get(allure_procedure.PROCEDURE, []))
    try:
        return (yield)
    finally:
        if RUN in request.config.stash:
            allure_procedure.tidy_fixture(fixturedef, item, shown_before)


# --- helpers for checks and actions ------------------------------------------------------------


@contextmanager
def step(title: str) -> Iterator[None]:
    """An Allure step with a redacted title. Use this (``with step(...)``), never the
    ``@allure.step`` decorator, around code holding a credential: the decorator records arguments."""
    with _allure().step(one_line(title, limit=200)):
        yield


def attach_text(name: str, text: str) -> None:
    """Attach ``text`` (a log, a command's output) to the running case, redacted and escaped."""
    allure = _allure()
    allure.attach(_text(text), name=one_line(name, limit=120), attachment_type=allure.attachment_type.TEXT)


# --- once per run ----------------------------------------------------------------------------


def write_report_environment(config: pytest.Config, state: RunState) -> None:
    """Allure's categories.json and, in a run with VMs, environment.properties (controller only,
    last of the end of the session: imageready.session_end). Raises OSError."""
    results = allure_results_dir(config)
    if results is None:
        return
    results.mkdir(parents=True, exist_ok=True)
    (results / "categories.json").write_text(json.dumps(CATEGORIES, indent=2) + "\n", encoding="utf-8")
    if state.vms:
        (results / "environment.properties").write_text(properties(environment(state)), encoding="utf-8")


def environment(state: RunState) -> dict[str, str]:
    """What the Allure report's Environment panel shows for this run (redacted)."""
    operator = state.operator()
    who = operator.get("upn") or operator.get("appid") or operator.get("oid") or operator.get("error")
    details = [f"{key} {operator[key]}" for key in ("oid", "tid") if operator.get(key)]
    details.append(f"local {operator.get('local_user', 'unknown')}")
    values = {
        "harness.version": state.harness_version,
        "policy.digest": state.digest,
        "vm": ", ".join(vm.key for vm in state.vms),
        "subscription": ", ".join(sorted({vm.subscription for vm in state.vms})),
        "operator": f"{who or 'unknown'} ({', '.join(details)})",
        "change.ticket": state.change_ticket or "none",
        "mode": "apply" if state.apply else "plan (no --apply)",
        "run.id": state.run_id,
    }
    return {key: redact(value) for key, value in values.items()}


def properties(values: dict[str, str]) -> str:
    """``values`` as a Java .properties file (the format Allure reads), ASCII with escapes."""

    def escape(text: str, *, key: bool) -> str:
        out = []
        for index, char in enumerate(text):
            if char == "\\":
                out.append("\\\\")
            elif char in "\n\r\t\f":
                out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[char])
            elif char in "=:#!" or (char == " " and (key or index == 0)):
                out.append("\\" + char)
            elif not (" " <= char <= "~"):
                out.extend(f"\\u{unit:04x}" for unit in _utf16_units(char))
            else:
                out.append(char)
        return "".join(out)

    return "".join(f"{escape(k, key=True)}={escape(v, key=False)}\n" for k, v in values.items())


def _utf16_units(char: str) -> list[int]:
    data = char.encode("utf-16-be")
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]

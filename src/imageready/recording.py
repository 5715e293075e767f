"""The record of a run, as a pytest plugin: the journal's life cycle, the report directory made
ready before the first action, and every sink guarded so that a full disk or a taken name ends
the run with one line and the right exit code, never a traceback and never a lost audit.

See ``imageready.journal`` (what is written, when) and ``imageready.reportdir`` (the checks and
the reserve). docs/reliability.md tells what a run leaves behind when something breaks.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Generator
from typing import Any

import pytest

from imageready import reportdir
from imageready.journal import Journal, JournalError
from imageready.redact import one_line
from imageready.text import printable

JOURNAL = pytest.StashKey[Journal]()
#: set once the report directory was made ready for the first action of this run
READY = pytest.StashKey[bool]()


def journal_of(config: pytest.Config) -> Journal | None:
    return config.stash.get(JOURNAL, None)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """After the plugin built the run's state: this process's journal (nothing is written until
    the first entry) and the guard around Allure's writer."""
    from imageready.runstate import RUN

    state = config.stash.get(RUN, None)
    if state is None or not state.vms or config.option.collectonly:
        return
    workerinput = getattr(config, "workerinput", None)
    process = str(workerinput.get("workerid", "worker")) if workerinput is not None else "main"
    journal = Journal(state.report_dir, state.run_id, process)
    config.stash[JOURNAL] = journal
    _guard_allure_writer()


def pytest_unconfigure(config: pytest.Config) -> None:
    journal = config.stash.get(JOURNAL, None)
    if journal is not None:
        journal.close()
    reportdir.release_reserve()
    reportdir.set_reserve(None)


def header(state: Any) -> dict[str, Any]:
    from imageready.audit import run_header

    return run_header(state)


def ready_for_actions(config: pytest.Config, state: Any) -> str | None:
    """Before the first action of a run with --apply: the report directory can take the record
    (checked again: a long checks phase may have filled the disk) and room is reserved for it.
    None when ready, else why not (one line): the action must not start."""
    if config.stash.get(READY, False):
        return None
    try:
        reportdir.check_report_dir(state.report_dir, need=reportdir.reserve_bytes(len(state.vms)))
        reserve = reportdir.Reserve(state.report_dir, reportdir.reserve_bytes(len(state.vms)))
        reserve.hold()
    except reportdir.ReportDirError as exc:
        return f"the record of this run cannot be kept, so nothing irreversible may start: {exc}"
    reportdir.set_reserve(reserve)
    config.stash[READY] = True
    return None


def journal_vm(config: pytest.Config, state: Any, vm: Any) -> str | None:
    """Journal ``vm`` as the gate sees it, before its first action (journal first): None when
    written, else why not (one line)."""
    from imageready.audit import vm_entry

    journal = journal_of(config)
    if journal is None:
        return None
    journal.set_header(header(state))
    try:
        journal.append(vm_entry(state, vm))
    except JournalError as exc:
        return f"the journal cannot be written, so nothing irreversible may start: {exc}"
    return None


def journal_step(config: pytest.Config, record: dict[str, Any], *, apply: bool) -> None:
    """Journal a step's start (raises JournalError: the step must not act) or end."""
    journal = journal_of(config)
    if journal is not None:
        journal.step(record, apply=apply)


def acted(config: pytest.Config) -> bool:
    """A step started with --apply in this process: the VM may have changed."""
    journal = journal_of(config)
    return journal is not None and journal.acted


# --- sinks that must never crash the run -----------------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    """The audit is written first (``GateKeeper``, tryfirst); a later sink that meets a full disk
    or a taken name (JUnit's XML, Allure's environment) is noted in one line instead of ending the
    run in a traceback, and the run does not end green."""
    from imageready.runstate import RUN

    if RUN not in session.config.stash:
        return (yield)  # imageready is dormant in this session: other plugins' errors are theirs
    try:
        return (yield)
    except OSError as exc:
        reportdir.note_failure(f"a report could not be written: {one_line(str(exc))}")
        _finish_with_failures(session)
        return None


def _finish_with_failures(session: pytest.Session) -> None:
    from imageready import exitcodes
    from imageready.runstate import RUN

    state = session.config.stash.get(RUN, None)
    if state is None:
        return
    session.exitstatus = exitcodes.classify(int(session.exitstatus), state)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for failure in reportdir.failures():
        terminalreporter.line(f"imageready: RECORD INCOMPLETE: {printable(failure)}", red=True)


def _guard_allure_writer() -> None:
    """allure-pytest writes each result as it finishes. Its writer fails on a full disk (an
    exception in a runtest hook ends the run mid-action as an INTERNALERROR) and on a string that
    cannot be encoded (a lone surrogate); wrap it: strings are escaped, a full disk releases the
    reserve and retries once, any other failure is noted and the run goes on."""
    try:
        import allure_commons
        from allure_commons.logger import AllureFileLogger
    except ImportError:  # pragma: no cover - allure-pytest is a dependency
        return
    commons: Any = allure_commons
    manager = commons.plugin_manager
    loggers: list[Any] = [p for p in manager.get_plugins() if isinstance(p, AllureFileLogger)]
    for plugin in loggers:
        if getattr(plugin, "_imageready_guarded", False):
            continue
        # report_result and friends call this one: strings escaped on the way out
        plugin._report_item = functools.partial(_report_item, plugin)
        # the hook implementations were bound at registration: wrap them where pluggy holds them
        for name in ("report_result", "report_container", "report_globals", "report_attached_file"):
            for impl in getattr(manager.hook, name).get_hookimpls():
                if impl.plugin is plugin:
                    impl.function = _guarded(impl.function)
        for impl in manager.hook.report_attached_data.get_hookimpls():
            if impl.plugin is plugin:
                impl.function = _guarded(_escaping_body(impl.function))
        plugin._imageready_guarded = True


def _escaping_body(write: Any) -> Any:
    def call(body: Any, file_name: str) -> None:
        write(printable(body, multiline=True) if isinstance(body, str) else body, file_name)

    return call


def _guarded(write: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> None:
        try:
            reportdir.with_room(lambda: write(*args, **kwargs))
        except (OSError, UnicodeError) as exc:
            reportdir.note_failure(f"Allure results incomplete: {one_line(str(exc))}")

    return call


def _report_item(logger: Any, item: Any) -> None:
    """allure-commons' ``AllureFileLogger._report_item`` with every string escaped."""
    from attr import asdict

    filename = item.file_pattern.format(prefix=uuid.uuid4())
    data = _escaped(asdict(item, filter=lambda _, v: v or v is False))
    tmp = logger._report_dir / f"{filename}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False)
    os.replace(tmp, logger._report_dir / filename)


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value, multiline=True)
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):
        return {k: _escaped(v) for k, v in value.items()}
    return value

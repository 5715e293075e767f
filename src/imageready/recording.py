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
from typing import TYPE_CHECKING, Any

import pytest

from imageready import reportdir
from imageready.gate import verdict_document, write_verdict
from imageready.journal import Journal, JournalError
from imageready.redact import one_line
from imageready.text import printable

if TYPE_CHECKING:
    from pathlib import Path

    from imageready.runstate import RunState
    from imageready.target import VmRef

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


# --- what the end of the run writes (imageready.session_end calls these in order) -----------------


def _verdict(state: RunState, vm: VmRef) -> dict[str, Any]:
    """The verdict document of ``vm`` as this run sees it now."""
    facts = state.facts_cache.get(vm.key)
    return verdict_document(
        state.gate(vm),
        vm_id=facts.vm_id if facts is not None else None,
        policy=state.digest,
        harness_version=state.harness_version,
        operator=state.operator(),
        change_ticket=state.change_ticket,
        waivers=state.waivers,
        run_id=state.run_id,
        guest_identity=facts.guest_identity if facts is not None else None,
    )


def write_verdicts(state: RunState) -> list[Path]:
    """One verdict file per VM whose checks the command line selected, even partly (controller
    only). An actions-only stage judged nothing and writes none: the verdict it was given stays
    the record."""
    paths = []
    for vm in state.vms:
        gate = state.gates.get(vm.key)
        if gate is None or not gate.cases or vm.key in state.verdict_kept:
            continue
        if vm.key not in state.checks_selected:
            continue
        # the controller of an xdist run decided nothing itself: ask (it reads the VM's tags)
        resume = state.resumes[vm.key] if vm.key in state.resumes else state.resume(vm)
        if resume is not None and resume.accepted:
            continue  # the resumed run's verdict stays the record; this run judged nothing
        paths.append(write_verdict(state.report_dir / "verdicts", _verdict(state, vm)))
    return paths


def write_verdict_now(state: RunState, vm: VmRef) -> None:
    """Before the first action of ``vm`` changes anything: its verdict, so that a run killed
    mid-way can be resumed (the end of the run writes it again, complete)."""
    if state.gates.get(vm.key) is None:
        return
    document = _verdict(state, vm)
    if document["green"]:
        write_verdict(state.report_dir / "verdicts", document)


def _final_states(state: RunState) -> dict[str, dict[str, Any]]:
    """What Azure shows of each VM at the end, read for ``state.parallel`` VMs at once (one VM
    after another, a fleet's end waited one ARM round trip per VM)."""
    reader = getattr(state.provider, "current_state", None)
    if reader is None or not state.vms:
        return {}

    def read(vm: VmRef) -> tuple[str, dict[str, Any]]:
        try:
            return vm.key, dict(reader(vm))
        except Exception as exc:  # the audit records why, one line
            return vm.key, {"error": one_line(str(exc)) or type(exc).__name__}

    return dict(state.map_vms(read, state.vms))


def write_audit(state: RunState) -> tuple[Path, Path, str]:
    """audit.json, its SHA-256 and audit.html for this run (controller only)."""
    from imageready import audit

    final_states = _final_states(state)
    from imageready.journal import JournalError, journal_files, read_entries

    ended = audit.run_entries(state, state.step_records, final_states)
    journal = journal_of(state.config)
    entries: list[dict[str, Any]] = []
    if journal is not None:
        journal.set_header(ended[0])
        for entry in ended[1:]:
            try:
                journal.append(entry)
            except JournalError:
                break  # noted; what this process knows is added below all the same
        # every process's journal of this run (xdist workers journal the steps they ran)
        entries = read_entries(journal_files(state.report_dir, state.run_id))
    record = audit.from_journal([*entries, *ended])
    return audit.write(record, state.report_dir)


# --- sinks that must never crash the run -----------------------------------------------------------


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

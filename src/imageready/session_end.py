"""The end of an imageready session, in one order, owned by one function (``finish``) called from
one hook. Each part is a plain function:

1. merge what the run knows: the steps whose reporting case never finished (Ctrl-C, SIGTERM) join
   the step records (xdist workers' gates were merged as each worker went down); leases are
   released; a worker hands its gates to the controller and stops here;
2. the verdicts (one per VM whose checks ran);
3. the audit (audit.json, its digest, audit.html, from every process's journal);
4. the exit code (``exitcodes.classify``; a failed --copy-first copy is an action that failed);
5. the report environment (Allure's categories.json and environment.properties).

The record is written before any other plugin's sink (JUnit's XML): the hook is a wrapper whose
part before ``yield`` runs ahead of every plain implementation (pytest-xdist's, which shuts the
workers down, included). A sink that meets a full disk or a
taken name, ours or another plugin's, is noted in one line (``reportdir.note_failure``) instead
of ending the run in a traceback, and the run does not end green.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest

from imageready import exitcodes, reportdir
from imageready.redact import one_line
from imageready.runstate import AUDIT_WRITTEN, RUN, VERDICTS_WRITTEN, RunState


# trylast: the innermost wrapper, so the part before its yield runs inside every other plugin's
# wrapper (logging's capture, xdist's worker hand-over) and right before the plain implementations
@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> Generator[None, None, None]:
    state = session.config.stash.get(RUN, None)
    if state is None:
        return (yield)  # imageready is dormant in this session: other plugins' errors are theirs
    finish(session, state)
    try:
        return (yield)
    except OSError as exc:  # another plugin's sink (JUnit's XML)
        reportdir.note_failure(f"a report could not be written: {one_line(str(exc))}")
        session.exitstatus = exit_code(session, state)
        return None


def finish(session: pytest.Session, state: RunState) -> None:
    """The end of the session, in order (see the module's docstring)."""
    config = session.config
    if config.option.collectonly:
        return
    merge_records(state)
    if state.is_worker:
        export_gates(config, state)
        return
    write_verdicts(config, state)
    write_audit(config, state)
    session.exitstatus = exit_code(session, state)
    write_report_environment(session, state)


def merge_records(state: RunState) -> None:
    """Every step this process ran reaches the record; the leases this process holds go."""
    if not state.is_worker:
        from imageready.action_fixtures import report_unfinished_steps

        report_unfinished_steps(state)
    for actions in state.vm_actions.values():
        actions.release_quietly()


def export_gates(config: pytest.Config, state: RunState) -> None:
    """An xdist worker: its gates travel to the controller (``GateKeeper.pytest_testnodedown``)."""
    workeroutput: dict[str, Any] = config.workeroutput  # type: ignore[attr-defined]
    workeroutput["imageready_gates"] = json.dumps(state.export_gates())


def write_verdicts(config: pytest.Config, state: RunState) -> None:
    from imageready import recording

    try:
        config.stash[VERDICTS_WRITTEN] = recording.write_verdicts(state)
    except OSError as exc:
        reportdir.note_failure(f"verdicts could not be written: {exc.strerror or exc}")


def write_audit(config: pytest.Config, state: RunState) -> None:
    if not state.vms:
        return
    from imageready import recording

    try:
        config.stash[AUDIT_WRITTEN] = recording.write_audit(state)
    except OSError as exc:
        reportdir.note_failure(
            f"the audit could not be written in {state.report_dir} ({exc.strerror or exc}); "
            f"rebuild it from the journal: imageready-report {state.report_dir} --from-journal"
        )


def exit_code(session: pytest.Session, state: RunState) -> int:
    """The imageready exit code of the session as it stands (``exitcodes.classify``); a copy
    that --copy-first failed to make ends ACTION_FAILED unless something worse happened."""
    from imageready.copyfirst import copy_failed

    code = exitcodes.classify(int(session.exitstatus), state)
    if copy_failed(session.config) and code in (
        exitcodes.GREEN,
        exitcodes.RED_CHECKS,
        exitcodes.ACTIONS_BLOCKED,
        exitcodes.INFRASTRUCTURE_ERROR,
    ):
        return exitcodes.ACTION_FAILED
    return code


def write_report_environment(session: pytest.Session, state: RunState) -> None:
    """Last: Allure's environment. A failure is noted and the exit code says so."""
    from imageready.allure_support import write_report_environment as write_allure_environment

    try:
        write_allure_environment(session.config, state)
    except OSError as exc:
        reportdir.note_failure(f"a report could not be written: {one_line(str(exc))}")
        session.exitstatus = exit_code(session, state)

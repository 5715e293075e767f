"""The action steps as fixtures, each chained to the one before: lease → guest_generalized →
deallocated → generalized → verified → captured → unlocked. Each runs once per VM per run; a
step that failed fails every later one. ``pytest --fixtures`` shows these docstrings."""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from imageready import progress
from imageready.allure_procedure import show_step
from imageready.runstate import RunState, record_step, run_state
from imageready.steps import ORDER, STEPS, ActionOptions, ActionStep, Outcome, StepRecord, VmActions
from imageready.steps.platform import deallocate, generalize, verify
from imageready.target import VmRef


def vm_actions_for(request: pytest.FixtureRequest, vm: VmRef) -> VmActions:
    state = run_state(request.config)
    decision = state.decisions.get(vm.key)
    if decision is None or not decision.open:
        # the gate (GateKeeper) decides before an action's set-up; without its open decision no
        # step object exists, whatever switched the gate off
        why = "; ".join(decision.reasons) if decision is not None else "the gate never decided"
        pytest.fail(f"BLOCKED: {vm.key}: no open gate ({why})", pytrace=False)
    found = state.vm_actions.get(vm.key)
    if found is None:
        found = VmActions(vm, state.provider, action_options(state), state.waivers)  # type: ignore[arg-type]
        resume = state.resumes.get(vm.key)
        if resume is not None and resume.accepted:
            found.verdict_run = resume.run_id
        state.vm_actions[vm.key] = found
    return found


def action_options(state: RunState) -> ActionOptions:
    """What the steps of this run need of its options, and who runs them."""
    options = state.options
    operator = state.operator()
    return ActionOptions(
        apply=options.apply,
        run_id=state.run_id,
        operator=str(
            operator.get("upn") or operator.get("appid") or operator.get("oid") or operator.get("local_user")
        ),
        lease_ttl=options.lease_ttl,
        break_lease=options.break_lease,
        capture=options.capture,
        sysprep_args=options.sysprep_args,
        sysprep_deadline=options.sysprep_deadline,
        guest_timeout=options.guest_timeout,
        scan_deadline=options.scan_deadline,
    )


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Progress lines of long waits (sysprep, deallocate, scans) reach the terminal as they
    happen: pytest captures file descriptor 2 too while a case runs, so a plain write to stderr
    would show only after a failure, and never for a case that passes."""
    capture = config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        return

    def past_capture(line: str) -> None:
        with capture.global_and_fixture_disabled():
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    progress.set_sink(past_capture)


def pytest_unconfigure(config: pytest.Config) -> None:
    progress.set_sink(None)


def report_unfinished_steps(state: RunState) -> None:
    """Before the audit is written (controller): the steps whose reporting case never finished
    (Ctrl-C, or SIGTERM, which the plugin turns into it) reach it too, so it shows what the run
    did."""
    for key, actions in state.vm_actions.items():
        reported = state.step_records.setdefault(key, [])
        seen = {(s["step"], s["run_id"], s["started"]) for s in reported}
        for name in ORDER:
            record = actions.records.get(name)
            if record is not None and (name, record.run_id, record.started) not in seen:
                reported.append(record.as_dict())


def _step(request: pytest.FixtureRequest, actions: VmActions, name: str, body: Any) -> StepRecord:
    # imported here: a plugin module imported early by another is not assertion-rewritten
    from imageready.recording import journal_step

    config = request.config
    apply = actions.options.apply

    def journaled() -> Outcome:
        # journal first: the step's start is on disk before it does anything (JournalError
        # fails the step here, before acting)
        journal_step(config, actions.records[name].as_dict(), apply=apply)
        return body()  # type: ignore[no-any-return]

    try:
        return actions.run(name, journaled)
    finally:
        record = actions.records.get(name)
        if record is not None and record.status != "running":
            journal_step(config, record.as_dict(), apply=apply)
        if record is not None:
            # done or failed: the first case to run a step reports it to the audit; every case
            # whose set-up went through it shows it in Allure, in the order the steps ran
            show_step(request.node, record)
            if name not in actions.reported:
                actions.reported.add(name)
                record_step(request.node, record.as_dict())


def step_outcome(record: StepRecord) -> None:
    """In a step's test: plan mode and not-requested steps skip; anything else must be done."""
    if record.status == "planned":
        pytest.skip(f"plan: {record.detail}")
    if record.status == "skipped":
        pytest.skip(record.detail)
    assert record.status in ("done", "already done"), record.detail


@pytest.fixture
def vm_actions(request: pytest.FixtureRequest, vm: VmRef) -> VmActions:
    """The action steps of ``vm`` in this run (memoized per VM)."""
    return vm_actions_for(request, vm)


def _lock(request: pytest.FixtureRequest, actions: VmActions) -> Callable[[], Outcome]:
    return actions.acquire


def _guest(request: pytest.FixtureRequest, actions: VmActions) -> Callable[[], Outcome]:
    facts = run_state(request.config).facts(actions.vm)

    def body() -> Outcome:
        if facts.os_type == "Linux":
            from imageready.steps.linux import deprovision

            return deprovision(actions, facts, _linux_scan(request, actions))
        if facts.os_type == "Windows":
            from imageready.steps.windows import sysprep

            return sysprep(actions, facts)
        raise RuntimeError(f"unknown OS type {facts.os_type!r}")

    return body


def _linux_scan(request: pytest.FixtureRequest, actions: VmActions) -> Any:
    from imageready.scan import DeprovisionContext, fingerprint_key, rules_for, scan_guest

    rules = rules_for("Linux", run_state(request.config).options.scan_rules)

    def run(guest: Any, run_first: str) -> Any:
        return scan_guest(
            guest,
            rules,
            key=fingerprint_key(),
            deadline=time.monotonic() + actions.options.scan_deadline,
            context=DeprovisionContext(action="none"),
            progress=progress.emit,
            run_first=run_first,
        )

    return run


def _capture(request: pytest.FixtureRequest, actions: VmActions) -> Callable[[], Outcome]:
    from imageready.steps.capture import capture

    return lambda: capture(actions)


#: what each step of ``imageready.steps.STEPS`` does, given its case's request and the VM's steps
BODIES: dict[str, Callable[[pytest.FixtureRequest, VmActions], Callable[[], Outcome]]] = {
    "lock": _lock,
    "guest": _guest,
    "deallocate": lambda request, actions: lambda: deallocate(actions),
    "generalize": lambda request, actions: lambda: generalize(actions),
    "verify": lambda request, actions: lambda: verify(actions),
    "capture": _capture,
    "unlock": lambda request, actions: actions.release,
}


def _step_fixture(number: int, step: ActionStep, previous: ActionStep | None) -> Any:
    """The fixture of ``step``: it requests the fixture of the step before it (so pytest sets the
    chain up in the table's order) and the VM's steps, and runs the step once per VM per run."""
    body = BODIES[step.name]

    def fixture(request: pytest.FixtureRequest, vm_actions: VmActions, **earlier: StepRecord) -> StepRecord:
        return _step(request, vm_actions, step.name, body(request, vm_actions))

    # pytest reads a fixture's arguments from its signature: the step before, by its fixture's
    # name, ahead of vm_actions (the order pytest sets them up in)
    names = ["request", *([previous.fixture] if previous is not None else []), "vm_actions"]
    fixture.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )
    fixture.__name__ = fixture.__qualname__ = step.fixture
    irreversible = " Irreversible." if step.irreversible else ""
    fixture.__doc__ = f"Step {number}: {step.summary}.{irreversible}"
    return pytest.fixture(name=step.fixture)(fixture)


def _chain() -> dict[str, Any]:
    return {
        step.fixture: _step_fixture(number, step, STEPS[number - 2] if number > 1 else None)
        for number, step in enumerate(STEPS, start=1)
    }


# the step fixtures (lease, guest_generalized, ..., unlocked), module attributes for pytest to find
globals().update(_chain())

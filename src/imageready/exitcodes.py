"""Exit codes of an imageready run (docs/ci/exit-codes.md).

pytest's own codes stay as they are (2 interrupted, 3 internal error, 4 usage error, 5 no tests);
when tests failed (pytest's 1), the cause is named more precisely so a pipeline can branch on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from imageready.categories import Category

if TYPE_CHECKING:
    from imageready.runstate import RunState

GREEN = 0
RED_CHECKS = 1  # a check failed: the VM is not ready (policy), or any other test failed
INTERRUPTED = 2
INTERNAL_ERROR = 3
USAGE_ERROR = 4
NO_TESTS = 5
ACTIONS_BLOCKED = 10  # checks passed in this run, but an action's gate stayed shut (e.g. verdict refused)
ACTION_FAILED = 11  # an action step started and failed: the VM may be half-done; re-run to resume
INFRASTRUCTURE_ERROR = 12  # Azure API, guest unreachable or timeout: not a verdict on the VM

#: error categories that say the environment failed, not the VM (docs/ci/exit-codes.md lists them)
INFRA_CATEGORIES = frozenset(category for category in Category if category.infrastructure)
#: case outcomes that make a check run red
RED_OUTCOMES = frozenset({"failed", "error", "xfailed", "xpassed", "skipped"})
#: the order in which codes win when several apply (docs/ci/exit-codes.md)
PRECEDENCE = (ACTION_FAILED, INFRASTRUCTURE_ERROR, RED_CHECKS, ACTIONS_BLOCKED, GREEN)


def for_vm(
    cases: Iterable[Mapping[str, Any]],
    steps: Iterable[Mapping[str, Any]],
    gate: Mapping[str, Any] | None,
    checks_status: str = "green",
) -> int:
    """The code a run of this VM alone ends with, from its record (the audit's ``vms[]``): what a
    fleet pipeline branches on per VM. A run's own code is the first of its VMs' codes in
    ``PRECEDENCE`` (run-level causes aside: interrupted, usage, a record that could not be kept)."""
    if any(step.get("status") in ("failed", "interrupted") for step in steps):
        return ACTION_FAILED
    cases = list(cases)
    if any(c.get("outcome") == "error" and c.get("category") in INFRA_CATEGORIES for c in cases):
        return INFRASTRUCTURE_ERROR
    if any(c.get("outcome") in RED_OUTCOMES for c in cases) or (
        checks_status == "incomplete" and not _covered_by_verdict(gate)
    ):
        return RED_CHECKS
    if gate is not None and not gate.get("open"):
        return ACTIONS_BLOCKED
    return GREEN


def for_category(category: Category) -> int:
    """The code of a run in which one case errored with ``category`` and nothing else went wrong:
    the infrastructure failing is not a verdict on the VM (12); an action step that failed may
    have left the VM half done (11); anything else is a finding on the VM (1)."""
    if category.infrastructure:
        return INFRASTRUCTURE_ERROR
    if category is Category.ACTION_FAILED:
        return ACTION_FAILED
    return RED_CHECKS


def _covered_by_verdict(gate: Mapping[str, Any] | None) -> bool:
    """An actions stage opened by a verdict (or a resume) judges only the cases it runs again;
    the verdict covers the rest, so "incomplete" is not red there."""
    return gate is not None and bool(gate.get("open")) and gate.get("via") in ("verdict", "resume")


def most_severe(codes: Iterable[int]) -> int:
    found = set(codes)
    return next((code for code in PRECEDENCE if code in found), GREEN)


def classify(exitstatus: int, state: RunState) -> int:
    """Refine pytest's "tests failed" into the imageready code that names the cause. A run whose
    checks of some VM are incomplete (deselected, not collected) never exits green: that VM's
    verdict is not green, whatever the cases that did run say. A run that may have changed a VM
    (an action step started with --apply) and then crashed, or could not write its record where
    it belongs, ends ACTION_FAILED: the audit (or the journal) says what happened, and a re-run
    resumes. Without a change, a record that could not be written is an infrastructure error."""
    from imageready import recording, reportdir

    acted = recording.acted(state.config) or (
        state.apply and any(o not in ("blocked", "skipped") for o in state.action_outcomes.values())
    )
    if exitstatus == INTERNAL_ERROR and acted:
        return ACTION_FAILED
    refined = _refine(exitstatus, state)
    if reportdir.failures() and refined in (GREEN, RED_CHECKS, ACTIONS_BLOCKED, INFRASTRUCTURE_ERROR):
        return ACTION_FAILED if acted else INFRASTRUCTURE_ERROR
    return refined


def _refine(exitstatus: int, state: RunState) -> int:
    def covered(key: str) -> bool:
        decision = state.decisions.get(key)
        return _covered_by_verdict(None if decision is None else vars(decision))

    if exitstatus == 0 and any(
        gate.status == "incomplete" and not covered(key) for key, gate in state.gates.items()
    ):
        return RED_CHECKS
    if exitstatus != 1:
        return exitstatus
    actions = state.action_outcomes.values()
    if any(outcome in ("failed", "error") for outcome in actions):
        return ACTION_FAILED
    cases = [case for gate in state.gates.values() for case in gate.cases.values()]
    if any(case.outcome == "error" and case.category in INFRA_CATEGORIES for case in cases):
        return INFRASTRUCTURE_ERROR
    if any(case.outcome in ("failed", "error", "xfailed", "xpassed", "skipped") for case in cases):
        return RED_CHECKS
    if any(outcome == "blocked" for outcome in actions):
        return ACTIONS_BLOCKED
    return RED_CHECKS

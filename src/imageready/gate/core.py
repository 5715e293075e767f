"""The gate's core: each case's record, a VM's gate from them, and why it stays shut."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from imageready.target import VmRef

GREEN_OUTCOMES = frozenset({"passed", "waived", "not_applicable"})
OUTCOMES = GREEN_OUTCOMES | {
    "failed",
    "error",
    "skipped",
    "xfailed",
    "xpassed",
    "deselected",
    "not_run",
}
VERDICT_SCHEMA = 2

GateStatus = Literal["green", "red", "incomplete", "absent"]


@dataclass
class CaseRecord:
    """One check case of one VM, as the gate and every report see it."""

    case_id: str  # the pytest node id without any xdist group suffix
    check_id: str
    title: str
    severity: str
    vm: str  # rg/name
    parameter: str  # what the case examines ("AD-Domain-Services"), "" if only the VM
    outcome: str = "not_run"
    message: str = ""  # one redacted line
    category: str = ""  # for errors: a categories.Category, as its wire string ("timeout", ...)
    waiver: dict[str, str] | None = None
    doc: str = ""
    evidence: list[str] = field(default_factory=list)  # redacted one-line summaries
    #: the facts the check read (paths from the document's root, as JSON lists) and a digest of
    #: their values: a later actions stage re-runs the case when the digest no longer holds
    facts_read: list[list[str | int]] = field(default_factory=list)
    facts_digest: str = ""

    @property
    def green(self) -> bool:
        return self.outcome in GREEN_OUTCOMES


@dataclass
class VmGate:
    """What the gate knows about one VM in this run."""

    vm: VmRef
    #: every check case the whole policy generates for this VM (collected before any selection),
    #: with its outcome; the expected set is exactly these keys
    cases: dict[str, CaseRecord] = field(default_factory=dict)
    #: check modules under the policy directory that this run did not collect at all
    missing_modules: list[str] = field(default_factory=list)
    #: check functions (``@pytest.mark.check``) of collected modules that produced no case
    missing_functions: list[str] = field(default_factory=list)

    def expect(self, record: CaseRecord) -> None:
        self.cases.setdefault(record.case_id, record)

    def record(self, case_id: str, **changes: Any) -> None:
        case = self.cases[case_id]
        for key, value in changes.items():
            setattr(case, key, value)

    @property
    def status(self) -> GateStatus:
        return gate_status(self.cases.values(), self.missing_modules, self.missing_functions)

    def blockers(self) -> list[str]:
        """Why the gate is shut, one line per blocking case, module or function (empty when green)."""
        return gate_blockers(self.cases.values(), self.missing_modules, self.missing_functions)


#: outcomes of a case this run did not judge (it was left out or never got to run)
UNJUDGED = frozenset({"deselected", "not_run"})
RED_OUTCOMES = OUTCOMES - GREEN_OUTCOMES - UNJUDGED


def gate_status(
    cases: Iterable[CaseRecord], missing_modules: Iterable[str] = (), missing_functions: Iterable[str] = ()
) -> GateStatus:
    """green: every expected case judged green and nothing of the policy left out; red: a case
    judged red; absent: no case judged at all; incomplete: anything else."""
    outcomes = [case.outcome for case in cases]
    if any(outcome not in GREEN_OUTCOMES | UNJUDGED for outcome in outcomes):
        return "red"
    if not any(outcome not in UNJUDGED for outcome in outcomes):
        return "absent"
    if list(missing_modules) or list(missing_functions) or any(o not in GREEN_OUTCOMES for o in outcomes):
        return "incomplete"
    return "green"


def gate_blockers(
    cases: Iterable[CaseRecord], missing_modules: Iterable[str] = (), missing_functions: Iterable[str] = ()
) -> list[str]:
    lines = [
        f"{c.case_id}: {describe_outcome(c)}" for c in sorted(cases, key=lambda c: c.case_id) if not c.green
    ]
    lines += [f"{m}: not collected in this run" for m in missing_modules]
    lines += [
        f"{f}: a check that produced no case (its name does not match python_functions?)"
        for f in missing_functions
    ]
    return lines


def expected_digest(case_ids: Iterable[str]) -> str:
    """SHA-256 over the sorted expected case ids: two runs expect the same cases iff equal."""
    hasher = hashlib.sha256()
    for case_id in sorted(set(case_ids)):
        hasher.update(case_id.encode("utf-8") + b"\n")
    return "sha256:" + hasher.hexdigest()


def describe_outcome(case: CaseRecord) -> str:
    words = {
        "failed": "failed",
        "error": "errored",
        "skipped": "skipped",
        "xfailed": "marked xfail (a check may not be expected to fail)",
        "xpassed": "marked xfail (a check may not be expected to fail)",
        "deselected": "deselected (left out by the command line: a node id or path subset, -k, -m, "
        "--deselect)",
        "not_run": "did not run",
    }
    text = words.get(case.outcome, case.outcome)
    return f"{text}: {case.message}" if case.message and case.outcome != "deselected" else text

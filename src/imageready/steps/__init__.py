"""The action steps for one VM: lock, generalize the guest (waagent or sysprep), deallocate, mark
generalized, verify, optionally capture, unlock.

Every step is idempotent: it first checks whether its post-condition already holds ("already
done"), so an interrupted run re-run with the same command finishes the job and the audit shows
both runs. Without --apply, a step only says what it would do. Every step records start, end,
Azure request ids and its result for the audit, and shows progress on long waits. docs/actions.md
tells the whole design.

(The package: ``records`` the one table of steps and what a step returns and records,
``vm_actions`` the steps of one VM in one run with the lease and the step tags (every write to the
VM), ``lease`` the lease's value; the steps themselves: ``linux`` (waagent) and ``windows``
(sysprep, with ``sysprep_run``, ``sysprep_proof``, ``sysprep_follow`` and ``sysprep_failure``),
``platform`` (deallocate, generalize, verify), ``capture``; and ``copy`` for copy-first.) This
module re-exports what the rest of imageready imports.
"""

from imageready.steps.records import (
    ORDER,
    RECORDED_ON_VM,
    STEPS,
    ActionOptions,
    ActionStep,
    Outcome,
    StepFailed,
    StepRecord,
    call_record,
    utc_now,
)
from imageready.steps.vm_actions import VmActions

__all__ = [
    "ORDER",
    "RECORDED_ON_VM",
    "STEPS",
    "ActionOptions",
    "ActionStep",
    "Outcome",
    "StepFailed",
    "StepRecord",
    "VmActions",
    "call_record",
    "utc_now",
]

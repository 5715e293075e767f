"""The vocabulary of the action steps: the one table of steps (name, fixture, irreversible or
not), the options an action run takes, what a step's body returns (``Outcome``) and what the audit
keeps of it (``StepRecord``, with the Azure calls it made)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from typing import Any

from imageready.categories import Category


@dataclass(frozen=True)
class ActionStep:
    """One action step of a VM: its name (in records, tags and the audit), the fixture that runs
    it (imageready.action_fixtures), whether what it does to the VM can never be undone, and
    whether it records itself in a tag on the VM once done (the VM still takes tags then)."""

    name: str
    fixture: str
    irreversible: bool
    summary: str
    recorded_on_vm: bool = False


#: The action steps, in the order they run: the one table from which the fixture chain
#: (imageready.action_fixtures: each step's fixture requests the one before), the audit's order
#: (imageready.journal) and the order of an action's Allure page are built.
STEPS = (
    ActionStep("lock", "lease", False, "take the VM's lease (an If-Match tag): no other run acts on it"),
    ActionStep(
        "guest",
        "guest_generalized",
        True,
        "deprovision (Linux: waagent) or sysprep (Windows) the guest, proven from its state",
        recorded_on_vm=True,
    ),
    ActionStep(
        "deallocate",
        "deallocated",
        False,
        "deallocate the VM and wait for PowerState/deallocated",
        recorded_on_vm=True,
    ),
    ActionStep("generalize", "generalized", True, "mark the VM generalized in Azure (it never starts again)"),
    ActionStep("verify", "verified", False, "read back OSState/generalized from the instance view"),
    ActionStep("capture", "captured", False, "(opt-in, --capture-as) a managed image or gallery version"),
    ActionStep("unlock", "unlocked", False, "release the lease"),
)
ORDER = tuple(step.name for step in STEPS)
#: the steps that record themselves on the VM once done (the VM still takes tags then)
RECORDED_ON_VM = tuple(step.name for step in STEPS if step.recorded_on_vm)


class StepFailed(Exception):
    """A step could not reach its post-condition; the message is one line."""

    category = Category.ACTION_FAILED


@dataclass
class ActionOptions:
    apply: bool
    run_id: str
    operator: str
    lease_ttl: dt.timedelta = dt.timedelta(minutes=30)
    break_lease: bool = False
    capture: tuple[str, ...] | None = None  # ("image", NAME) | ("gallery", G, D, V)
    sysprep_args: tuple[str, ...] = ("/generalize", "/oobe", "/shutdown")
    sysprep_deadline: float = 3600.0
    guest_timeout: float = 300.0
    scan_deadline: float = 900.0


@dataclass
class StepRecord:
    """What the audit keeps about one step of one VM."""

    vm: str
    step: str
    run_id: str
    status: str = "running"  # done | already done | planned | skipped | failed | interrupted
    started: str = ""
    ended: str = ""
    detail: str = ""
    azure: list[dict[str, Any]] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)
    attachments: dict[str, str] = field(default_factory=dict)  # name -> redacted text

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("attachments")
        return data


@dataclass
class Outcome:
    status: str  # done | already done | planned | skipped
    detail: str
    evidence: dict[str, Any] = field(default_factory=dict)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def call_record(call: Any) -> dict[str, Any]:
    def when(value: float | None) -> str:
        if value is None:
            return ""
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    return {
        "operation": call.operation,
        "resource_id": call.resource_id,
        "status": call.status,
        "started": when(call.started),
        "ended": when(call.ended),
        "request_ids": list(call.request_ids),
        "correlation_id": call.correlation_id,
        "error": call.error,
    }

"""The action steps for one VM: lock, generalize the guest (waagent or sysprep), deallocate, mark
generalized, verify, optionally capture, unlock.

Every step is idempotent: it first checks whether its post-condition already holds ("already
done"), and records its completion in a tag on the VM, so an interrupted run re-run with the same
command finishes the job and the audit shows both runs. Without --apply, a step only says what it
would do. Every step records start, end, Azure request ids and its result for the audit, and
shows progress on long waits.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from imageready import progress
from imageready.azure_errors import AzureError, AzurePreconditionFailed
from imageready.facts.gather import AzureFactsProvider
from imageready.gate import STEP_TAG, WaiverBook, parse_step_tag
from imageready.redact import one_line, redact
from imageready.steps.lease import LEASE_TAG, Lease, new_lease
from imageready.target import VmRef

ORDER = ("lock", "guest", "deallocate", "generalize", "verify", "capture", "unlock")
#: power states of an operation under way (Azure refuses another operation until it ends)
TRANSITIONAL = ("starting", "stopping", "deallocating")
SETTLE_POLL_SECONDS = 1.0


class StepFailed(Exception):
    """A step could not reach its post-condition; the message is one line."""

    category = "action failed"


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


def _utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class VmActions:
    """The steps of one VM in one run, each run at most once (memoized)."""

    def __init__(
        self,
        vm: VmRef,
        provider: AzureFactsProvider,
        options: ActionOptions,
        waivers: WaiverBook | None = None,
    ) -> None:
        self.vm = vm
        self.provider = provider
        self.options = options
        self.waivers = waivers
        self.reported: set[str] = set()
        self.records: dict[str, StepRecord] = {}
        self.lease: Lease | None = None
        self._pending_lease: Lease | None = None
        #: the run whose green verdict opened the gate: this run's, or the interrupted run's
        #: this one resumes. Step tags name it, so that any later re-run finds that verdict.
        self.verdict_run = options.run_id
        self._model: dict[str, Any] | None = None

    # --- running steps -------------------------------------------------------------------

    def run(self, name: str, body: Callable[[], Outcome]) -> StepRecord:
        """Run step ``name`` once; a failed step fails every later request for it too."""
        record = self.records.get(name)
        if record is not None:
            if record.status == "failed":
                raise StepFailed(f"step '{name}' failed earlier in this run: {record.detail}")
            return record
        record = StepRecord(vm=self.vm.key, step=name, run_id=self.options.run_id, started=_utc())
        self.records[name] = record
        azure = self.provider.azure(self.vm)
        first_call = len(azure.calls)
        started = time.monotonic()
        progress.emit(f"{self.vm.key}: step {name}: starting")
        try:
            outcome = body()
        except Exception as exc:
            record.status = "failed"
            record.detail = one_line(str(exc)) or type(exc).__name__
            progress.emit(f"{self.vm.key}: step {name}: failed: {record.detail}")
            raise StepFailed(f"{self.vm.key}: step '{name}' failed: {record.detail}") from exc
        except BaseException:
            # Ctrl-C or SIGTERM (the plugin turns it into KeyboardInterrupt): the audit says so,
            # and a re-run resumes from what the VM's tags record
            record.status = "interrupted"
            record.detail = f"interrupted during step {name}; re-run the same command to resume"
            progress.emit(f"{self.vm.key}: step {name}: interrupted")
            raise
        finally:
            record.ended = _utc()
            record.azure = [call_record(c) for c in azure.calls[first_call:]]
        record.status = outcome.status
        record.evidence = outcome.evidence
        if outcome.status == "already done" and name not in ("lock", "unlock"):
            earlier = self.step_tag(name)
            if self.step_done(name):
                outcome.detail += f" (recorded on the VM: {earlier})"
            elif self.options.apply:
                self.mark_done(name)
        elif outcome.status == "done" and self.options.apply and name not in ("lock", "unlock"):
            self.mark_done(name)
        record.detail = redact(outcome.detail)
        progress.emit(f"{self.vm.key}: step {name}: {outcome.status} in {time.monotonic() - started:.1f} s")
        return record

    # --- the VM as Azure sees it now -----------------------------------------------------

    def vm_model(self, *, instance_view: bool = True) -> dict[str, Any]:
        self._model = self.provider.azure(self.vm).get_vm(self.vm, instance_view=instance_view)
        return self._model

    def statuses(self) -> dict[str, str]:
        """{"PowerState": "running", "OSState": "generalized", "ProvisioningState": "succeeded"}"""
        model = self.vm_model(instance_view=True)
        found: dict[str, str] = {}
        for status in (model.get("properties", {}).get("instanceView") or {}).get("statuses") or []:
            kind, _, value = str(status.get("code", "")).partition("/")
            found.setdefault(kind, value)
        return found

    def step_tag(self, name: str) -> str | None:
        model = self._model or self.vm_model(instance_view=False)
        value = (model.get("tags") or {}).get(STEP_TAG + name)
        return str(value) if value else None

    def step_done(self, name: str) -> bool:
        """An earlier run (or this one) recorded step ``name`` as done on the VM."""
        return parse_step_tag(self.step_tag(name)).get("state") == "done"

    def mark_started(self, name: str, **facts: str) -> None:
        """Before an irreversible guest step: a re-run then knows to resume, not to start over.
        ``facts`` (short ``key=value`` words) are what a resuming run cannot learn any more once
        the guest step has run, e.g. the deleted user's name."""
        self._mark(name, "started", facts)

    def mark_failed(self, name: str, why: str, **facts: str) -> None:
        """After an irreversible guest step whose proof failed: no later run may call it done."""
        self._mark(name, "failed", {**facts, "why": why})

    def _mark(self, name: str, state: str, facts: dict[str, str]) -> None:
        extra = "".join(f" {key}={value}" for key, value in facts.items() if value)

        def change(tags: dict[str, str]) -> dict[str, str]:
            self._ours(tags)
            tags[STEP_TAG + name] = f"{state} {self._tag_fields()}{extra}"[:256]
            tags[LEASE_TAG] = self._renewed().render()
            return tags

        self._patch_tags(change, f"record step {name} as {state}")

    # --- tags: lease and step marks, always with If-Match ------------------------------------

    def _patch_tags(self, change: Callable[[dict[str, str]], dict[str, str]], what: str) -> None:
        azure = self.provider.azure(self.vm)
        for _attempt in range(3):
            model = azure.get_vm(self.vm, instance_view=False)
            etag = model.get("etag")
            tags = change(dict(model.get("tags") or {}))
            try:
                self._model = azure.update_tags(self.vm, tags, if_match=str(etag) if etag else None)
                if LEASE_TAG in tags and self._pending_lease is not None:
                    self.lease, self._pending_lease = self._pending_lease, None
                return
            except AzurePreconditionFailed:
                continue  # changed under us: re-read, re-check the lease, retry
        raise StepFailed(f"{self.vm.key}: could not {what}: the VM kept changing (If-Match failed 3 times)")

    def _ours(self, tags: dict[str, str]) -> None:
        current = Lease.parse(tags.get(LEASE_TAG))
        if current is None or current.run_id != self.options.run_id:
            holder = current.describe() if current else "nobody"
            raise StepFailed(f"{self.vm.key}: lost the lease (now held by {holder})")

    def clear_mark(self, name: str) -> None:
        """Forget a started step that failed without changing the guest (a re-run starts over)."""

        def change(tags: dict[str, str]) -> dict[str, str]:
            self._ours(tags)
            tags.pop(STEP_TAG + name, None)
            tags[LEASE_TAG] = self._renewed().render()
            return tags

        self._patch_tags(change, f"clear the mark of step {name}")

    def mark_done(self, name: str) -> None:
        """Record a finished step on the VM and renew the lease, in one conditional PATCH."""

        def change(tags: dict[str, str]) -> dict[str, str]:
            self._ours(tags)
            tags[STEP_TAG + name] = f"done {self._tag_fields()}"
            tags[LEASE_TAG] = self._renewed().render()
            return tags

        self._patch_tags(change, f"record step {name}")

    def _tag_fields(self) -> str:
        by = f" by={self.options.run_id}" if self.verdict_run != self.options.run_id else ""
        return f"run={self.verdict_run} at={_utc()}{by}"

    def _renewed(self) -> Lease:
        """The lease to write; it becomes ours (``self.lease``) only once the PATCH succeeded."""
        self._pending_lease = new_lease(self.options.run_id, self.options.operator, self.options.lease_ttl)
        return self._pending_lease

    def renew_lease(self) -> None:
        if not self.options.apply or self.lease is None:
            return

        def change(tags: dict[str, str]) -> dict[str, str]:
            self._ours(tags)
            tags[LEASE_TAG] = self._renewed().render()
            return tags

        self._patch_tags(change, "renew the lease")

    # --- lock and unlock -----------------------------------------------------------------

    def acquire(self) -> Outcome:
        model = self.vm_model(instance_view=False)
        now = dt.datetime.now(dt.UTC)
        held = Lease.parse((model.get("tags") or {}).get(LEASE_TAG))
        takeover = ""
        if held is not None and held.run_id != self.options.run_id:
            if held.expired(now):
                takeover = f"took over the EXPIRED lease of {held.describe()}"
            elif held.holder_dead_here():
                takeover = f"took over the lease of {held.describe()}: that process is gone"
            elif self.options.break_lease:
                takeover = f"BROKE the live lease of {held.describe()} (--break-lease)"
            else:
                raise StepFailed(
                    f"{self.vm.key} is locked by {held.describe()}; wait for it, or pass "
                    "--break-lease once you know that run is dead"
                )
        if not self.options.apply:
            state = f"held by {held.describe()}" if held and not takeover else "free"
            return Outcome("planned", f"would take the lease on {self.vm.key} (now {state})")
        if takeover:
            progress.emit(f"{self.vm.key}: {takeover}")

        def change(tags: dict[str, str]) -> dict[str, str]:
            current = Lease.parse(tags.get(LEASE_TAG))
            if current is not None and current != held and current.run_id != self.options.run_id:
                raise StepFailed(f"{self.vm.key}: lost the race for the lease to {current.describe()}")
            tags[LEASE_TAG] = self._renewed().render()
            return tags

        self._patch_tags(change, "take the lease")
        assert self.lease is not None
        detail = f"lease {self.lease.describe()}" + (f"; {takeover}" if takeover else "")
        return Outcome("done", detail, {"lease": self.lease.render(), "takeover": takeover})

    def release(self) -> Outcome:
        if not self.options.apply:
            return Outcome("planned", "would release the lease")
        if self.lease is None:
            return Outcome("skipped", "no lease held by this run")

        def change(tags: dict[str, str]) -> dict[str, str]:
            self._ours(tags)
            tags.pop(LEASE_TAG, None)
            return tags

        self._patch_tags(change, "release the lease")
        self.lease = None
        return Outcome("done", "lease released")

    def release_quietly(self) -> None:
        """End of run, whatever happened: give the lease back if we still hold it."""
        if self.lease is None or not self.options.apply:
            return
        try:
            self.release()
        except (StepFailed, AzureError) as exc:
            progress.emit(f"{self.vm.key}: could not release the lease: {exc}")

    # --- platform steps ------------------------------------------------------------------

    def settled_statuses(self) -> dict[str, str]:
        """The instance view once no power operation is under way. A run killed mid-operation
        leaves it running in Azure, which refuses another until it ends: wait for it."""
        state = self.statuses()
        if state.get("PowerState") not in TRANSITIONAL or not self.options.apply:
            return state
        deadline = float(getattr(self.provider.azure(self.vm), "lro_deadline", 1800.0))
        ticker = progress.Ticker(f"{self.vm.key}: an earlier operation is under way", deadline=deadline)
        while state.get("PowerState") in TRANSITIONAL:
            if ticker.elapsed > deadline:
                raise StepFailed(
                    f"{self.vm.key} stayed PowerState/{state.get('PowerState')} for {deadline:.0f} s"
                )
            ticker.tick(f"PowerState/{state.get('PowerState')}")
            time.sleep(SETTLE_POLL_SECONDS)
            state = self.statuses()
        return state

    def deallocate(self) -> Outcome:
        state = self.settled_statuses()
        if state.get("PowerState") == "deallocated":
            return Outcome("already done", "PowerState/deallocated")
        if not self.options.apply:
            return Outcome("planned", f"would deallocate {self.vm.key} (now {state.get('PowerState')})")
        self.renew_lease()
        self.provider.drop_guest(self.vm)
        self.provider.azure(self.vm).deallocate(self.vm)
        after = self.statuses().get("PowerState")
        if after != "deallocated":
            raise StepFailed(f"{self.vm.key} is {after} after deallocate, not deallocated")
        return Outcome("done", "PowerState/deallocated")

    def generalize(self) -> Outcome:
        state = self.settled_statuses()
        if state.get("OSState") == "generalized":
            return Outcome("already done", "OSState/generalized")
        if not self.options.apply:
            return Outcome("planned", f"would mark {self.vm.key} generalized (it can never start again)")
        if state.get("PowerState") != "deallocated":
            raise StepFailed(f"{self.vm.key} is {state.get('PowerState')}: generalize needs it deallocated")
        self.renew_lease()
        self.provider.azure(self.vm).generalize(self.vm)
        return Outcome("done", "marked generalized")

    def verify(self) -> Outcome:
        state = self.statuses()
        if not self.options.apply and state.get("OSState") != "generalized":
            return Outcome("planned", "would verify OSState/generalized in the instance view")
        if state.get("OSState") != "generalized":
            raise StepFailed(f"{self.vm.key}: the instance view does not show OSState/generalized ({state})")
        return Outcome(
            "done",
            f"instance view: {', '.join(f'{k}/{v}' for k, v in sorted(state.items()))}",
            {"statuses": state},
        )


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

"""The action steps of one VM in one run (``VmActions``): each step run once and recorded, the VM
as Azure shows it, and every write to the VM: the lease and the step tags, always with If-Match.

Azure takes no change to a generalized VM, tags included. So the steps before generalize record
themselves in tags on the VM (``imageready-step-NAME``) and the lease lives there too; the last
write to the VM comes right before ``generalize`` (``write_final_lease``) and turns the lease
*final*; the steps after it record themselves in the audit and on the artifact a capture creates,
never on the VM. No code path writes to a VM that Azure shows generalized (``_patch_tags`` refuses).
docs/actions.md tells the whole design.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

from imageready import progress
from imageready.azure_errors import AzureError, AzurePreconditionFailed
from imageready.facts.gather import AzureFactsProvider
from imageready.gate import STEP_TAG, WaiverBook, parse_step_tag, sign_step_tag, step_tag_problem
from imageready.redact import one_line, redact
from imageready.signing import verdict_key
from imageready.steps.lease import LEASE_TAG, THEN_NOTHING, Lease, capture_claim, new_lease
from imageready.steps.records import (
    RECORDED_ON_VM,
    ActionOptions,
    Outcome,
    StepFailed,
    StepRecord,
    call_record,
    utc_now,
)
from imageready.target import VmRef


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
        #: what the last read of the instance view showed (None: not read yet)
        self.generalized: bool | None = None
        #: this run wrote the final lease (the last write to the VM, just before generalize)
        self.sealed = False

    # --- running steps -------------------------------------------------------------------

    def run(self, name: str, body: Callable[[], Outcome]) -> StepRecord:
        """Run step ``name`` once; a failed step fails every later request for it too."""
        record = self.records.get(name)
        if record is not None:
            if record.status == "failed":
                raise StepFailed(f"step '{name}' failed earlier in this run: {record.detail}")
            return record
        record = StepRecord(vm=self.vm.key, step=name, run_id=self.options.run_id, started=utc_now())
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
            # and a re-run resumes from what Azure shows (the VM, its tags, the capture)
            record.status = "interrupted"
            record.detail = f"interrupted during step {name}; re-run the same command to resume"
            progress.emit(f"{self.vm.key}: step {name}: interrupted")
            raise
        finally:
            record.ended = utc_now()
            record.azure = [call_record(c) for c in azure.calls[first_call:]]
        record.status = outcome.status
        record.evidence = outcome.evidence
        if outcome.status in ("done", "already done"):
            outcome.detail += self._record(name, outcome.status)
        record.detail = redact(outcome.detail)
        progress.emit(f"{self.vm.key}: step {name}: {outcome.status} in {time.monotonic() - started:.1f} s")
        return record

    # --- the VM as Azure sees it now -----------------------------------------------------

    def vm_model(self, *, instance_view: bool = True) -> dict[str, Any]:
        self._model = self.provider.azure(self.vm).get_vm(self.vm, instance_view=instance_view)
        if instance_view:
            self.generalized = _statuses(self._model).get("OSState") == "generalized"
        return self._model

    def statuses(self) -> dict[str, str]:
        """{"PowerState": "running", "OSState": "generalized", "ProvisioningState": "succeeded"}"""
        return _statuses(self.vm_model(instance_view=True))

    def _record(self, name: str, status: str) -> str:
        """Record a finished step where Azure allows it; returns what to add to its detail.

        Before generalize the VM takes tags: the guest and deallocate steps are tagged done (an
        earlier run's tag is kept and cited). From generalize on, the VM takes none: generalize is
        recorded by the last write before it, verify and capture by the audit (and a capture on
        the artifact it makes)."""
        earlier = self.step_tag(name)
        if name in RECORDED_ON_VM:
            if status == "already done" and self.step_done(name):
                return f" (recorded on the VM: {earlier})"
            if self.generalized:
                return " (the VM is generalized and takes no tag: recorded in the audit only)"
            if self.options.apply:
                self.mark_done(name)
            return ""
        if name == "generalize" and status == "already done" and earlier:
            return f" (recorded on the VM before generalize: {earlier})"
        return ""

    def step_tag(self, name: str) -> str | None:
        """Step ``name``'s tag on the VM, if it can be trusted (signed with the pipeline's key for
        this VM and OS disk, when there is a key); an untrusted one counts as none (the gate has
        refused to resume over it already)."""
        model = self._model or self.vm_model(instance_view=False)
        value = (model.get("tags") or {}).get(STEP_TAG + name)
        if not value or step_tag_problem(str(value), name, model, verdict_key()) is not None:
            return None
        return str(value)

    def _signed(self, name: str, body: str) -> str:
        """The value of step tag ``name`` for ``body``: signed for this VM and OS disk."""
        model = self._model or self.vm_model(instance_view=False)
        return sign_step_tag(body, name, model, verdict_key())

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
            tags[STEP_TAG + name] = self._signed(name, f"{state} {self._tag_fields()}{extra}")
            tags[LEASE_TAG] = self._renewed().render()
            return tags

        self._patch_tags(change, f"record step {name} as {state}")

    # --- tags: lease and step marks, always with If-Match ------------------------------------

    def _patch_tags(self, change: Callable[[dict[str, str]], dict[str, str]], what: str) -> None:
        azure = self.provider.azure(self.vm)
        for _attempt in range(3):
            # the instance view too: a generalized VM takes no tag, and this is the one place that
            # writes tags, so nothing is ever sent to one
            model = azure.get_vm(self.vm, instance_view=True)
            self.generalized = _statuses(model).get("OSState") == "generalized"
            if self.generalized:
                raise StepFailed(
                    f"{self.vm.key}: could not {what}: the VM is generalized and Azure takes no change to "
                    "it, not even a tag"
                )
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
            tags[STEP_TAG + name] = self._signed(name, f"done {self._tag_fields()}")
            tags[LEASE_TAG] = self._renewed().render()
            return tags

        self._patch_tags(change, f"record step {name}")

    def _tag_fields(self) -> str:
        by = f" by={self.options.run_id}" if self.verdict_run != self.options.run_id else ""
        return f"run={self.verdict_run} at={utc_now()}{by}"

    def _renewed(self) -> Lease:
        """The lease to write; it becomes ours (``self.lease``) only once the PATCH succeeded."""
        self._pending_lease = new_lease(self.options.run_id, self.options.operator, self.options.lease_ttl)
        return self._pending_lease

    def renew_lease(self) -> None:
        """Renew the lease, until the final one is written: that one covers the rest of the run
        (the VM takes no write after generalize, so it can be renewed no more)."""
        if not self.options.apply or self.lease is None or self.sealed:
            return

        def change(tags: dict[str, str]) -> dict[str, str]:
            self._ours(tags)
            tags[LEASE_TAG] = self._renewed().render()
            return tags

        self._patch_tags(change, "renew the lease")

    # --- lock and unlock -----------------------------------------------------------------

    def acquire(self) -> Outcome:
        model = self.vm_model(instance_view=True)
        now = dt.datetime.now(dt.UTC)
        held = Lease.parse((model.get("tags") or {}).get(LEASE_TAG))
        if self.generalized:
            return self._acquire_generalized(held, now)
        takeover = self._takeover(held, now, "")
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

    def _takeover(self, held: Lease | None, now: dt.datetime, work: str) -> str:
        """ "" if nobody else holds ``held``, what this run takes over (said loudly), or a refusal."""
        if held is None or held.run_id == self.options.run_id:
            return ""
        if held.expired(now):
            return f"took over the EXPIRED lease of {held.describe()}"
        if held.holder_dead_here():
            return f"took over the lease of {held.describe()}: that process is gone"
        if self.options.break_lease:
            return f"BROKE the live lease of {held.describe()} (--break-lease)"
        raise StepFailed(
            f"{self.vm.key} is locked by {held.describe()}{work}; wait for it, or pass "
            "--break-lease once you know that run is dead"
        )

    def _acquire_generalized(self, held: Lease | None, now: dt.datetime) -> Outcome:
        """A generalized VM takes no lease (no write at all). What is left to do on it is reading
        it and, with --capture-as, capturing it; another run binds this one only if it claimed that
        very capture (its final lease names it) and it is not there yet."""
        from imageready.steps.capture import capture_target, captured

        frozen = f"; the final lease of {held.describe()} stays on it" if held else ""
        evidence: dict[str, Any] = {"lease": "", "generalized": True, "found": held.render() if held else ""}
        why = f"no lease written: {self.vm.key} is generalized and Azure takes no change to it"
        target = capture_target(self)
        if target is None:
            return Outcome(
                "done" if self.options.apply else "planned",
                f"{why}; this run only reads it{frozen}",
                evidence,
            )
        artifact, api, _ = target
        if captured(self, artifact, api) is not None:
            return Outcome(
                "done" if self.options.apply else "planned",
                f"{why}; {artifact} exists already{frozen}",
                evidence,
            )
        claim = capture_claim(artifact)
        binding = held is not None and held.then != THEN_NOTHING and held.then in ("", claim)
        takeover = self._takeover(held if binding else None, now, f", which is capturing {artifact}")
        if not self.options.apply:
            return Outcome("planned", f"would capture {artifact} under no lease: {why}{frozen}", evidence)
        if takeover:
            progress.emit(f"{self.vm.key}: {takeover}")
        evidence["takeover"] = takeover
        detail = f"{why}; {artifact} is this run's to capture" + (f"; {takeover}" if takeover else frozen)
        return Outcome("done", detail, evidence)

    def release(self) -> Outcome:
        if not self.options.apply:
            return Outcome("planned", "would release the lease")
        if self.lease is None and not self.sealed:
            if self.generalized:
                return Outcome("done", "nothing to release: this run wrote no lease (the VM is generalized)")
            return Outcome("skipped", "no lease held by this run")
        if self.statuses().get("OSState") == "generalized":
            final = self.lease.render() if self.lease else ""
            self.lease, self.sealed = None, False  # nothing left to give back at the end of the run
            return Outcome(
                "done",
                "the final lease stays on the VM (Azure takes no change to a generalized VM): it binds "
                "no run once its capture, if it names one, exists, and none after its expiry",
                {"final_lease": final},
            )

        def change(tags: dict[str, str]) -> dict[str, str]:
            self._ours(tags)
            tags.pop(LEASE_TAG, None)
            if self.sealed:  # generalize never happened: a re-run starts that step over
                tags.pop(STEP_TAG + "generalize", None)
            return tags

        self._patch_tags(change, "release the lease")
        self.lease = None
        self.sealed = False
        return Outcome("done", "lease released")

    def release_quietly(self) -> None:
        """End of run, whatever happened: give the lease back if we still hold it (a generalized VM
        keeps its final lease: it takes no change)."""
        if (self.lease is None and not self.sealed) or not self.options.apply:
            return
        try:
            self.release()
        except (StepFailed, AzureError) as exc:
            progress.emit(f"{self.vm.key}: could not release the lease: {exc}")

    # --- the last write, before generalize ---------------------------------------------------

    def write_final_lease(self) -> Lease:
        """The last write to the VM, just before ``imageready.steps.platform.generalize``: mark
        generalize started and turn the lease final, in one conditional write. The final lease
        cannot be renewed or released once the VM is generalized, so it lasts as long as what this
        run still does there (a generalize, a read, and the capture it names), and binds no run
        once that capture exists."""
        from imageready.steps.capture import capture_target

        target = capture_target(self)
        then = capture_claim(target[0]) if target else THEN_NOTHING
        ttl = self.options.lease_ttl
        if target:
            ttl += dt.timedelta(seconds=float(getattr(self.provider.azure(self.vm), "lro_deadline", 1800.0)))

        def change(tags: dict[str, str]) -> dict[str, str]:
            self._ours(tags)
            tags[STEP_TAG + "generalize"] = self._signed("generalize", f"started {self._tag_fields()}")
            self._pending_lease = new_lease(self.options.run_id, self.options.operator, ttl, then=then)
            tags[LEASE_TAG] = self._pending_lease.render()
            return tags

        self._patch_tags(change, "write the final lease before generalize")
        self.sealed = True
        assert self.lease is not None
        return self.lease


def _statuses(model: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for status in (model.get("properties", {}).get("instanceView") or {}).get("statuses") or []:
        kind, _, value = str(status.get("code", "")).partition("/")
        found.setdefault(kind, value)
    return found

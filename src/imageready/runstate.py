"""The state of one imageready run: targets, facts, gates, waivers, verdicts.

Lives in ``config.stash[RUN]``; the plugin's hooks and fixtures read and update it. The stash keys
of the run and of its cases are defined here too, so that checks, fixtures and steps never import
a hook module for one. (About 550 lines: the gate's decision rules, ``decide`` and ``resume``, are
the next candidate to move out, with the other engineer's split of the large modules.)
"""

from __future__ import annotations

import datetime as dt
import getpass
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from imageready import __version__
from imageready.facts import FactsProvider, VmFacts
from imageready.gate import (
    RED_OUTCOMES,
    STEP_TAG,
    UNJUDGED,
    Resume,
    VerdictDecision,
    VerdictError,
    VmGate,
    Waiver,
    WaiverBook,
    describe_outcome,
    judge_verdict,
    load_verdicts,
    parse_step_tag,
    policy_digest,
    step_tag_problem,
)
from imageready.options import RunOptions
from imageready.signing import verdict_key
from imageready.target import VmRef

T = TypeVar("T")


@dataclass(frozen=True)
class ItemInfo:
    """What imageready knows about one collected check or action case."""

    kind: str  # "check" | "action"
    vm: VmRef
    case_id: str
    check_id: str = ""
    title: str = ""
    severity: str = ""
    os: str = "any"
    doc: str = ""
    parameter: str = ""
    step: str = ""
    #: what the check needs of the run to apply (``requires=`` of its marker; imageready.applicability)
    requires: str = ""


# --- where the run keeps its state: the stash keys, defined here so that checks, fixtures and
# steps read them without importing a hook module -----------------------------------------------

#: the run (config.stash)
RUN = pytest.StashKey["RunState"]()
#: what imageready knows about a collected case (item.stash)
INFO = pytest.StashKey[ItemInfo]()
#: a case's worst phase outcome, its message and category so far (item.stash)
PHASES = pytest.StashKey[dict[str, str]]()
#: waivers applied inside a case (item.stash)
CASE_WAIVERS = pytest.StashKey[list[dict[str, str]]]()
#: why a case is not applicable, when the gate skipped it (item.stash)
NOT_APPLICABLE = pytest.StashKey[str]()
#: the facts a check case read (item.stash)
CASE_READS = pytest.StashKey[set[Any]]()
#: the action step records a case reports to the audit (item.stash)
STEP_RECORDS = pytest.StashKey[list[dict[str, Any]]]()
#: the verdict files this run wrote (config.stash)
VERDICTS_WRITTEN = pytest.StashKey[list[Path]]()
#: the audit this run wrote: audit.json, audit.html and the JSON's SHA-256 (config.stash)
AUDIT_WRITTEN = pytest.StashKey[tuple[Path, Path, str]]()


def run_state(config: pytest.Config) -> RunState:
    """The run's state (set at configure time in a session imageready is asked into)."""
    return config.stash[RUN]


def item_info(item: pytest.Item) -> ItemInfo | None:
    return item.stash.get(INFO, None)


def record_step(item: pytest.Item, step: dict[str, Any]) -> None:
    """Attach an action step's record to the case reporting it (it reaches the audit)."""
    item.stash.setdefault(STEP_RECORDS, []).append(step)


def record_waiver(item: pytest.Item, waiver: Waiver) -> None:
    """Note a waiver applied inside a case (e.g. to one sensitive-data finding)."""
    item.stash.setdefault(CASE_WAIVERS, []).append(waiver.as_record())


@dataclass(frozen=True)
class GateDecision:
    open: bool
    reasons: tuple[str, ...]
    via: str  # "checks" | "verdict" | ""


@dataclass
class RunState:
    config: pytest.Config
    #: the command line, parsed once (imageready.options)
    options: RunOptions
    #: the run's targets: the --vm values, or the copies --copy-first made of them
    vms: list[VmRef]
    waivers: WaiverBook
    policy_paths: list[Path]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    gates: dict[str, VmGate] = field(default_factory=dict)
    facts_cache: dict[str, VmFacts] = field(default_factory=dict)
    decisions: dict[str, GateDecision] = field(default_factory=dict)
    resumes: dict[str, Resume | None] = field(default_factory=dict)
    #: VMs whose verdict was written before their actions (not rewritten at the end)
    verdict_kept: set[str] = field(default_factory=set)
    #: VMs whose record (report directory ready, verdict, journal) was kept before their actions
    record_kept: set[str] = field(default_factory=set)
    blocked_actions: list[str] = field(default_factory=list)
    #: VMs some of whose check cases the command line selected (an actions-only stage selects
    #: none: it judges nothing and writes no verdict)
    checks_selected: set[str] = field(default_factory=set)
    #: facts each check's item source read to parametrize it, by (function node id, VM key)
    param_reads: dict[tuple[str, str], set[Any]] = field(default_factory=dict)
    #: actions behind a verdict: the cases whose facts changed since it, by VM key (case id ->
    #: the paths that changed); they run again live and must pass for the verdict to count
    changed_cases: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    action_outcomes: dict[str, str] = field(default_factory=dict)  # case id -> outcome
    #: step records of the actions, per VM key, in the order they finished (for the audit)
    step_records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    needs_vm: bool = False
    #: per VM key, the case ids of checks with ``requires=`` (the capture pre-flight): they read
    #: only Azure, so they still judge a VM this run resumes
    capture_cases: dict[str, set[str]] = field(default_factory=dict)
    #: the action steps of each VM acted on by this process (see imageready.steps)
    vm_actions: dict[str, Any] = field(default_factory=dict)
    _provider: FactsProvider | None = None
    _digest: str | None = None
    _verdict_documents: dict[str, tuple[Path, dict[str, Any]]] | None = None
    _operator: dict[str, str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- what the options say ------------------------------------------------------------

    @property
    def apply(self) -> bool:
        return self.options.apply

    @property
    def verdict_paths(self) -> tuple[Path, ...]:
        return self.options.verdict_paths

    @property
    def verdict_max_age(self) -> dt.timedelta:
        return self.options.verdict_max_age

    @property
    def change_ticket(self) -> str | None:
        return self.options.change_ticket

    @property
    def report_dir(self) -> Path:
        return self.options.report_dir

    @property
    def checks_dir(self) -> Path:
        return self.options.checks_dir

    @property
    def lease_ttl(self) -> dt.timedelta:
        return self.options.lease_ttl

    @property
    def capture(self) -> tuple[str, ...] | None:
        """--capture-as, parsed (None: this run captures nothing)."""
        return self.options.capture

    # --- roles in an xdist run -----------------------------------------------------------

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    @property
    def is_xdist_controller(self) -> bool:
        return not self.is_worker and self.config.pluginmanager.hasplugin("dsession")

    # --- lazily built ------------------------------------------------------------------

    @property
    def provider(self) -> FactsProvider:
        if self._provider is None:
            provider = self.config.hook.pytest_imageready_facts_provider(
                config=self.config, options=self.options
            )
            if provider is None:
                from imageready.facts.gather import AzureFactsProvider

                provider = AzureFactsProvider(self.options)
            self._provider = provider
        return self._provider

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = self.policy_digest_of(self.policy_paths, self.harness_version)
        return self._digest

    @staticmethod
    def policy_digest_of(paths: list[Path], harness_version: str = __version__) -> str:
        """The policy digest of ``paths``: the harness's version and code are part of the
        policy, as the same checks run by other code may decide otherwise (the paths hold the
        package's own directory)."""
        return policy_digest(paths, salt=f"imageready {harness_version}")

    def gate(self, vm: VmRef) -> VmGate:
        return self.gates.setdefault(vm.key, VmGate(vm))

    def facts(self, vm: VmRef) -> VmFacts:
        with self._lock:
            cached = self.facts_cache.get(vm.key)
        if cached is None:
            cached = self.provider.facts(vm)
            with self._lock:
                self.facts_cache.setdefault(vm.key, cached)
        return cached

    @property
    def parallel(self) -> int:
        """How many VMs the provider is asked about at once: its ``max_parallel`` (--max-parallel),
        1 for a provider without it."""
        return max(1, int(getattr(self.provider, "max_parallel", 1) or 1))

    def map_vms(self, fn: Callable[[VmRef], T], vms: Sequence[VmRef]) -> list[T]:
        """``fn`` of each of ``vms``, in their order, up to ``parallel`` VMs at once."""
        if len(vms) < 2 or self.parallel < 2:
            return [fn(vm) for vm in vms]
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(
            max_workers=min(self.parallel, len(vms)), thread_name_prefix="imageready-vm"
        )
        try:
            return list(pool.map(fn, vms))
        finally:
            # Ctrl-C or SIGTERM: do not wait for the reads still out (each has its own deadline)
            pool.shutdown(wait=False, cancel_futures=True)

    def prefetch_facts(self) -> None:
        """Gather the facts of every target VM not gathered yet, ``parallel`` at once. A provider
        records each VM's errors in its facts, so one VM's broken Azure or guest stays that VM's."""
        with self._lock:
            missing = [vm for vm in self.vms if vm.key not in self.facts_cache]
        self.map_vms(self.facts, missing)

    def operator(self) -> dict[str, str]:
        if self._operator is None:
            try:
                identity = dict(self.provider.operator())
            except Exception as exc:  # the record says why; a run is not refused for it
                identity = {"error": f"operator identity unavailable: {type(exc).__name__}"}
            identity.setdefault("local_user", f"{getpass.getuser()}@{socket.gethostname()}")
            self._operator = identity
        return self._operator

    # --- the gate ------------------------------------------------------------------------

    def decide(self, vm: VmRef) -> GateDecision:
        """Whether ``vm``'s actions may run, decided once per run (at its first action)."""
        if vm.key in self.decisions:
            return self.decisions[vm.key]
        gate = self.gate(vm)
        status = gate.status
        blockers = tuple(gate.blockers())
        resume = self.resume(vm)
        decision: GateDecision
        if resume is not None and resume.accepted:
            held = self._capture_blockers(vm, resume)
            decision = GateDecision(not held, (resume.reason, *held), "resume")
        elif resume is not None:
            decision = GateDecision(False, (resume.reason, *blockers), "resume")
        elif self.verdict_paths:
            # the verdict covers the cases this run left out; what this run judged red (a case
            # whose facts changed since the verdict, run again) blocks as well
            verdict = self._judge_verdict(vm)
            judged_red = tuple(
                f"{c.case_id}: {describe_outcome(c)}"
                for c in sorted(gate.cases.values(), key=lambda c: c.case_id)
                if c.outcome in RED_OUTCOMES
            )
            if verdict.accepted and status != "red":
                decision = GateDecision(True, (verdict.reason,), "verdict")
            elif verdict.accepted:
                why = f"this run judged check cases of {vm.key} red after verdict {verdict.source}"
                decision = GateDecision(False, (why, *judged_red), "verdict")
            else:
                decision = GateDecision(False, (verdict.reason, *judged_red), "verdict")
        elif status == "red":
            decision = GateDecision(False, blockers, "checks")
        elif status == "green":
            decision = GateDecision(True, (f"all {len(gate.cases)} check cases of {vm.key} green",), "checks")
        elif status == "absent":
            decision = GateDecision(
                False,
                (
                    f"no check of {vm.key} ran in this run: run the checks with the actions, "
                    "or pass --verdict FILE from a green checks stage",
                ),
                "checks",
            )
        else:
            decision = GateDecision(False, blockers, "checks")
        self.decisions[vm.key] = decision
        return decision

    def _capture_blockers(self, vm: VmRef, resume: Resume) -> list[str]:
        """What keeps a resumed VM's gate shut: a capture pre-flight case this run judged red, or
        one it did not judge (deselected) for a target the resumed run's verdict never checked
        (its case ids name the target)."""
        gate = self.gate(vm)
        held = []
        for case_id in sorted(self.capture_cases.get(vm.key, ())):
            case = gate.cases.get(case_id)
            if case is None or case.green:
                continue
            if case.outcome not in UNJUDGED:
                held.append(f"{case_id}: {describe_outcome(case)}")
            elif case_id not in resume.expected:
                held.append(
                    f"{case_id}: not judged in this run, and run {resume.run_id}'s verdict did not "
                    "check this capture target: run the capture checks with the actions "
                    "(pytest --vm ... checks/test_capture.py actions)"
                )
        return held

    def resume(self, vm: VmRef) -> Resume | None:
        """If an earlier run started changing ``vm`` (its guest step is tagged on the VM), the
        green verdict of that very run lets this one finish the job; the checks then do not
        apply (the guest they would read is already generalized)."""
        if vm.key in self.resumes:
            return self.resumes[vm.key]
        found: Resume | None = None
        facts = self.facts(vm)
        tag = facts.tag(STEP_TAG + "guest")
        if tag:
            fields = parse_step_tag(tag)
            run = fields.get("run", "")
            intact = guest_intact(facts)
            untrusted = step_tag_problem(tag, "guest", facts.vm_model, verdict_key())
            if untrusted:
                found = Resume(
                    run,
                    tag,
                    False,
                    f"{vm.key} carries {STEP_TAG}guest ({tag}), but {untrusted}: written by hand, by "
                    "a run without the key, or before the OS disk was swapped; nothing is resumed",
                )
            elif intact and fields.get("state") == "started":
                # a run was stopped after tagging and before its guest step changed anything: the
                # guest is as the checks see it, so this run's own checks decide (nothing resumes)
                found = None
            elif intact:
                # a tag is writable by anyone with tag rights; the guest's own state is not: a
                # guest that answers as an intact machine was never deprovisioned or sealed
                found = Resume(
                    run,
                    tag,
                    False,
                    f"{vm.key} carries {STEP_TAG}guest ({tag}), but its guest answers as an intact "
                    f"machine ({intact}): nothing is resumed; check who wrote the tag, remove it, "
                    "and run again",
                )
            else:
                found = self._resume_from_verdict(vm, run, tag, facts.vm_id)
        self.resumes[vm.key] = found
        return found

    def _resume_from_verdict(self, vm: VmRef, run: str, tag: str, vm_id: str | None) -> Resume:
        where = [*self.verdict_paths, self.report_dir / "verdicts"]
        document = source = None
        for path in where:
            try:
                hit = load_verdicts([path]).get(vm.id.lower()) if path.exists() else None
            except VerdictError:
                continue
            if hit is not None and hit[1].get("run_id") == run:
                source, document = hit
                break
        prefix = f"{vm.key} is part-way through run {run} ({STEP_TAG}guest: {tag})"
        if document is None or source is None:
            return Resume(
                run,
                tag,
                False,
                f"{prefix}; this run cannot finish it without that run's green verdict: pass "
                f"--verdict with the verdict file of run {run}",
            )
        judged = judge_verdict(
            document,
            source=source,
            vm=vm,
            live_vm_id=vm_id,
            policy=self.digest,
            harness_version=self.harness_version,
            max_age=dt.timedelta(days=3650),  # the guest was generalized under it already
            **self.verdict_trust(),
            # the guest is generalized: its checks cannot be enumerated again, the verdict's own
            # expected set (checked for consistency) stands
            expected=None,
        )
        if not judged.accepted:
            return Resume(run, tag, False, f"{prefix}; {judged.reason}")
        expected = tuple(str(c) for c in document.get("expected_cases") or [])
        return Resume(run, tag, True, f"resuming run {run} under its green verdict {source}", expected)

    def verdict_for(self, vm: VmRef) -> tuple[Path, dict[str, Any]] | None:
        """The --verdict document of ``vm`` (the files are read once per run), None if none."""
        if self._verdict_documents is None:
            self._verdict_documents = load_verdicts(self.verdict_paths)
        return self._verdict_documents.get(vm.id.lower())

    def _judge_verdict(self, vm: VmRef) -> VerdictDecision:
        found = self.verdict_for(vm)
        if found is None:
            where = ", ".join(str(p) for p in self.verdict_paths)
            return VerdictDecision(False, f"no verdict for {vm.id} in --verdict {where}")
        source, document = found
        expected = self.expected_cases(vm)
        if expected is None:
            gate = self.gate(vm)
            left_out = [*gate.missing_modules, *gate.missing_functions] or ["no check case at all"]
            return VerdictDecision(
                False,
                f"verdict {source} cannot be compared: this run did not collect the whole policy "
                f"for {vm.key} ({left_out[0]}{' ...' if len(left_out) > 1 else ''})",
            )
        try:
            live_vm_id = self.provider.live_vm_id(vm)
        except Exception as exc:  # one line: the gate stays shut and says why
            return VerdictDecision(False, f"verdict {source} refused: cannot read vmId: {exc}")
        judged = judge_verdict(
            document,
            source=source,
            vm=vm,
            live_vm_id=live_vm_id,
            policy=self.digest,
            harness_version=self.harness_version,
            max_age=self.verdict_max_age,
            expected=expected,
            **self.verdict_trust(),
        )
        if not judged.accepted:
            return judged
        # the cases whose facts changed since the verdict ran again: each must have passed now
        gate = self.gate(vm)
        for case_id, paths in sorted(self.changed_cases.get(vm.key, {}).items()):
            case = gate.cases.get(case_id)
            outcome = case.outcome if case is not None else "not_run"
            if case is None or not case.green:
                return VerdictDecision(
                    False,
                    f"verdict {source} refused: the facts {case_id} judged changed since it "
                    f"({', '.join(paths)}) and the case did not pass again ({outcome})",
                    str(source),
                )
        changed = len(self.changed_cases.get(vm.key, {}))
        if changed:
            return VerdictDecision(
                True,
                f"{judged.reason}; {changed} case(s) whose facts changed or were read live passed again",
                judged.source,
            )
        return judged

    def verdict_trust(self) -> dict[str, Any]:
        """The verdict key of this run (validated at configure time) and whether unsigned verdicts
        are accepted (``--accept-unsigned-verdicts``)."""
        from imageready.signing import verdict_key

        return {
            "key": verdict_key(),
            "accept_unsigned": self.options.accept_unsigned_verdicts,
        }

    def expected_cases(self, vm: VmRef) -> list[str] | None:
        """Every check case the whole policy generates for ``vm`` in this run (the gate collects
        the whole policy whatever the command line selects). None when part of the policy could
        not be collected here, so that no verdict can be compared against it."""
        gate = self.gate(vm)
        if gate.missing_modules or gate.missing_functions or not gate.cases:
            return None
        return sorted(gate.cases)

    # --- shipping state between xdist workers and the controller -------------------------

    def export_gates(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            key: {
                "vm": [g.vm.subscription, g.vm.resource_group, g.vm.name],
                "missing_modules": g.missing_modules,
                "missing_functions": g.missing_functions,
                "checks_selected": key in self.checks_selected,
                "cases": {cid: asdict(c) for cid, c in g.cases.items()},
                "decision": asdict(self.decisions[key]) if key in self.decisions else None,
            }
            for key, g in self.gates.items()
        }

    def merge_gates(self, exported: dict[str, Any]) -> None:
        from imageready.gate import CaseRecord

        for key, data in exported.items():
            gate = self.gates.setdefault(key, VmGate(VmRef(*data["vm"])))
            gate.missing_modules = sorted(set(gate.missing_modules) | set(data["missing_modules"]))
            gate.missing_functions = sorted(set(gate.missing_functions) | set(data["missing_functions"]))
            if data.get("checks_selected"):
                self.checks_selected.add(key)
            if data.get("decision") is not None:
                raw = data["decision"]
                self.decisions[key] = GateDecision(raw["open"], tuple(raw["reasons"]), raw["via"])
            for cid, raw in data["cases"].items():
                record = CaseRecord(**raw)
                mine = gate.cases.get(cid)
                if mine is None or (mine.outcome == "not_run" and record.outcome != "not_run"):
                    gate.cases[cid] = record

    @property
    def harness_version(self) -> str:
        return __version__


def guest_intact(facts: VmFacts) -> str | None:
    """Why the guest is plainly not generalized (None when that cannot be told, e.g. it did not
    answer): on Linux the file ``waagent -deprovision+user`` deletes is still there; on Windows
    ImageState says sysprep never sealed it."""
    guest = facts.guest
    if not isinstance(guest, dict):
        return None
    if facts.os_type == "Linux":
        ovf = guest.get("ovf_env")
        present = ovf.get("present") if isinstance(ovf, dict) else guest.get("ovf_env_present")
        return "/var/lib/waagent/ovf-env.xml is still on its disk" if present is True else None
    if facts.os_type == "Windows" and guest.get("image_state") == "IMAGE_STATE_COMPLETE":
        return "ImageState is IMAGE_STATE_COMPLETE: sysprep never sealed it"
    return None

"""The gate's pytest hooks: inventory every check case, record outcomes, block actions.

One ``GateKeeper`` is registered per run (``plugin.pytest_configure``). It sees each case at
collection (before any deselection), at each phase report, and at the first action of a VM, where
it asks ``RunState.decide`` whether that VM's gate is open.

One plugin object in one module (a little over 500 lines): its hooks, in three sections
(collection, the run protocol that blocks actions, the record of each phase), share the run
state and are correct only together. What an item is lives in ``inventory``; the terminal summary
in ``gate_summary``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Mapping
from typing import Any, Literal

import pytest

from imageready.applicability import unmet_requirement
from imageready.categories import Category
from imageready.checking import evidence_summaries
from imageready.facts import FactsUnavailable
from imageready.facts.view import LIVE, not_recording, recording_reads
from imageready.gate import (
    CaseRecord,
    VerdictError,
    Waiver,
    facts_digest,
    parse_expiry,
)
from imageready.gate_summary import write_summary
from imageready.inventory import action_info, check_functions, check_info, in_dir, policy_modules
from imageready.redact import one_line, redact
from imageready.runstate import (
    CASE_READS,
    CASE_WAIVERS,
    INFO,
    NOT_APPLICABLE,
    PHASES,
    STEP_RECORDS,
    GateDecision,
    ItemInfo,
    RunState,
    item_info,
    record_waiver,
)
from imageready.selection import Selector, covers, parse_selection, split
from imageready.target import VmRef
from imageready.text import printable

USER_PROPERTY = "imageready"
STEP_PROPERTY = "imageready-step"
#: the JUnit property (and report attribute) that says a case is green only under a waiver
STATUS_PROPERTY = "imageready-status"
#: what a verdict case that recorded no facts read "changed": what it read is live, not on record
LIVE_READ = "a live read, not on record"
WAIVED = "waived"

# how bad a phase outcome is; a case's outcome is the worst of its phases
_RANK = {
    "passed": 0,
    "not_applicable": 1,
    "waived": 2,
    "skipped": 3,
    "xpassed": 4,
    "xfailed": 5,
    "failed": 6,
    "error": 7,
}


class GateKeeper:
    def __init__(self, state: RunState) -> None:
        self.state = state
        #: what the command line named, when the policy had to be added to its collection
        self.selectors: list[Selector] | None = None

    # --- collection --------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection(self, session: pytest.Session) -> None:
        """Collect the whole policy, whatever the command line names: the gate's expected set is
        every case the policy directory generates. What the user named becomes a selection,
        applied in ``pytest_collection_modifyitems`` (a case left out is deselected and keeps the
        gate shut). pytest 8/9 collects ``config.args`` and folds an argument into a directory
        argument that contains it, so appending the policy directory is enough."""
        state = self.state
        if not state.vms or not state.checks_dir.is_dir():
            return
        config = session.config
        selectors = parse_selection(config.args, config.invocation_params.dir)
        if covers(selectors, state.checks_dir):
            return
        self.selectors = selectors
        config.args.append(str(state.checks_dir))

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Before any deselection: know every check case, so a missing one keeps the gate shut."""
        state = self.state
        modules: dict[str, Any] = {}
        for item in items:
            check = item.get_closest_marker("check")
            action = item.get_closest_marker("action")
            if check is None and action is None:
                if in_dir(item.path, state.checks_dir):
                    raise pytest.UsageError(
                        f"{item.nodeid}: every test under {state.checks_dir.name}/ must declare "
                        "@pytest.mark.check(id=..., title=..., severity=..., os=..., doc=...)"
                    )
                continue
            callspec = getattr(item, "callspec", None)
            vm = callspec.params.get("vm") if callspec is not None else None
            if not isinstance(vm, VmRef):
                continue
            info = check_info(item, check, vm) if check is not None else action_info(item, action, vm)
            if info.kind == "check":
                state.gate(vm).expect(
                    CaseRecord(
                        case_id=info.case_id,
                        check_id=info.check_id,
                        title=info.title,
                        severity=info.severity,
                        vm=vm.key,
                        parameter=info.parameter,
                        doc=info.doc,
                    )
                )
                module = getattr(item, "module", None)
                if module is not None:
                    modules[item.nodeid.split("::", 1)[0]] = module
            if info.requires:
                state.capture_cases.setdefault(vm.key, set()).add(info.case_id)
            item.stash[INFO] = info
            item.add_marker(pytest.mark.xdist_group(name=f"imageready-{vm.key}"))
        if state.needs_vm:
            raise pytest.UsageError("no VM given: pass --vm RG/NAME (repeatable)")
        self._find_uncollected_functions(modules)
        keep = self._changed_since_verdict(items) if state.verdict_paths else set()
        if self.selectors is not None:
            self._apply_selection(config, items, keep)
        for item in items:
            selected = item_info(item)
            # a case run again only because its facts changed since the verdict (or were read
            # live) does not make this a checks stage: the verdict stays the record of the checks
            if selected is not None and selected.kind == "check" and item.nodeid not in keep:
                state.checks_selected.add(selected.vm.key)

    def _find_uncollected_functions(self, modules: dict[str, Any]) -> None:
        """A ``@pytest.mark.check`` function of a collected policy module that produced no case
        (pytest's python_functions did not match its name, say) is part of the policy all the
        same: the gates of the VMs it has no case for stay shut."""
        for gate in self.state.gates.values():
            produced = {case_id.split("[", 1)[0] for case_id in gate.cases}
            missing = set(gate.missing_functions)
            for path, module in modules.items():
                for name in check_functions(module):
                    if f"{path}::{name}" not in produced:
                        missing.add(f"{path}::{name}")
            gate.missing_functions = sorted(missing)

    def _apply_selection(self, config: pytest.Config, items: list[pytest.Item], keep: set[str]) -> None:
        """Deselect what the command line did not name, except the cases in ``keep``."""
        assert self.selectors is not None
        selected, deselected, unused = split(items, self.selectors)
        if unused:
            raise pytest.UsageError(f"not found: {unused[0].text} (no test of the policy matches it)")
        again = [item for item in deselected if item.nodeid in keep]
        deselected = [item for item in deselected if item.nodeid not in keep]
        if deselected:
            order = {id(item): n for n, item in enumerate(items)}
            items[:] = sorted([*selected, *again], key=lambda item: order[id(item)])
            config.hook.pytest_deselected(items=deselected)

    def _changed_since_verdict(self, items: list[pytest.Item]) -> set[str]:
        """Fresh facts before the guest step: the cases of a --verdict whose facts changed since
        it was written (the facts of this run, gathered at collection, read at the same paths give
        another digest) run again, live; their outcome then decides with the verdict."""
        state = self.state
        present = {info.case_id for item in items if (info := item_info(item)) and info.kind == "check"}
        keep: set[str] = set()
        for vm in state.vms:
            try:
                found = state.verdict_for(vm)
            except VerdictError:
                continue  # the decision refuses it, in one line
            if found is None:
                continue
            facts = state.facts(vm)
            document = {"guest": facts.guest, "azure": facts.azure}
            changed: dict[str, list[str]] = {}
            for case in found[1].get("checks") or []:
                if not isinstance(case, dict) or case.get("case_id") not in present:
                    continue
                if case.get("outcome") == "not_applicable":
                    continue  # decided by the OS type or the options, which this run shares
                paths = case.get("facts_read")
                if not paths or list(LIVE) in paths:
                    # it read the guest live (the sensitive-data scan) or outside the facts
                    # view: nothing recorded proves it unchanged, so it runs again
                    changed[str(case["case_id"])] = [LIVE_READ]
                    continue
                if facts_digest(document, paths) != case.get("facts_digest"):
                    changed[str(case["case_id"])] = [".".join(map(str, p)) for p in paths][:5]
            if changed:
                state.changed_cases[vm.key] = changed
                keep |= set(changed)
        return keep

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """After every deselection: what will not run, which policy modules were not collected."""
        state = self.state
        selected = {info.case_id for item in session.items if (info := item_info(item))}
        for gate in state.gates.values():
            for case in gate.cases.values():
                if case.case_id not in selected:
                    case.outcome = "deselected"
        expected = policy_modules(session.config.rootpath, state.checks_dir, state.options.python_files)
        for vm in state.vms:
            gate = state.gate(vm)
            seen = {case.case_id.split("::", 1)[0] for case in gate.cases.values()}
            gate.missing_modules = sorted(m for m in expected if m not in seen)

    # --- running ---------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """Not applicable, the only skip the gate accepts: a check for another OS, a check that
        requires what this run does not do (``requires="capture"`` without --capture-as), or a
        check of a VM this run resumes (its guest is already generalized under that run's
        verdict) unless it judges the capture target, which it reads from Azure alone. What the
        gate reads here is its own, not the case's."""
        with not_recording():
            self._applicable(item)

    def _applicable(self, item: pytest.Item) -> None:
        info = item_info(item)
        if info is None or info.kind != "check":
            return
        unmet = unmet_requirement(info.requires, self.state.capture)
        if unmet is not None:
            reason = f"not applicable: {unmet}"
            item.stash[NOT_APPLICABLE] = reason
            pytest.skip(reason)
        resume = self.state.resume(info.vm)
        if resume is not None and resume.accepted and not info.requires:
            reason = f"not applicable: {resume.reason} (its guest is already generalized)"
            item.stash[NOT_APPLICABLE] = reason
            pytest.skip(reason)
        callspec = getattr(item, "callspec", None)
        for value in callspec.params.values() if callspec is not None else ():
            error = getattr(value, "error", None)
            if isinstance(error, FactsUnavailable):
                raise error
        if info.os == "any":
            return
        facts = self.state.facts(info.vm)
        if facts.os_type is None:
            if facts.azure_error:
                raise FactsUnavailable(facts.azure_error, facts.azure_error_category or Category.AZURE_API)
            raise FactsUnavailable(
                f"{info.vm.key}: Azure reports no OS type, so whether {info.check_id} applies is unknown",
                Category.VM_STATE,
            )
        if facts.os_type != info.os:
            reason = f"not applicable: {info.os}-only check, {info.vm.key} runs {facts.os_type}"
            item.stash[NOT_APPLICABLE] = reason
            pytest.skip(reason)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        """A blocked action fails, naming what blocked it, and none of its fixtures run."""
        info = item_info(item)
        if info is None or info.kind != "action":
            return None
        try:
            decision = self.state.decide(info.vm)
        except VerdictError as exc:
            decision = GateDecision(False, (str(exc),), "verdict")
            self.state.decisions[info.vm.key] = decision
        if decision.open and info.vm.key not in self.state.record_kept:
            why_not = self._keep_record(item.config, info.vm, decision)
            if why_not is not None:
                decision = GateDecision(False, (why_not,), decision.via)
                self.state.decisions[info.vm.key] = decision
        if decision.open:
            return None
        _report_blocked(item, nextitem, decision)
        return True

    def _keep_record(self, config: pytest.Config, vm: VmRef, decision: GateDecision) -> str | None:
        """Before the first action of ``vm``: with --apply, the report directory can take the
        record and room is reserved; the green verdict (so that a run killed mid-way can be
        resumed) and the VM as the gate sees it (the journal) are on disk. None when done, else
        why the action must not start (one line)."""
        from imageready import recording

        state = self.state
        state.record_kept.add(vm.key)
        if state.apply:
            why_not = recording.ready_for_actions(config, state)
            if why_not is not None:
                return why_not
        if decision.via == "checks" and vm.key not in state.verdict_kept:
            try:
                recording.write_verdict_now(state, vm)
            except OSError as exc:
                if state.apply:
                    return (
                        f"the verdict of {vm.key} cannot be written before its actions: {exc.strerror or exc}"
                    )
            state.verdict_kept.add(vm.key)
        why_not = recording.journal_vm(config, state, vm)
        return why_not if state.apply else None

    @pytest.hookimpl(tryfirst=True, specname="pytest_runtest_makereport")
    def pytest_runtest_makereport_one_line(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> pytest.TestReport | None:
        """An expected environment failure (Azure, guest facts, timeout: an exception with a
        ``category``) is reported by its one line. Built here, before pytest's own report, because
        pytest would first render the traceback with the source of every frame, which costs more
        than the check itself on a red fleet."""
        exc = call.excinfo.value if call.excinfo is not None else None
        if item_info(item) is None or not isinstance(exc, Exception) or not getattr(exc, "category", None):
            return None
        # item._report_sections (captured output) is private: pytest 8/9's own
        # TestReport.from_item_and_call reads it the same way
        sections = [(f"Captured {key} {when}", content) for when, key, content in item._report_sections]
        return pytest.TestReport(
            item.nodeid,
            item.location,
            {name: 1 for name in item.keywords},
            "failed",
            one_line(str(exc)) or type(exc).__name__,
            call.when,  # type: ignore[arg-type]
            sections,
            call.duration,
            call.start,
            call.stop,
            user_properties=item.user_properties,
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        info = item_info(item)
        if info is None:
            return report
        phases = item.stash.setdefault(PHASES, {})
        outcome = _phase_outcome(item, report)
        exc = call.excinfo.value if call.excinfo is not None else None
        if report.failed and isinstance(exc, Exception) and getattr(exc, "category", None):
            # an expected environment failure (Azure, guest, timeout): its one line is the story
            report.longrepr = one_line(str(exc)) or type(exc).__name__
        if outcome == "failed" and getattr(exc, "category", None):
            # a broken environment (Azure, guest, timeout) is an error, not a finding on the VM
            outcome = "error"
        if info.kind == "check" and outcome == "failed":
            waiver = self.state.waivers.find(info.check_id, info.vm.key, info.parameter)
            if waiver is not None:
                phases["message"] = one_line(_failure_text(call, report))
                report.outcome = "passed"
                report.sections.append(
                    (
                        "imageready waiver",
                        f"WAIVED {info.check_id} [{info.vm.key} {info.parameter or '*'}] by "
                        f"{waiver.approver} until {waiver.expires:%Y-%m-%d}: {waiver.reason}",
                    )
                )
                record_waiver(item, waiver)
                outcome = "waived"
        if outcome in ("failed", "error") and "message" not in phases:
            phases["message"] = one_line(_failure_text(call, report))
            phases["category"] = str(getattr(exc, "category", "") or "")
        if outcome == "passed" and report.when == "call" and item.stash.get(CASE_WAIVERS, None):
            outcome = "waived"  # it passed only because findings in it were waived
        if outcome == "waived":
            # green for the gate and the exit code, but never a plain pass: the terminal shows
            # WAIVED (pytest_report_teststatus), JUnit and Allure carry the status
            setattr(report, STATUS_PROPERTY.replace("-", "_"), WAIVED)
        if _RANK[outcome] >= _RANK.get(phases.get("outcome", "passed"), 0):
            phases["outcome"] = outcome
        if report.failed and report.longrepr is not None:
            # the terminal and JUnit print this text: mask anything secret-shaped in it, and escape
            # control and bidi characters a guest-controlled name may carry
            text = report.longreprtext
            masked = printable(redact(text), multiline=True)
            if masked != text:
                report.longrepr = masked
        report.sections = [
            (name, printable(redact(content), multiline=True)) for name, content in report.sections
        ]
        if report.when == "teardown":
            record = {
                "kind": info.kind,
                "vm": info.vm.key,
                "case_id": info.case_id,
                "outcome": phases.get("outcome", "not_run"),
                "message": phases.get("message", ""),
                "category": phases.get("category", ""),
                "waivers": item.stash.get(CASE_WAIVERS, []),
                "blocked": phases.get("blocked") == "yes",
                "evidence": evidence_summaries(item),
            }
            if info.kind == "check":
                record.update(self._facts_read(item, info))
            report.user_properties.append((USER_PROPERTY, json.dumps(record)))
            if record["outcome"] == WAIVED:
                report.user_properties.append((STATUS_PROPERTY, WAIVED))
            for step in item.stash.get(STEP_RECORDS, []):
                report.user_properties.append((STEP_PROPERTY, json.dumps(step)))
        return report

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(
        self, report: pytest.TestReport
    ) -> tuple[str, str, tuple[str, Mapping[str, bool]]] | None:
        """A waived case is counted and shown as WAIVED (W), not as passed."""
        if report.when == "call" and getattr(report, STATUS_PROPERTY.replace("-", "_"), "") == WAIVED:
            return WAIVED, "W", ("WAIVED", {"yellow": True})
        return None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Update the gate from finished cases, on the worker that ran them and the controller."""
        if report.when != "teardown":
            return
        for name, value in report.user_properties:
            if name == USER_PROPERTY:
                self._apply(json.loads(str(value)))
            elif name == STEP_PROPERTY:
                step = json.loads(str(value))
                self.state.step_records.setdefault(step["vm"], []).append(step)

    def _facts_read(self, item: pytest.Item, info: ItemInfo) -> dict[str, Any]:
        """What the case read (its own reads and its item source's) and a digest of the values."""
        reads = set(item.stash.get(CASE_READS, None) or ())
        reads |= self.state.param_reads.get((item.nodeid.split("[", 1)[0], info.vm.key), set())
        facts = self.state.facts_cache.get(info.vm.key)
        if not reads or facts is None:
            return {}
        paths = sorted(([*path] for path in reads), key=json.dumps)
        document = {"guest": facts.guest, "azure": facts.azure}
        return {"facts_read": paths, "facts_digest": facts_digest(document, paths)}

    @pytest.hookimpl(wrapper=True, specname="pytest_runtest_protocol")
    def pytest_runtest_protocol_reads(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, Any]:
        """Record which facts each check case reads (setup, call and teardown alike)."""
        info = item_info(item)
        if info is None or info.kind != "check":
            return (yield)
        with recording_reads() as reads:
            item.stash[CASE_READS] = reads
            return (yield)

    def _apply(self, record: dict[str, Any]) -> None:
        state = self.state
        if record["kind"] == "action":
            outcome = "blocked" if record["blocked"] else record["outcome"]
            state.action_outcomes[record["case_id"]] = outcome
            return
        gate = state.gates.get(record["vm"])
        if gate is None or record["case_id"] not in gate.cases:
            return
        case = gate.cases[record["case_id"]]
        case.outcome = record["outcome"]
        case.message = record["message"]
        case.category = record["category"]
        case.waiver = record["waivers"][0] if record["waivers"] else None
        case.evidence = list(record.get("evidence", []))
        case.facts_read = list(record.get("facts_read", []))
        case.facts_digest = str(record.get("facts_digest", ""))
        for raw in record["waivers"]:
            state.waivers.applied.append((record["case_id"], _waiver(raw)))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: merge what each worker knows about its VMs' gates."""
        output = getattr(node, "workeroutput", None) or {}
        if "imageready_gates" in output:
            self.state.merge_gates(json.loads(output["imageready_gates"]))

    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        write_summary(self.state, terminalreporter, config)


# --- helpers ------------------------------------------------------------------------------------


def _phase_outcome(item: pytest.Item, report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.skipped:
        return "not_applicable" if NOT_APPLICABLE in item.stash else "skipped"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return "passed"


def _failure_text(call: pytest.CallInfo[None], report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return str(crash.message).removeprefix("Failed: ")
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2])
    if call.excinfo is not None and str(call.excinfo.value):
        return str(call.excinfo.value)
    return str(report.longrepr or "")


def _report_blocked(item: pytest.Item, nextitem: pytest.Item | None, decision: GateDecision) -> None:
    """Report a blocked action as failed, running none of its fixtures (pytest's own protocol
    would set them up before the test body could refuse): no set-up, a call that fails with the
    reasons, and a tear-down of what earlier cases set up and ``nextitem`` does not need, each
    phase reported through pytest's public hooks."""
    info = item.stash[INFO]
    message = "\n".join(
        [f"BLOCKED by the gate of {info.vm.key}: step '{info.step}' did not run."]
        + [f"  - {reason}" for reason in decision.reasons]
    )
    item.stash[PHASES] = {"blocked": "yes"}
    ihook = item.ihook
    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    reraise = (pytest.exit.Exception, KeyboardInterrupt)

    def teardown() -> None:
        # Private, pytest 8.0-9.1: Session._setupstate.teardown_exact is what pytest's own
        # pytest_runtest_teardown calls. The public hook cannot be called instead: other plugins
        # pair it with a set-up this case never had (pytest 9.1's logging plugin reads the
        # item.stash entry its pytest_runtest_setup makes: KeyError), and the set-up hook is what
        # would run the fixtures. tests/plugin/test_gate.py covers a blocked action mid-session.
        item.session._setupstate.teardown_exact(nextitem)

    phases: tuple[tuple[Literal["setup", "call", "teardown"], Callable[[], None]], ...] = (
        ("setup", lambda: None),
        ("call", lambda: pytest.fail(message, pytrace=False)),
        ("teardown", teardown),
    )
    for when, func in phases:
        call = pytest.CallInfo.from_call(func, when=when, reraise=reraise)
        report = ihook.pytest_runtest_makereport(item=item, call=call)
        ihook.pytest_runtest_logreport(report=report)
    ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)


def _waiver(raw: dict[str, str]) -> Waiver:
    return Waiver(
        check=raw["check"],
        parameter=raw.get("parameter", "*"),
        vm=raw.get("vm", "*"),
        fingerprint=raw.get("fingerprint", ""),
        path=raw.get("path", ""),
        reason=raw["reason"],
        approver=raw["approver"],
        expires=parse_expiry(raw["expires"], "waiver"),
    )

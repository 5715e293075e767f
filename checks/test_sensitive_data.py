"""No sensitive data persists into the image.

`waagent -deprovision+user` "does not guarantee that the image is cleared of all sensitive
information": whatever is left goes into every VM made from the image. One case per rule
(policy data: src/imageready/policy/scan_rules.yaml and --scan-rules), from one read-only scan per
VM that masks on the guest: findings carry rule, path, line, length, at most 4 characters and a
keyed fingerprint, never the value. Only what persists past the action blocks the gate; what the
action removes is listed as such; a single finding can be waived by its fingerprint. What the scan
could not read (a file past the size bound, unreadable, a directory a mount hides) makes it
incomplete: every case errors until each such path is fixed or waived by path.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from checks import _docs
from imageready import progress
from imageready.categories import Category
from imageready.checking import EVIDENCE, evidence, finding
from imageready.facts import FactsUnavailable, VmFacts
from imageready.facts.view import read_live
from imageready.gate import WaiverBook
from imageready.redact import redact
from imageready.runstate import RunState, record_waiver
from imageready.scan import fingerprint_key
from imageready.target import VmRef

CHECK_ID = "IR-SCAN"
#: this run's scans (each VM's result: a ScanResult or the error its cases raise)
SCANS = pytest.StashKey["Scans"]()
#: findings of one case listed line by line in the audit
AUDIT_FINDINGS = 25


@pytest.fixture
def scan_result(
    vm: VmRef, facts: VmFacts, run: RunState, waivers: WaiverBook, request: pytest.FixtureRequest
) -> Any:
    """One scan of ``vm``'s guest per run, shared by every rule's case. An incomplete scan is an
    error for every rule: it proves nothing about the guest. So is a scan that could not read
    some path in full, unless a waiver names that path."""
    read_live()  # the scan reads the disk now, not the facts: behind a verdict it runs again
    found = _scans(request, run).of(run, vm, facts).result()
    if isinstance(found, FactsUnavailable):
        raise found
    if not found.complete:
        why = "; ".join(found.errors) or "it stopped before the end"
        raise FactsUnavailable(
            f"{vm.key}: the sensitive-data scan is incomplete ({why}): nothing is proven",
            _category(found.errors),
        )
    coverage = found.coverage(waivers, vm.key)
    for _, waiver in coverage.waived:
        record_waiver(request.node, waiver)  # the case passes only with it: every report says so
    if not coverage.complete:
        rule = request.node.callspec.params.get("scan_rule")
        meanwhile = [f.summary() for f in found.for_rule(rule.id)][:5] if rule is not None else []
        also = f"; this rule found meanwhile: {' | '.join(meanwhile)}" if meanwhile else ""
        # no category: not the environment's fault; a setup error, so no rule waiver turns it green
        raise FactsUnavailable(
            f"{vm.key}: the sensitive-data scan is incomplete, {coverage.reason()}: fix them or waive "
            f"each path (docs/waivers.md){also}",
            "",
        )
    return found


@dataclass
class Scans:
    """This run's scans of its VMs' guests, one each, on a pool of their own."""

    pool: ThreadPoolExecutor
    #: the fingerprint key, read (or made) once in pytest's thread, or why it could not be
    key: bytes | Exception
    started: dict[str, Future[Any]] = field(default_factory=dict)

    def of(self, run: RunState, vm: VmRef, facts: VmFacts) -> Future[Any]:
        """``vm``'s scan, started now unless it was already."""
        if vm.key not in self.started:
            # a thread's own context: what the scan reads of the facts is no case's record (its
            # cases record that they read the guest live, which decides whether they run again)
            self.started[vm.key] = self.pool.submit(_scan, run, vm, facts, self.key)
        return self.started[vm.key]


def _scans(request: pytest.FixtureRequest, run: RunState) -> Scans:
    """The scans of this run. A run that checks only starts them all at its first scan case,
    ``run.parallel`` at once, each in a thread that waits on its guest (a scan is read-only, so it
    may run while other cases do). A run with --apply scans each VM when its own cases come, right
    before its actions, never while other VMs' actions run first (the scan would be that much
    older when the VM is generalized); so does an xdist worker, for the VMs it is given."""
    config = request.config
    scans = config.stash.get(SCANS, None)
    if scans is not None:
        return scans
    ahead = not run.apply and not hasattr(config, "workerinput")
    pool = ThreadPoolExecutor(run.parallel if ahead else 1, thread_name_prefix="imageready-scan")
    # an interrupted run does not wait for scans still out (each has its own deadline)
    config.add_cleanup(lambda: pool.shutdown(wait=False, cancel_futures=True))
    try:
        key: bytes | Exception = fingerprint_key()
    except Exception as exc:  # a key problem: every rule errors with this line
        key = exc
    scans = config.stash[SCANS] = Scans(pool, key)
    if ahead:
        for vm in _scanned_vms(request.session):
            facts = run.facts(vm)
            if facts.azure is not None:  # else its cases error in the facts fixture, unscanned
                scans.of(run, vm, facts)
    return scans


def _scanned_vms(session: pytest.Session) -> list[VmRef]:
    """The VMs of the scan cases this session runs, in their order."""
    found: dict[str, VmRef] = {}
    for item in session.items:
        vm = getattr(item, "callspec", None) and item.callspec.params.get("vm")  # type: ignore[attr-defined]
        if isinstance(vm, VmRef) and "scan_result" in getattr(item, "fixturenames", ()):
            found.setdefault(vm.key, vm)
    return list(found.values())


def _scan(run: RunState, vm: VmRef, facts: VmFacts, key: bytes | Exception) -> Any:
    """``vm``'s scan result, or the one-line error every one of its cases raises."""
    from imageready.scan import DeprovisionContext, rules_for, scan_guest

    try:
        guest_facts = facts.require_guest()
    except FactsUnavailable as exc:
        return exc
    provider: Any = run.provider
    try:
        if isinstance(key, Exception):
            raise key
        return scan_guest(
            provider.guest(vm),
            rules_for(str(facts.os_type), run.options.scan_rules),
            key=key,
            deadline=time.monotonic() + run.options.scan_deadline,
            context=DeprovisionContext.from_facts(guest_facts, (guest_facts.get("user") or {}).get("name")),
            progress=lambda line: progress.emit(f"{vm.key}: scan: {line}"),
        )
    except Exception as exc:  # a transport or key problem: every rule errors with this line
        return FactsUnavailable(f"{vm.key}: sensitive-data scan failed: {exc}", Category.GUEST_UNREACHABLE)


def _category(errors: list[str]) -> Category | str:
    """A deadline or a lost transport is the environment's fault (retry may help); a scan that
    ran and failed on the guest (no sudo, no shell) is not, so it gets no infrastructure
    category and the run ends red, not "infrastructure error"."""
    text = " ".join(errors).lower()
    if not errors or "deadline" in text or "timed out" in text or "timeout" in text:
        return Category.TIMEOUT
    if any(e.startswith("scan: ") for e in errors):
        return Category.GUEST_UNREACHABLE
    return ""


@pytest.mark.check(
    id=CHECK_ID,
    title="No sensitive data persists into the image",
    severity="critical",
    os="any",
    doc=_docs.GENERALIZE,
    each="scan_rule",
)
def test_sensitive_data(
    vm: VmRef, scan_rule: Any, scan_result: Any, waivers: WaiverBook, request: pytest.FixtureRequest
) -> None:
    rule = scan_rule
    findings = scan_result.for_rule(rule.id)
    removed = [f for f in findings if f.removed_by_action]
    waived, persisting = [], []
    for item in (f for f in findings if not f.removed_by_action):
        waiver = waivers.find(CHECK_ID, vm.key, rule.id, fingerprint=item.fingerprint)
        if waiver is None:
            persisting.append(item)
        else:
            record_waiver(request.node, waiver)
            waived.append((item, waiver))
    lines = [f.summary() for f in persisting]
    lines += [
        f"{f.summary()} - WAIVED by {w.approver} until {w.expires:%Y-%m-%d}: {w.reason}" for f, w in waived
    ]
    lines += [f.summary() for f in removed]
    coverage = scan_result.coverage(waivers, vm.key)
    lines += [
        f"{entry.summary()} - WAIVED by {w.approver} until {w.expires:%Y-%m-%d}: {w.reason}"
        for entry, w in coverage.waived
    ]
    lines += [entry.summary() for entry in scan_result.not_scanned if entry.removal_note]
    excluded = [entry.summary() for entry in scan_result.excluded]
    evidence(
        request,
        f"{rule.id} ({rule.title}): {len(persisting)} persisting, {len(waived)} waived, "
        f"{len(removed)} removed by the action",
        {"rule": rule.id, "source": rule.source, "findings": lines, "excluded": excluded},
    )
    if excluded:  # not part of the image, so not scanned: said once per case, with the reason
        lines.append(
            f"{len(excluded)} mount point(s) excluded: " + "; ".join(e[len("excluded ") :] for e in excluded)
        )
    # the audit lists every finding with its fate, not only the count (already masked)
    audit_lines = lines[:AUDIT_FINDINGS]
    if len(lines) > AUDIT_FINDINGS:
        audit_lines.append(f"... and {len(lines) - AUDIT_FINDINGS} more (the Allure attachment lists all)")
    request.node.stash.setdefault(EVIDENCE, []).extend(("summary", redact(ln)) for ln in audit_lines)
    if persisting:
        shown = "\n    ".join(f.summary() for f in persisting[:20])
        more = f"\n    ... and {len(persisting) - 20} more" if len(persisting) > 20 else ""
        finding(
            f"{len(persisting)} finding(s) of {rule.id} ({rule.title}) on {vm.key} would persist into "
            f"the image:\n    {shown}{more}",
            where=", ".join(sorted({f.path for f in persisting})[:5]),
            fix=f"Remove them from the VM (and rotate any credential they held): {rule.rationale}. "
            "Or waive one finding by its fingerprint (docs/waivers.md).",
            doc=rule.source or _docs.GENERALIZE,
        )

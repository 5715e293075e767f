"""The gate's section of pytest's terminal summary."""

from __future__ import annotations

import os
from typing import Any

import pytest

from imageready.redact import redact
from imageready.runstate import AUDIT_WRITTEN, VERDICTS_WRITTEN, RunState
from imageready.text import printable


def write_summary(state: RunState, terminalreporter: Any, config: pytest.Config) -> None:
    """The \"imageready gate\" section of the terminal summary: each VM's checks and gate, the
    waivers applied or expired, what was written."""
    if not state.vms or state.is_worker or config.option.collectonly:
        return
    tr = terminalreporter

    def line(text: str, **markup: bool) -> None:
        # reasons and messages quote names Azure and the guest control: escaped, redacted
        tr.line(printable(redact(text)), **markup)

    tr.section("imageready gate")
    for vm in state.vms:
        gate = state.gates.get(vm.key)
        status = gate.status if gate is not None else "absent"
        decision = state.decisions.get(vm.key)
        if decision is None:
            line(f"{vm.key}: checks {status}", green=status == "green", red=status != "green")
            reasons = gate.blockers() if gate is not None else []
        else:
            word = "OPEN" if decision.open else "SHUT"
            line(
                f"{vm.key}: checks {status}; gate {word} (via {decision.via})",
                green=decision.open,
                red=not decision.open,
            )
            reasons = list(decision.reasons)
        for reason in reasons[:25]:
            line(f"    {reason}")
        if len(reasons) > 25:
            line(f"    ... and {len(reasons) - 25} more")
    for case_id, waiver in state.waivers.applied:
        line(
            f"waiver applied: {case_id} by {waiver.approver} until {waiver.expires:%Y-%m-%d}: "
            f"{waiver.reason}",
            yellow=True,
        )
    for waiver in state.waivers.expired():
        line(
            f"EXPIRED waiver ignored: {waiver.check} [{waiver.vm} {waiver.parameter}] by "
            f"{waiver.approver}, expired {waiver.expires:%Y-%m-%d}",
            red=True,
        )
    for path in config.stash.get(VERDICTS_WRITTEN, []):
        line(f"verdict written: {os.path.relpath(path)}")
    audit_files = config.stash.get(AUDIT_WRITTEN, None)
    if audit_files is not None:
        json_path, html_path, digest = audit_files
        line(f"audit: {os.path.relpath(html_path)} ({os.path.relpath(json_path)} sha256 {digest})")
    if not state.apply and any(o != "blocked" for o in state.action_outcomes.values()):
        line("actions ran as a PLAN only (no --apply): nothing was changed", yellow=True)

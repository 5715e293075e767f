"""Generalize a VM: each step a fixture chained to the one before, each with a test that asserts
its post-condition, so the report lists every step with its evidence.

Runs only behind the VM's green gate (checks of this run, or --verdict from a checks stage), and
changes nothing without --apply (each step then says what it would do).
"""

from __future__ import annotations

import pytest

from imageready.action_fixtures import step_outcome
from imageready.gate import STEP_TAG, parse_step_tag
from imageready.steps import StepRecord, VmActions
from imageready.steps.capture import capture_target, captured
from imageready.steps.lease import LEASE_TAG, THEN_NOTHING, Lease, capture_claim
from imageready.target import VmRef


@pytest.mark.action(step="lock")
def test_lease_taken(vm: VmRef, lease: StepRecord, vm_actions: VmActions) -> None:
    step_outcome(lease)
    if lease.evidence.get("generalized"):
        # Azure takes no change to a generalized VM: the lock step wrote nothing to it
        assert not [c for c in lease.azure if c["operation"] == "update tags"], lease.azure
        assert vm_actions.statuses().get("OSState") == "generalized"
        return
    held = Lease.parse((vm_actions.vm_model(instance_view=False).get("tags") or {}).get(LEASE_TAG))
    assert held is not None and held.run_id == vm_actions.options.run_id, f"{vm.key}: lease not ours: {held}"


@pytest.mark.action(step="guest")
def test_guest_generalized(vm: VmRef, guest_generalized: StepRecord, vm_actions: VmActions) -> None:
    step_outcome(guest_generalized)
    evidence = guest_generalized.evidence
    if guest_generalized.status == "done" and "post_state" in evidence:
        # Linux: proven from the disk in waagent's own session, never from its exit code
        post = evidence["post_state"]
        assert (post.get("user_present"), post.get("waagent_lib_entries")) == ("no", "0"), post
    elif guest_generalized.status == "done":
        # Windows: the reseal was seen (or recorded by the run this one resumes), never assumed
        # from a power-off; then Azure shows it stopped
        assert evidence.get("proof"), f"{vm.key}: sysprep called done without proof of the reseal"
        assert evidence.get("power_state_after") in ("stopped", "deallocated"), evidence
    tag = (vm_actions.vm_model(instance_view=False).get("tags") or {}).get(STEP_TAG + "guest")
    assert parse_step_tag(tag).get("state") == "done", (
        f"{vm.key}: the VM does not record the guest step: {tag}"
    )


@pytest.mark.action(step="deallocate")
def test_deallocated(vm: VmRef, deallocated: StepRecord, vm_actions: VmActions) -> None:
    step_outcome(deallocated)
    assert vm_actions.statuses().get("PowerState") == "deallocated"


@pytest.mark.action(step="generalize")
def test_marked_generalized(vm: VmRef, generalized: StepRecord, vm_actions: VmActions) -> None:
    step_outcome(generalized)
    assert vm_actions.statuses().get("OSState") == "generalized"


@pytest.mark.action(step="verify")
def test_os_state_generalized(vm: VmRef, verified: StepRecord) -> None:
    step_outcome(verified)
    assert verified.evidence["statuses"].get("OSState") == "generalized"


@pytest.mark.action(step="capture")
def test_captured(vm: VmRef, captured: StepRecord, vm_actions: VmActions) -> None:
    step_outcome(captured)
    assert captured.evidence.get("artifact"), captured.detail
    target = capture_target(vm_actions)
    assert target is not None
    # Azure shows the artifact, made from this VM (captured() refuses one made from another)
    assert _made(vm_actions, target[0], target[1]), f"{target[0]} does not exist"


@pytest.mark.action(step="unlock")
def test_lease_released(vm: VmRef, unlocked: StepRecord, vm_actions: VmActions) -> None:
    step_outcome(unlocked)
    tags = vm_actions.vm_model(instance_view=False).get("tags") or {}
    held = Lease.parse(tags.get(LEASE_TAG))
    if held is None or held.run_id != vm_actions.options.run_id:
        return
    # a generalized VM keeps this run's final lease (Azure takes no change to it): it must bind no
    # run now, i.e. claim no capture or one that exists
    assert vm_actions.statuses().get("OSState") == "generalized", f"{vm.key} still carries {held.render()}"
    assert held.final, f"{vm.key} keeps an ordinary lease it can never release: {held.render()}"
    if held.then != THEN_NOTHING:
        target = capture_target(vm_actions)
        assert target is not None and held.then == capture_claim(target[0]), held.render()
        assert _made(vm_actions, target[0], target[1]), f"{held.render()} claims a capture that is not there"


def _made(actions: VmActions, artifact: str, api: str) -> bool:
    return captured(actions, artifact, api) is not None

"""The target: the VM exists, is healthy, running, with a ready agent, and not already generalized.

A deallocated or already generalized VM gets one clear line, not a traceback.
"""

from __future__ import annotations

import pytest

from checks import _docs
from imageready.categories import Category
from imageready.checking import evidence, finding
from imageready.facts import FactsUnavailable, VmFacts
from imageready.facts.azure_view import (
    agent_status,
    os_state,
    power_state,
    provisioning_state,
)
from imageready.runstate import RunState
from imageready.target import VmRef


@pytest.mark.check(
    id="IR-TGT-001",
    title="The VM exists and its provisioning succeeded",
    severity="critical",
    os="any",
    doc=_docs.GENERALIZE,
)
def test_vm_exists_and_provisioned(vm: VmRef, run: RunState, request: pytest.FixtureRequest) -> None:
    facts = run.facts(vm)
    if facts.azure is None and facts.azure_error_category == Category.NOT_FOUND:
        finding(
            facts.azure_error or f"VM {vm.key} not found in subscription {vm.subscription}",
            where=vm.id,
            fix="Check the resource group, name and subscription (--vm, --subscription).",
            doc=_docs.GENERALIZE,
        )
    state = provisioning_state(facts)
    if facts.vm_id is None:
        raise FactsUnavailable(
            f"{vm.key}: Azure reports no vmId, so the VM cannot be identified", Category.AZURE_API
        )
    evidence(request, f"{vm.id}: provisioningState {state}, vmId {facts.vm_id}")
    if state.lower() != "succeeded":
        finding(
            f"{vm.key} is in provisioning state {state}, not Succeeded",
            where=vm.id,
            fix="Repair or redeploy the VM until provisioning succeeds, then run the checks again.",
            doc=_docs.GENERALIZE,
        )


@pytest.mark.check(
    id="IR-TGT-002",
    title="The VM is running, so its guest can be checked",
    severity="critical",
    os="any",
    doc=_docs.GENERALIZE,
)
def test_vm_running(vm: VmRef, facts: VmFacts, request: pytest.FixtureRequest) -> None:
    state = power_state(facts)
    evidence(request, f"{vm.key}: PowerState/{state}")
    if state == "running":
        return
    if os_state(facts) == "generalized":
        # `az vm start` would fail: Azure never starts a generalized VM
        finding(
            f"{vm.key} is {state} and already generalized: it can never start again, so its guest "
            "cannot be checked",
            where=vm.id,
            fix="Capture an image from it (or delete it); prepare a fresh copy for a new image.",
            doc=_docs.GENERALIZE,
        )
    finding(
        f"{vm.key} is {state}, not running: its guest cannot be checked",
        where=vm.id,
        fix=f"Start it (az vm start -g {vm.resource_group} -n {vm.name}) and run the checks again.",
        doc=_docs.GENERALIZE,
    )


@pytest.mark.check(
    id="IR-TGT-003",
    title="The VM is not already generalized",
    severity="critical",
    os="any",
    doc=_docs.GENERALIZE,
)
def test_not_already_generalized(vm: VmRef, facts: VmFacts, request: pytest.FixtureRequest) -> None:
    state = os_state(facts)
    evidence(request, f"{vm.key}: OSState {state or 'not reported (specialized)'}")
    if state == "generalized":
        finding(
            f"{vm.key} is already generalized: it can never start again, there is nothing to prepare",
            where=vm.id,
            fix="Capture an image from it (or delete it); prepare a fresh copy for a new image.",
            doc=_docs.GENERALIZE,
        )


@pytest.mark.check(
    id="IR-TGT-004",
    title="The VM agent is ready",
    severity="high",
    os="any",
    doc=_docs.GENERALIZE,
)
def test_vm_agent_ready(vm: VmRef, facts: VmFacts, request: pytest.FixtureRequest) -> None:
    status, version = agent_status(facts)
    evidence(request, f"{vm.key}: VM agent {status} (version {version or 'unknown'})")
    if status == "Ready":
        return
    doc = _docs.LINUX_AGENT if facts.os_type == "Linux" else _docs.WINDOWS_AGENT
    state = power_state(facts)
    if state != "running":
        # no agent reports from a VM that is off: the power state is the finding to act on
        finding(
            f"the VM agent on {vm.key} is not ready (status '{status}') because the VM is {state}",
            where=f"{vm.id} instance view, vmAgent",
            fix="See the power-state finding (IR-TGT-002); the agent reports once the VM runs.",
            doc=doc,
        )
    finding(
        f"the VM agent on {vm.key} is not ready (status '{status}'): VMs from an image whose agent "
        "does not report fail to provision",
        where=f"{vm.id} instance view, vmAgent",
        fix="Make sure the Azure guest agent (waagent / WindowsAzureGuestAgent) runs and can reach "
        "the platform, then run the checks again.",
        doc=doc,
    )


@pytest.mark.check(
    id="IR-TGT-005",
    title="The OS type is known",
    severity="critical",
    os="any",
    doc=_docs.GENERALIZE,
)
def test_os_type_known(vm: VmRef, facts: VmFacts, request: pytest.FixtureRequest) -> None:
    evidence(request, f"{vm.key}: osType {facts.os_type}")
    if facts.os_type not in ("Linux", "Windows"):
        finding(
            f"the OS type of {vm.key} is not reported by Azure, so the right procedure is unknown",
            where=f"{vm.id} storageProfile.osDisk.osType",
            fix="Set the OS disk's osType (Linux or Windows) on the disk resource.",
            doc=_docs.GENERALIZE,
        )

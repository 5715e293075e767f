"""The rules Azure enforces, as azsim enforces them, seen through the harness's AzureSession."""

from __future__ import annotations

import time

import pytest

from imageready.azure import AzureConflict, AzureForbidden, AzureSession
from tests.azsim.conftest import Azsim

pytestmark = pytest.mark.azsim
RG = "rg-fleet"


def statuses(session: AzureSession, fleet: Azsim, name: str) -> list[str]:
    vm = session.get_vm(fleet.ref(name))
    return [s["code"] for s in vm["properties"]["instanceView"]["statuses"]]


def test_generalize_is_refused_on_a_running_vm(fleet: Azsim, session: AzureSession) -> None:
    with pytest.raises(AzureConflict) as caught:
        session.generalize(fleet.ref("lin-gen-running"))
    message = str(caught.value)
    assert message == (
        "generalize rg-fleet/lin-gen-running: Operation 'generalize' is not allowed on VM "
        "'lin-gen-running' since the VM is running. Please stop or deallocate the VM and retry. "
        "(OperationNotAllowed)"
    )
    assert caught.value.status == 409 and caught.value.code == "OperationNotAllowed"
    assert "OSState/generalized" not in statuses(session, fleet, "lin-gen-running")
    assert session.calls[-1].status == "Failed" and session.calls[-1].error == message


@pytest.mark.parametrize("name", ["lin-gen", "lin-gen-stopped"])
def test_generalize_a_stopped_or_deallocated_vm_sets_osstate(
    fleet: Azsim, session: AzureSession, name: str
) -> None:
    before = session.get_vm(fleet.ref(name), instance_view=False)["etag"]
    call = session.generalize(fleet.ref(name))
    assert call.status == "Succeeded" and call.request_ids
    codes = statuses(session, fleet, name)
    assert "OSState/generalized" in codes
    assert codes[-1] in ("PowerState/deallocated", "PowerState/stopped")
    assert session.get_vm(fleet.ref(name), instance_view=False)["etag"] != before
    generalize = [r for r in fleet.requests() if r["path"].endswith(f"/{name}/generalize")]
    assert generalize[-1]["status"] == 200


def test_a_generalized_vm_never_starts(fleet: Azsim, session: AzureSession) -> None:
    with pytest.raises(AzureConflict) as caught:
        session.start(fleet.ref("lin-generalized"))
    assert "Operation 'start' is not allowed on VM 'lin-generalized' since the VM is generalized." in str(
        caught.value
    )
    assert statuses(session, fleet, "lin-generalized")[-1] == "PowerState/deallocated"


def test_image_capture_needs_a_generalized_vm(fleet: Azsim, session: AzureSession) -> None:
    vm = session.get_vm(fleet.ref("lin-specialized-off"), instance_view=False)
    with pytest.raises(AzureConflict, match="Capture operation cannot be completed because the VM is not"):
        session.create_image(RG, "img-refused", vm["id"], "westeurope", {})
    with pytest.raises(AzureConflict, match="is not generalized, but the gallery image definition"):
        session.create_gallery_image_version(
            RG, "galFleet", "linux-generalized", "9.9.9", vm["id"], "westeurope", {}
        )
    # a Specialized definition takes a specialized VM
    version = session.create_gallery_image_version(
        RG, "galFleet", "linux-specialized", "1.0.0", vm["id"], "westeurope", {}
    )
    assert version["properties"]["provisioningState"] == "Succeeded"


def test_a_vm_stopped_from_inside_is_stopped_not_deallocated(fleet: Azsim, session: AzureSession) -> None:
    fleet.admin("POST", "/azsim/vms/rg-fleet/lin-guest-off/guest-shutdown")
    assert statuses(session, fleet, "lin-guest-off")[-1] == "PowerState/stopped"
    # still allocated: deallocating it is a real transition
    session.deallocate(fleet.ref("lin-guest-off"))
    assert statuses(session, fleet, "lin-guest-off")[-1] == "PowerState/deallocated"


def test_power_transitions(fleet: Azsim, session: AzureSession) -> None:
    ref = fleet.ref("lin-start")
    session.start(ref)
    assert statuses(session, fleet, "lin-start")[-1] == "PowerState/running"
    session.power_off(ref)
    assert statuses(session, fleet, "lin-start")[-1] == "PowerState/stopped"
    session.deallocate(ref)
    assert statuses(session, fleet, "lin-start")[-1] == "PowerState/deallocated"
    assert [c.operation for c in session.calls] == ["start", "power off", "deallocate"]


def test_run_command_needs_a_running_vm_and_a_ready_agent(fleet: Azsim, session: AzureSession) -> None:
    with pytest.raises(AzureConflict, match=r"requires the VM to be running \(or set to run\)"):
        session.run_command(fleet.ref("lin-run-off"), "RunShellScript", ["true"])
    from imageready.azure import AzureError

    with pytest.raises(AzureError, match=r"failed in Azure: \(VMAgentStatusCommunicationError\)"):
        session.run_command(fleet.ref("lin-agent-down"), "RunShellScript", ["true"])
    view = session.get_vm(fleet.ref("lin-agent-down"))["properties"]["instanceView"]
    assert view["vmAgent"]["statuses"][0]["displayStatus"] == "Not Ready"


def test_one_operation_at_a_time(fleet: Azsim, session: AzureSession) -> None:
    fault = fleet.add_fault(kind="lro_never_ends", operation="deallocate", vm="rg-fleet/lin-busy")
    try:
        with fleet.session(lro_deadline=0.5, poll_interval=0.1) as short:
            from imageready.azure import AzureTimeout

            with pytest.raises(AzureTimeout):
                short.deallocate(fleet.ref("lin-busy"))
        assert fleet.vm_status(RG, "lin-busy")["power_state"] == "deallocating"
        with pytest.raises(AzureConflict, match="since the VM is deallocating"):
            session.start(fleet.ref("lin-busy"))
        with pytest.raises(AzureConflict, match="since the VM is deallocating"):
            session.generalize(fleet.ref("lin-busy"))
    finally:
        fleet.admin("DELETE", f"/azsim/faults/{fault}")


def test_denied_action_from_the_scenario_is_403_naming_the_action(fleet: Azsim) -> None:
    """principal.denied_actions lists restart; the SDK sees AuthorizationFailed."""
    from azure.core.exceptions import HttpResponseError
    from azure.identity import ClientSecretCredential
    from azure.mgmt.compute import ComputeManagementClient

    env = fleet.env
    credential = ClientSecretCredential(
        env["AZURE_TENANT_ID"],
        env["AZURE_CLIENT_ID"],
        env["AZURE_CLIENT_SECRET"],
        authority=env["AZURE_AUTHORITY_HOST"],
        disable_instance_discovery=True,
        connection_verify=fleet.ca_bundle,
    )
    client = ComputeManagementClient(
        credential,
        fleet.subscription,
        base_url=env["IMAGEREADY_ARM_ENDPOINT"],
        credential_scopes=["https://management.core.windows.net//.default"],
        connection_verify=fleet.ca_bundle,
        retry_total=0,
    )
    with pytest.raises(HttpResponseError) as caught:
        client.virtual_machines.begin_restart(RG, "lin-restart").result()
    assert caught.value.status_code == 403 and caught.value.error is not None
    assert caught.value.error.code == "AuthorizationFailed"
    assert (
        "perform action 'Microsoft.Compute/virtualMachines/restart/action' over scope "
        f"'/subscriptions/{fleet.subscription}/resourceGroups/{RG}/providers/Microsoft.Compute/"
        "virtualMachines/lin-restart'" in caught.value.error.message
    )
    assert fleet.vm_status(RG, "lin-restart")["power_state"] == "running"


def test_forbidden_reaches_the_harness_as_the_missing_permission(fleet: Azsim, session: AzureSession) -> None:
    fault = fleet.add_fault(
        kind="forbidden", action="Microsoft.Compute/virtualMachines/deallocate/action", vm="rg-fleet/lin-fast"
    )
    try:
        started = time.monotonic()
        with pytest.raises(AzureForbidden) as caught:
            session.deallocate(fleet.ref("lin-fast"))
        assert time.monotonic() - started < 2  # a 403 is not retried
        assert caught.value.action == "Microsoft.Compute/virtualMachines/deallocate/action"
        assert str(caught.value).startswith(
            "deallocate rg-fleet/lin-fast: permission denied: the signed-in identity lacks "
            "'Microsoft.Compute/virtualMachines/deallocate/action' on /subscriptions/"
        )
        assert "\n" not in str(caught.value)
    finally:
        fleet.admin("DELETE", f"/azsim/faults/{fault}")
    assert fleet.vm_status(RG, "lin-fast")["power_state"] == "running"

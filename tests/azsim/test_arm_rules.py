"""The rules Azure enforces, as azsim enforces them, seen through the harness's AzureSession or raw
HTTPS. Each rule, its Microsoft source and its test here: docs/azsim-rules.md (kept in sync by
test_rulebook.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from imageready.azure import AzureConflict, AzureError, AzureForbidden, AzureSession
from tests.azsim.conftest import Azsim, raw

pytestmark = pytest.mark.azsim
RG = "rg-fleet"
API = "?api-version=2025-04-01"
TAGS_API = "/providers/Microsoft.Resources/tags/default?api-version=2024-03-01"


def compute_path(fleet: Azsim, kind: str, name: str) -> str:
    return (
        f"/subscriptions/{fleet.subscription}/resourceGroups/{RG}/providers/Microsoft.Compute/{kind}/{name}"
    )


def vm_path(fleet: Azsim, name: str) -> str:
    return compute_path(fleet, "virtualMachines", name)


def error_of(body: Any) -> tuple[str, str]:
    return body["error"]["code"], body["error"]["message"]


def statuses(session: AzureSession, fleet: Azsim, name: str) -> list[str]:
    vm = session.get_vm(fleet.ref(name))
    return [s["code"] for s in vm["properties"]["instanceView"]["statuses"]]


def test_generalize_is_refused_on_a_running_vm(fleet: Azsim, session: AzureSession) -> None:
    with pytest.raises(AzureConflict) as caught:
        session.generalize(fleet.ref("lin-gen-running"))
    message = str(caught.value)
    assert message == (
        "generalize rg-fleet/lin-gen-running: Operation 'generalize' is not allowed on VM "
        "'lin-gen-running' since the VM is running. Please power off explicitly in case you shut down "
        "the VM from inside the guest operating system. (OperationNotAllowed)"
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
    assert "Operation 'Start VM' is not allowed on VM 'lin-generalized' since the VM is generalized." in str(
        caught.value
    )
    assert statuses(session, fleet, "lin-generalized")[-1] == "PowerState/deallocated"


def test_image_capture_needs_a_generalized_vm(fleet: Azsim, session: AzureSession) -> None:
    vm = session.get_vm(fleet.ref("lin-specialized-off"), instance_view=False)
    with pytest.raises(AzureConflict, match="Capture operation cannot be completed because the VM is not"):
        session.create_image(RG, "img-refused", vm["id"], "westeurope", {})
    assert not [r for r in fleet.requests() if "/images/img-refused" in r["path"] and r["status"] < 300]


def test_gallery_version_os_state_must_match_the_definition(fleet: Azsim, session: AzureSession) -> None:
    specialized = session.get_vm(fleet.ref("lin-specialized-off"), instance_view=False)["id"]
    with pytest.raises(AzureError) as caught:
        session.create_gallery_image_version(
            RG, "galFleet", "linux-generalized", "9.9.9", specialized, "westeurope", {}
        )
    assert caught.value.status == 400 and caught.value.code == "BadRequest"
    assert (
        f"The resource with id '{specialized}' has a different OS state ['Specialized'] than the parent "
        "gallery image OS state ['Generalized']." in str(caught.value)
    )
    generalized = session.get_vm(fleet.ref("lin-gen-unchanged"), instance_view=False)["id"]
    with pytest.raises(
        AzureError,
        match=r"OS state \['Generalized'\] than the parent gallery image OS state \['Specialized'\]",
    ):
        session.create_gallery_image_version(
            RG, "galFleet", "linux-specialized", "9.9.9", generalized, "westeurope", {}
        )
    # a Specialized definition takes a specialized VM, a Generalized one a generalized VM
    version = session.create_gallery_image_version(
        RG, "galFleet", "linux-specialized", "1.0.0", specialized, "westeurope", {}
    )
    assert version["properties"]["provisioningState"] == "Succeeded"


def test_gallery_version_needs_an_existing_definition(fleet: Azsim, session: AzureSession) -> None:
    source = session.get_vm(fleet.ref("lin-gen-unchanged"), instance_view=False)["id"]
    with pytest.raises(AzureError) as caught:
        session.create_gallery_image_version(
            RG, "galFleet", "no-such-definition", "1.0.0", source, "westeurope", {}
        )
    assert caught.value.status == 404 and caught.value.code == "ResourceNotFound"


def test_gallery_version_os_type_must_match_the_definition(fleet: Azsim, session: AzureSession) -> None:
    source = session.get_vm(fleet.ref("lin-gen-unchanged"), instance_view=False)["id"]
    with pytest.raises(AzureError) as caught:
        session.create_gallery_image_version(
            RG, "galFleet", "windows-generalized", "1.0.0", source, "westeurope", {}
        )
    assert caught.value.status == 400
    assert "has a different OS type ['Linux'] than the parent gallery image OS type ['Windows']" in str(
        caught.value
    )


def test_gallery_version_hyper_v_generation_must_match_the_definition(
    fleet: Azsim, session: AzureSession
) -> None:
    gen1 = session.get_vm(fleet.ref("lin-v1-gen"), instance_view=False)["id"]
    with pytest.raises(AzureConflict) as caught:
        session.create_gallery_image_version(
            RG, "galFleet", "linux-generalized", "1.0.0", gen1, "westeurope", {}
        )
    assert caught.value.code == "Conflict"
    assert (
        f"The resource with id '{gen1}' has a different Hypervisor generation ['V1'] than the parent gallery "
        "image Hypervisor generation ['V2']." in str(caught.value)
    )
    version = session.create_gallery_image_version(
        RG, "galFleet", "linux-v1", "1.0.0", gen1, "westeurope", {}
    )
    assert version["properties"]["provisioningState"] == "Succeeded"


def test_gallery_version_security_type_must_match_the_definition(fleet: Azsim, session: AzureSession) -> None:
    trusted = session.get_vm(fleet.ref("lin-tl-gen"), instance_view=False)["id"]
    standard = session.get_vm(fleet.ref("lin-gen-unchanged"), instance_view=False)["id"]
    confidential = session.get_vm(fleet.ref("lin-cvm-gen"), instance_view=False)["id"]
    for source, definition in (
        (trusted, "linux-generalized"),
        (standard, "linux-tl"),
        (trusted, "linux-cvm"),
    ):
        with pytest.raises(AzureError, match="declares SecurityType") as caught:
            session.create_gallery_image_version(
                RG, "galFleet", definition, "9.9.9", source, "westeurope", {}
            )
        assert caught.value.status == 400 and caught.value.code == "InvalidParameter"
    # the *Supported types hold no VM guest state: a VM is no source for them
    with pytest.raises(AzureError) as caught:
        session.create_gallery_image_version(
            RG, "galFleet", "linux-tl-supported", "1.0.0", trusted, "westeurope", {}
        )
    assert (
        f"The security type 'TrustedLaunchSupported' is not supported for the source id '{trusted}'. "
        "Currently only Vhd Blob, User Image and Gallery Image Version sources are supported for "
        "'TrustedLaunchSupported' images." in str(caught.value)
    )
    assert session.create_gallery_image_version(
        RG, "galFleet", "linux-tl", "1.0.0", trusted, "westeurope", {}
    )
    assert session.create_gallery_image_version(
        RG, "galFleet", "linux-cvm", "1.0.0", confidential, "westeurope", {}
    )


def test_gallery_version_architecture_must_match_the_definition(fleet: Azsim, session: AzureSession) -> None:
    arm64 = session.get_vm(fleet.ref("lin-arm64-gen"), instance_view=False)
    disk = session.get_disk(arm64["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"])
    assert disk["properties"]["supportedCapabilities"] == {"architecture": "Arm64"}
    with pytest.raises(AzureError, match="has architecture 'Arm64', but the gallery image definition"):
        session.create_gallery_image_version(
            RG, "galFleet", "linux-generalized", "1.0.0", arm64["id"], "westeurope", {}
        )
    assert session.create_gallery_image_version(
        RG, "galFleet", "linux-arm64", "1.0.0", arm64["id"], "westeurope", {}
    )


def test_gallery_version_of_a_vm_with_a_plan_needs_the_plan_on_the_definition(
    fleet: Azsim, session: AzureSession
) -> None:
    planned = session.get_vm(fleet.ref("lin-plan-gen"), instance_view=False)
    assert planned["plan"] == {"name": "sku1", "publisher": "contoso", "product": "offer1"}
    with pytest.raises(AzureError, match="must declare the same purchasePlan"):
        session.create_gallery_image_version(
            RG, "galFleet", "linux-generalized", "1.0.0", planned["id"], "westeurope", {}
        )
    definition = session.get_resource(
        f"/subscriptions/{fleet.subscription}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/galFleet"
        "/images/linux-plan",
        "2024-03-03",
    )
    assert definition["properties"]["purchasePlan"] == planned["plan"]
    assert session.create_gallery_image_version(
        RG, "galFleet", "linux-plan", "1.0.0", planned["id"], "westeurope", {}
    )


@pytest.mark.parametrize(
    ("name", "security_type"), [("lin-tl-gen", "TrustedLaunch"), ("lin-cvm-gen", "ConfidentialVM")]
)
def test_managed_image_refused_for_trusted_launch_and_confidential_vms(
    fleet: Azsim, session: AzureSession, name: str, security_type: str
) -> None:
    vm = session.get_vm(fleet.ref(name), instance_view=False)
    assert vm["properties"]["securityProfile"]["securityType"] == security_type
    with pytest.raises(AzureConflict) as caught:
        session.create_image(RG, f"img-{name}", vm["id"], "westeurope", {})
    assert caught.value.code == "OperationNotAllowed"
    assert (
        "Creation of managed images are not supported for virtual machine with "
        f"{security_type} security type." in str(caught.value)
    )


def test_managed_image_refused_for_arm64(fleet: Azsim, session: AzureSession) -> None:
    vm = session.get_vm(fleet.ref("lin-arm64-gen"), instance_view=False)
    with pytest.raises(
        AzureConflict, match="with the Arm64 architecture: capture it to an Azure Compute Gallery"
    ):
        session.create_image(RG, "img-arm64", vm["id"], "westeurope", {})


def test_image_hyper_v_generation_is_the_request_s_else_the_source_s(
    fleet: Azsim, session: AzureSession
) -> None:
    gen1 = session.get_vm(fleet.ref("lin-v1-gen"), instance_view=False)["id"]
    # the harness passes the source's generation; a request without one gets the source's
    image = session.create_image(RG, "img-gen1", gen1, "westeurope", {})
    assert image["properties"]["hyperVGeneration"] == "V1"
    path = f"/subscriptions/{fleet.subscription}/resourceGroups/{RG}/providers/Microsoft.Compute/images"
    body = {"location": "westeurope", "properties": {"sourceVirtualMachine": {"id": gen1}}}
    status, _, made = raw(fleet, session, "PUT", f"{path}/img-gen1-default{API}", body=body)
    assert status == 201 and made["properties"]["hyperVGeneration"] == "V1"
    body["properties"]["hyperVGeneration"] = "V2"  # taken as given: `az image create` defaults to V1
    status, _, made = raw(fleet, session, "PUT", f"{path}/img-gen1-as-v2{API}", body=body)
    assert status == 201 and made["properties"]["hyperVGeneration"] == "V2"


def test_put_on_an_existing_image_updates_it(fleet: Azsim, session: AzureSession) -> None:
    source = session.get_vm(fleet.ref("lin-gen-unchanged"), instance_view=False)["id"]
    first = session.create_image(RG, "img-again", source, "westeurope", {"run": "1"})
    path = compute_path(fleet, "images", "img-again") + API
    body = {
        "location": "westeurope",
        "tags": {"run": "2"},
        "properties": {"sourceVirtualMachine": {"id": source}},
    }
    status, _, again = raw(fleet, session, "PUT", path, body=body)
    assert status == 200 and again["id"] == first["id"] and again["tags"] == {"run": "2"}
    other = session.get_vm(fleet.ref("lin-v1-gen"), instance_view=False)["id"]
    body["properties"]["sourceVirtualMachine"]["id"] = other
    status, _, refused = raw(fleet, session, "PUT", path, body=body)
    assert status == 409 and "azsim does not re-point it" in error_of(refused)[1]


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
        busy = "is not allowed on VM 'lin-busy' since another operation is in progress"
        with pytest.raises(AzureConflict, match=busy):
            session.start(fleet.ref("lin-busy"))
        with pytest.raises(AzureConflict, match=busy):
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


# --- a generalized VM takes no change at all ------------------------------------------------------


GENERALIZED_REFUSAL = "Operation 'Update VM' is not allowed on VM 'lin-sealed' since the VM is generalized."


def test_a_generalized_vm_takes_no_patch(fleet: Azsim, session: AzureSession) -> None:
    ref = fleet.ref("lin-sealed")
    before = fleet.vm_status(RG, "lin-sealed")
    with pytest.raises(AzureConflict) as caught:
        session.update_tags(ref, {"owner": "platform", "imageready-lease": "run-1"}, if_match=before["etag"])
    assert caught.value.code == "OperationNotAllowedOnGeneralizedVM"
    assert GENERALIZED_REFUSAL in str(caught.value)
    after = fleet.vm_status(RG, "lin-sealed")
    assert (after["etag"], after["tags"]) == (before["etag"], {"owner": "platform"})


def test_a_generalized_vm_takes_no_put(fleet: Azsim, session: AzureSession) -> None:
    before = fleet.vm_status(RG, "lin-sealed")
    model = session.get_vm(fleet.ref("lin-sealed"), instance_view=False)
    body = {
        "location": model["location"],
        "tags": {"owner": "someone-else"},
        "properties": model["properties"],
    }
    status, _, reply = raw(fleet, session, "PUT", vm_path(fleet, "lin-sealed") + API, body=body)
    assert (status, *error_of(reply)) == (409, "OperationNotAllowedOnGeneralizedVM", GENERALIZED_REFUSAL)
    assert fleet.vm_status(RG, "lin-sealed")["etag"] == before["etag"]


def test_a_generalized_vm_takes_no_tags_through_the_tags_api(fleet: Azsim, session: AzureSession) -> None:
    tags = vm_path(fleet, "lin-sealed") + TAGS_API
    before = fleet.vm_status(RG, "lin-sealed")
    status, _, read = raw(fleet, session, "GET", tags)
    assert status == 200 and read["properties"]["tags"] == {"owner": "platform"}
    for method, body in (
        ("PUT", {"properties": {"tags": {"a": "b"}}}),
        ("PATCH", {"operation": "Merge", "properties": {"tags": {"a": "b"}}}),
        ("DELETE", None),
    ):
        status, _, reply = raw(fleet, session, method, tags, body=body)
        assert (status, *error_of(reply)) == (
            409,
            "OperationNotAllowedOnGeneralizedVM",
            GENERALIZED_REFUSAL,
        ), method
    after = fleet.vm_status(RG, "lin-sealed")
    assert (after["etag"], after["tags"]) == (before["etag"], before["tags"])


def test_tags_api_at_a_vm_scope(fleet: Azsim, session: AzureSession) -> None:
    """A VM that is not generalized takes tags through the Tags API (Merge, Replace, Delete)."""
    tags = vm_path(fleet, "lin-tags-api") + TAGS_API
    etag = fleet.vm_status(RG, "lin-tags-api")["etag"]
    status, _, merged = raw(
        fleet, session, "PATCH", tags, body={"operation": "Merge", "properties": {"tags": {"a": "1"}}}
    )
    assert status == 200 and merged["properties"]["tags"] == {"owner": "platform", "a": "1"}
    assert merged["id"].endswith("/virtualMachines/lin-tags-api/providers/Microsoft.Resources/tags/default")
    assert fleet.vm_status(RG, "lin-tags-api")["etag"] != etag
    status, _, deleted = raw(
        fleet, session, "PATCH", tags, body={"operation": "Delete", "properties": {"tags": {"a": "1"}}}
    )
    assert deleted["properties"]["tags"] == {"owner": "platform"}
    status, _, replaced = raw(fleet, session, "PUT", tags, body={"properties": {"tags": {"b": "2"}}})
    assert replaced["properties"]["tags"] == {"b": "2"}
    assert session.get_vm(fleet.ref("lin-tags-api"), instance_view=False)["tags"] == {"b": "2"}
    status, _, _ = raw(fleet, session, "DELETE", tags)
    assert status == 200 and fleet.vm_status(RG, "lin-tags-api")["tags"] == {}


def test_a_generalized_vm_keeps_its_disks_and_nic_and_its_disks_can_be_copied(
    fleet: Azsim, session: AzureSession
) -> None:
    vm = session.get_vm(fleet.ref("lin-sealed"), instance_view=False)
    os_disk = session.get_disk(vm["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"])
    assert os_disk["managedBy"] == vm["id"] and os_disk["properties"]["diskState"] == "Attached"
    nic = session.get_resource(vm["properties"]["networkProfile"]["networkInterfaces"][0]["id"], "2024-05-01")
    assert nic["properties"]["virtualMachine"]["id"] == vm["id"]
    # "a managed image from a snapshot of a generalized VM" (Microsoft): its OS disk can be copied
    snapshot = session.create_snapshot(RG, "snap-of-sealed", os_disk["id"], "westeurope", {})
    assert snapshot["properties"]["creationData"]["sourceResourceId"] == os_disk["id"]
    assert snapshot["properties"]["provisioningState"] == "Succeeded"


def test_a_snapshot_may_be_made_from_a_snapshot(fleet: Azsim, session: AzureSession) -> None:
    source = compute_path(fleet, "snapshots", "snap-routes")
    copy = session.create_snapshot(RG, "snap-of-snap", source, "westeurope", {})
    assert copy["properties"]["creationData"]["sourceResourceId"] == source
    assert copy["properties"]["provisioningState"] == "Succeeded"


# --- what the live suite (tests/live) creates and deletes -------------------------------------------

RG_API = "?api-version=2021-04-01"


def group_path(fleet: Azsim, name: str) -> str:
    return f"/subscriptions/{fleet.subscription}/resourceGroups/{name}"


def wait_for(fleet: Azsim, session: AzureSession, headers: dict[str, str]) -> dict[str, Any]:
    """Follow a 202's Azure-AsyncOperation URL to its end, as ARM clients do."""
    url = headers.get("Azure-AsyncOperation") or headers["Location"]
    path = url.split(fleet.url, 1)[1]
    for _ in range(100):
        status, _headers, body = raw(fleet, session, "GET", path)
        assert status == 200, body
        if body["status"] != "InProgress":
            return dict(body)
        time.sleep(0.1)
    raise AssertionError(f"{path} never ended")


def test_a_resource_group_is_created_or_updated_in_its_location(fleet: Azsim, session: AzureSession) -> None:
    path = group_path(fleet, "rg-made") + RG_API
    status, _, body = raw(fleet, session, "PUT", path, body={"location": "westeurope", "tags": {"a": "1"}})
    assert status == 201 and body["properties"]["provisioningState"] == "Succeeded", body
    assert body["id"].endswith("/resourceGroups/rg-made") and body["tags"] == {"a": "1"}
    status, _, body = raw(fleet, session, "PUT", path, body={"location": "westeurope", "tags": {"b": "2"}})
    assert status == 200 and body["tags"] == {"b": "2"}
    status, _, body = raw(fleet, session, "PUT", path, body={"location": "eastus"})
    assert status == 409 and error_of(body) == (
        "InvalidResourceGroupLocation",
        "Invalid resource group location 'eastus'. The Resource group already exists in location "
        "'westeurope'.",
    )
    status, _, body = raw(fleet, session, "PUT", group_path(fleet, "rg-nowhere") + RG_API, body={})
    assert status == 400 and error_of(body)[0] == "LocationRequired"
    status, _, body = raw(fleet, session, "GET", path)
    assert status == 200 and body["location"] == "westeurope"


def test_resource_groups_are_listed_by_tag(fleet: Azsim, session: AzureSession) -> None:
    for name, value in (("rg-tag-1", "x"), ("rg-tag-2", "y")):
        body = {"location": "westeurope", "tags": {"imageready-live": value}}
        assert raw(fleet, session, "PUT", group_path(fleet, name) + RG_API, body=body)[0] == 201
    base = f"/subscriptions/{fleet.subscription}/resourcegroups{RG_API}&$filter="
    status, _, body = raw(fleet, session, "GET", base + "tagName%20eq%20'imageready-live'")
    assert status == 200 and [g["name"] for g in body["value"]] == ["rg-tag-1", "rg-tag-2"]
    query = "tagName%20eq%20'imageready-live'%20and%20tagValue%20eq%20'y'"
    assert [g["name"] for g in raw(fleet, session, "GET", base + query)[2]["value"]] == ["rg-tag-2"]
    everything = raw(fleet, session, "GET", f"/subscriptions/{fleet.subscription}/resourcegroups{RG_API}")[2]
    assert {"rg-fleet", "rg-tag-1", "rg-tag-2"} <= {g["name"] for g in everything["value"]}


def linux_vm_from_image(fleet: Azsim, rg: str, name: str, image: dict[str, str]) -> dict[str, Any]:
    nic = f"{group_path(fleet, rg)}/providers/Microsoft.Network/networkInterfaces/{name}-nic"
    key = (fleet.state_dir / "ssh" / "id_ed25519.pub").read_text().strip()
    return {
        "location": "westeurope",
        "properties": {
            "hardwareProfile": {"vmSize": "Standard_B1s"},
            "storageProfile": {"imageReference": image, "osDisk": {"createOption": "FromImage"}},
            "osProfile": {
                "computerName": name,
                "adminUsername": "azureuser",
                "linuxConfiguration": {
                    "disablePasswordAuthentication": True,
                    "ssh": {"publicKeys": [{"path": "/home/azureuser/.ssh/authorized_keys", "keyData": key}]},
                },
            },
            "networkProfile": {"networkInterfaces": [{"id": nic}]},
        },
    }


def make_nic(fleet: Azsim, session: AzureSession, rg: str, name: str) -> None:
    nic = f"{group_path(fleet, rg)}/providers/Microsoft.Network/networkInterfaces/{name}-nic"
    status, _, body = raw(
        fleet, session, "PUT", nic + "?api-version=2024-05-01", body={"location": "westeurope"}
    )
    assert status in (200, 201), body


def test_a_vm_from_a_marketplace_image_gets_an_os_disk_made_from_the_image(
    fleet: Azsim, session: AzureSession
) -> None:
    debian = {"publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"}
    make_nic(fleet, session, RG, "lin-market")
    path = vm_path(fleet, "lin-market") + API
    status, headers, body = raw(
        fleet, session, "PUT", path, body=linux_vm_from_image(fleet, RG, "lin-market", debian)
    )
    assert status == 201, body
    assert wait_for(fleet, session, headers)["status"] == "Succeeded"
    vm = session.get_vm(fleet.ref("lin-market"))
    storage = vm["properties"]["storageProfile"]
    assert storage["osDisk"]["createOption"] == "FromImage" and storage["osDisk"]["osType"] == "Linux"
    assert storage["imageReference"]["offer"] == "debian-12"
    assert vm["properties"]["osProfile"]["adminUsername"] == "azureuser"
    assert vm["properties"]["instanceView"]["hyperVGeneration"] == "V2"
    disk = session.get_disk(storage["osDisk"]["managedDisk"]["id"])
    assert disk["properties"]["creationData"]["createOption"] == "FromImage"
    assert disk["properties"]["supportedCapabilities"] == {"architecture": "x64"}
    assert disk["managedBy"].lower() == vm["id"].lower()
    # an image the platform does not have
    missing = {**debian, "sku": "11"}
    make_nic(fleet, session, RG, "lin-nowhere")
    status, _, body = raw(
        fleet,
        session,
        "PUT",
        vm_path(fleet, "lin-nowhere") + API,
        body=linux_vm_from_image(fleet, RG, "lin-nowhere", missing),
    )
    assert status == 404 and error_of(body) == (
        "PlatformImageNotFound",
        "The platform image 'Debian:debian-12:11:latest' is not available. Verify that all fields in the "
        "storage profile are correct. For more details about storage profile information, please refer "
        "to https://aka.ms/storageprofile",
    )


def test_a_gallery_and_an_image_definition_are_created_by_put(fleet: Azsim, session: AzureSession) -> None:
    gallery = compute_path(fleet, "galleries", "galMade")
    status, headers, body = raw(fleet, session, "PUT", gallery + API, body={"location": "westeurope"})
    assert status == 201 and body["properties"]["provisioningState"] == "Creating", body
    assert wait_for(fleet, session, headers)["status"] == "Succeeded"
    definition = {
        "location": "westeurope",
        "properties": {
            "osType": "Windows",
            "osState": "Generalized",
            "hyperVGeneration": "V2",
            "architecture": "x64",
            "identifier": {"publisher": "contoso", "offer": "live", "sku": "win"},
            "features": [{"name": "SecurityType", "value": "TrustedLaunch"}],
        },
    }
    status, headers, body = raw(fleet, session, "PUT", gallery + "/images/win" + API, body=definition)
    assert status == 201, body
    wait_for(fleet, session, headers)
    shown = raw(fleet, session, "GET", gallery + "/images/win" + API)[2]["properties"]
    assert shown["features"] == [{"name": "SecurityType", "value": "TrustedLaunch"}]
    assert (shown["osType"], shown["osState"], shown["provisioningState"]) == (
        "Windows",
        "Generalized",
        "Succeeded",
    )
    orphan = compute_path(fleet, "galleries", "galNone") + "/images/win" + API
    status, _, body = raw(fleet, session, "PUT", orphan, body=definition)
    assert status == 404 and error_of(body)[0] == "ResourceNotFound"


def test_deleting_a_resource_group_deletes_everything_in_it(fleet: Azsim, session: AzureSession) -> None:
    rg = "rg-doomed"
    assert (
        raw(fleet, session, "PUT", group_path(fleet, rg) + RG_API, body={"location": "westeurope"})[0] == 201
    )
    debian = {"publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"}
    make_nic(fleet, session, rg, "lin-doomed")
    vm = f"{group_path(fleet, rg)}/providers/Microsoft.Compute/virtualMachines/lin-doomed"
    status, headers, _ = raw(
        fleet, session, "PUT", vm + API, body=linux_vm_from_image(fleet, rg, "lin-doomed", debian)
    )
    wait_for(fleet, session, headers)
    gallery = f"{group_path(fleet, rg)}/providers/Microsoft.Compute/galleries/galDoomed"
    wait_for(fleet, session, raw(fleet, session, "PUT", gallery + API, body={"location": "westeurope"})[1])
    disk_id = session.get_vm(fleet.ref("lin-doomed", rg), instance_view=False)["properties"][
        "storageProfile"
    ]["osDisk"]["managedDisk"]["id"]
    status, headers, _ = raw(fleet, session, "DELETE", group_path(fleet, rg) + RG_API)
    assert status == 202 and "Location" in headers
    assert wait_for(fleet, session, headers)["status"] == "Succeeded"
    for path in (group_path(fleet, rg) + RG_API, vm + API, gallery + API, disk_id + API):
        assert raw(fleet, session, "GET", path)[0] == 404, path
    status, _, body = raw(fleet, session, "DELETE", group_path(fleet, rg) + RG_API)
    assert status == 404 and error_of(body)[0] == "ResourceGroupNotFound"

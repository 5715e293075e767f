"""Every ARM route azsim serves, through the real SDK over verified HTTPS."""

# ruff: noqa: S310  (urllib opens https URLs of azsim on loopback only)

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from azure.identity import ClientSecretCredential
from azure.mgmt.compute import ComputeManagementClient

from imageready.azure import AzureSession
from imageready.azure.session import parse_run_command_output
from tests.azsim.conftest import Azsim, raw

pytestmark = pytest.mark.azsim
RG = "rg-fleet"


@pytest.fixture(scope="module")
def compute(fleet: Azsim) -> ComputeManagementClient:
    """The bare SDK client (no harness), for routes the harness does not wrap."""
    env = fleet.env
    credential = ClientSecretCredential(
        env["AZURE_TENANT_ID"],
        env["AZURE_CLIENT_ID"],
        env["AZURE_CLIENT_SECRET"],
        authority=env["AZURE_AUTHORITY_HOST"],
        disable_instance_discovery=True,
        connection_verify=fleet.ca_bundle,
    )
    return ComputeManagementClient(
        credential,
        fleet.subscription,
        base_url=env["IMAGEREADY_ARM_ENDPOINT"],
        credential_scopes=["https://management.core.windows.net//.default"],
        connection_verify=fleet.ca_bundle,
    )


def test_vm_get_has_the_fields_the_harness_reads(fleet: Azsim, session: AzureSession) -> None:
    vm = session.get_vm(fleet.ref("lin-routes"), instance_view=False)
    props = vm["properties"]
    assert vm["name"] == "lin-routes" and vm["type"] == "Microsoft.Compute/virtualMachines"
    assert len(props["vmId"]) == 36 and vm["etag"].startswith('"')
    assert props["osProfile"]["adminUsername"] == "azureuser"
    assert props["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"].startswith(
        "ssh-ed25519 "
    )
    os_disk = props["storageProfile"]["osDisk"]
    assert os_disk["managedDisk"]["id"].endswith("/disks/lin-routes-osdisk")
    assert os_disk["managedDisk"]["diskEncryptionSet"]["id"].endswith("/diskEncryptionSets/des-cmk")
    assert [d["lun"] for d in props["storageProfile"]["dataDisks"]] == [0, 1]
    assert props["storageProfile"]["imageReference"]["offer"] == "0001-com-ubuntu-server-jammy"
    assert props["networkProfile"]["networkInterfaces"][0]["id"].endswith("/networkInterfaces/lin-routes-nic")
    assert "instanceView" not in props
    assert vm["resources"][0]["properties"]["type"] == "AzureMonitorLinuxAgent"


def test_vm_get_expand_instance_view_and_the_instance_view_route_agree(
    fleet: Azsim, session: AzureSession, compute: ComputeManagementClient
) -> None:
    vm = session.get_vm(fleet.ref("lin-routes"))
    view = vm["properties"]["instanceView"]
    codes = [s["code"] for s in view["statuses"]]
    assert codes == ["ProvisioningState/succeeded", "PowerState/running"]
    assert view["vmAgent"]["statuses"][0]["displayStatus"] == "Ready"
    assert view["disks"][2]["encryptionSettings"] == [{"enabled": True}]  # the ADE data disk
    direct = compute.virtual_machines.instance_view(RG, "lin-routes")
    assert [s["code"] for s in direct["statuses"]] == codes
    assert direct["computerName"] == "lin-routes"


def test_windows_vm_shows_plan_security_and_no_agent_when_deallocated(
    fleet: Azsim, session: AzureSession
) -> None:
    vm = session.get_vm(fleet.ref("win-routes"))
    props = vm["properties"]
    assert vm["plan"] == {"name": "sku1", "publisher": "contoso", "product": "offer1"}
    assert props["securityProfile"]["securityType"] == "TrustedLaunch"
    assert props["securityProfile"]["encryptionAtHost"] is True
    assert props["osProfile"]["windowsConfiguration"]["provisionVMAgent"] is True
    assert props["storageProfile"]["osDisk"]["osType"] == "Windows"


def test_vm_lists_by_subscription_and_resource_group(compute: ComputeManagementClient) -> None:
    everything = {vm["name"] for vm in compute.virtual_machines.list_all()}
    in_group = {vm["name"] for vm in compute.virtual_machines.list(RG)}
    assert {"lin-routes", "win-routes", "lin-fast"} <= everything
    assert everything == in_group


def test_a_list_names_extensions_by_id_a_get_shows_them_whole(fleet: Azsim, session: AzureSession) -> None:
    base = f"/subscriptions/{fleet.subscription}/providers/Microsoft.Compute/virtualMachines"
    status, _, listed = raw(fleet, session, "GET", f"{base}?api-version=2025-04-01")
    assert status == 200
    (vm,) = [v for v in listed["value"] if v["name"] == "lin-routes"]
    assert vm["resources"] == [{"id": f"{vm['id']}/extensions/AzureMonitorLinuxAgent"}]
    status, _, got = raw(fleet, session, "GET", f"{vm['id']}?api-version=2025-04-01")
    (extension,) = got["resources"]
    assert extension["type"] == "Microsoft.Compute/virtualMachines/extensions"
    assert extension["properties"]["type"] == "AzureMonitorLinuxAgent"


def test_extensions_list(fleet: Azsim, session: AzureSession) -> None:
    extensions = session.list_extensions(fleet.ref("lin-routes"))
    assert [(e["name"], e["properties"]["publisher"]) for e in extensions] == [
        ("AzureMonitorLinuxAgent", "Microsoft.Azure.Monitor")
    ]
    assert session.list_extensions(fleet.ref("lin-fast")) == []


def test_disk_snapshot_des_and_nic_gets(fleet: Azsim, session: AzureSession) -> None:
    vm = session.get_vm(fleet.ref("lin-routes"), instance_view=False)
    disk = session.get_disk(vm["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"])
    assert disk["managedBy"] == vm["id"] and disk["properties"]["diskState"] == "Attached"
    assert disk["properties"]["encryption"]["type"] == "EncryptionAtRestWithCustomerKey"
    assert disk["properties"]["creationData"]["createOption"] == "FromImage"
    ade_disk = session.get_disk(vm["properties"]["storageProfile"]["dataDisks"][1]["managedDisk"]["id"])
    assert ade_disk["properties"]["encryptionSettingsCollection"]["enabled"] is True
    snapshot = session.get_snapshot(
        f"/subscriptions/{fleet.subscription}/resourceGroups/{RG}/providers/Microsoft.Compute/snapshots/snap-routes"
    )
    assert snapshot["properties"]["creationData"]["sourceResourceId"] == disk["id"]
    assert snapshot["properties"]["creationData"]["sourceUniqueId"] == disk["properties"]["uniqueId"]
    orphan = session.get_snapshot(snapshot["id"].replace("snap-routes", "snap-orphan"))
    assert "sourceUniqueId" not in orphan["properties"]["creationData"]  # its source was deleted
    des = session.get_resource(disk["properties"]["encryption"]["diskEncryptionSetId"], "2024-03-02")
    assert des["properties"]["activeKey"]["keyUrl"] == "https://azsim-vault.vault.azure.net/keys/cmk/1"
    nic = session.get_resource(vm["properties"]["networkProfile"]["networkInterfaces"][0]["id"], "2023-11-01")
    assert nic["properties"]["ipConfigurations"][0]["properties"]["privateIPAddress"] == "127.0.0.1"
    assert nic["properties"]["virtualMachine"]["id"] == vm["id"]


def test_copy_a_vm_snapshot_disk_and_vm_from_the_attached_disk(fleet: Azsim, session: AzureSession) -> None:
    source = session.get_vm(fleet.ref("lin-copy-src"), instance_view=False)
    os_disk_id = source["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"]
    snapshot = session.create_snapshot(RG, "snap-copy", os_disk_id, "westeurope", {"purpose": "copy"})
    assert snapshot["properties"]["provisioningState"] == "Succeeded"
    assert snapshot["properties"]["osType"] == "Linux" and snapshot["tags"] == {"purpose": "copy"}
    disk = session.create_disk_from_snapshot(RG, "copy-osdisk", snapshot["id"], "westeurope", {})
    assert disk["properties"]["creationData"] == {
        "createOption": "Copy",
        "sourceResourceId": snapshot["id"],
        "sourceUniqueId": snapshot["properties"]["uniqueId"],
    }
    copy = session.create_vm_from_disks(
        RG,
        "lin-copy",
        source_vm=source,
        os_disk_id=disk["id"],
        data_disks=[],
        tags={"copy-of": "lin-copy-src"},
    )
    assert copy["properties"]["provisioningState"] == "Succeeded"
    assert copy["properties"]["storageProfile"]["osDisk"]["createOption"] == "Attach"
    assert "osProfile" not in copy["properties"]  # as in Azure, for a VM from a specialized disk
    assert (
        copy["properties"]["hardwareProfile"]["vmSize"] == source["properties"]["hardwareProfile"]["vmSize"]
    )
    view = session.get_vm(fleet.ref("lin-copy"))["properties"]["instanceView"]
    assert [s["code"] for s in view["statuses"]][-1] == "PowerState/running"
    assert session.get_disk(disk["id"])["managedBy"] == copy["id"]
    operations = [call.operation for call in session.calls]
    assert operations == ["create snapshot", "create disk", "create network interface", "create VM"]
    assert all(call.status == "Succeeded" and call.request_ids for call in session.calls)


def test_image_and_gallery_version_from_a_generalized_vm(fleet: Azsim, session: AzureSession) -> None:
    vm = session.get_vm(fleet.ref("lin-capture"), instance_view=False)
    image = session.create_image(RG, "img-capture", vm["id"], "westeurope", {"from": "lin-capture"})
    os_disk = image["properties"]["storageProfile"]["osDisk"]
    assert os_disk["osState"] == "Generalized" and image["properties"]["hyperVGeneration"] == "V2"
    assert image["properties"]["sourceVirtualMachine"]["id"] == vm["id"]
    version = session.create_gallery_image_version(
        RG, "galFleet", "linux-generalized", "1.0.0", vm["id"], "westeurope", {}
    )
    assert version["properties"]["provisioningState"] == "Succeeded"
    assert version["properties"]["storageProfile"]["source"]["virtualMachineId"] == vm["id"]
    again = session.get_resource(version["id"], "2024-03-03")
    assert again["name"] == "1.0.0"
    definition = session.get_resource(version["id"].rsplit("/versions/", 1)[0], "2024-03-03")
    assert definition["properties"]["osState"] == "Generalized"
    gallery = session.get_resource(definition["id"].rsplit("/images/", 1)[0], "2024-03-03")
    assert gallery["type"] == "Microsoft.Compute/galleries"


def test_run_command_route_without_guests_reports_it(fleet: Azsim, session: AzureSession) -> None:
    stdout, stderr = session.run_command(fleet.ref("lin-routes"), "RunShellScript", ["echo hello"])
    assert stdout == "" and "no guest" in stderr


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            {
                "value": [
                    {
                        "code": "ProvisioningState/succeeded",
                        "message": "Enable succeeded: \n[stdout]\nhello\n\n[stderr]\nwarn\n",
                    }
                ]
            },
            ("hello\n", "warn\n"),
        ),
        (
            {
                "value": [
                    {"code": "ComponentStatus/StdOut/succeeded", "message": "out"},
                    {"code": "ComponentStatus/StdErr/succeeded", "message": "err"},
                ]
            },
            ("out", "err"),
        ),
    ],
    ids=["linux", "windows"],
)
def test_run_command_output_shapes(result: dict[str, Any], expected: tuple[str, str]) -> None:
    assert parse_run_command_output(result) == expected


def test_run_command_result_shapes_and_azure_4096_byte_tail() -> None:
    from azsim.arm_run_command import run_command_result

    linux = run_command_result("Linux", 0, "x" * 5000 + "END", "")
    stdout, _ = parse_run_command_output(linux)
    assert len(stdout) == 4096 and stdout.endswith("END")
    failed = run_command_result("Linux", 3, "", "boom")
    assert failed["value"][0]["code"] == "ProvisioningState/failed"
    assert "exit status=3" in failed["value"][0]["message"]
    assert parse_run_command_output(failed) == ("", "boom")
    windows = run_command_result("Windows", 1, "a", "b")
    assert [s["code"] for s in windows["value"]] == [
        "ComponentStatus/StdOut/succeeded",
        "ComponentStatus/StdErr/succeeded",
    ]


def test_every_response_carries_request_and_correlation_ids(fleet: Azsim, session: AzureSession) -> None:
    status, headers, _ = raw(
        fleet,
        session,
        "GET",
        f"/subscriptions/{fleet.subscription}/resourceGroups/{RG}"
        "/providers/Microsoft.Compute/virtualMachines/lin-routes?api-version=2099-01-01",
        {"x-ms-correlation-request-id": "corr-123"},
    )
    assert status == 200
    assert headers["x-ms-correlation-request-id"] == "corr-123"
    assert len(headers["x-ms-request-id"]) == 36
    assert headers["ETag"].startswith('"')
    status, headers, body = raw(fleet, session, "GET", "/subscriptions/x/nothing?api-version=1")
    assert status == 404 and body["error"]["code"] == "InvalidResourceType"
    assert headers["x-ms-request-id"]


def test_subscription_list_metadata_and_arm_error_shapes(fleet: Azsim, session: AzureSession) -> None:
    status, _, body = raw(fleet, session, "GET", "/subscriptions?api-version=2022-12-01")
    assert status == 200 and body["value"][0]["subscriptionId"] == fleet.subscription
    assert body["value"][0]["tenantId"] == fleet.env["AZURE_TENANT_ID"]
    status, _, body = raw(
        fleet,
        session,
        "GET",
        f"/subscriptions/{fleet.subscription}/resourceGroups/nope"
        "/providers/Microsoft.Compute/virtualMachines/x?api-version=2024-07-01",
    )
    assert status == 404 and body == {
        "error": {"code": "ResourceGroupNotFound", "message": "Resource group 'nope' could not be found."}
    }
    metadata = urllib.request.urlopen(
        f"{fleet.url}/metadata/endpoints?api-version=2022-09-01",
        timeout=10,
        context=ssl.create_default_context(cafile=fleet.ca_bundle),
    )
    cloud = json.loads(metadata.read())
    assert cloud["authentication"]["loginEndpoint"].startswith("https://localhost:")
    assert "suffixes" in cloud


def test_arm_needs_a_token(fleet: Azsim) -> None:
    request = urllib.request.Request(f"{fleet.url}/subscriptions?api-version=2022-12-01")
    context = ssl.create_default_context(cafile=fleet.ca_bundle)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10, context=context)
    assert caught.value.code == 401
    assert json.loads(caught.value.read())["error"]["code"] == "AuthenticationFailed"
    forged = urllib.request.Request(
        f"{fleet.url}/subscriptions?api-version=2022-12-01", headers={"Authorization": "Bearer a.b.c"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(forged, timeout=10, context=context)
    assert json.loads(caught.value.read())["error"]["code"] == "InvalidAuthenticationToken"


def test_tag_update_with_etag_lease(fleet: Azsim, session: AzureSession) -> None:
    ref = fleet.ref("lin-tags")
    before = session.get_vm(ref, instance_view=False)
    leased = session.update_tags(
        ref, {**before["tags"], "imageready-lease": "run-1"}, if_match=before["etag"]
    )
    assert leased["tags"]["imageready-lease"] == "run-1"
    assert leased["etag"] != before["etag"]
    from imageready.azure import AzurePreconditionFailed

    with pytest.raises(AzurePreconditionFailed, match="etag mismatch"):
        session.update_tags(ref, {"imageready-lease": "run-2"}, if_match=before["etag"])
    assert session.get_vm(ref, instance_view=False)["tags"]["imageready-lease"] == "run-1"
    unconditional = session.update_tags(ref, {}, if_match=None)
    assert unconditional["tags"] == {}
    patch = [r for r in fleet.requests() if r["method"] == "PATCH"]
    assert [r["status"] for r in patch[-3:]] == [200, 412, 200]


def test_lro_answers_like_arm(fleet: Azsim, session: AzureSession) -> None:
    """202 + Azure-AsyncOperation + Location + Retry-After; status body; Location result."""
    path = (
        f"/subscriptions/{fleet.subscription}/resourceGroups/{RG}/providers/Microsoft.Compute"
        "/virtualMachines/lin-poweroff/powerOff?api-version=2024-07-01"
    )
    status, headers, body = raw(fleet, session, "POST", path)
    assert status == 202 and body is None
    assert headers["Retry-After"] == "1"
    async_url, location = headers["Azure-AsyncOperation"], headers["Location"]
    assert async_url.startswith(
        f"{fleet.url}/subscriptions/{fleet.subscription}/providers/"
        "Microsoft.Compute/locations/westeurope/operations/"
    )
    assert location == async_url + "&monitor=true"
    deadline = time.monotonic() + 5
    while True:
        status, _, op = raw(fleet, session, "GET", async_url.removeprefix(fleet.url))
        if op["status"] != "InProgress" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200 and op["status"] == "Succeeded" and "endTime" in op
    status, _, result = raw(fleet, session, "GET", location.removeprefix(fleet.url))
    assert status == 200 and result is None
    assert fleet.vm_status(RG, "lin-poweroff")["power_state"] == "stopped"

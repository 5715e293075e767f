"""``AzureSession``: the reads (``ArmReads``) and every change the harness makes in Azure (power
and state, tags, Run Command, copies, images), each an :class:`AzureCall` in ``calls``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

from azure.core import MatchConditions
from azure.core.rest import HttpRequest
from azure.mgmt.core.polling.arm_polling import ARMPolling

from imageready.azure.pipeline import AzureCall, DeadlinePassed, id_parts, json_body, raw_json
from imageready.azure.reads import ArmReads
from imageready.azure_errors import AzureError
from imageready.target import VmRef

NETWORK_API_VERSION = "2023-11-01"


class AzureSession(ArmReads):
    """One subscription, one credential, one ARM client; reuse it for a whole run."""

    # -- VM power and state --------------------------------------------------------------------

    def _vm_lro(self, operation: str, ref: VmRef, begin: Callable[..., Any]) -> AzureCall:
        def run(kwargs: dict[str, Any], polling: ARMPolling) -> None:
            begin(ref.resource_group, ref.name, polling=polling, cls=lambda *a: None, **kwargs).result()

        return self._change(operation, ref.id, ref.key, run, self._vm_missing(ref))[1]

    def deallocate(self, ref: VmRef) -> AzureCall:
        return self._vm_lro("deallocate", ref, self._client.virtual_machines.begin_deallocate)

    def power_off(self, ref: VmRef) -> AzureCall:
        return self._vm_lro("power off", ref, self._client.virtual_machines.begin_power_off)

    def start(self, ref: VmRef) -> AzureCall:
        return self._vm_lro("start", ref, self._client.virtual_machines.begin_start)

    def generalize(self, ref: VmRef) -> AzureCall:
        """Mark a stopped VM generalized (synchronous in Azure; it can never start again)."""
        vms = self._client.virtual_machines

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> None:
            vms.generalize(ref.resource_group, ref.name, **kwargs)

        return self._change("generalize", ref.id, ref.key, run, self._vm_missing(ref))[1]

    def update_tags(self, ref: VmRef, tags: dict[str, str], *, if_match: str | None) -> dict[str, Any]:
        """Replace the VM's tags (ARM PATCH semantics: merge with the current tags first to add
        one). With ``if_match`` (the etag read before), a concurrent change fails with
        :class:`AzurePreconditionFailed` instead of being overwritten."""
        vms = self._client.virtual_machines

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> dict[str, Any]:
            condition = MatchConditions.IfNotModified if if_match else None
            poller = vms.begin_update(
                ref.resource_group,
                ref.name,
                json_body({"tags": dict(tags)}),
                etag=if_match,
                match_condition=condition,
                polling=polling,
                cls=raw_json,
                **kwargs,
            )
            return cast(dict[str, Any], poller.result())

        return self._change("update tags", ref.id, ref.key, run, self._vm_missing(ref))[0]

    def run_command(self, ref: VmRef, command_id: str, script: list[str]) -> tuple[str, str]:
        """Azure Run Command; returns (stdout, stderr). Azure keeps only the last 4096 bytes of
        each, and reports no exit code on Windows: scripts should print what they need."""
        vms = self._client.virtual_machines

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> Any:
            body = {"commandId": command_id, "script": list(script)}
            return vms.begin_run_command(
                ref.resource_group, ref.name, json_body(body), polling=polling, cls=raw_json, **kwargs
            ).result()

        result = self._change("run command", ref.id, ref.key, run, self._vm_missing(ref))[0]
        return parse_run_command_output(result)

    # -- copies and images ---------------------------------------------------------------------

    def create_snapshot(
        self, rg: str, name: str, source_disk_id: str, location: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        snapshots = self._client.snapshots
        return self._copy("create snapshot", "snapshots", snapshots, rg, name, source_disk_id, location, tags)

    def create_disk_from_snapshot(
        self, rg: str, name: str, snapshot_id: str, location: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        disks = self._client.disks
        return self._copy(
            "create disk", "disks", disks, rg, name, snapshot_id, location, tags, incremental=None
        )

    def _copy(
        self,
        operation: str,
        kind: str,
        operations: Any,
        rg: str,
        name: str,
        source_id: str,
        location: str,
        tags: dict[str, str],
        incremental: bool | None = False,
    ) -> dict[str, Any]:
        """A full copy (``createOption: Copy``) of ``source_id`` as a new ``kind`` resource; a
        snapshot says it is not incremental, a disk has no such property (``None``)."""
        properties: dict[str, Any] = {"creationData": {"createOption": "Copy", "sourceResourceId": source_id}}
        if incremental is not None:
            properties["incremental"] = incremental
        body = {"location": location, "tags": dict(tags), "properties": properties}
        resource_id = self._compute_id(rg, kind, name)
        return self._create(
            operation, resource_id, resource_id, operations.begin_create_or_update, rg, name, body=body
        )

    def _create_nic_like(
        self, rg: str, name: str, source_nic_id: str, location: str, tags: dict[str, str]
    ) -> str:
        """A NIC for a copy VM, in the source NIC's subnet; returns its id."""
        source = self.get_resource(source_nic_id, NETWORK_API_VERSION)
        configs = (source.get("properties") or {}).get("ipConfigurations") or [{}]
        subnet = ((configs[0].get("properties") or {}).get("subnet") or {}).get("id")
        resource_id = (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{rg}"
            f"/providers/Microsoft.Network/networkInterfaces/{name}"
        )
        body = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "ipConfigurations": [
                    {
                        "name": "ipconfig1",
                        "properties": {"subnet": {"id": subnet}, "privateIPAllocationMethod": "Dynamic"},
                    }
                ]
            },
        }

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> None:
            url = f"{resource_id}?api-version={NETWORK_API_VERSION}"
            response = self._client.send_request(HttpRequest("PUT", url, json=body), **kwargs)
            response.raise_for_status()
            deadline = time.monotonic() + self.lro_deadline
            state = (response.json().get("properties") or {}).get("provisioningState", "Succeeded")
            while state not in ("Succeeded", "Failed", "Canceled"):
                if time.monotonic() >= deadline:
                    raise DeadlinePassed
                time.sleep(min(self.poll_interval, 5))
                state = (self.get_resource(resource_id, NETWORK_API_VERSION).get("properties") or {}).get(
                    "provisioningState", "Succeeded"
                )
            if state != "Succeeded":
                raise AzureError(f"create network interface {resource_id} ended {state}")

        self._change("create network interface", resource_id, resource_id, run)
        return resource_id

    def create_vm_from_disks(
        self,
        rg: str,
        name: str,
        *,
        source_vm: Mapping[str, Any],
        os_disk_id: str,
        data_disks: Sequence[Mapping[str, Any]],
        tags: dict[str, str],
    ) -> dict[str, Any]:
        """A copy VM that attaches ``os_disk_id`` and ``data_disks`` (``{"lun": n, "id": disk_id}``),
        with the source VM's size, location, plan and security settings and a NIC in the source
        NIC's subnet. Returns the new VM."""
        props = source_vm.get("properties") or {}
        location = str(source_vm.get("location"))
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if not nics:
            raise AzureError(f"create VM {rg}/{name}: the source VM has no network interface to copy")
        nic_id = self._create_nic_like(rg, f"{name}-nic", nics[0]["id"], location, tags)
        os_type = ((props.get("storageProfile") or {}).get("osDisk") or {}).get("osType")
        body: dict[str, Any] = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "hardwareProfile": {"vmSize": (props.get("hardwareProfile") or {}).get("vmSize")},
                "storageProfile": {
                    "osDisk": {
                        "osType": os_type,
                        "createOption": "Attach",
                        "managedDisk": {"id": os_disk_id},
                    },
                    "dataDisks": [
                        {"lun": int(d["lun"]), "createOption": "Attach", "managedDisk": {"id": str(d["id"])}}
                        for d in data_disks
                    ],
                },
                "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": True}}]},
            },
        }
        for key in ("securityProfile", "diagnosticsProfile", "licenseType"):
            if props.get(key):
                body["properties"][key] = props[key]
        if source_vm.get("plan"):
            body["plan"] = source_vm["plan"]  # Marketplace images must carry their plan
        vms = self._client.virtual_machines
        resource_id = self._compute_id(rg, "virtualMachines", name)

        return self._create(
            "create VM", resource_id, f"{rg}/{name}", vms.begin_create_or_update, rg, name, body=body
        )

    def create_image(
        self, rg: str, name: str, source_vm_id: str, location: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        """A managed image of a generalized VM, with the VM's Hyper-V generation."""
        images = self._client.images
        vm_rg, vm_name = id_parts(source_vm_id, "virtualMachines")
        vms = self._client.virtual_machines
        source: dict[str, Any] = self._read(
            "get",
            source_vm_id,
            lambda: cast(dict[str, Any], vms.instance_view(vm_rg, vm_name, cls=raw_json)),
            f"VM {source_vm_id} not found",
        )
        body = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "sourceVirtualMachine": {"id": source_vm_id},
                "hyperVGeneration": source.get("hyperVGeneration") or "V1",
            },
        }
        resource_id = self._compute_id(rg, "images", name)

        return self._create(
            "create image", resource_id, resource_id, images.begin_create_or_update, rg, name, body=body
        )

    def create_gallery_image_version(
        self,
        rg: str,
        gallery: str,
        definition: str,
        version: str,
        source_vm_id: str,
        location: str,
        tags: dict[str, str],
    ) -> dict[str, Any]:
        versions = self._client.gallery_image_versions
        body = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "storageProfile": {"source": {"virtualMachineId": source_vm_id}},
                "publishingProfile": {"targetRegions": [{"name": location, "regionalReplicaCount": 1}]},
            },
        }
        resource_id = f"{self._compute_id(rg, 'galleries', gallery)}/images/{definition}/versions/{version}"

        return self._create(
            "create gallery image version",
            resource_id,
            resource_id,
            versions.begin_create_or_update,
            rg,
            gallery,
            definition,
            version,
            body=body,
        )

    def _create(
        self,
        operation: str,
        resource_id: str,
        target: str,
        begin: Callable[..., Any],
        *names: str,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        """A PUT through the SDK's ``begin_create_or_update``, as one recorded change."""

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> dict[str, Any]:
            poller = begin(*names, json_body(body), polling=polling, cls=raw_json, **kwargs)
            return cast(dict[str, Any], poller.result())

        return self._change(operation, resource_id, target, run)[0]

    def _compute_id(self, rg: str, kind: str, name: str) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{rg}"
            f"/providers/Microsoft.Compute/{kind}/{name}"
        )


def parse_run_command_output(result: Any) -> tuple[str, str]:
    """(stdout, stderr) from a Run Command result in either of Azure's shapes.

    Windows answers ``ComponentStatus/StdOut`` and ``ComponentStatus/StdErr`` statuses; Linux one
    status whose message is ``Enable succeeded: \\n[stdout]\\n...\\n[stderr]\\n...``.
    """
    statuses = (result or {}).get("value") or []
    stdout = stderr = ""
    for status in statuses:
        code = str(status.get("code", ""))
        message = str(status.get("message") or "")
        if "StdOut" in code:
            stdout = message
        elif "StdErr" in code:
            stderr = message
        elif "[stdout]\n" in message:
            after = message.split("[stdout]\n", 1)[1]
            stdout, _, stderr = after.partition("\n[stderr]\n")
    return stdout, stderr

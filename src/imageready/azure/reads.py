"""What the harness reads from ARM: the VM (with its instance view), any resource by id, disks,
snapshots and extensions, as the REST JSON Azure sent."""

from __future__ import annotations

from typing import Any, cast

from azure.core.rest import HttpRequest

from imageready.azure.client import ArmClient
from imageready.azure.pipeline import id_parts, raw_json
from imageready.target import VmRef


class ArmReads(ArmClient):
    """The reads of an Azure session; each has a deadline and fails in one line."""

    def get_vm(self, ref: VmRef, *, instance_view: bool = True) -> dict[str, Any]:
        vms = self._client.virtual_machines
        result: dict[str, Any] = self._read(
            "get",
            ref.key,
            lambda: cast(
                dict[str, Any],
                vms.get(
                    ref.resource_group,
                    ref.name,
                    expand="instanceView" if instance_view else None,
                    cls=raw_json,
                ),
            ),
            self._vm_missing(ref),
        )
        return result

    def get_resource(self, resource_id: str, api_version: str) -> dict[str, Any]:
        """Any ARM resource by id (a NIC, a disk encryption set, ...)."""
        request = HttpRequest("GET", f"{resource_id}?api-version={api_version}")

        def fetch() -> dict[str, Any]:
            response = self._client.send_request(request)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body

        return self._read("get", resource_id, fetch, f"{resource_id} not found")

    def get_disk(self, disk_id: str) -> dict[str, Any]:
        return self._get_compute("disk", disk_id, "disks", self._client.disks)

    def get_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        return self._get_compute("snapshot", snapshot_id, "snapshots", self._client.snapshots)

    def _get_compute(self, what: str, resource_id: str, kind: str, operations: Any) -> dict[str, Any]:
        """A Microsoft.Compute resource of ``kind`` by id, through the SDK's ``operations``."""
        rg, name = id_parts(resource_id, kind)
        result: dict[str, Any] = self._read(
            f"get {what}",
            resource_id,
            lambda: cast(dict[str, Any], operations.get(rg, name, cls=raw_json)),
            f"{what} {resource_id} not found",
        )
        return result

    def list_extensions(self, ref: VmRef) -> list[dict[str, Any]]:
        extensions = self._client.virtual_machine_extensions
        body: dict[str, Any] = self._read(
            "list extensions",
            ref.key,
            lambda: cast(dict[str, Any], extensions.list(ref.resource_group, ref.name, cls=raw_json)),
            self._vm_missing(ref),
        )
        value: list[dict[str, Any]] = (body or {}).get("value", [])
        return value

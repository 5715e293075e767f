"""Capture (opt-in): a managed image (``--capture-as image:NAME``) or an Azure Compute Gallery image
version (``--capture-as gallery:GALLERY/DEFINITION/VERSION``) of the generalized VM, in the VM's
resource group and region. ``{vm}`` and ``{rg}`` in the value stand for the VM's name and resource
group (``image:{vm}-2026.11`` gives each VM of a run its own image). Idempotent: an artifact of
that name made from this VM is "already done"; one made from another VM is an error, never
overwritten."""

from __future__ import annotations

import time
from typing import Any

from imageready import progress
from imageready.azure_errors import AzureNotFound
from imageready.steps import Outcome, StepFailed, VmActions

IMAGE_API = "2024-11-01"
GALLERY_API = "2023-07-03"
IN_PROGRESS = ("Creating", "Updating", "Accepted", "Running", "Migrating")
POLL_SECONDS = 2.0


class CaptureSpecError(ValueError):
    """A --capture-as value that cannot be used; one line."""


def parse_capture(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    kind, _, rest = value.partition(":")
    try:
        rest.format(vm="vm", rg="rg")
    except (KeyError, IndexError, ValueError):
        raise CaptureSpecError(f"--capture-as {value!r}: only {{vm}} and {{rg}} may be substituted") from None
    if kind == "image" and rest and "/" not in rest:
        return ("image", rest)
    parts = rest.split("/")
    if kind == "gallery" and len(parts) == 3 and all(parts):
        return ("gallery", *parts)
    raise CaptureSpecError(
        f"--capture-as {value!r}: expected image:NAME or gallery:GALLERY/DEFINITION/VERSION"
    )


def capture(actions: VmActions) -> Outcome:
    vm = actions.vm
    if actions.options.capture is None:
        return Outcome("skipped", "no --capture-as requested")
    # {vm} and {rg} name one artifact per VM when one run captures several VMs
    spec = tuple(part.format(vm=vm.name, rg=vm.resource_group) for part in actions.options.capture)
    model = actions.vm_model(instance_view=False)
    location = str(model.get("location") or "")
    base = f"/subscriptions/{vm.subscription}/resourceGroups/{vm.resource_group}/providers/Microsoft.Compute"
    if spec[0] == "image":
        artifact = f"{base}/images/{spec[1]}"
        api = IMAGE_API
    else:
        artifact = f"{base}/galleries/{spec[1]}/images/{spec[2]}/versions/{spec[3]}"
        api = GALLERY_API
    azure = actions.provider.azure(vm)
    existing = _settled(actions, artifact, api)
    if existing is not None:
        source = _source_vm(existing)
        if source.lower() != vm.id.lower():
            raise StepFailed(
                f"{artifact} already exists and was made from {source or 'something else'}, not {vm.key}"
            )
        return Outcome("already done", f"{artifact} exists (made from {vm.key})", {"artifact": artifact})
    if not actions.options.apply:
        return Outcome("planned", f"would capture {artifact} from {vm.key}")
    state = actions.statuses()
    if state.get("OSState") != "generalized":
        raise StepFailed(f"{vm.key} is not generalized: Azure refuses to capture it")
    actions.renew_lease()
    tags = {"imageready-source-vm": vm.id, "imageready-run": actions.options.run_id}
    if spec[0] == "image":
        created = azure.create_image(vm.resource_group, spec[1], vm.id, location, tags)
    else:
        gallery, definition, version = spec[1:]
        created = azure.create_gallery_image_version(
            vm.resource_group, gallery, definition, version, vm.id, location, tags
        )
    return Outcome(
        "done", f"captured {created.get('id') or artifact}", {"artifact": created.get("id") or artifact}
    )


def _settled(actions: VmActions, artifact: str, api: str) -> dict[str, Any] | None:
    """The artifact once no operation is under way on it (None: it does not exist). A run killed
    mid-capture leaves the creation going on in Azure: wait for its end rather than calling a
    half-made image "already done"."""
    azure = actions.provider.azure(actions.vm)
    deadline = float(getattr(azure, "lro_deadline", 1800.0))
    ticker = progress.Ticker(
        f"{actions.vm.key}: {artifact.rsplit('/', 1)[-1]} is being created", deadline=deadline
    )
    while True:
        try:
            existing = azure.get_resource(artifact, api)
        except AzureNotFound:
            return None
        state = str((existing.get("properties") or {}).get("provisioningState") or "Succeeded")
        if state == "Succeeded":
            return existing
        if state not in IN_PROGRESS:
            raise StepFailed(
                f"{artifact} exists in provisioning state {state} (an earlier capture failed): delete it, "
                "then re-run"
            )
        if ticker.elapsed > deadline:
            raise StepFailed(f"{artifact} stayed {state} for {deadline:.0f} s")
        ticker.tick(state)
        time.sleep(POLL_SECONDS)


def _source_vm(artifact: dict[str, object]) -> str:
    props = artifact.get("properties") or {}
    assert isinstance(props, dict)
    image_source = (
        (props.get("sourceVirtualMachine") or {})
        if isinstance(props.get("sourceVirtualMachine"), dict)
        else {}
    )
    if image_source.get("id"):
        return str(image_source["id"])
    storage = props.get("storageProfile") or {}
    source = storage.get("source") if isinstance(storage, dict) else None
    if isinstance(source, dict):
        return str(source.get("virtualMachineId") or source.get("id") or "")
    return ""

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
from imageready.azure_errors import AzureError, AzureNotFound
from imageready.steps.records import Outcome, StepFailed, utc_now
from imageready.steps.vm_actions import VmActions
from imageready.target import VmRef

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


#: tags a capture writes on the artifact it creates (the VM itself takes none once generalized)
SOURCE_TAG = "imageready-source-vm"
RUN_TAG = "imageready-run"


def resolve(capture: tuple[str, ...], vm: VmRef) -> tuple[str, ...]:
    """The parsed --capture-as for ``vm``: {vm} and {rg} name one artifact per VM when one run
    captures several VMs."""
    return tuple(part.format(vm=vm.name, rg=vm.resource_group) for part in capture)


def target_resources(capture: tuple[str, ...], vm: VmRef) -> dict[str, tuple[str, str]]:
    """What a capture of ``vm`` touches, by role: ``artifact`` (the image or the gallery image
    version) and, for a gallery, its ``gallery`` and image ``definition``: (resource id,
    api-version) each. The pre-flight checks read them all (facts.gather)."""
    spec = resolve(capture, vm)
    base = f"/subscriptions/{vm.subscription}/resourceGroups/{vm.resource_group}/providers/Microsoft.Compute"
    if spec[0] == "image":
        return {"artifact": (f"{base}/images/{spec[1]}", IMAGE_API)}
    gallery = f"{base}/galleries/{spec[1]}"
    definition = f"{gallery}/images/{spec[2]}"
    return {
        "gallery": (gallery, GALLERY_API),
        "definition": (definition, GALLERY_API),
        "artifact": (f"{definition}/versions/{spec[3]}", GALLERY_API),
    }


def capture_target(actions: VmActions) -> tuple[str, str, tuple[str, ...]] | None:
    """(artifact id, its api-version, the resolved --capture-as) for this VM; None without capture."""
    if actions.options.capture is None:
        return None
    artifact, api = target_resources(actions.options.capture, actions.vm)["artifact"]
    return artifact, api, resolve(actions.options.capture, actions.vm)


def captured(actions: VmActions, artifact: str, api: str) -> dict[str, Any] | None:
    """The artifact once settled, if it exists and was made from this VM; an error if it was made from
    another one (never overwritten); None if it does not exist."""
    existing = _settled(actions, artifact, api)
    if existing is None:
        return None
    source = source_vm(existing)
    if source.lower() != actions.vm.id.lower():
        raise StepFailed(
            f"{artifact} already exists and was made from {source or 'something else'}, not {actions.vm.key}"
        )
    return existing


def _made_by(existing: dict[str, Any]) -> str:
    tags = existing.get("tags") or {}
    return f"{RUN_TAG}={tags[RUN_TAG]}" if tags.get(RUN_TAG) else f"no {RUN_TAG} tag"


def capture(actions: VmActions) -> Outcome:
    vm = actions.vm
    target = capture_target(actions)
    if target is None:
        return Outcome("skipped", "no --capture-as requested")
    artifact, api, spec = target
    existing = captured(actions, artifact, api)
    if existing is not None:
        return Outcome(
            "already done",
            f"{artifact} exists (made from {vm.key}; recorded on it: {_made_by(existing)})",
            {"artifact": existing.get("id") or artifact},
        )
    if not actions.options.apply:
        return Outcome("planned", f"would capture {artifact} from {vm.key}")
    state = actions.statuses()
    if state.get("OSState") != "generalized":
        raise StepFailed(f"{vm.key} is not generalized: Azure refuses to capture it")
    location = str(actions.vm_model(instance_view=False).get("location") or "")
    tags = {SOURCE_TAG: vm.id, RUN_TAG: actions.verdict_run, "imageready-captured-at": utc_now()}
    if actions.verdict_run != actions.options.run_id:
        tags["imageready-by"] = actions.options.run_id
    azure = actions.provider.azure(vm)
    try:
        if spec[0] == "image":
            created = azure.create_image(vm.resource_group, spec[1], vm.id, location, tags)
        else:
            gallery, definition, version = spec[1:]
            created = azure.create_gallery_image_version(
                vm.resource_group, gallery, definition, version, vm.id, location, tags
            )
    except AzureError as exc:
        # another run may have captured this very VM to this very name meanwhile (the VM is
        # generalized: its captures are alike); anything else is this capture's failure
        raced = captured(actions, artifact, api)
        if raced is None:
            raise
        return Outcome(
            "already done",
            f"{artifact} was created meanwhile by another run (made from {vm.key}; recorded on it: "
            f"{_made_by(raced)}); this run's request failed: {exc}",
            {"artifact": raced.get("id") or artifact},
        )
    made_from = source_vm(created)
    if made_from.lower() != vm.id.lower():
        raise StepFailed(f"{artifact} was created, but Azure shows it made from {made_from}, not {vm.key}")
    return Outcome(
        "done",
        f"captured {created.get('id') or artifact} (recorded on it: {RUN_TAG}={actions.verdict_run})",
        {"artifact": created.get("id") or artifact, "tags": tags},
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


def source_vm(artifact: dict[str, object]) -> str:
    """The id of the VM an image or a gallery image version was made from ("" if none shows)."""
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

"""Copy a VM to generalize instead of the original, as Azure's docs describe: snapshot the OS and
data disks, make disks from the snapshots, and create a VM from those disks in the same resource
group, location, size and subnet, tagged ``imageready-copy-of=<original resource id>``.

The original is only read (its model, and its disks as snapshot sources); nothing on it changes.
Every resource is named after the copy (``<copy>-osdisk-snap``, ``<copy>-osdisk``,
``<copy>-data<lun>-snap``, ``<copy>-data<lun>``, ``<copy>-nic``) and tagged with the original, so
a re-run finds what an interrupted run made and goes on from there; a resource of that name that
came from elsewhere stops the copy instead of being reused.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imageready import progress
from imageready.azure import AzureSession
from imageready.azure_errors import AzureNotFound
from imageready.facts.azure_view import COPY_TAG
from imageready.guest.base import Guest, GuestError
from imageready.steps.records import StepRecord, call_record
from imageready.target import VmRef


class CopyError(Exception):
    """The copy cannot be made as asked (e.g. a resource of its name came from elsewhere); one line."""


@dataclass
class CopyResult:
    """What the copy step made or found, for the audit."""

    copy: VmRef
    snapshots: list[str] = field(default_factory=list)
    disks: list[str] = field(default_factory=list)
    #: names of the snapshots and disks an earlier, interrupted run had made already
    reused: list[str] = field(default_factory=list)
    detail: str = ""


def copy_ref(original: VmRef, suffix: str) -> VmRef:
    return VmRef(original.subscription, original.resource_group, original.name + suffix)


def is_copy_of(model: Mapping[str, Any], original: VmRef) -> bool:
    tagged = str((model.get("tags") or {}).get(COPY_TAG) or "")
    return tagged.lower() == original.id.lower()


def find_copy(azure: AzureSession, original: VmRef, copy: VmRef) -> dict[str, Any] | None:
    """The copy VM made for ``original`` earlier (None if there is none yet)."""
    try:
        model = azure.get_vm(copy, instance_view=True)
    except AzureNotFound:
        return None
    if not is_copy_of(model, original):
        tagged = (model.get("tags") or {}).get(COPY_TAG)
        what = f"a copy of {tagged}" if tagged else f"not tagged {COPY_TAG}"
        raise CopyError(
            f"--copy-first: VM {copy.key} exists and is not a copy of {original.key} ({what}); "
            "choose another name with --copy-suffix"
        )
    return model


def statuses(model: Mapping[str, Any]) -> dict[str, str]:
    """{"PowerState": "running", "OSState": "generalized", ...} from an instance view."""
    found: dict[str, str] = {}
    for status in ((model.get("properties") or {}).get("instanceView") or {}).get("statuses") or []:
        kind, _, value = str(status.get("code", "")).partition("/")
        found.setdefault(kind, value)
    return found


def copy_tags(original_model: Mapping[str, Any], original: VmRef) -> dict[str, str]:
    """The original's own tags (cost centre, owner: policies often require them), never its
    imageready bookkeeping, plus the tag that makes the copy a copy."""
    tags = {
        str(k): str(v)
        for k, v in (original_model.get("tags") or {}).items()
        if not str(k).lower().startswith("imageready")
    }
    tags[COPY_TAG] = original.id
    return tags


def make_copy(
    azure: AzureSession, original: VmRef, original_model: Mapping[str, Any], copy: VmRef
) -> CopyResult:
    """Snapshots, disks and the copy VM (created running); reuses what an earlier run made."""
    props = original_model.get("properties") or {}
    storage = props.get("storageProfile") or {}
    location = str(original_model.get("location") or "")
    os_disk_id = str(((storage.get("osDisk") or {}).get("managedDisk") or {}).get("id") or "")
    if not os_disk_id:
        raise CopyError(f"--copy-first: {original.key} has no managed OS disk to snapshot")
    sources: list[tuple[str, int | None, str]] = [("osdisk", None, os_disk_id)]
    for entry in sorted(storage.get("dataDisks") or [], key=lambda d: int(d.get("lun", 0))):
        disk_id = str((entry.get("managedDisk") or {}).get("id") or "")
        if not disk_id:
            raise CopyError(
                f"--copy-first: data disk at LUN {entry.get('lun')} of {original.key} is not managed"
            )
        sources.append((f"data{int(entry['lun'])}", int(entry["lun"]), disk_id))
    tags = {COPY_TAG: original.id}
    rg = copy.resource_group
    result = CopyResult(copy)
    # every snapshot first, back to back: the disks of the copy are as close in time as we can
    snapshots = [
        _snapshot(azure, rg, f"{copy.name}-{part}-snap", source, location, tags, result.reused)
        for part, _, source in sources
    ]
    data_disks: list[dict[str, Any]] = []
    copy_os_disk = ""
    for (part, lun, _), snapshot in zip(sources, snapshots, strict=True):
        disk = _disk(azure, rg, f"{copy.name}-{part}", snapshot, location, tags, result.reused)
        result.snapshots.append(snapshot)
        result.disks.append(disk)
        if lun is None:
            copy_os_disk = disk
        else:
            data_disks.append({"lun": lun, "id": disk})
    progress.emit(f"{original.key}: creating the copy VM {copy.key} from the copied disks")
    azure.create_vm_from_disks(
        rg,
        copy.name,
        source_vm=original_model,
        os_disk_id=copy_os_disk,
        data_disks=data_disks,
        tags=copy_tags(original_model, original),
    )
    result.detail = (
        f"copied {original.key} to {copy.key}: {len(snapshots)} snapshot(s), {len(result.disks)} disk(s), "
        "VM created running"
        + (f" (made by an earlier run: {', '.join(result.reused)})" if result.reused else "")
    )
    return result


def _compute_id(azure: AzureSession, rg: str, kind: str, name: str) -> str:
    group = f"/subscriptions/{azure.subscription_id}/resourceGroups/{rg}"
    return f"{group}/providers/Microsoft.Compute/{kind}/{name}"


def _snapshot(
    azure: AzureSession,
    rg: str,
    name: str,
    source_disk: str,
    location: str,
    tags: dict[str, str],
    reused: list[str],
) -> str:
    resource_id = _compute_id(azure, rg, "snapshots", name)
    found = _made_earlier(azure.get_snapshot, "snapshot", resource_id, source_disk, tags)
    if found:
        reused.append(name)
        return found
    progress.emit(f"snapshot {name} of disk {_name(source_disk)}")
    return str(azure.create_snapshot(rg, name, source_disk, location, tags)["id"])


def _disk(
    azure: AzureSession,
    rg: str,
    name: str,
    snapshot: str,
    location: str,
    tags: dict[str, str],
    reused: list[str],
) -> str:
    found = _made_earlier(azure.get_disk, "disk", _compute_id(azure, rg, "disks", name), snapshot, tags)
    if found:
        reused.append(name)
        return found
    progress.emit(f"disk {name} from snapshot {_name(snapshot)}")
    return str(azure.create_disk_from_snapshot(rg, name, snapshot, location, tags)["id"])


def _name(resource_id: str) -> str:
    return resource_id.rsplit("/", 1)[-1]


def _made_earlier(
    get: Callable[[str], dict[str, Any]], kind: str, resource_id: str, source: str, tags: Mapping[str, str]
) -> str | None:
    """The id of the snapshot or disk an earlier run made from ``source`` (None: none yet)."""
    try:
        model = get(resource_id)
    except AzureNotFound:
        return None
    props = model.get("properties") or {}
    made_from = str((props.get("creationData") or {}).get("sourceResourceId") or "")
    tagged = str((model.get("tags") or {}).get(COPY_TAG) or "")
    if tagged.lower() != tags[COPY_TAG].lower() or made_from.lower() != source.lower():
        raise CopyError(
            f"--copy-first: {kind} {_name(resource_id)} exists and was not made by imageready from "
            f"{_name(source)}; choose another name with --copy-suffix"
        )
    if props.get("provisioningState") not in (None, "Succeeded"):
        raise CopyError(
            f"--copy-first: {kind} {_name(resource_id)} from an earlier run is "
            f"{props.get('provisioningState')}: delete it and re-run"
        )
    return str(model.get("id") or resource_id)


def wait_for_guest(copy: VmRef, connect: Callable[[], Guest], deadline: float) -> float:
    """Until the copy's guest runs a command (sshd or WinRM up, credentials accepted); returns
    how long that took. Raises the last GuestError once ``deadline`` seconds have passed."""
    started = time.monotonic()
    ticker = progress.Ticker(f"{copy.key}: waiting for the guest to answer", deadline=deadline)
    while True:
        try:
            with connect() as guest:
                result = guest.run("exit 0", timeout=min(60.0, deadline))
            if result.ok:
                return time.monotonic() - started
            last: GuestError = GuestError(f"{copy.key}: a no-op command exited {result.exit_code}")
        except GuestError as exc:
            last = exc
        if time.monotonic() - started >= deadline:
            raise last
        ticker.tick(str(last))
        time.sleep(2)


def step_record(vm: VmRef, status: str, detail: str, **evidence: Any) -> StepRecord:
    """The audit's record of the copy step (its run id is filled in once the run has one)."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return StepRecord(
        vm=vm.key,
        step="copy",
        run_id="",
        status=status,
        started=now,
        ended=now,
        detail=detail,
        evidence=evidence,
    )


def calls_since(azure: AzureSession, first: int) -> list[dict[str, Any]]:
    """The audit's view of every mutating Azure call made since ``first``."""
    return [call_record(call) for call in azure.calls[first:]]

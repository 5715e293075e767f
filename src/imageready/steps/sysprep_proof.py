"""What proves that sysprep resealed the guest (``Seal``), and how the VM's step tag is kept in step
with it.

The guest counts as sealed only when a reading taken in this run shows ImageState
IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE, or a Sysprep_succeeded.tag written after ``since`` (the
guest's clock before sysprep started) while ImageState could not be read, and nothing read after it
contradicts it; or when the interrupted run this one resumes recorded such a reading on the VM's
step tag (``sealed=``). ``record_seal`` writes ``sealed=`` on the tag the moment there is proof
(the tag is writable until ``generalize``). tests/test_sysprep_proof.py pins the rule.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import threading
from collections.abc import Mapping
from typing import Any

from imageready import progress
from imageready.steps.vm_actions import VmActions

RESEALED = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
UNDEPLOYABLE = "IMAGE_STATE_UNDEPLOYABLE"
SPECIALIZED = "IMAGE_STATE_SPECIALIZE_RESEAL_TO_OOBE"
COMPLETE = "IMAGE_STATE_COMPLETE"


def guest_time(text: object) -> int | None:
    """A guest time in PowerShell's round-trip format (``2026-11-25T21:13:18.1234567Z``) as
    100-nanosecond ticks since 1970 (the format's own precision: no rounding between two times)."""
    found = re.fullmatch(
        r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)?", str(text or "")
    )
    if not found:
        return None
    whole, fraction, zone = found.groups()
    offset = dt.timedelta(0)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        stamp = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.timezone(offset))
    except ValueError:
        return None
    return int(stamp.timestamp()) * 10_000_000 + int((fraction or "0").ljust(7, "0"))


class Seal:
    """What this run has seen of sysprep's outcome. ``proof`` says why the guest counts as
    resealed ("" while it does not). Readings arrive from several threads (sysprep's own shell
    streams them), each with the monotonic time it was asked for: a reading asked for after the
    proof that contradicts it (ImageState readable and not resealed) withdraws the proof, one
    asked for before it (a poll that crossed the reseal) does not."""

    def __init__(self, since: str, *, recorded: str = "") -> None:
        #: the guest's clock when the old succeeded tag was deleted: only a tag written after it counts
        self.since = since
        self._since = guest_time(since)
        self.image_state = ""
        self.proof = recorded
        self._proof_at = -math.inf if recorded else math.inf
        self.withdrawn = ""
        self.readings = 0
        #: the proof is on the VM's step tag (a resuming run finds it there)
        self.on_vm = bool(recorded)
        self._lock = threading.Lock()

    def observe(self, reading: Mapping[str, Any], source: str, asked: float) -> None:
        with self._lock:
            self.readings += 1
            state = reading.get("image_state")
            if isinstance(state, str) and state:
                self.image_state = state
                if state == RESEALED:
                    if not self.proof:
                        self.proof, self._proof_at = f"ImageState {RESEALED} ({source})", asked
                elif self.proof and asked > self._proof_at:
                    self.withdrawn = f"ImageState {state} read after the reseal ({source})"
                    self.proof, self._proof_at = "", math.inf
                return
            written = guest_time(reading.get("succeeded_tag_written"))
            if not self.proof and written is not None and self._since is not None and written >= self._since:
                self.proof = (
                    f"Sysprep_succeeded.tag written {reading.get('succeeded_tag_written')}, after the "
                    f"start {self.since} ({source})"
                )
                self._proof_at = asked

    def distrust(self, why: str) -> None:
        with self._lock:
            if self.proof:
                self.withdrawn = why
            self.proof, self._proof_at = "", math.inf

    def kind(self) -> str:
        return "tag" if self.proof.startswith("Sysprep_succeeded.tag") else "imagestate"


def exited_reason(exit_code: object, seal: Seal) -> str:
    code = f" ({exit_code})" if exit_code is not None else ""
    image_state = seal.image_state
    if seal.withdrawn:
        return f"sysprep exited{code} and the reseal is not proven: {seal.withdrawn}"
    if image_state == UNDEPLOYABLE:
        return (
            f"sysprep exited{code} part-way through generalize: ImageState stays {UNDEPLOYABLE}, and "
            "this installation can no longer become an image (rebuild the copy from its source)"
        )
    if image_state == COMPLETE:
        return f"sysprep exited{code} and ImageState is still {COMPLETE}: nothing was generalized"
    return f"sysprep exited{code} with ImageState {image_state or 'unknown'}"


def record_seal(actions: VmActions, seal: Seal) -> None:
    """Keep the VM's step tag in step with the proof: ``sealed=`` once there is proof (a run
    interrupted before the power-off leaves it for the next), without it once withdrawn."""
    if bool(seal.proof) == seal.on_vm:
        return
    if seal.proof:
        actions.mark_started("guest", since=seal.since, sealed=seal.kind())
        progress.emit(f"{actions.vm.key}: sysprep resealed the guest ({seal.proof}); recorded on the VM")
    else:
        actions.mark_started("guest", since=seal.since)
    seal.on_vm = bool(seal.proof)

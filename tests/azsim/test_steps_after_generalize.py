"""The harness's steps against azsim's rule that a generalized VM takes no change: the last write
to the VM comes right before generalize and leaves a final lease; nothing is written after it; a
final lease binds another run only while the capture it claims is pending (docs/actions.md)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from imageready.azure import AzureSession
from imageready.steps import ActionOptions, StepFailed, VmActions
from imageready.steps.capture import RUN_TAG, capture
from imageready.steps.lease import LEASE_TAG, THEN_NOTHING, Lease, capture_claim
from imageready.steps.platform import generalize, verify
from tests.azsim.conftest import Azsim

pytestmark = pytest.mark.azsim
RG = "rg-fleet"


class Provider:
    """The part of the facts provider the platform steps use: one Azure session, no guest."""

    def __init__(self, session: AzureSession) -> None:
        self.session = session

    def azure(self, vm: Any) -> AzureSession:
        return self.session

    def drop_guest(self, vm: Any) -> None:
        return None


@pytest.fixture
def steps_for(fleet: Azsim, session: AzureSession) -> Iterator[Any]:
    def make(
        name: str, run_id: str, *, capture_as: tuple[str, ...] | None = None, **options: Any
    ) -> VmActions:
        opts = ActionOptions(apply=True, run_id=run_id, operator="tests@azsim", capture=capture_as, **options)
        return VmActions(fleet.ref(name), Provider(session), opts)  # type: ignore[arg-type]

    yield make


def image_id(fleet: Azsim, name: str) -> str:
    return (
        f"/subscriptions/{fleet.subscription}/resourceGroups/{RG}/providers/Microsoft.Compute/images/{name}"
    )


def vm_writes(fleet: Azsim, name: str, since: int) -> list[tuple[str, str, int]]:
    """(method, what, status) of every request that tried to change the VM, in order."""
    base = f"/resourcegroups/{RG}/providers/microsoft.compute/virtualmachines/{name}".lower()
    found = []
    for r in fleet.requests(since):
        path = r["path"].lower()
        if r["method"] == "POST" and path.endswith(base + "/generalize"):
            found.append(("POST", "generalize", r["status"]))
        elif r["method"] in ("PUT", "PATCH", "DELETE") and (
            path.endswith(base) or base + "/providers/" in path
        ):
            found.append((r["method"], "vm", r["status"]))
    return found


def test_the_last_write_comes_before_generalize_and_nothing_after(fleet: Azsim, steps_for: Any) -> None:
    mark = fleet.mark()
    actions = steps_for("lin-seal-capture", "run-seal-1", capture_as=("image", "img-sealed"))
    assert actions.run("lock", actions.acquire).status == "done"
    generalized = actions.run("generalize", lambda: generalize(actions))
    assert generalized.status == "done"
    assert actions.run("verify", lambda: verify(actions)).status == "done"
    captured = actions.run("capture", lambda: capture(actions))
    assert captured.status == "done" and "recorded on it: imageready-run=run-seal-1" in captured.detail
    released = actions.run("unlock", actions.release)
    assert released.status == "done" and "final lease stays on the VM" in released.detail
    actions.release_quietly()  # the end of a run: nothing more to send

    writes = vm_writes(fleet, "lin-seal-capture", mark)
    assert writes == [("PATCH", "vm", 200), ("PATCH", "vm", 200), ("POST", "generalize", 200)], writes
    state = fleet.vm_status(RG, "lin-seal-capture")
    assert state["tags"]["imageready-step-generalize"].startswith("started run=run-seal-1 ")
    lease = Lease.parse(state["tags"][LEASE_TAG])
    assert lease is not None and lease.run_id == "run-seal-1"
    assert lease.then == capture_claim(image_id(fleet, "img-sealed"))
    # the final lease lasts what the run still does there: the lease TTL and the capture's deadline
    assert lease.until - dt.datetime.now(dt.UTC) > dt.timedelta(minutes=30)
    image = actions.provider.azure(actions.vm).get_resource(image_id(fleet, "img-sealed"), "2024-11-01")
    assert image["tags"][RUN_TAG] == "run-seal-1"

    # the same command again: all read, nothing written, the capture recognized
    again = steps_for("lin-seal-capture", "run-seal-2", capture_as=("image", "img-sealed"))
    mark = fleet.mark()
    lock = again.run("lock", again.acquire)
    assert lock.status == "done" and "img-sealed exists already" in lock.detail
    assert again.run("generalize", lambda: generalize(again)).status == "already done"
    assert again.run("capture", lambda: capture(again)).status == "already done"
    assert again.run("unlock", again.release).status == "done"
    again.release_quietly()
    assert vm_writes(fleet, "lin-seal-capture", mark) == []


def test_a_live_final_lease_binds_another_run_only_for_the_capture_it_claims(
    fleet: Azsim, steps_for: Any
) -> None:
    first = steps_for("lin-seal-claimed", "run-claim-1", capture_as=("image", "img-claimed"))
    first.run("lock", first.acquire)
    first.run("generalize", lambda: generalize(first))  # and then, say, it is still capturing

    same = steps_for("lin-seal-claimed", "run-claim-2", capture_as=("image", "img-claimed"))
    with pytest.raises(
        StepFailed, match=r"is locked by run run-claim-1 .*which is capturing .*/images/img-claimed"
    ):
        same.run("lock", same.acquire)
    other = steps_for("lin-seal-claimed", "run-claim-3", capture_as=("image", "img-other"))
    assert "img-other is this run's to capture" in other.run("lock", other.acquire).detail
    reader = steps_for("lin-seal-claimed", "run-claim-4")
    assert "this run only reads it" in reader.run("lock", reader.acquire).detail
    breaker = steps_for(
        "lin-seal-claimed", "run-claim-5", capture_as=("image", "img-claimed"), break_lease=True
    )
    assert "BROKE the live lease of run run-claim-1" in breaker.run("lock", breaker.acquire).detail

    first.run("capture", lambda: capture(first))  # the claimed capture exists: the lease binds nobody
    late = steps_for("lin-seal-claimed", "run-claim-6", capture_as=("image", "img-claimed"))
    assert "img-claimed exists already" in late.run("lock", late.acquire).detail


def test_a_final_lease_that_claims_no_capture_binds_nobody(fleet: Azsim, steps_for: Any) -> None:
    first = steps_for("lin-seal-nothing", "run-none-1")
    first.run("lock", first.acquire)
    first.run("generalize", lambda: generalize(first))
    lease = Lease.parse(fleet.vm_status(RG, "lin-seal-nothing")["tags"][LEASE_TAG])
    assert lease is not None and lease.then == THEN_NOTHING and lease.final
    later = steps_for("lin-seal-nothing", "run-none-2", capture_as=("image", "img-later"))
    lock = later.run("lock", later.acquire)
    assert lock.status == "done" and "the final lease of run run-none-1" in lock.detail
    assert later.run("capture", lambda: capture(later)).status == "done"


def test_no_tag_is_sent_to_a_generalized_vm_and_a_failed_generalize_takes_the_seal_back(
    fleet: Azsim, steps_for: Any
) -> None:
    refused = steps_for("lin-seal-refused", "run-refused-1")
    refused.run("lock", refused.acquire)
    fault = fleet.add_fault(
        kind="forbidden",
        action="Microsoft.Compute/virtualMachines/generalize/action",
        vm=f"{RG}/lin-seal-refused",
    )
    try:
        with pytest.raises(StepFailed, match="permission denied"):
            refused.run("generalize", lambda: generalize(refused))
    finally:
        fleet.admin("DELETE", f"/azsim/faults/{fault}")
    refused.release_quietly()  # Azure did not generalize it: the seal and the lease go
    tags = fleet.vm_status(RG, "lin-seal-refused")["tags"]
    assert LEASE_TAG not in tags and "imageready-step-generalize" not in tags

    sealed = steps_for("lin-seal-refused", "run-refused-2")
    sealed.run("lock", sealed.acquire)
    sealed.run("generalize", lambda: generalize(sealed))
    mark = fleet.mark()
    with pytest.raises(
        StepFailed, match="the VM is generalized and Azure takes no change to it, not even a tag"
    ):
        sealed.mark_done("verify")
    with pytest.raises(StepFailed, match="not even a tag"):
        sealed.mark_started("guest")
    sealed.renew_lease()  # the final lease is renewed no more: a no-op, not a write
    assert vm_writes(fleet, "lin-seal-refused", mark) == []


def test_a_final_lease_renders_within_azure_s_256_characters_and_parses_back() -> None:
    long_who = "a" * 200
    lease = Lease("3f9c0a1b2c4d", "h" * 63, 4_194_304, long_who[:60], dt.datetime(2099, 1, 1, tzinfo=dt.UTC),
                  capture_claim("/subscriptions/x/" + "g" * 300))  # fmt: skip
    text = lease.render()
    assert len(text) <= 256
    parsed = Lease.parse(text)
    assert parsed is not None and (parsed.run_id, parsed.then, parsed.until) == (
        lease.run_id,
        lease.then,
        lease.until,
    )
    assert Lease.parse("run=r host=h pid=1 until=2099-01-01T00:00:00Z by=w") == Lease(
        "r", "h", 1, "w", dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    )

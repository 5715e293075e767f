"""What the e2e tests check of a VM once it is generalized: nothing was written to it after the
generalize (Azure takes no change to it), and the lease it keeps is a final one that binds no run."""

from __future__ import annotations

from typing import Any

from imageready.steps.lease import LEASE_TAG, THEN_NOTHING, Lease, capture_claim

from .conftest import Azsim

WRITES = ("PUT", "PATCH", "DELETE")


def assert_no_vm_write_after_generalize(sim: Azsim, vm: str) -> None:
    """The request log shows the VM's generalize and no write to the VM (its model or its tags
    through the Tags API) after it, not even a refused one."""
    rg, name = vm.split("/")
    base = f"/resourcegroups/{rg}/providers/microsoft.compute/virtualmachines/{name}".lower()
    log = sim.requests()
    generalized = [
        int(r["seq"])
        for r in log
        if r["method"] == "POST" and r["path"].lower().endswith(base + "/generalize") and r["status"] == 200
    ]
    assert generalized, f"{vm}: no generalize in azsim's request log"
    tags = base + "/providers/microsoft.resources/tags"
    after = [
        f"{r['method']} {r['path']} -> {r['status']}"
        for r in log
        if int(r["seq"]) > generalized[0]
        and r["method"] in WRITES
        and (r["path"].lower().endswith(base) or tags in r["path"].lower())
    ]
    assert after == [], f"{vm}: written to after generalize: {after}"


def final_lease(state: dict[str, Any], run_id: str, *, artifact: str | None = None) -> Lease:
    """The lease a generalized VM keeps: the final one ``run_id`` wrote just before generalize,
    claiming ``artifact`` (or no capture), so that it binds no run once that capture exists."""
    assert state["os_state"] == "generalized", state
    lease = Lease.parse(state["tags"].get(LEASE_TAG))
    assert lease is not None and lease.run_id == run_id, (run_id, state["tags"].get(LEASE_TAG))
    assert lease.then == (capture_claim(artifact) if artifact else THEN_NOTHING), lease.render()
    return lease

"""A capture that cannot succeed keeps the gate shut, proven against azsim (issue 13, "capture is
checked before anything irreversible").

Each VM of tests/scenarios/capture-preflight.yaml is a clean Windows copy whose --capture-as target
Azure would refuse for one reason (the rules of docs/azsim-rules.md, IMG and GAL). One `--apply`
run per kind of artifact: each refused VM must end with its capture check failed as the only
blocker, its actions blocked, and azsim's state untouched (still running, not deallocated, not
generalized, no write sent to it); the VM whose target fits is generalized and captured in the
same run.

Before the capture checks, the same commands generalized every one of these VMs and then failed
at the capture, after the irreversible step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes

from .conftest import Azsim, Run, harness
from .test_actions_apply import compute

SCENARIO = "tests/scenarios/capture-preflight.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

RG = "rg-cap"
CAPTURE_MODULE = "checks/test_capture.py"
P, F = "passed", "failed"

# VM -> (the capture case that fails: check[item], what its one-line message says)
IMAGE_REFUSED = {
    "win-img-trusted": ("test_managed_image_allowed[{vm}-security-type]", "it is a TrustedLaunch VM"),
    "win-img-confidential": ("test_managed_image_allowed[{vm}-security-type]", "it is a ConfidentialVM VM"),
    "win-img-arm": ("test_managed_image_allowed[{vm}-architecture]", "it runs Arm64"),
    "win-img-taken": (
        "test_capture_name_free[{vm}-image-img-win-img-taken]",
        "already exists and was made from /subscriptions/",
    ),
}
GALLERY_REFUSED = {
    "win-gal-nodef": ("test_gallery_definition_exists[{vm}]", "gallery galPre has no image definition"),
    "rg-cap-nogal/win-nogal": ("test_gallery_definition_exists[{vm}]", "no gallery galPre in resource group"),
    "win-gal-ostype": ("test_gallery_definition_matches_vm[{vm}-os-type]", "os-type Linux on the definition"),
    "win-gal-osstate": ("test_gallery_definition_matches_vm[{vm}-os-state]", "os-state Specialized"),
    "win-gal-gen": (
        "test_gallery_definition_matches_vm[{vm}-hyper-v-generation]",
        "V2 on the definition, V1",
    ),
    "win-gal-sec": (
        "test_gallery_definition_matches_vm[{vm}-security-type]",
        "needs SecurityType TrustedLaunch",
    ),
    "win-gal-arch": ("test_gallery_definition_matches_vm[{vm}-architecture]", "Arm64 on the definition, x64"),
    "win-gal-plan": ("test_gallery_definition_matches_vm[{vm}-purchase-plan]", "the plan must match exactly"),
    "win-gal-taken": ("test_capture_name_free[{vm}-gallery-galPre-win-gal-taken-1.0.0]", "already exists"),
}


def key(vm: str) -> str:
    return vm if "/" in vm else f"{RG}/{vm}"


def writes_to(sim: Azsim, vm: str, after: int) -> list[str]:
    """Every request after ``after`` that could change ``vm`` (its own path or below it)."""
    name = key(vm).split("/")[1]
    return [
        m
        for m in sim.mutations(after)
        if f"/virtualMachines/{name}" in m.split("?")[0].split(" ", 1)[1] + "/"
    ]


def assert_refused_and_untouched(sim: Azsim, run: Run, vm: str, case: str, message: str, after: int) -> None:
    vm = key(vm)
    cases = {c["case_id"]: c for c in run.verdict(vm)["checks"]}
    failing = f"{CAPTURE_MODULE}::{case.format(vm=vm)}"
    assert cases[failing]["outcome"] == F, (failing, cases[failing])
    assert message in cases[failing]["message"], cases[failing]["message"]
    # the capture is the only thing wrong with the VM: everything else is green
    others = {c: v["outcome"] for c, v in cases.items() if c != failing and not c.startswith(CAPTURE_MODULE)}
    assert set(others.values()) <= {P, "not_applicable"}, others
    assert run.verdict(vm)["green"] is False
    blocked = [o for c, o in run.outcomes().items() if c.startswith("actions/") and f"[{vm}]" in c]
    assert blocked and set(blocked) == {F}, blocked
    state = sim.status()[vm]
    assert (state["power_state"], state["os_state"]) == ("running", "specialized"), state
    assert writes_to(sim, vm, after) == [], "a VM whose capture cannot succeed was written to"
    assert not any(k.startswith("imageready-") for k in state["tags"]), state["tags"]


def make_from_source(sim: Azsim, kind: str) -> None:
    """The artifact in the way: an image / a gallery version made earlier from win-source."""
    client = compute(sim)
    source = sim.status()[f"{RG}/win-source"]["id"]
    # the REST shape (camelCase), as the harness sends it
    if kind == "image":
        body: dict[str, Any] = {
            "location": "westeurope",
            "properties": {"sourceVirtualMachine": {"id": source}},
        }
        client.images.begin_create_or_update(RG, "img-win-img-taken", body).result()
    else:
        version = {
            "location": "westeurope",
            "properties": {"storageProfile": {"source": {"virtualMachineId": source}}},
        }
        client.gallery_image_versions.begin_create_or_update(
            RG, "galPre", "win-gal-taken", "1.0.0", version
        ).result()


@pytest.mark.parametrize(
    ("kind", "capture", "refused", "ok"),
    [
        ("image", "image:img-{vm}", IMAGE_REFUSED, "win-img-ok"),
        ("gallery", "gallery:galPre/{vm}/1.0.0", GALLERY_REFUSED, "win-gal-ok"),
    ],
)
def test_a_capture_that_cannot_succeed_keeps_the_gate_shut_and_changes_nothing(
    azsim: Azsim, tmp_path: Path, kind: str, capture: str, refused: dict[str, tuple[str, str]], ok: str
) -> None:
    make_from_source(azsim, kind)
    seq = azsim.last_seq()
    vms = [a for vm in (ok, *refused) for a in ("--vm", key(vm))]
    run = harness(azsim, *vms, "--apply", f"--capture-as={capture}", report_dir=tmp_path)
    assert run.returncode == exitcodes.RED_CHECKS, run.output[-4000:]
    for vm, (case, message) in refused.items():
        assert_refused_and_untouched(azsim, run, vm, case, message, seq)
    # one VM's red gate never blocks another's: the fitting target was captured in the same run
    state = azsim.status()[key(ok)]
    assert (state["power_state"], state["os_state"]) == ("deallocated", "generalized")
    client = compute(azsim)
    made = (
        client.images.get(RG, f"img-{ok}")
        if kind == "image"
        else client.gallery_image_versions.get(RG, "galPre", ok, "1.0.0")
    )
    assert made.tags["imageready-source-vm"].lower() == state["id"].lower()
    passed = {
        c["case_id"]: c["outcome"]
        for c in run.verdict(key(ok))["checks"]
        if c["case_id"].startswith(CAPTURE_MODULE)
    }
    assert P in passed.values() and set(passed.values()) <= {P, "not_applicable"}, passed

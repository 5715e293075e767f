"""The live contract: the same tests against azsim (make test) and against a real subscription
(IMAGEREADY_LIVE=1, docs/live-tests.md), so that azsim and Azure answer the same questions.

One run, in order: the smallest Trusted Launch VMs from Marketplace images (Linux and Windows);
their copies (snapshot, disk, VM); the originals refused for what they are; a managed image of
a Trusted Launch VM refused before anything changes; the copies generalized and captured to a
gallery; then the resource group deleted with everything in it, and nothing of the run left.
The tests share one lab and stop at the first failure; the lab is deleted whatever happens.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageready import exitcodes
from imageready.target import VmRef
from tests.live.arm import API, LiveArm
from tests.live.conftest import Target
from tests.live.lab import Lab, leftovers, sweep
from tests.live.plan import TAG_EXPIRES, LivePlan, Machine

pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(live_plan: LivePlan, target: Target) -> Iterator[Lab]:
    """The run's resource group, gallery and definitions; deleted at the end whatever happened.
    Before anything is made, leftovers of earlier runs of this prefix are swept."""
    config = live_plan.config
    holder: list[Lab] = []
    arm = LiveArm(target.env, config.subscription, deadline=lambda: holder[0].remaining())
    made = Lab(
        live_plan,
        arm,
        ssh_public_key=Path(target.env["IMAGEREADY_SSH_KEY"] + ".pub").read_text(encoding="utf-8").strip(),
        windows_password=target.env["IMAGEREADY_WINRM_PASSWORD"],
    )
    holder.append(made)
    try:
        sweep(arm, config.prefix, now=dt.datetime.now(dt.UTC))
        made.create_group()
        made.create_gallery()
        yield made
    finally:
        try:
            made.delete()
        finally:
            arm.close()


def machines(plan: LivePlan) -> list[Machine]:
    return list(plan.machines)


def vm_state(lab: Lab, name: str) -> tuple[str, str]:
    model = lab.arm.session.get_vm(VmRef(lab.arm.subscription, lab.rg, name))
    codes = [s["code"] for s in model["properties"]["instanceView"]["statuses"]]
    power = next((c.split("/")[1] for c in codes if c.startswith("PowerState/")), "unknown")
    return power, "generalized" if "OSState/generalized" in codes else "specialized"


def vm_args(lab: Lab, names: list[str]) -> list[str]:
    return [a for name in names for a in ("--vm", f"{lab.rg}/{name}")]


def test_originals_are_made_from_marketplace_images(lab: Lab, live_plan: LivePlan) -> None:
    for machine in machines(live_plan):
        made = lab.create_original(machine)
        storage = made["properties"]["storageProfile"]
        assert storage["osDisk"]["createOption"] == "FromImage"
        assert made["properties"]["securityProfile"]["securityType"] == "TrustedLaunch"
    for machine in machines(live_plan):
        lab.wait_until_running(machine.original)
        assert vm_state(lab, machine.original) == ("running", "specialized")


def test_copies_are_made_by_snapshot_disk_and_vm(lab: Lab, live_plan: LivePlan) -> None:
    for machine in machines(live_plan):
        copy = lab.copy(machine)
        assert copy["properties"]["securityProfile"]["securityType"] == "TrustedLaunch"
    for machine in machines(live_plan):
        lab.wait_until_running(machine.copy)
        disk_id = lab.arm.session.get_vm(VmRef(lab.arm.subscription, lab.rg, machine.copy))["properties"][
            "storageProfile"
        ]["osDisk"]["managedDisk"]["id"]
        creation = lab.arm.session.get_disk(disk_id)["properties"]["creationData"]
        assert creation["createOption"] == "Copy" and creation["sourceResourceId"].endswith(
            f"/{machine.copy}-snap"
        )
        printed = lab.prepare_guest(machine)
        if machine.os == "Linux":
            assert "imageready-live: prepared" in printed, printed
    assert lab.winrm_certificates, "the Windows copy's WinRM listener certificate was not printed"


@pytest.fixture(scope="module")
def winrm_bundle(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The Windows copy's WinRM HTTPS certificate, for the harness to trust."""
    bundle = tmp_path_factory.mktemp("winrm") / "winrm-ca.pem"
    bundle.write_text("\n".join(lab.winrm_certificates) + "\n", encoding="ascii")
    return {"IMAGEREADY_WINRM_CA_BUNDLE": str(bundle)}


def test_the_originals_are_refused_as_originals(
    lab: Lab, live_plan: LivePlan, target: Target, winrm_bundle: dict[str, str]
) -> None:
    originals = [m.original for m in machines(live_plan)]
    run = target.harness(
        "checks", *vm_args(lab, originals), name="originals", timeout=lab.remaining(), extra_env=winrm_bundle
    )
    assert run.returncode in (exitcodes.RED_CHECKS, exitcodes.INFRASTRUCTURE_ERROR), run.output[-3000:]
    for name in originals:
        cases = {c["check_id"]: c for c in run.verdict(f"{lab.rg}/{name}")["checks"]}
        assert cases["IR-SRC-001"]["outcome"] == "failed", cases["IR-SRC-001"]
        assert "was created from an image (FromImage)" in cases["IR-SRC-001"]["message"]
        assert vm_state(lab, name) == ("running", "specialized")


def test_a_managed_image_of_a_trusted_launch_copy_is_refused_before_anything_changes(
    lab: Lab, live_plan: LivePlan, target: Target, winrm_bundle: dict[str, str]
) -> None:
    copies = [m.copy for m in machines(live_plan)]
    run = target.harness(
        *vm_args(lab, copies),
        "--apply",
        "--capture-as=image:{vm}-img",
        name="image-refused",
        timeout=lab.remaining(),
        extra_env=winrm_bundle,
    )
    assert run.returncode == exitcodes.RED_CHECKS, run.output[-3000:]
    for name in copies:
        cases = [c for c in run.verdict(f"{lab.rg}/{name}")["checks"] if c["check_id"] == "IR-CAP-001"]
        refused = [c for c in cases if c["parameter"] == "security-type"]
        assert refused and refused[0]["outcome"] == "failed", cases
        assert "it is a TrustedLaunch VM" in refused[0]["message"]
        assert vm_state(lab, name) == ("running", "specialized")


def test_the_copies_are_generalized_and_captured_to_the_gallery(
    lab: Lab, live_plan: LivePlan, target: Target, winrm_bundle: dict[str, str]
) -> None:
    copies = [m.copy for m in machines(live_plan)]
    run = target.harness(
        *vm_args(lab, copies),
        "--apply",
        f"--capture-as={live_plan.capture_as()}",
        name="apply",
        timeout=lab.remaining(),
        extra_env=winrm_bundle,
    )
    assert run.returncode == exitcodes.GREEN, run.output[-4000:]
    for name in copies:
        assert vm_state(lab, name)[1] == "generalized"
        version = lab.arm.get(
            lab.arm.path(
                lab.rg, f"Microsoft.Compute/galleries/{live_plan.gallery}/images/{name}/versions/1.0.0"
            ),
            API["galleries"],
        )
        assert version is not None, name
        source = version["properties"]["storageProfile"]["source"]
        made_from = str(source.get("virtualMachineId") or source.get("id") or "")
        assert made_from.lower().endswith(f"/virtualmachines/{name}")


def test_the_sweeper_deletes_expired_groups_of_its_prefix_and_nothing_else(
    lab: Lab, live_plan: LivePlan
) -> None:
    """Three empty resource groups (they cost nothing): an expired leftover of this prefix, one
    whose run is still within its time, and one that merely shares the prefix in its name. Only
    the first is the sweeper's; the run's own group stays too."""
    config, arm = live_plan.config, lab.arm
    now = dt.datetime.now(dt.UTC)
    expired_tags = {**live_plan.tags(), TAG_EXPIRES: (now - dt.timedelta(hours=1)).isoformat()}
    groups = {
        "expired": (f"{lab.rg}-expired", expired_tags),
        "running": (f"{lab.rg}-running", live_plan.tags()),
        "untagged": (f"{lab.rg}-untagged", {"owner": "someone else"}),
    }
    try:
        for name, tags in groups.values():
            arm.put(arm.path(name), API["resourceGroups"], {"location": config.location, "tags": tags})
        # a dry sweep lists, and deletes nothing
        listed = sweep(arm, config.prefix, now=now, dry_run=True)
        assert groups["expired"][0] in listed
        assert arm.get(arm.path(groups["expired"][0]), API["resourceGroups"]) is not None
        swept = sweep(arm, config.prefix, now=now)
        assert groups["expired"][0] in swept
        for kept in (groups["running"][0], groups["untagged"][0], lab.rg):
            assert kept not in swept
            assert arm.get(arm.path(kept), API["resourceGroups"]) is not None, kept
        assert arm.get(arm.path(groups["expired"][0]), API["resourceGroups"]) is None
        # past the run's expiry the running one is a leftover too; --all takes it at once
        assert groups["running"][0] in leftovers(arm, config.prefix, now=config.expires)
        assert groups["running"][0] in leftovers(arm, config.prefix, now=now, everything=True)
        assert groups["untagged"][0] not in leftovers(arm, config.prefix, now=now, everything=True)
    finally:
        for name, _ in groups.values():
            arm.delete(arm.path(name), API["resourceGroups"])


def test_everything_the_run_made_is_deleted(lab: Lab, live_plan: LivePlan) -> None:
    assert lab.delete() is True
    assert lab.arm.get(lab.arm.path(lab.rg), API["resourceGroups"]) is None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    assert lab.rg not in leftovers(lab.arm, live_plan.config.prefix, now=later, everything=True)

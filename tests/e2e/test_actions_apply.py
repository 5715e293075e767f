"""The actions end to end (issue 7's "done when"): a clean Linux copy and a clean Windows copy go
from running to generalized and on to a managed image and a gallery image version with --apply;
without --apply nothing changes; a red gate changes nothing; waagent's exit code proves nothing.

The tests of this module share one azsim and run in file order: the plan comes before the
runs that change the VMs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from azure.identity import ClientSecretCredential
from azure.mgmt.compute import ComputeManagementClient

from imageready import exitcodes
from imageready.steps import ORDER
from imageready.steps.lease import LEASE_TAG

from .after_generalize import assert_no_vm_write_after_generalize, final_lease
from .conftest import Azsim, Run, harness

SCENARIO = "tests/scenarios/actions-apply.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

LINUX, WINDOWS, ORIGINAL, STALE_OVF = (
    "rg-act/lin-clean",
    "rg-act/win-clean",
    "rg-act/lin-original",
    "rg-act/lin-stale-ovf",
)
IMAGE = "img-lin-clean"
GALLERY_VERSION = ("galActions", "app-ws2022", "1.0.0")
MUTATING_STEPS = ("deallocate", "generalize", "capture")


def steps_of(run: Run, vm: str) -> dict[str, dict[str, Any]]:
    """The audit's step records of ``vm``, by step name."""
    (found,) = [v for v in run.audit()["vms"] if v["vm"] == vm]
    return {step["step"]: step for step in found["actions"]}


def action_outcomes(run: Run, vm: str) -> dict[str, str]:
    return {
        case.split("::", 1)[1].split("[", 1)[0]: outcome
        for case, outcome in run.outcomes().items()
        if case.startswith("actions/") and f"[{vm}]" in case
    }


def compute(sim: Azsim) -> ComputeManagementClient:
    """The real SDK, outside the harness, to read what the harness made."""
    env = sim.env
    credential = ClientSecretCredential(
        env["AZURE_TENANT_ID"],
        env["AZURE_CLIENT_ID"],
        env["AZURE_CLIENT_SECRET"],
        authority=env["AZURE_AUTHORITY_HOST"],
        connection_verify=env["IMAGEREADY_CA_BUNDLE"],
        disable_instance_discovery=True,
    )
    return ComputeManagementClient(
        credential,
        env["AZURE_SUBSCRIPTION_ID"],
        base_url=env["IMAGEREADY_ARM_ENDPOINT"],
        credential_scopes=["https://management.core.windows.net/.default"],
        connection_verify=env["IMAGEREADY_CA_BUNDLE"],
        polling_interval=1,
    )


def assert_generalized_with_evidence(sim: Azsim, run: Run, vm: str) -> dict[str, dict[str, Any]]:
    """Azure's view and the audit's: every step done, in order, with its times and Azure ids."""
    assert run.returncode == exitcodes.GREEN, run.output[-4000:]
    state = sim.status()[vm]
    assert (state["power_state"], state["os_state"]) == ("deallocated", "generalized")
    steps = steps_of(run, vm)
    run_id = run.audit()["run_id"]
    # Azure takes no change to a generalized VM: the steps before generalize are tagged on it, the
    # last write (just before generalize) marked generalize started and left the final lease,
    # claiming the capture; verify and capture are recorded in the audit and on the artifact only
    for step in ("guest", "deallocate"):
        assert state["tags"][f"imageready-step-{step}"].startswith(f"done run={run_id} "), step
    assert state["tags"]["imageready-step-generalize"].startswith(f"started run={run_id} ")
    assert not {"imageready-step-verify", "imageready-step-capture"} & set(state["tags"])
    final_lease(state, run_id, artifact=steps["capture"]["evidence"]["artifact"])
    assert_no_vm_write_after_generalize(sim, vm)
    assert list(steps) == list(ORDER)
    assert {name: s["status"] for name, s in steps.items()} == dict.fromkeys(ORDER, "done")
    for name, step in steps.items():
        assert step["started"] and step["ended"] and step["started"] <= step["ended"], name
    for name in MUTATING_STEPS:
        calls = [c for c in steps[name]["azure"] if c["operation"] != "update tags"]
        assert calls, f"step {name} recorded no Azure call"
        for call in calls:
            assert call["status"] == "Succeeded" and call["request_ids"] and call["correlation_id"], call
    assert steps["verify"]["evidence"]["statuses"]["OSState"] == "generalized"
    assert set(action_outcomes(run, vm).values()) == {"passed"}
    for name in ORDER:  # progress past pytest's capture, as the operator sees it
        assert f"{vm}: step {name}: done in" in run.stderr, name
    return steps


def test_without_apply_nothing_changes_and_each_step_says_what_it_would_do(
    azsim: Azsim, tmp_path: Path
) -> None:
    before, seq = azsim.snapshot(), azsim.last_seq()
    plan = harness(azsim, "--vm", LINUX, "--vm", WINDOWS, f"--capture-as=image:{IMAGE}", report_dir=tmp_path)
    assert plan.returncode == exitcodes.GREEN, plan.output[-4000:]
    assert azsim.snapshot() == before, "a run without --apply changed azsim's state"
    assert azsim.mutations(seq) == [], "a run without --apply sent a mutating request"
    for vm in (LINUX, WINDOWS):
        steps = steps_of(plan, vm)
        assert list(steps) == list(ORDER)
        assert {s["status"] for s in steps.values()} == {"planned"}
        assert all(s["detail"].startswith("would ") for s in steps.values())
        assert all(s["azure"] == [] for s in steps.values())
        assert set(action_outcomes(plan, vm).values()) == {"skipped"}
    assert "waagent -deprovision+user -force" in steps_of(plan, LINUX)["guest"]["detail"]
    assert "sysprep.exe /generalize /oobe /shutdown /quiet" in steps_of(plan, WINDOWS)["guest"]["detail"]
    assert f"images/{IMAGE} from {LINUX}" in steps_of(plan, LINUX)["capture"]["detail"]
    assert "nothing was changed" in plan.stdout


def test_a_red_gate_changes_nothing_even_with_apply(azsim: Azsim, tmp_path: Path) -> None:
    before, seq = azsim.snapshot(), azsim.last_seq()
    run = harness(azsim, "--vm", ORIGINAL, "--apply", report_dir=tmp_path)
    assert run.returncode == exitcodes.RED_CHECKS, run.output[-4000:]
    assert azsim.snapshot() == before and azsim.mutations(seq) == []
    assert set(action_outcomes(run, ORIGINAL).values()) == {"failed"}
    assert f"BLOCKED by the gate of {ORIGINAL}" in run.stdout
    assert "is not proven to be a copy" in run.stdout
    assert steps_of(run, ORIGINAL) == {}, "a step ran behind a red gate"
    assert run.audit()["vms"][0]["verdict"] == "NOT READY"


@pytest.fixture(scope="module")
def linux_applied(azsim: Azsim, tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, tuple[str, ...]]:
    """The Linux copy generalized and captured once, and the command that did it."""
    args = ("--vm", LINUX, "--apply", f"--capture-as=image:{IMAGE}")
    return harness(azsim, *args, report_dir=tmp_path_factory.mktemp("linux-apply")), args


def test_linux_copy_generalized_and_captured_as_a_managed_image(
    azsim: Azsim, linux_applied: tuple[Run, tuple[str, ...]]
) -> None:
    run, _ = linux_applied
    steps = assert_generalized_with_evidence(azsim, run, LINUX)
    guest = steps["guest"]
    assert guest["evidence"]["post_state"]["user_present"] == "no"
    assert guest["evidence"]["post_state"]["host_keys"] == "0"
    assert guest["evidence"]["post_state"]["waagent_lib_entries"] == "0"
    assert guest["evidence"]["scan"]["findings"] == []
    assert "new logins refused" in guest["detail"]
    image = compute(azsim).images.get("rg-act", IMAGE)
    assert steps["capture"]["evidence"]["artifact"].lower() == image.id.lower()
    assert image.source_virtual_machine.id.lower() == azsim.status()[LINUX]["id"].lower()
    # the capture records itself on the image, not on the (generalized) VM
    assert image.tags["imageready-run"] == run.audit()["run_id"]
    assert image.tags["imageready-source-vm"].lower() == image.source_virtual_machine.id.lower()


def test_the_same_command_again_reports_every_step_already_done(
    azsim: Azsim, linux_applied: tuple[Run, tuple[str, ...]]
) -> None:
    first, args = linux_applied
    assert first.returncode == exitcodes.GREEN, first.output[-4000:]
    first_run = first.audit()["run_id"]  # before the same report directory gets the new audit
    seq = azsim.last_seq()
    again = harness(azsim, *args, report_dir=first.report_dir)
    assert again.returncode == exitcodes.GREEN, again.output[-4000:]
    steps = steps_of(again, LINUX)
    assert {name: s["status"] for name, s in steps.items()} == {
        "lock": "done",
        "guest": "already done",
        "deallocate": "already done",
        "generalize": "already done",
        "verify": "done",
        "capture": "already done",
        "unlock": "done",
    }
    assert again.audit()["run_id"] != first_run
    for name in ("guest", "deallocate"):
        assert f"(recorded on the VM: done run={first_run} " in steps[name]["detail"], name
    assert f"(recorded on the VM before generalize: started run={first_run} " in steps["generalize"]["detail"]
    assert f"(made from {LINUX}; recorded on it: imageready-run={first_run})" in steps["capture"]["detail"]
    assert steps["lock"]["detail"].startswith(f"no lease written: {LINUX} is generalized")
    # nothing at all: the VM is generalized (it takes no write, not even the lease) and captured
    assert azsim.mutations(seq) == []


def test_windows_copy_generalized_and_captured_as_a_gallery_version(azsim: Azsim, tmp_path: Path) -> None:
    gallery, definition, version = GALLERY_VERSION
    capture = f"--capture-as=gallery:{gallery}/{definition}/{version}"
    run = harness(azsim, "--vm", WINDOWS, "--apply", capture, report_dir=tmp_path)
    steps = assert_generalized_with_evidence(azsim, run, WINDOWS)
    guest = steps["guest"]["evidence"]
    assert guest["prepared"]["exists"] is False and guest["prepared"]["panther_existed"] is True
    # with /shutdown the connection drops as the machine goes off: done only on the reseal seen first
    assert guest["success_observed"] is True
    assert guest["proof"].startswith("ImageState IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"), guest["proof"]
    assert guest["power_state_after"] == "stopped", "sysprep /shutdown leaves the VM stopped, not deallocated"
    assert guest["arguments"] == ["/generalize", "/oobe", "/shutdown", "/quiet"]
    found = compute(azsim).gallery_image_versions.get("rg-act", gallery, definition, version)
    assert steps["capture"]["evidence"]["artifact"].lower() == found.id.lower()
    assert found.tags["imageready-run"] == run.audit()["run_id"]


def test_waagent_exit_code_proves_nothing_the_disk_does(azsim: Azsim, tmp_path: Path) -> None:
    seq = azsim.last_seq()
    command = ("--vm", STALE_OVF, "--apply")
    run = harness(azsim, *command, report_dir=tmp_path)
    assert run.returncode == exitcodes.ACTION_FAILED, run.output[-4000:]
    guest = steps_of(run, STALE_OVF)["guest"]
    assert guest["status"] == "failed"
    assert "waagent exited 0 but the provisioned user still exists" in guest["detail"]
    state = azsim.status()[STALE_OVF]
    assert (state["power_state"], state["os_state"]) == ("running", "specialized")
    assert not any("/deallocate" in m or "/generalize" in m for m in azsim.mutations(seq))
    assert LEASE_TAG not in state["tags"]
    assert {k for k, v in action_outcomes(run, STALE_OVF).items() if v == "passed"} == {"test_lease_taken"}
    # the VM remembers that this guest was deprovisioned and not proven clean ...
    mark = state["tags"]["imageready-step-guest"]
    assert mark.startswith(f"failed run={run.audit()['run_id']} ") and "why=post-state" in mark

    again = harness(azsim, *command, report_dir=tmp_path)

    # ... so that the same command again can never turn it green
    assert again.returncode == exitcodes.ACTION_FAILED, again.output[-4000:]
    refused = steps_of(again, STALE_OVF)["guest"]
    assert refused["status"] == "failed" and "could not prove it clean" in refused["detail"]
    assert "rebuild the copy" in refused["detail"]
    assert azsim.status()[STALE_OVF]["os_state"] == "specialized"

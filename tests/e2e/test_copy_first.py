"""--copy-first end to end (issue 7): an original that fails only "not a copy" is copied and the
copy is checked and generalized; the original stays untouched, in ARM and on its disk.

Also azsim's disk lineage under it: a snapshot carries its source disk's content, a disk made from
a snapshot carries the snapshot's, a VM boots from its OS disk's content, and nothing done to a
copy reaches its source.
"""

from __future__ import annotations

import itertools
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes
from imageready.azure import AzureSession, resolve_ca_bundle, resolve_cloud
from imageready.facts.azure_view import COPY_TAG
from imageready.steps.copy import make_copy
from imageready.target import VmRef

from .conftest import Azsim, harness

SCENARIO = "tests/scenarios/copy-first.yaml"
RG = "rg-copy"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]


def key(name: str) -> str:
    return f"{RG}/{name}"


def touches(mutation: str, kind: str, name: str) -> bool:
    """True if a logged ``METHOD /path`` request acts on ``.../{kind}/{name}`` (or below it)."""
    parts = mutation.split(" ", 1)[1].lower().split("/")
    return any(a == kind.lower() and b == name.lower() for a, b in itertools.pairwise(parts))


def guest_disk(sim: Azsim, vm: str) -> Path:
    """The directory where azsim keeps the content of ``vm``'s OS disk."""
    return Path(sim.status()[key(vm)]["guest"]["summary"]["disk"])


@pytest.fixture
def session(azsim: Azsim, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureSession]:
    """The harness's Azure layer signed in to this azsim (as the e2e harness runs would be)."""
    for name, value in azsim.env.items():
        if name.startswith(("AZURE_", "IMAGEREADY_")):
            monkeypatch.setenv(name, value)
    with AzureSession(
        azsim.env["AZURE_SUBSCRIPTION_ID"],
        cloud=resolve_cloud(),
        ca_bundle=resolve_ca_bundle(),
        poll_interval=0.5,
    ) as azure:
        yield azure


def ref(azure: AzureSession, name: str) -> VmRef:
    return VmRef(azure.subscription_id, RG, name)


def shell(azure: AzureSession, name: str, *lines: str) -> str:
    stdout, stderr = azure.run_command(ref(azure, name), "RunShellScript", list(lines))
    return stdout + stderr


def powershell(azure: AzureSession, name: str, script: str) -> dict[str, Any]:
    stdout, _ = azure.run_command(ref(azure, name), "RunPowerShellScript", script.splitlines())
    data: dict[str, Any] = json.loads(stdout)
    return data


def copy_vm(azure: AzureSession, source: str, copy: str) -> None:
    original = ref(azure, source)
    make_copy(azure, original, azure.get_vm(original, instance_view=False), ref(azure, copy))


# --- azsim: disk lineage ----------------------------------------------------------------------


def test_a_linux_copy_boots_the_source_disk_and_never_touches_it(azsim: Azsim, session: AzureSession) -> None:
    marker = secrets.token_hex(8)
    shell(session, "lin-leaky", f"echo {marker} > /etc/written-after-boot")
    source_key = shell(session, "lin-leaky", "cat /etc/ssh/ssh_host_ed25519_key.pub")
    copy_vm(session, "lin-leaky", "lin-leaky-lineage")

    # the copy shows the source's files as they were at snapshot time, the planted secret included,
    # and was not provisioned again (same host key; azsim's provisioning never ran on it)
    seen = shell(session, "lin-leaky-lineage", "cat /etc/written-after-boot /opt/app/.env")
    assert seen == f"{marker}\nDB_PASSWORD=Lineage-S3cret-9f2c71\n"
    assert shell(session, "lin-leaky-lineage", "cat /etc/ssh/ssh_host_ed25519_key.pub") == source_key
    console = azsim.state_dir / "guests" / RG / "lin-leaky-lineage" / "console.log"
    assert "azsim: provisioning" not in console.read_text()
    assert guest_disk(azsim, "lin-leaky-lineage") != guest_disk(azsim, "lin-leaky")

    # what happens to the copy stays on the copy
    shell(
        session, "lin-leaky-lineage", "rm /opt/app/.env /etc/written-after-boot", "echo copy > /etc/copy-only"
    )
    after = shell(session, "lin-leaky", "cat /etc/written-after-boot /opt/app/.env; ls /etc/copy-only")
    assert after.startswith(f"{marker}\nDB_PASSWORD=Lineage-S3cret-9f2c71\n")
    assert "cannot access '/etc/copy-only'" in after


def test_a_windows_copy_boots_the_source_machine_as_it_was(azsim: Azsim, session: AzureSession) -> None:
    remove_panther = (Path(__file__).parents[2] / "src/imageready/scripts/remove_panther.ps1").read_text()
    copy_vm(session, "win-lineage", "win-lineage-early")
    # the copy has the source's Panther folder, and removing it there leaves the source's alone
    assert powershell(session, "win-lineage-early", remove_panther)["existed"] is True
    assert powershell(session, "win-lineage", remove_panther)["existed"] is True
    # a copy taken now has the source's machine as it is now (Panther gone), not as the scenario
    # built it
    copy_vm(session, "win-lineage", "win-lineage-late")
    assert powershell(session, "win-lineage-late", remove_panther)["existed"] is False
    late = json.loads((guest_disk(azsim, "win-lineage-late") / "windows-model.json").read_text())
    assert late["state"]["hostname"] == "WIN-LINEAGE"


# --- the harness ----------------------------------------------------------------------------------


def test_the_name_of_the_copy_taken_by_another_vm_is_a_usage_error(azsim: Azsim, tmp_path: Path) -> None:
    seq = azsim.last_seq()
    run = harness(azsim, "--copy-first", "--apply", "--vm", key("lin-taken"), report_dir=tmp_path / "taken")
    assert run.returncode == exitcodes.USAGE_ERROR, run.output[-2000:]
    assert f"VM {key('lin-taken-imgcopy')} exists and is not a copy of {key('lin-taken')}" in run.output
    assert azsim.mutations(seq) == []


def test_plan_says_what_it_would_copy_and_changes_nothing(azsim: Azsim, tmp_path: Path) -> None:
    vms = ["lin-web", "lin-leaky", "lin-golden-copy"]
    before, seq = azsim.snapshot(), azsim.last_seq()
    run = harness(
        azsim, "--copy-first", *[a for vm in vms for a in ("--vm", key(vm))], report_dir=tmp_path / "plan"
    )
    assert run.returncode == exitcodes.RED_CHECKS, run.output[-3000:]
    assert azsim.snapshot() == before, "a plan changed azsim's state"
    assert azsim.mutations(seq) == [], "a plan sent a mutating request"
    assert f"would copy {key('lin-web')} to {key('lin-web-imgcopy')}" in run.output
    # the originals stay the targets: lin-web's gate is shut by its provenance check alone
    [blocker] = run.verdict(key("lin-web"))["blockers"]
    assert blocker.startswith(f"checks/test_provenance.py::test_vm_is_a_copy[{key('lin-web')}]: failed")
    # other blockers: no copy, and which ones
    assert "a copy would not cure 2 other blocker(s) of rg-copy/lin-leaky" in run.output
    assert "app-secret-files" in run.output
    # a copy already: checked as it is
    assert f"{key('lin-golden-copy')}: not needed" in run.output
    assert run.verdict(key("lin-golden-copy"))["green"] is True
    original = json.loads((tmp_path / "plan/originals/verdicts/verdict-rg-copy__lin-web.json").read_text())
    assert [c["check_id"] for c in original["checks"] if c["outcome"] == "failed"] == ["IR-SRC-001"]
    audit = {vm["vm"]: vm for vm in run.audit()["vms"]}
    assert sorted(audit) == sorted(key(vm) for vm in vms)
    planned = audit[key("lin-web")]["actions"][0]
    assert (planned["step"], planned["status"]) == ("copy", "planned") and planned["azure"] == []


def test_apply_generalizes_copies_and_leaves_the_originals_untouched(azsim: Azsim, tmp_path: Path) -> None:
    originals = ["lin-web", "win-app"]
    before, seq = azsim.snapshot(), azsim.last_seq()
    lin_disk = guest_disk(azsim, "lin-web")
    args = ["--copy-first", "--apply", *[a for vm in originals for a in ("--vm", key(vm))]]
    report = tmp_path / "apply"

    # 1. creating lin-web's copy VM is refused (RBAC): that copy fails, win-app's goes on, under
    #    xdist (the workers get the copy as their target from the controller)
    azsim.cli(
        "fault", "add", "forbidden", "action=Microsoft.Compute/virtualMachines/write",
        f"vm={key('lin-web-imgcopy')}", "count=1",
    )  # fmt: skip
    first = harness(azsim, *args, "-n", "2", report_dir=report)
    assert first.returncode == exitcodes.ACTION_FAILED, first.output[-3000:]
    assert (
        f"copying {key('lin-web')} to {key('lin-web-imgcopy')} failed: create VM {key('lin-web-imgcopy')}: "
        "permission denied"
    ) in first.output
    pages = {vm["vm"]: vm for vm in first.audit()["vms"]}
    assert sorted(pages) == [key("lin-web"), key("win-app-imgcopy")]
    failed = pages[key("lin-web")]["actions"][0]
    assert (pages[key("lin-web")]["verdict"], failed["step"], failed["status"]) == (
        "ACTION FAILED",
        "copy",
        "failed",
    )
    assert [(c["operation"], c["status"]) for c in failed["azure"]][-2:] == [
        ("create network interface", "Succeeded"),
        ("create VM", "Failed"),
    ]
    copied = pages[key("win-app-imgcopy")]
    assert copied["verdict"] == "GENERALIZED"
    assert (copied["actions"][0]["step"], copied["actions"][0]["status"]) == ("copy", "done")
    assert [c["operation"] for c in copied["actions"][0]["azure"]] == [
        "create snapshot",
        "create disk",
        "create network interface",
        "create VM",
    ]
    assert all(c["status"] == "Succeeded" and c["request_ids"] for c in copied["actions"][0]["azure"])
    chain = [link["id"].rsplit("/", 2)[-2:] for link in copied["identity"]["os_disk_provenance"]]
    assert chain == [
        ["disks", "win-app-imgcopy-osdisk"],
        ["snapshots", "win-app-imgcopy-osdisk-snap"],
        ["disks", "win-app-osdisk"],
    ]
    assert copied["final_state"]["tags"][COPY_TAG] == azsim.status()[key("win-app")]["id"]

    # 2. the same command again: lin-web's copy goes on from what the first run made
    second = harness(azsim, *args, report_dir=report)
    assert second.returncode == exitcodes.GREEN, second.output[-3000:]
    assert f"{key('win-app')} -> {key('win-app-imgcopy')}: already done" in second.output
    step = {vm["vm"]: vm for vm in second.audit()["vms"]}[key("lin-web-imgcopy")]["actions"][0]
    assert (step["step"], step["status"]) == ("copy", "done")
    assert "made by an earlier run: lin-web-imgcopy-osdisk-snap, lin-web-imgcopy-data0-snap" in step["detail"]
    assert [c["operation"] for c in step["azure"]] == ["create network interface", "create VM"]

    after, status = azsim.snapshot(), azsim.status()
    for name in originals:
        assert after[key(name)] == before[key(name)], f"{name} changed"
        copy = status[key(f"{name}-imgcopy")]
        assert (copy["power_state"], copy["os_state"]) == ("deallocated", "generalized")
        assert copy["tags"][COPY_TAG] == status[key(name)]["id"]
    assert status[key("lin-web-imgcopy")]["tags"]["cost-center"] == "cc-1234"
    assert status[key("lin-web-imgcopy")]["disks"]["data"][0].endswith("/disks/lin-web-imgcopy-data0")
    # no request acted on an original or its disks (snapshots only read them)
    mutations = azsim.mutations(seq)
    untouchable = [("virtualMachines", name) for name in originals] + [
        ("disks", name) for name in ("lin-web-osdisk", "lin-web-data0", "win-app-osdisk")
    ]
    for kind, name in untouchable:
        assert not [m for m in mutations if touches(m, kind, name)], name
    # on disk: waagent deprovisioned the copy (the admin's home is gone), not the original; sysprep
    # sealed the copy's Windows, not the original's
    assert (lin_disk / "disk/upper/home/azureuser/.ssh/authorized_keys").is_file()
    assert (lin_disk / "disk/upper/etc/ssh/ssh_host_ed25519_key").is_file()
    assert not (guest_disk(azsim, "lin-web-imgcopy") / "disk/upper/home/azureuser").is_dir()
    assert status[key("win-app")]["guest"]["summary"]["image_state"] == "IMAGE_STATE_COMPLETE"
    assert status[key("win-app-imgcopy")]["guest"]["summary"]["image_state"] != "IMAGE_STATE_COMPLETE"

    # 3. once more: both copies are found ("already done"), nothing is copied or checked twice
    seq = azsim.last_seq()
    third = harness(azsim, *args, report_dir=report)
    assert third.returncode == exitcodes.GREEN, third.output[-3000:]
    assert f"{key('lin-web')} -> {key('lin-web-imgcopy')}: already done" in third.output
    assert "checking the original(s) first" not in third.output
    assert not [m for m in azsim.mutations(seq) if m.startswith("PUT")]
    assert azsim.snapshot()[key("lin-web")] == before[key("lin-web")]

"""The guest that answers is the VM Azure describes (issue 16), end to end against
tests/scenarios/guest-identity.yaml, every outcome asserted from azsim's state (ARM's request log,
the VMs' power and OS state, what is on the guests' disks), not only from the harness's output:

* two VMs whose addresses are swapped in the address map: a checks stage, then an actions stage
  behind its verdicts; one --apply run (Linux and Windows); and a swap that appears only after a
  green checks stage. Each ends with nothing changed on either VM;
* a guest that cannot prove its identity, and one that says it is another VM: exit 12, category
  "guest identity";
* the happy path: proven through IMDS, or through the SMBIOS UUID when IMDS is hidden, and
  recorded in the verdict and the audit.
"""

from __future__ import annotations

import json
import secrets
import string
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes

from .conftest import Azsim, Run, harness

SCENARIO = "tests/scenarios/guest-identity.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

RG = "rg-id"
LIN_A, LIN_B, WIN_A, WIN_B = (f"{RG}/lin-a", f"{RG}/lin-b", f"{RG}/win-a", f"{RG}/win-b")
CATEGORY = "guest identity"
WINDOWS_CLEAN = "IMAGE_STATE_COMPLETE"


def vm_args(*vms: str) -> list[str]:
    return [arg for vm in vms for arg in ("--vm", vm)]


def address_map(azsim: Azsim) -> dict[str, str]:
    """The map the operator was given (azsim's env file: with the staged swaps)."""
    data: dict[str, str] = json.loads(Path(azsim.env["IMAGEREADY_GUEST_ADDRESSES"]).read_text())
    return data


def true_addresses(azsim: Azsim) -> dict[str, str]:
    """Where each guest really is, from azsim's own status: the address a client reaches it at
    (its relay), else where it listens."""
    found = {}
    for key, vm in azsim.status().items():
        endpoints = (vm.get("guest") or {}).get("endpoints") or {}
        address = (
            (vm.get("guest") or {}).get("address") or endpoints.get("ssh") or endpoints.get("winrm_https")
        )
        if address:
            found[key.lower()] = address
    return found


def guest_state(azsim: Azsim, vm: str) -> dict[str, Any]:
    """What a change would show on a VM: ARM's etag, power and OS state, tags; its guest's boots
    and (Windows) image state; and (Linux) whether the admin user, its home and the waagent state
    that `waagent -deprovision+user` deletes are still on the disk, read through our own SSH login
    at the guest's true address."""
    found: dict[str, Any] = dict(azsim.snapshot()[vm])
    if "lin-" in vm:
        probe = "id -u azureuser; ls -d /home/azureuser /var/lib/waagent/ovf-env.xml /etc/ssh/ssh_host_*key"
        found["disk"] = azsim.admin_run(true_addresses(azsim)[vm], vm, probe).split()
    return found


def identity_errors(run: Run, vm: str) -> list[dict[str, Any]]:
    """The cases of ``vm`` that errored because its guest was refused."""
    return [c for c in run.verdict(vm)["checks"] if c["outcome"] == "error" and c["category"] == CATEGORY]


def arm_vm_id(run: Run, vm: str) -> str:
    value: str = run.verdict(vm)["vm_id"]
    return value


def test_the_staged_map_swaps_the_two_pairs(azsim: Azsim) -> None:
    given, true = address_map(azsim), true_addresses(azsim)
    assert (given[LIN_A], given[LIN_B]) == (true[LIN_B], true[LIN_A])
    assert (given[WIN_A], given[WIN_B]) == (true[WIN_B], true[WIN_A])
    assert given[f"{RG}/lin-ok"] == true[f"{RG}/lin-ok"]


def test_happy_path_is_proven_and_recorded(azsim: Azsim, tmp_path: Path) -> None:
    ok, gen1 = f"{RG}/lin-ok", f"{RG}/lin-gen1"
    run = harness(azsim, *vm_args(ok, gen1), report_dir=tmp_path)
    assert run.returncode == exitcodes.GREEN, run.output[-4000:]
    audit = {vm["vm"]: vm["identity"]["guest"] for vm in run.audit()["vms"]}
    for vm, read_from, order in ((ok, "imds", "as-is"), (gen1, "smbios", "swapped")):
        verdict = run.verdict(vm)
        assert verdict["green"] is True
        proof = verdict["guest_identity"]
        assert proof["identity"] == "proven"
        assert proof["guest_vm_id"] == proof["azure_vm_id"] == verdict["vm_id"]
        assert (proof["identity_read_from"], proof["smbios_byte_order"]) == (read_from, order)
        assert proof["endpoint"] == address_map(azsim)[vm]
        assert proof["ssh_host_key"].startswith("ssh-ed25519 SHA256:")
        assert audit[vm] == proof
    assert azsim.status()[gen1]["guest"]["summary"]["imds"] == "unreachable"


def test_swapped_addresses_checks_stage_then_actions_behind_its_verdicts(
    azsim: Azsim, tmp_path: Path
) -> None:
    before = {vm: guest_state(azsim, vm) for vm in (LIN_A, LIN_B)}
    seq = azsim.last_seq()
    checks = harness(azsim, "checks", *vm_args(LIN_A, LIN_B), report_dir=tmp_path / "checks")
    assert checks.returncode == exitcodes.INFRASTRUCTURE_ERROR, checks.output[-4000:]
    given = address_map(azsim)
    for vm, other in ((LIN_A, LIN_B), (LIN_B, LIN_A)):
        verdict = checks.verdict(vm)
        assert verdict["green"] is False
        errors = identity_errors(checks, vm)
        # every check that reads the guest (the scan included) errors; ARM's own checks still judge
        assert {c["check_id"] for c in errors} >= {"IR-LNX-001", "IR-LNX-007", "IR-ENC-004", "IR-SCAN"}
        message = errors[0]["message"]
        assert arm_vm_id(checks, vm) in message and arm_vm_id(checks, other) in message
        assert given[vm] in message and "another VM" in message
        assert verdict["guest_identity"]["identity"] == "refused"
        assert verdict["guest_identity"]["imds_vm_id"] == arm_vm_id(checks, other)
    actions = harness(
        azsim,
        "actions",
        *vm_args(LIN_A, LIN_B),
        "--apply",
        f"--verdict={checks.report_dir / 'verdicts'}",
        report_dir=tmp_path / "actions",
    )
    # the verdicts are red; the checks that read the guest live (the scan) run again and error
    # on the same refused guests: exit 12, the gate shut
    assert actions.returncode == exitcodes.INFRASTRUCTURE_ERROR, actions.output[-4000:]
    assert "it is not green" in actions.output
    assert azsim.mutations(seq) == []
    assert {vm: guest_state(azsim, vm) for vm in (LIN_A, LIN_B)} == before


def test_swapped_addresses_in_one_apply_run(azsim: Azsim, tmp_path: Path) -> None:
    vms = (LIN_A, LIN_B, WIN_A, WIN_B)
    before = {vm: guest_state(azsim, vm) for vm in vms}
    assert before[WIN_A]["image_state"] == WINDOWS_CLEAN
    seq = azsim.last_seq()
    run = harness(azsim, *vm_args(*vms), "--apply", report_dir=tmp_path)
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR, run.output[-4000:]
    for vm in vms:
        assert identity_errors(run, vm), vm
        assert run.verdict(vm)["green"] is False
    assert "BLOCKED by the gate" in run.output
    assert azsim.mutations(seq) == []
    after = {vm: guest_state(azsim, vm) for vm in vms}
    assert after == before
    assert {after[vm]["image_state"] for vm in (WIN_A, WIN_B)} == {WINDOWS_CLEAN}  # sysprep never ran


def test_a_swap_after_a_green_checks_stage_changes_nothing(azsim: Azsim, tmp_path: Path) -> None:
    """The checks stage saw the right guest; the actions stage's map leads elsewhere (a stale port
    forward). The actions stage gathers its own facts: the guest is refused, so what the checks
    read differs from what the verdict recorded, those checks run again and error (guest identity),
    and the gate stays shut before the lease. (Had it opened, the guest step's session would
    refuse the guest itself: tests/guests/test_guest_identity.py.)"""
    correct = tmp_path / "addresses.json"
    correct.write_text(json.dumps(true_addresses(azsim)))
    checks = harness(
        azsim,
        "checks",
        "--vm",
        LIN_A,
        report_dir=tmp_path / "checks",
        env={"IMAGEREADY_GUEST_ADDRESSES": str(correct)},
    )
    assert checks.returncode == exitcodes.GREEN, checks.output[-4000:]
    assert checks.verdict(LIN_A)["guest_identity"]["identity"] == "proven"
    before = {vm: guest_state(azsim, vm) for vm in (LIN_A, LIN_B)}
    seq = azsim.last_seq()
    actions = harness(
        azsim,
        "actions",
        "--vm",
        LIN_A,
        "--apply",
        f"--verdict={checks.report_dir / 'verdicts'}",
        report_dir=tmp_path / "actions",
    )
    # the facts gathered again differ from those the verdict recorded, so the changed checks run
    # again here: they error on the refused guest (its own category, exit 12), and the gate stays
    # shut before the lease
    assert actions.returncode == exitcodes.INFRASTRUCTURE_ERROR, actions.output[-4000:]
    assert "BLOCKED by the gate of rg-id/lin-a" in actions.output and "refused" in actions.output
    (vm_record,) = actions.audit()["vms"]
    assert vm_record["identity"]["guest"]["identity"] == "refused"
    # the machine that answered: lin-b, by what azsim shows lin-b's guest
    assert (
        vm_record["identity"]["guest"]["imds_vm_id"]
        == azsim.status()[LIN_B]["guest"]["summary"]["vm_id_shown"]
    )
    assert azsim.mutations(seq) == []
    assert {vm: guest_state(azsim, vm) for vm in (LIN_A, LIN_B)} == before


def test_a_secret_planted_after_a_green_checks_stage_stops_the_actions(azsim: Azsim, tmp_path: Path) -> None:
    """Not an identity case, but this scenario's clean Linux copy with the stages split: the
    sensitive-data scan reads the guest live (nothing in the verdict proves the disk unchanged),
    so the actions stage scans again; a key planted after the approval keeps the gate shut before
    the lease, and nothing changes."""
    correct = tmp_path / "addresses.json"
    correct.write_text(json.dumps(true_addresses(azsim)))
    env = {"IMAGEREADY_GUEST_ADDRESSES": str(correct)}
    checks = harness(azsim, "checks", "--vm", LIN_A, report_dir=tmp_path / "checks", env=env)
    assert checks.returncode == exitcodes.GREEN, checks.output[-4000:]
    key = "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(16))
    planted = "/opt/app/settings.ini"
    address = true_addresses(azsim)[LIN_A]
    azsim.admin_run(address, LIN_A, f"mkdir -p /opt/app && printf 'aws_access_key_id = {key}\\n' > {planted}")
    try:
        before = guest_state(azsim, LIN_A)
        seq = azsim.last_seq()
        actions = harness(
            azsim,
            "actions",
            "--vm",
            LIN_A,
            "--apply",
            f"--verdict={checks.report_dir / 'verdicts'}",
            report_dir=tmp_path / "actions",
            env=env,
        )
        assert actions.returncode == exitcodes.RED_CHECKS, actions.output[-4000:]
        (record,) = actions.audit()["vms"]  # an actions stage writes no verdict of its own
        failed = [c for c in record["checks"] if c["outcome"] == "failed"]
        assert [c["check_id"] for c in failed] == ["IR-SCAN"], failed
        assert planted in json.dumps(actions.audit()), "the audit names the planted file"
        assert key not in actions.output and key not in json.dumps(actions.audit())
        assert azsim.mutations(seq) == []
        assert guest_state(azsim, LIN_A) == before
    finally:
        azsim.admin_run(address, LIN_A, f"rm -f {planted}")


def test_a_guest_that_cannot_prove_its_identity_or_names_another(azsim: Azsim, tmp_path: Path) -> None:
    blind, other = f"{RG}/lin-blind", f"{RG}/lin-other"
    run = harness(azsim, "checks", *vm_args(blind, other), report_dir=tmp_path)
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR, run.output[-4000:]
    unproven = identity_errors(run, blind)
    assert unproven and all(c["category"] == CATEGORY for c in unproven)
    message = unproven[0]["message"]
    assert f"cannot prove it is {blind} (Azure's vmId {arm_vm_id(run, blind)}" in message
    assert "IMDS URLError" in message and "SMBIOS UUID FileNotFoundError" in message
    assert address_map(azsim)[blind] in message
    impostor = identity_errors(run, other)[0]["message"]
    assert arm_vm_id(run, other) in impostor and "7cdc1f83-c56c-4e5e-9f1f-60b0072ec8e6" in impostor
    for vm in (blind, other):
        assert run.verdict(vm)["green"] is False
        assert run.verdict(vm)["guest_identity"]["identity"] == "refused"

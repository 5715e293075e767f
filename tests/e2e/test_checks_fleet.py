"""The pre-flight checks end to end (issue 5's "done when"), against the fleet in
tests/scenarios/checks-fleet.yaml: every check passes on at least one VM and fails on one for each
distinct reason, asserted through the JUnit outcomes and the one-line messages of the verdicts;
clean Linux and Windows copies are all green; collected ids read as findings; a VM's facts cost a
fixed number of ARM calls and one guest round trip, whatever the number of checks.

The sensitive-data scan (checks/test_sensitive_data.py) has its own end-to-end tests; it is
deselected from the fleet run here, and runs in full on the clean copies. So do the capture checks
(checks/test_capture.py, tests/e2e/test_capture_preflight.py): without --capture-as, as here, they
are not applicable.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes

from .conftest import Azsim, Run, harness

SCENARIO = "tests/scenarios/checks-fleet.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

RG = "rg-checks"
FLEET = [
    "lin-clean-copy",
    "win-clean-copy",
    "lin-no-agent",
    "lin-old-agent",
    "lin-no-sudo",
    "lin-ovf-stale",
    "lin-ovf-other-user",
    "win-dc-original",
    "win-roles-ok",
    "win-sealed",
    "win-empty-disk",
    "win-attached",
    "win-restore-copy",
    "win-import-copy",
    "win-restore-gone",
    "win-replaced-src",
    "win-own-disk",
    "win-deallocated",
    "win-stopped",
    "win-generalized",
    "win-failed",
    "win-agent-down",
    "win-no-ostype",
    "ghost",  # not in the scenario: the VM does not exist
]
CLEAN_COPIES = [f"{RG}/lin-clean-copy", f"{RG}/win-clean-copy"]
SCAN_MODULE = "checks/test_sensitive_data.py"
CAPTURE_MODULE = "checks/test_capture.py"
WITHOUT_SCAN = ("checks", "--deselect", SCAN_MODULE, "--deselect", CAPTURE_MODULE)


def vm_args(*names: str) -> list[str]:
    return [arg for name in names for arg in ("--vm", name if "/" in name else f"{RG}/{name}")]


@pytest.fixture(scope="module")
def fleet(azsim: Azsim, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One run of the policy over the whole fleet (a plan: checks only)."""
    run = harness(azsim, *WITHOUT_SCAN, *vm_args(*FLEET), report_dir=tmp_path_factory.mktemp("fleet"))
    # red everywhere, and one infrastructure error: lin-no-sudo's guest cannot read what only
    # root may (ovf-env.xml), so IR-LNX-007 errors with "guest facts", which wins the exit code
    assert run.returncode == exitcodes.INFRASTRUCTURE_ERROR, run.output[-3000:]
    codes = {vm["vm"]: vm["exit_code"] for vm in run.audit()["vms"]}
    assert codes[f"{RG}/lin-no-sudo"] == exitcodes.INFRASTRUCTURE_ERROR
    assert codes[f"{RG}/win-dc-original"] == exitcodes.RED_CHECKS
    return run


def findings(run: Run) -> dict[str, str]:
    """The full text of each failed case in the JUnit report (what, where, fix, doc), by node id."""
    found = {}
    root = ET.parse(run.report_dir / "junit.xml").getroot()  # noqa: S314 - our own output
    for case in root.iter("testcase"):
        failure = case.find("failure")
        if failure is not None:
            found[f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"] = (
                failure.text or ""
            )
    return found


def verdict_cases(run: Run, vm: str) -> dict[str, dict[str, Any]]:
    return {case["case_id"]: case for case in run.verdict(f"{RG}/{vm}")["checks"]}


def node(run: Run, check: str, vm: str, item: str = "") -> str:
    """A check function's name + VM (+ the examined item) -> the case's node id in ``run``."""
    suffix = f"::{check}[{RG}/{vm}{'-' + item if item else ''}]"
    found = [case_id for case_id in run.outcomes() if case_id.endswith(suffix)]
    assert len(found) == 1, f"{suffix}: {found}"
    return found[0]


# (check, VM, examined item, JUnit outcome, what the verdict's one-line message says)
P, F = "passed", "failed"
ROLE = "test_server_role_supported"
# fmt: off
EXPECTED = [
    # target state
    ("test_vm_exists_and_provisioned", "lin-clean-copy", "", P, ""),
    ("test_vm_exists_and_provisioned", "ghost", "", F, "VM rg-checks/ghost not found in subscription"),
    ("test_vm_exists_and_provisioned", "win-failed", "", F, "is in provisioning state Failed"),
    ("test_vm_running", "win-clean-copy", "", P, ""),
    ("test_vm_running", "win-stopped", "", F, "win-stopped is stopped, not running"),
    ("test_vm_running", "win-deallocated", "", F, "win-deallocated is deallocated, not running"),
    ("test_vm_running", "win-generalized", "", F, "already generalized: it can never start again"),
    ("test_not_already_generalized", "lin-clean-copy", "", P, ""),
    ("test_not_already_generalized", "win-generalized", "", F, "is already generalized"),
    ("test_vm_agent_ready", "win-clean-copy", "", P, ""),
    ("test_vm_agent_ready", "win-agent-down", "", F, "is not ready (status 'Not Ready')"),
    ("test_vm_agent_ready", "win-stopped", "", F, "because the VM is stopped"),
    ("test_os_type_known", "lin-clean-copy", "", P, ""),
    ("test_os_type_known", "win-clean-copy", "", P, ""),
    ("test_os_type_known", "win-no-ostype", "", F, "the OS type of rg-checks/win-no-ostype is not reported"),
    # server roles: supported, unsupported (itself or through its parent), rejected, conditional
    (ROLE, "win-clean-copy", "FS-FileServer", P, ""),
    (ROLE, "win-dc-original", "DNS", P, ""),
    (ROLE, "win-roles-ok", "WDS", P, ""),
    (ROLE, "win-roles-ok", "Hyper-V", P, ""),
    (ROLE, "win-roles-ok", "Web-Server", P, ""),
    (ROLE, "win-dc-original", "AD-Domain-Services", F, "Services) is not supported by Sysprep"),
    (ROLE, "win-dc-original", "ADCS-Cert-Authority", F, "(a part of AD-Certificate) is not supp"),
    (ROLE, "win-dc-original", "SNMP-Service", F, "is rejected by Azure Marketplace certification"),
    (ROLE, "win-dc-original", "Failover-Clustering", F, "is rejected by Azure Marketplace certification"),
    (ROLE, "win-dc-original", "WDS", F, "Windows Deployment Services is initialized"),
    (ROLE, "win-dc-original", "Hyper-V", F, "Hyper-V has virtual networks"),
    (ROLE, "win-dc-original", "Web-Server", F, "applicationHost.config holds encrypted credentials"),
    # encryption: Azure side (ADE on a disk, the ADE extension) and guest side (BitLocker, LUKS)
    ("test_disk_not_ade_encrypted", "lin-clean-copy", "lin-clean-copy-osdisk", P, ""),
    ("test_disk_not_ade_encrypted", "win-restore-copy", "win-restore-copy-osdisk", P, ""),
    ("test_disk_not_ade_encrypted", "lin-old-agent", "lin-old-agent-osdisk", F,
     "os disk lin-old-agent-osdisk of rg-checks/lin-old-agent is encrypted with Azure Disk Encryption"),
    ("test_disk_not_ade_encrypted", "win-sealed", "win-sealed-data0", F,
     "data disk win-sealed-data0 of rg-checks/win-sealed is encrypted with Azure Disk Encryption"),
    ("test_no_ade_extension", "lin-clean-copy", "", P, ""),
    ("test_no_ade_extension", "lin-old-agent", "", F, "Encryption extension (AzureDiskEncryptionForLinux)"),
    ("test_no_ade_extension", "win-sealed", "", F, "Encryption extension (AzureDiskEncryption)"),
    ("test_bitlocker_volume_decrypted", "win-clean-copy", "none", P, ""),
    ("test_bitlocker_volume_decrypted", "win-roles-ok", "C", P, ""),
    ("test_bitlocker_volume_decrypted", "win-sealed", "C", P, ""),
    ("test_bitlocker_volume_decrypted", "win-sealed", "D", F,
     "volume D: of rg-checks/win-sealed is not fully decrypted (FullyEncrypted, protection On, 100 %"),
    ("test_bitlocker_volume_decrypted", "win-sealed", "E", F,
     "and still decrypting (DecryptionInProgress, protection Off, 40 % encrypted"),
    ("test_no_luks_volume", "lin-clean-copy", "none", P, ""),
    ("test_no_luks_volume", "lin-old-agent", "data_crypt", F, "has an encrypted volume data_crypt (crypttab"),
    # provenance (hole 4): a copy only by lineage to a source disk that still exists
    ("test_vm_is_a_copy", "lin-clean-copy", "", P, ""),  # disk <- snapshot <- disk
    ("test_vm_is_a_copy", "lin-no-sudo", "", P, ""),  # disk <- disk
    ("test_vm_is_a_copy", "win-restore-copy", "", P, ""),  # disk <- restore point <- disk
    ("test_vm_is_a_copy", "lin-old-agent", "", F,  # disk <- snapshot <- (deleted)
     "its source disk lin-retired-osdisk no longer exists: the copy would be the only instance left"),
    ("test_vm_is_a_copy", "win-restore-gone", "", F, "its source disk win-retired-osdisk no longer exists"),
    ("test_vm_is_a_copy", "win-import-copy", "", F, "was imported from a VHD (Import)"),
    ("test_vm_is_a_copy", "win-roles-ok", "", F,  # FromImage: the copy tag is not proof
     "its OS disk win-roles-ok-osdisk was created from an image (FromImage)"),
    ("test_vm_is_a_copy", "win-dc-original", "", F,
     "not proven to be a copy: its OS disk win-dc-original-osdisk was created from an image (FromImage)"),
    ("test_vm_is_a_copy", "win-empty-disk", "", F, "win-empty-disk-osdisk was created empty (Empty)"),
    ("test_vm_is_a_copy", "win-attached", "", F, "as it is (Attach): the VM runs on the original disk"),
    ("test_vm_is_a_copy", "win-replaced-src", "", F, "is not the resource it was copied from"),
    ("test_vm_is_a_copy", "win-own-disk", "", F,
     "leads back to this VM's own disk (disk win-own-disk-data0)"),
    # Windows readiness
    ("test_no_pending_reboot", "win-clean-copy", "", P, ""),
    ("test_no_pending_reboot", "win-sealed", "", F,
     "has a reboot pending (CBS RebootPending, WindowsUpdate RebootRequired, PendingFileRenameOperations)"),
    ("test_not_domain_joined", "win-clean-copy", "", P, ""),
    ("test_not_domain_joined", "win-dc-original", "", F, "is joined to the domain corp.contoso.com"),
    ("test_appx_provisioned_for_all_users", "win-clean-copy", "none", P, ""),
    ("test_appx_provisioned_for_all_users", "win-sealed", "Contoso.Dashboard@WIN-SEALED-builder", F,
     "Contoso.Dashboard is installed for user WIN-SEALED\\builder but not provisioned for all users"),
    ("test_not_upgraded", "win-clean-copy", "", P, ""),
    ("test_not_upgraded", "win-sealed", "", F, "was upgraded in place"),
    ("test_generalize_count_remaining", "win-clean-copy", "", P, ""),
    ("test_generalize_count_remaining", "win-sealed", "", F, "has no generalize count left"),
    ("test_no_stale_answer_files", "win-clean-copy", "", P, ""),  # Panther's cached one
    ("test_no_stale_answer_files", "win-roles-ok", "", P, ""),  # Sysprep\unattend.xml
    ("test_no_stale_answer_files", "win-sealed", "", F, "answer file(s) C:\\Unattend.xml on rg-checks/"),
    ("test_agent_service_running", "win-clean-copy", "RdAgent", P, ""),
    ("test_agent_service_running", "win-clean-copy", "WindowsAzureGuestAgent", P, ""),
    ("test_agent_service_running", "win-sealed", "RdAgent", F, "RdAgent on rg-checks/win-sealed is Stopped"),
    ("test_agent_service_running", "win-sealed", "WindowsAzureGuestAgent", F, "is missing (not installed)"),
    ("test_agent_service_running", "win-dc-original", "WindowsAzureGuestAgent", F, "is Stopped (Disabled)"),
    ("test_cdrom_enabled", "win-clean-copy", "", P, ""),
    ("test_cdrom_enabled", "win-sealed", "", F, "service (cdrom) on rg-checks/win-sealed is disabled"),
    ("test_no_failed_sysprep_providers", "win-clean-copy", "", P, ""),
    ("test_no_failed_sysprep_providers", "win-sealed", "", F, "on rg-checks/win-sealed: AppxSysprep.dll"),
    ("test_image_state_complete", "win-clean-copy", "", P, ""),
    ("test_image_state_complete", "win-sealed", "", F, "has ImageState IMAGE_STATE_UNDEPLOYABLE"),
    # Linux readiness
    ("test_waagent_installed", "lin-clean-copy", "", P, ""),
    ("test_waagent_installed", "lin-no-agent", "", F, "waagent (WALinuxAgent) is not installed"),
    ("test_waagent_installed", "lin-old-agent", "", F, "waagent 2.2.40 on rg-checks/lin-old-agent is older"),
    ("test_waagent_deprovision_setting", "lin-clean-copy", "Provisioning.RegenerateSshHostKeyPair", P, ""),
    ("test_waagent_deprovision_setting", "lin-clean-copy", "Provisioning.DeleteRootPassword", P, ""),
    ("test_waagent_deprovision_setting", "lin-old-agent", "Provisioning.RegenerateSshHostKeyPair", F,
     "is 'n' in /etc/waagent.conf on rg-checks/lin-old-agent, so deprovisioning leaves the SSH host keys"),
    ("test_waagent_deprovision_setting", "lin-old-agent", "Provisioning.DeleteRootPassword", F,
     "is 'n' in /etc/waagent.conf on rg-checks/lin-old-agent, so deprovisioning leaves root's password"),
    ("test_waagent_deprovision_setting", "lin-no-agent", "Provisioning.DeleteRootPassword", F,
     "is not set (waagent's default: n)"),
    ("test_sudo_nopasswd", "lin-clean-copy", "", P, ""),
    ("test_sudo_nopasswd", "lin-no-sudo", "", F, "`sudo -n` does not work for azureuser on rg-checks/lin-no"),
    ("test_cloud_init_settled", "lin-clean-copy", "", P, ""),  # absent
    ("test_cloud_init_settled", "lin-no-agent", "", P, ""),  # done
    ("test_cloud_init_settled", "lin-old-agent", "", F, "cloud-init on rg-checks/lin-old-agent is error"),
    ("test_cloud_init_settled", "lin-no-sudo", "", F, "cloud-init on rg-checks/lin-no-sudo is running"),
    ("test_no_swap_on_os_disk", "lin-clean-copy", "none", P, ""),
    ("test_no_swap_on_os_disk", "lin-old-agent", "swapfile", F, "swap /swapfile is on the OS disk"),
    ("test_client_alive_interval", "lin-clean-copy", "", P, ""),
    ("test_client_alive_interval", "lin-no-agent", "", F, "on rg-checks/lin-no-agent is 0 (sshd's default"),
    ("test_client_alive_interval", "lin-old-agent", "", F, "is 10, outside 30-235"),
    ("test_client_alive_interval", "lin-no-sudo", "", F, "is 300, outside 30-235"),
    # the user waagent -deprovision+user deletes (ovf-env.xml)
    ("test_deprovision_deletes_admin_user", "lin-clean-copy", "", P, ""),
    ("test_deprovision_deletes_admin_user", "lin-no-agent", "", F,
     "/var/lib/waagent/ovf-env.xml is missing on rg-checks/lin-no-agent: `waagent -deprovision+user` "
     "would delete no user"),
    ("test_deprovision_deletes_admin_user", "lin-old-agent", "", F,
     "waagent cannot read the user from /var/lib/waagent/ovf-env.xml on rg-checks/lin-old-agent (ParseError"),
    ("test_deprovision_deletes_admin_user", "lin-ovf-stale", "", F,
     "([ProtocolError] Failed to validate OVF: PlatformSettingsSection not found): `waagent "
     "-deprovision+user` would print 'ovf-env.xml is not found', skip deleting the user"),
    ("test_deprovision_deletes_admin_user", "lin-ovf-other-user", "", F,
     "names user 'builder', but osProfile.adminUsername is 'azureuser'"),
]
# fmt: on


@pytest.mark.parametrize(
    ("check", "vm", "item", "outcome", "message"),
    EXPECTED,
    ids=[f"{c}-{vm}{'-' + i if i else ''}-{o}" for c, vm, i, o, _ in EXPECTED],
)
def test_check_outcome_and_message(
    fleet: Run, check: str, vm: str, item: str, outcome: str, message: str
) -> None:
    case_id = node(fleet, check, vm, item)
    assert fleet.outcomes().get(case_id) == outcome, f"{case_id}: {fleet.outcomes().get(case_id)}"
    recorded = verdict_cases(fleet, vm)[case_id]
    if outcome == "passed":
        assert recorded["outcome"] == "passed" and recorded["message"] == ""
        assert recorded["evidence"], f"{case_id}: a passing check still records what it saw"
    else:
        assert message in recorded["message"], recorded["message"]
        assert "\n" not in recorded["message"]


def test_every_check_passes_somewhere_and_fails_somewhere(fleet: Run) -> None:
    by_check: dict[str, set[str]] = defaultdict(set)
    for case_id, outcome in fleet.outcomes().items():
        assert not case_id.startswith((SCAN_MODULE, CAPTURE_MODULE)), "tested on its own"
        by_check[case_id.split("::", 1)[1].split("[", 1)[0]].add(outcome)
    assert set(by_check) == {check for check, *_ in EXPECTED}, "a check has no row in EXPECTED"
    for check, outcomes in sorted(by_check.items()):
        assert "passed" in outcomes, f"{check} passed nowhere"
        assert "failed" in outcomes, f"{check} failed nowhere"


def test_each_finding_says_what_where_how_to_fix_and_the_doc(fleet: Run) -> None:
    texts = findings(fleet)
    assert len(texts) >= 50
    for case_id, text in texts.items():
        lines = text.splitlines()
        assert len(lines) == 4, f"{case_id}: {text}"
        assert lines[1].startswith("  where: ") and lines[1].strip() != "where:", case_id
        assert lines[2].startswith("  fix:   ") and len(lines[2]) > 20, case_id
        assert re.match(r"  doc:   .*https://learn\.microsoft\.com/", lines[3]), case_id


def test_findings_and_evidence_name_what_was_examined(fleet: Run) -> None:
    audit = {vm["vm"]: {c["case_id"]: c for c in vm["checks"]} for vm in fleet.audit()["vms"]}

    def seen(vm: str, check: str, item: str = "") -> str:
        return " | ".join(audit[f"{RG}/{vm}"][node(fleet, check, vm, item)]["evidence"])

    # the lineage, and whether its source still exists
    assert (
        "disk lin-clean-copy-osdisk (Copy) → snapshot snap-lin-golden (Copy) → disk lin-golden-osdisk "
        "(FromImage): a copy of disk lin-golden-osdisk (unattached), which still exists"
        in seen("lin-clean-copy", "test_vm_is_a_copy")
    )
    assert (
        "disk win-restore-copy-osdisk (Restore) → disk restore point win-golden-os → disk win-golden-osdisk"
        in seen("win-restore-copy", "test_vm_is_a_copy")
    )
    retired = "→ disk lin-retired-osdisk [deleted]: its source disk lin-retired-osdisk no longer exists"
    assert retired in seen("lin-old-agent", "test_vm_is_a_copy")
    assert "tagged imageready-copy-of=win-golden (evidence only)" in seen("win-roles-ok", "test_vm_is_a_copy")
    # server-side encryption is fine and says so
    assert "no Azure Disk Encryption; SSE with a customer-managed key (fine)" in seen(
        "win-restore-copy", "test_disk_not_ade_encrypted", "win-restore-copy-osdisk"
    )
    assert "Azure Disk Encryption enabled" in seen(
        "lin-old-agent", "test_disk_not_ade_encrypted", "lin-old-agent-osdisk"
    )
    removed = seen("win-roles-ok", "test_no_stale_answer_files").split("removed by the sysprep step: ")[-1]
    assert "C:\\Windows\\System32\\Sysprep\\Unattend.xml" in removed
    # the findings' full text names the fix
    texts = findings(fleet)
    assert (
        "fix:   Set Provisioning.DeleteRootPassword=y in /etc/waagent.conf."
        in texts[
            node(
                fleet, "test_waagent_deprovision_setting", "lin-old-agent", "Provisioning.DeleteRootPassword"
            )
        ]
    )
    assert (
        "fix:   Disable-BitLocker -MountPoint 'D:'"
        in texts[node(fleet, "test_bitlocker_volume_decrypted", "win-sealed", "D")]
    )


@pytest.mark.parametrize(
    ("vm", "reason"),
    [
        (
            "win-deallocated",
            f"{RG}/win-deallocated is deallocated: its guest can be checked only while it runs",
        ),
        (
            "win-generalized",
            f"{RG}/win-generalized is deallocated and generalized: its guest can never be checked again",
        ),
        ("ghost", f"VM {RG}/ghost not found in subscription"),
    ],
    ids=["deallocated", "generalized", "not-found"],
)
def test_a_vm_that_cannot_be_checked_gets_one_clear_reason(fleet: Run, vm: str, reason: str) -> None:
    verdict = fleet.verdict(f"{RG}/{vm}")
    assert verdict["green"] is False
    blocked = [c for c in verdict["checks"] if c["outcome"] not in ("passed", "not_applicable")]
    # the target-state check says it in one line; what cannot be judged errors with that same reason
    assert any(c["outcome"] == "failed" and c["check_id"].startswith("IR-TGT-") for c in blocked)
    errored = [c["message"] for c in blocked if c["outcome"] == "error"]
    assert len(errored) >= 10 and all(reason in message for message in errored), set(errored)
    assert all("\n" not in c["message"] and "Traceback" not in c["message"] for c in blocked)


def test_clean_copies_are_all_green(azsim: Azsim, tmp_path: Path) -> None:
    """`pytest --vm` on a clean Linux copy and a clean Windows copy: the whole policy (the scan
    included) and the actions' plan, all green."""
    run = harness(azsim, *vm_args(*CLEAN_COPIES), report_dir=tmp_path / "clean")
    assert run.returncode == exitcodes.GREEN, run.output[-3000:]
    outcomes = run.outcomes()
    for vm in CLEAN_COPIES:
        verdict = run.verdict(vm)
        assert verdict["green"] is True
        cases = verdict["checks"]
        assert {c["case_id"].split("::")[0] for c in cases} >= {SCAN_MODULE, "checks/test_provenance.py"}
        assert all(c["outcome"] in ("passed", "not_applicable") for c in cases), [
            (c["case_id"], c["outcome"], c["message"]) for c in cases if c["outcome"] != "passed"
        ]
        applicable = [c for c in cases if c["outcome"] == "passed"]
        assert all(outcomes[c["case_id"]] == "passed" for c in applicable)
    assert "failed" not in outcomes.values() and "error" not in outcomes.values()


def test_collected_ids_read_as_findings(azsim: Azsim, tmp_path: Path) -> None:
    run = harness(
        azsim, "--co", "-q", *vm_args("win-dc-original", "lin-old-agent"), report_dir=tmp_path / "co"
    )
    assert run.returncode == exitcodes.GREEN, run.output[-2000:]
    ids = set(run.stdout.split())
    for expected in (
        "checks/test_server_roles.py::test_server_role_supported"
        "[rg-checks/win-dc-original-AD-Domain-Services]",
        "checks/test_server_roles.py::test_server_role_supported[rg-checks/win-dc-original-Web-Server]",
        "checks/test_encryption.py::test_disk_not_ade_encrypted"
        "[rg-checks/lin-old-agent-lin-old-agent-osdisk]",
        "checks/test_encryption.py::test_no_luks_volume[rg-checks/lin-old-agent-data_crypt]",
        "checks/test_linux_readiness.py::test_no_swap_on_os_disk[rg-checks/lin-old-agent-swapfile]",
        "checks/test_linux_readiness.py::test_waagent_deprovision_setting"
        "[rg-checks/lin-old-agent-Provisioning.DeleteRootPassword]",
        "checks/test_target_state.py::test_vm_running[rg-checks/win-dc-original]",
    ):
        assert expected in ids, expected
    # a check for the other OS is one case per VM, not one per item it would examine
    assert "checks/test_server_roles.py::test_server_role_supported[rg-checks/lin-old-agent]" in ids


def sudo_facts_runs(azsim: Azsim, vm: str) -> int:
    """How many times the facts script ran as root on ``vm``: the scenario makes sudo log each
    command to /var/log/sudo.log, one line each, read here over our own SSH connection."""
    addresses = json.loads(Path(azsim.env["IMAGEREADY_GUEST_ADDRESSES"]).read_text())
    log = azsim.admin_run(addresses[vm], vm, "cat /var/log/sudo.log")
    return sum("imageready Linux facts (schema" in line for line in log.splitlines())


def windows_scripts_run(azsim: Azsim, vm: str) -> int:
    return int(azsim.status()[vm]["guest"]["summary"]["scripts_run"])


# what the facts of each clean copy cost in ARM reads (operation and the resource's last path segments)
FACTS_READS = {
    f"{RG}/lin-clean-copy": [
        "get virtualMachines/lin-clean-copy",
        "getDisk disks/lin-clean-copy-osdisk",
        "getDisk disks/lin-clean-copy-data0",
        "getSnapshot snapshots/snap-lin-golden",
        "getDisk disks/lin-golden-osdisk",
        "listExtensions lin-clean-copy/extensions",
    ],
    f"{RG}/win-clean-copy": [
        "get virtualMachines/win-clean-copy",
        "getDisk disks/win-clean-copy-osdisk",
        "getSnapshot snapshots/snap-win-golden",
        "getDisk disks/win-golden-osdisk",
        "listExtensions win-clean-copy/extensions",
    ],
}


def test_facts_cost_fixed_arm_reads_and_one_guest_round_trip(azsim: Azsim, tmp_path: Path) -> None:
    """One check module or the whole policy: per VM the same ARM reads and one facts run on the
    guest. (The audit reads each VM once more at the end: its final state.) The VM is read
    first; its disks and extensions then go together, the lineage hop by hop; all of one VM's
    facts reads carry one correlation id, and no other VM's."""
    linux, windows = CLEAN_COPIES
    for selection in (["checks/test_target_state.py"], list(WITHOUT_SCAN)):
        seq = azsim.last_seq()
        trips = {linux: sudo_facts_runs(azsim, linux), windows: windows_scripts_run(azsim, windows)}
        run = harness(azsim, *selection, *vm_args(*CLEAN_COPIES), report_dir=tmp_path / str(seq))
        assert run.returncode in (exitcodes.GREEN, exitcodes.RED_CHECKS), run.output[-2000:]
        assert len(run.outcomes()) >= (10 if len(selection) == 1 else 50), selection
        log = [r for r in azsim.requests() if r.get("kind") == "arm" and int(r["seq"]) > seq]
        reads = [f"{r['operation']} {'/'.join(r['path'].split('/')[-2:])}" for r in log]
        correlations = set()
        for vm, expected in FACTS_READS.items():
            got = [read for read in reads if read in expected]
            assert got[0] == got[-1] == expected[0], (vm, selection, got)
            assert sorted(got[1:-1]) == sorted(expected[1:]), (vm, selection, got)
            lineage = [read for read in got if "golden" in read]
            assert lineage[0].startswith("getSnapshot"), (vm, lineage)  # hop by hop
            facts_reads = [r for r, read in zip(log, reads, strict=True) if read in expected][:-1]
            correlations.add(frozenset(r["correlation_id"] for r in facts_reads))
        assert all(len(ids) == 1 for ids in correlations) and len(correlations) == 2, correlations
        assert len(reads) == sum(len(expected) + 1 for expected in FACTS_READS.values()), reads
        assert sudo_facts_runs(azsim, linux) - trips[linux] == 1, selection
        assert windows_scripts_run(azsim, windows) - trips[windows] == 1, selection

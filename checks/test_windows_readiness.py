"""Windows readiness: each case is a public failure mode of Sysprep or of an image made by it."""

from __future__ import annotations

from typing import Any

import pytest

from checks import _docs
from imageready.checking import evidence, finding
from imageready.facts.view import FactsView
from imageready.target import VmRef

# what our sysprep step removes before running sysprep: all of C:\Windows\Panther and this file
REMOVED_BY_ACTION = (r"c:\windows\panther" + "\\", r"c:\windows\system32\sysprep\unattend.xml")


def removed_by_action(path: str) -> bool:
    lower = path.lower()
    return lower.startswith(REMOVED_BY_ACTION[0]) or lower == REMOVED_BY_ACTION[1]


@pytest.mark.check(
    id="IR-WIN-001",
    title="No reboot pending",
    severity="high",
    os="Windows",
    doc=_docs.SYSPREP_OVERVIEW,
)
def test_no_pending_reboot(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    pending = guest_facts["pending_reboot"]
    is_pending = pending.need("pending", bool)
    evidence(request, f"{vm.key}: pending reboot {is_pending}", dict(pending.raw))
    if is_pending:
        reasons = [str(r) for r in pending.optional("reasons", list) or []] or ["unknown reason"]
        finding(
            f"{vm.key} has a reboot pending ({', '.join(reasons)}); "
            "Sysprep fails or generalizes a half-updated system",
            where=f"{vm.key}: registry (CBS, Windows Update, PendingFileRenameOperations)",
            fix="Restart the VM, let updates finish, and run the checks again.",
            doc=_docs.SYSPREP_OVERVIEW,
        )


@pytest.mark.check(
    id="IR-WIN-002",
    title="Not joined to a domain",
    severity="high",
    os="Windows",
    doc=_docs.SYSPREP_DOMAIN,
)
def test_not_domain_joined(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    domain = guest_facts["domain"]
    joined = domain.need("part_of_domain", bool)
    name = domain.need("domain", str)
    evidence(request, f"{vm.key}: part of domain {joined} ({name})")
    if joined:
        finding(
            f"{vm.key} is joined to the domain {name}: Sysprep /generalize removes it "
            "from the domain and every VM from the image would need rejoining",
            where=f"{vm.key}: Win32_ComputerSystem.PartOfDomain",
            fix="Remove the VM from the domain (Remove-Computer) and restart; join deployed VMs with "
            "an extension or unattend instead.",
            doc=_docs.SYSPREP_DOMAIN,
        )


@pytest.mark.check(
    id="IR-WIN-003",
    title="No Appx package installed for a user but not provisioned for all users",
    severity="critical",
    os="Windows",
    doc=_docs.SYSPREP_APPX,
    each="appx_package",
)
def test_appx_provisioned_for_all_users(vm: VmRef, appx_package: Any, request: pytest.FixtureRequest) -> None:
    if not isinstance(appx_package, FactsView):
        evidence(request, f"{vm.key}: every installed Appx package is provisioned for all users")
        return
    name, user = appx_package.need("name", str), appx_package.need("user", str)
    finding(
        f"Appx package {name} is installed for user {user} but not provisioned for all users: "
        "Sysprep fails with 0x80073cf2",
        where=f"{vm.key}: Get-AppxPackage -AllUsers",
        fix=f"Remove-AppxPackage -Package <{name} full name> -User {user} (or remove it for all users) "
        "before generalizing.",
        doc=_docs.SYSPREP_APPX,
    )


@pytest.mark.check(
    id="IR-WIN-004",
    title="Not an in-place upgraded installation",
    severity="critical",
    os="Windows",
    doc=_docs.SYSPREP_OVERVIEW,
)
def test_not_upgraded(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    os_facts = guest_facts["os"]
    upgraded = os_facts.need("upgraded", bool)
    caption = os_facts.need("caption", str)
    evidence(request, f"{vm.key}: {caption} {os_facts.need('version', str)}, upgraded {upgraded}")
    if upgraded:
        finding(
            f"{vm.key} was upgraded in place to {caption}: Sysprep does not support "
            "generalizing an upgraded installation",
            where=f"{vm.key}: HKLM\\SYSTEM\\Setup\\Upgrade",
            fix="Build the image from a clean installation of this Windows version.",
            doc=_docs.SYSPREP_OVERVIEW,
        )


@pytest.mark.check(
    id="IR-WIN-005",
    title="Generalize count remaining",
    severity="critical",
    os="Windows",
    doc=_docs.SYSPREP_OVERVIEW,
)
def test_generalize_count_remaining(
    vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest
) -> None:
    # null: slmgr could not say, so whether sysprep /generalize can succeed is unknown
    count = guest_facts.need("generalize_count", int)
    evidence(request, f"{vm.key}: remaining generalize (rearm) count {count}")
    if count < 1:
        finding(
            f"{vm.key} has no generalize count left: Sysprep /generalize will fail",
            where=f"{vm.key}: slmgr /dlv remaining Windows rearm count",
            fix="Rebuild from an image that has not been generalized so often (or set SkipRearm in "
            "the image build).",
            doc=_docs.SYSPREP_OVERVIEW,
        )


@pytest.mark.check(
    id="IR-WIN-006",
    title="No answer file Sysprep would pick up",
    severity="high",
    os="Windows",
    doc=_docs.GENERALIZE,
)
def test_no_stale_answer_files(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    found = [str(p) for p in guest_facts.need("unattend_files", list)]
    panther = guest_facts["panther"]
    removed = [p for p in found if removed_by_action(p)]
    stale = [p for p in found if not removed_by_action(p)]
    evidence(
        request,
        f"{vm.key}: Panther present {panther.need('exists', bool)} ({panther.need('file_count', int)} "
        f"files, removed by the sysprep step); answer files: {', '.join(found) or 'none'}"
        + (f"; removed by the sysprep step: {', '.join(removed)}" if removed else ""),
    )
    if stale:
        finding(
            f"answer file(s) {', '.join(stale)} on {vm.key}: Sysprep picks them up, and a custom answer "
            "file is not supported for Azure images (they also often hold passwords)",
            where=f"{vm.key}: {', '.join(stale)}",
            fix="Delete them before generalizing (the sysprep step itself removes C:\\Windows\\Panther "
            "and C:\\Windows\\System32\\Sysprep\\unattend.xml).",
            doc=_docs.GENERALIZE,
        )


@pytest.mark.check(
    id="IR-WIN-007",
    title="Azure guest agent service running",
    severity="high",
    os="Windows",
    doc=_docs.WINDOWS_AGENT,
    each="agent_service",
)
def test_agent_service_running(vm: VmRef, agent_service: Any, request: pytest.FixtureRequest) -> None:
    name, installed = agent_service["name"], agent_service["installed"]
    if installed is None:
        evidence(request, f"{vm.key}: service {name} is not installed")
        status = start_type = None
    else:
        status, start_type = installed.need("status", str), installed.need("start_type", str)
        evidence(request, f"{vm.key}: service {name}: {status}, {start_type}")
    if status != "Running" or start_type == "Disabled":
        finding(
            f"service {name} on {vm.key} is {status or 'missing'} "
            f"({start_type or 'not installed'}): VMs from the image would not report ready to Azure",
            where=f"{vm.key}: Get-Service {name}",
            fix="Install or repair the Windows Azure guest agent and set the service to Automatic.",
            doc=_docs.WINDOWS_AGENT,
        )


@pytest.mark.check(
    id="IR-WIN-008",
    title="CD/DVD-ROM driver service enabled",
    severity="medium",
    os="Windows",
    doc=_docs.WINDOWS_PREPARE,
)
def test_cdrom_enabled(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    start_type = guest_facts.need("services.cdrom.start_type", str)
    evidence(request, f"{vm.key}: cdrom service start type {start_type}")
    if start_type == "Disabled":
        finding(
            f"the CD/DVD-ROM service (cdrom) on {vm.key} is disabled: provisioning reads the "
            "configuration ISO through it",
            where=f"{vm.key}: HKLM\\SYSTEM\\CurrentControlSet\\Services\\cdrom Start",
            fix="Set-ItemProperty HKLM:\\SYSTEM\\CurrentControlSet\\Services\\cdrom -Name Start -Value 1",
            doc=_docs.WINDOWS_PREPARE,
        )


@pytest.mark.check(
    id="IR-WIN-009",
    title="No Sysprep external provider in a failed state",
    severity="high",
    os="Windows",
    doc=_docs.SYSPREP_OVERVIEW,
)
def test_no_failed_sysprep_providers(
    vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest
) -> None:
    failed = guest_facts.need("sysprep_providers_failed", list)
    evidence(request, f"{vm.key}: failed Sysprep providers: {len(failed)}", list(failed.raw))
    if failed:
        names = ", ".join(str(p.optional("name", str)) for p in failed)
        finding(
            f"Sysprep external provider(s) in a failed state on {vm.key}: {names}",
            where=f"{vm.key}: HKLM\\SYSTEM\\Setup\\Status\\SysprepStatus",
            fix="Repair or remove the failing provider's application, check "
            "C:\\Windows\\System32\\Sysprep\\Panther\\setuperr.log, and restart.",
            doc=_docs.SYSPREP_OVERVIEW,
        )


@pytest.mark.check(
    id="IR-WIN-010",
    title="Image state is complete (not already sealed)",
    severity="critical",
    os="Windows",
    doc=_docs.SYSPREP_OVERVIEW,
)
def test_image_state_complete(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    state = guest_facts.need("image_state", str)
    evidence(request, f"{vm.key}: ImageState {state}")
    if state != "IMAGE_STATE_COMPLETE":
        finding(
            f"{vm.key} has ImageState {state}, not IMAGE_STATE_COMPLETE: Sysprep already ran or a "
            "previous run left the installation half-sealed",
            where=f"{vm.key}: HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Setup\\State",
            fix="Start from a fresh copy of the source VM.",
            doc=_docs.SYSPREP_OVERVIEW,
        )

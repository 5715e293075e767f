"""Linux readiness (Azure's generic Linux guide, Marketplace certification and LISA checks)."""

from __future__ import annotations

from typing import Any

import pytest

from checks import _docs
from imageready.checking import evidence, finding
from imageready.facts.view import FactsView
from imageready.target import VmRef

MIN_WAAGENT = (2, 2, 41)
CLIENT_ALIVE_RANGE = (30, 235)


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@pytest.mark.check(
    id="IR-LNX-001",
    title="waagent installed, version 2.2.41 or later",
    severity="critical",
    os="Linux",
    doc=_docs.LINUX_AGENT,
)
def test_waagent_installed(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    agent = guest_facts["waagent"]
    installed = agent.need("installed", bool)
    evidence(request, f"{vm.key}: waagent installed {installed}")
    if not installed:
        finding(
            f"waagent (WALinuxAgent) is not installed on {vm.key}: `waagent -deprovision+user` "
            "cannot run and VMs from the image would not provision",
            where=f"{vm.key}: PATH",
            fix="Install the distribution's walinuxagent/WALinuxAgent package.",
            doc=_docs.LINUX_AGENT,
        )
    path, version = agent.need("path", str), agent.need("version", str)
    evidence(request, f"{vm.key}: waagent {version} at {path}")
    if not _version(version) or _version(version) < MIN_WAAGENT:
        finding(
            f"waagent {version} on {vm.key} is older than {'.'.join(map(str, MIN_WAAGENT))}",
            where=f"{vm.key}: {path}",
            fix="Update the walinuxagent package.",
            doc=_docs.LINUX_AGENT,
        )


@pytest.mark.check(
    id="IR-LNX-002",
    title="waagent deprovisioning removes host keys and the root password",
    severity="high",
    os="Linux",
    doc=_docs.LINUX_AGENT,
    each="waagent_setting",
)
def test_waagent_deprovision_setting(vm: VmRef, waagent_setting: Any, request: pytest.FixtureRequest) -> None:
    key, value = waagent_setting["key"], waagent_setting["value"]  # value None: not in waagent.conf
    evidence(request, f"{vm.key}: /etc/waagent.conf {key}={value if value is not None else '(not set)'}")
    if str(value).lower() != "y":
        # waagent's built-in default for both settings is n
        setting = f"is {value!r}" if value is not None else "is not set (waagent's default: n)"
        finding(
            f"{key} {setting} in /etc/waagent.conf on {vm.key}, so deprovisioning leaves "
            + (
                "the SSH host keys shared by every VM from the image"
                if "Ssh" in key
                else "root's password hash in the image"
            ),
            where=f"{vm.key}: /etc/waagent.conf",
            fix=f"Set {key}=y in /etc/waagent.conf.",
            doc=_docs.LINUX_AGENT,
        )


@pytest.mark.check(
    id="IR-LNX-003",
    title="sudo works without a password for the connecting user",
    severity="critical",
    os="Linux",
    doc=_docs.GENERALIZE,
)
def test_sudo_nopasswd(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    user = guest_facts.need("user.name", str)
    nopasswd = guest_facts.need("sudo_nopasswd", bool)
    evidence(request, f"{vm.key}: `sudo -n true` as {user}: {nopasswd}")
    if not nopasswd:
        finding(
            f"`sudo -n` does not work for {user} on {vm.key}: the deprovision step runs "
            "`sudo waagent -deprovision+user` non-interactively",
            where=f"{vm.key}: /etc/sudoers.d",
            fix=f"Allow {user} passwordless sudo for the build.",
            doc=_docs.GENERALIZE,
        )


@pytest.mark.check(
    id="IR-LNX-004",
    title="cloud-init finished (or absent)",
    severity="high",
    os="Linux",
    doc=_docs.LINUX_GENERIC,
)
def test_cloud_init_settled(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    ci = guest_facts["cloud_init"]
    installed = ci.need("installed", bool)
    if not installed:
        evidence(request, f"{vm.key}: cloud-init not installed")
        return
    disabled = ci.need("disabled", bool)
    # null status: `cloud-init status` could not say; only a disabled cloud-init needs none
    status = ci.optional("status", str) if disabled else ci.need("status", str)
    evidence(request, f"{vm.key}: cloud-init installed, status {status}, disabled {disabled}")
    if not disabled and status not in ("done", "disabled"):
        finding(
            f"cloud-init on {vm.key} is {status}: an image taken now carries a half-applied or failed "
            "configuration",
            where=f"{vm.key}: cloud-init status",
            fix="Wait for `cloud-init status --wait`, fix any error, then run `cloud-init clean --logs`.",
            doc=_docs.LINUX_GENERIC,
        )


@pytest.mark.check(
    id="IR-LNX-005",
    title="No swap on the OS disk",
    severity="medium",
    os="Linux",
    doc=_docs.LINUX_GENERIC,
    each="swap",
)
def test_no_swap_on_os_disk(vm: VmRef, swap: Any, request: pytest.FixtureRequest) -> None:
    if not isinstance(swap, FactsView):
        evidence(request, f"{vm.key}: no active swap")
        return
    path, on_os_disk = swap.need("path", str), swap.need("on_os_disk", bool)
    evidence(
        request,
        f"{vm.key}: swap {path} ({swap.need('type', str)}, {swap.need('size_kb', int)} kB), "
        f"on OS disk {on_os_disk}",
    )
    if on_os_disk:
        finding(
            f"swap {path} is on the OS disk of {vm.key}",
            where=f"{vm.key}: /proc/swaps",
            fix="Remove it (swapoff, /etc/fstab) and let waagent or cloud-init create swap on the "
            "resource disk (ResourceDisk.EnableSwap=y).",
            doc=_docs.LINUX_GENERIC,
        )


@pytest.mark.check(
    id="IR-LNX-006",
    title="sshd ClientAliveInterval between 30 and 235",
    severity="low",
    os="Linux",
    doc=_docs.MARKETPLACE_CERT,
)
def test_client_alive_interval(vm: VmRef, guest_facts: FactsView, request: pytest.FixtureRequest) -> None:
    sshd = guest_facts["sshd"]
    # null: neither `sshd -T` nor the configuration files gave a value, so it is unknown
    value = sshd.need("client_alive_interval", int)
    evidence(request, f"{vm.key}: ClientAliveInterval {value} ({sshd.need('source', str)})")
    low, high = CLIENT_ALIVE_RANGE
    if not low <= value <= high:
        problem = "0 (sshd's default: no keepalives)" if value == 0 else f"{value}, outside {low}-{high}"
        finding(
            f"sshd ClientAliveInterval on {vm.key} is {problem}",
            where=f"{vm.key}: /etc/ssh/sshd_config",
            fix="Set ClientAliveInterval 180 and reload sshd.",
            doc=_docs.MARKETPLACE_CERT,
        )

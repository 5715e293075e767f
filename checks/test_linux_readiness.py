"""Linux readiness (Azure's generic Linux guide, Marketplace certification and LISA checks)."""

from __future__ import annotations

from typing import Any

import pytest

from checks import _docs
from imageready.checking import evidence, finding
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
def test_waagent_installed(vm: VmRef, guest_facts: dict[str, Any], request: pytest.FixtureRequest) -> None:
    agent = guest_facts.get("waagent") or {}
    version = str(agent.get("version") or "")
    evidence(
        request,
        f"{vm.key}: waagent installed {agent.get('installed')} at {agent.get('path')}, "
        f"version {version or 'unknown'}",
    )
    if not agent.get("installed"):
        finding(
            f"waagent (WALinuxAgent) is not installed on {vm.key}: `waagent -deprovision+user` "
            "cannot run and VMs from the image would not provision",
            where=f"{vm.key}: PATH",
            fix="Install the distribution's walinuxagent/WALinuxAgent package.",
            doc=_docs.LINUX_AGENT,
        )
    if _version(version) < MIN_WAAGENT:
        finding(
            f"waagent {version or '(unknown version)'} on {vm.key} is older than "
            f"{'.'.join(map(str, MIN_WAAGENT))}",
            where=f"{vm.key}: {agent.get('path')}",
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
    key, value = waagent_setting["key"], waagent_setting["value"]
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
def test_sudo_nopasswd(vm: VmRef, guest_facts: dict[str, Any], request: pytest.FixtureRequest) -> None:
    user = (guest_facts.get("user") or {}).get("name")
    evidence(request, f"{vm.key}: `sudo -n true` as {user}: {guest_facts.get('sudo_nopasswd')}")
    if not guest_facts.get("sudo_nopasswd"):
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
def test_cloud_init_settled(vm: VmRef, guest_facts: dict[str, Any], request: pytest.FixtureRequest) -> None:
    ci = guest_facts.get("cloud_init") or {}
    evidence(
        request,
        f"{vm.key}: cloud-init installed {ci.get('installed')}, status {ci.get('status')}, "
        f"disabled {ci.get('disabled')}",
    )
    if ci.get("installed") and not ci.get("disabled") and ci.get("status") not in ("done", "disabled"):
        finding(
            f"cloud-init on {vm.key} is {ci.get('status') or 'in an unknown state'}: an image taken "
            "now carries a half-applied or failed configuration",
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
    if not isinstance(swap, dict):
        evidence(request, f"{vm.key}: no active swap")
        return
    evidence(
        request,
        f"{vm.key}: swap {swap.get('path')} ({swap.get('type')}, {swap.get('size_kb')} kB), "
        f"on OS disk {swap.get('on_os_disk')}",
    )
    if swap.get("on_os_disk"):
        finding(
            f"swap {swap.get('path')} is on the OS disk of {vm.key}",
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
def test_client_alive_interval(
    vm: VmRef, guest_facts: dict[str, Any], request: pytest.FixtureRequest
) -> None:
    sshd = guest_facts.get("sshd") or {}
    value = sshd.get("client_alive_interval")
    evidence(request, f"{vm.key}: ClientAliveInterval {value} ({sshd.get('source')})")
    low, high = CLIENT_ALIVE_RANGE
    if value is None or not low <= int(value) <= high:
        if value is None:
            problem = "unknown (neither `sshd -T` nor the config files gave a value)"
        elif int(value) == 0:
            problem = "0 (sshd's default: no keepalives)"
        else:
            problem = f"{value}, outside {low}-{high}"
        finding(
            f"sshd ClientAliveInterval on {vm.key} is {problem}",
            where=f"{vm.key}: /etc/ssh/sshd_config",
            fix="Set ClientAliveInterval 180 and reload sshd.",
            doc=_docs.MARKETPLACE_CERT,
        )

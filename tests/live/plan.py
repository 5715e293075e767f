"""What one run of the live suite creates, derived from its configuration alone (no network).

The same plan drives the run (``tests.live.lab``), the cost guard (it counts the VMs before the
first request) and the dry run (it is printed, and nothing else happens).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from tests.live.config import LiveConfig

#: the Marketplace images the originals are made from: Gen2 images that support Trusted Launch
LINUX_IMAGE = {"publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"}
WINDOWS_IMAGE = {
    "publisher": "MicrosoftWindowsServer",
    "offer": "WindowsServer",
    "sku": "2022-datacenter-azure-edition",
    "version": "latest",
}
LINUX_ADMIN = "azureuser"
WINDOWS_ADMIN = "imageadmin"
#: every VM is Trusted Launch, Azure's default for new Gen2 VMs in its portal and CLI: a managed
#: image of it is refused (IR-CAP-001), so the suite captures to a gallery
SECURITY_PROFILE = {
    "securityType": "TrustedLaunch",
    "uefiSettings": {"secureBootEnabled": True, "vTpmEnabled": True},
}
#: tags on the resource group: what the sweeper looks for
TAG_RUN = "imageready-live"
TAG_PREFIX = "imageready-live-prefix"
TAG_EXPIRES = "imageready-live-expires"


@dataclass(frozen=True)
class Machine:
    """One OS's pair: the original from the Marketplace and its copy."""

    os: str
    original: str
    copy: str
    size: str
    image: dict[str, str]
    admin: str

    @property
    def urn(self) -> str:
        return ":".join(self.image[k] for k in ("publisher", "offer", "sku", "version"))


@dataclass(frozen=True)
class Planned:
    kind: str
    name: str
    detail: str


@dataclass(frozen=True)
class LivePlan:
    config: LiveConfig
    machines: tuple[Machine, ...]

    @property
    def resource_group(self) -> str:
        return self.config.resource_group

    @property
    def gallery(self) -> str:
        # gallery names take letters, digits, '_' and '.', and are unique in a subscription
        return f"gal_live_{self.config.run_id}"

    @property
    def vm_count(self) -> int:
        return 2 * len(self.machines)

    def tags(self) -> dict[str, str]:
        return {
            TAG_RUN: self.config.run_id,
            TAG_PREFIX: self.config.prefix,
            TAG_EXPIRES: self.config.expires.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }

    def capture_as(self) -> str:
        """One image definition per copy, named after it (``{vm}``), in this run's gallery."""
        return f"gallery:{self.gallery}/{{vm}}/1.0.0"

    def resources(self) -> list[Planned]:
        c = self.config
        found = [
            Planned("resource group", c.resource_group, f"{c.location}, tags {self.tags()}"),
            Planned("gallery", self.gallery, "Azure Compute Gallery for the captures"),
        ]
        for m in self.machines:
            found += [
                Planned(
                    "image definition",
                    f"{self.gallery}/{m.copy}",
                    f"{m.os}, Generalized, V2, x64, TrustedLaunch",
                ),
                Planned("network interface", f"{m.original}-nic", f"in {c.subnet_id}"),
                Planned("virtual machine", m.original, f"{m.size}, {m.os}, {m.urn}, Trusted Launch"),
                Planned("managed disk", f"{m.original} OS disk", "from the image (Standard SSD)"),
                Planned("snapshot", f"{m.copy}-snap", f"of {m.original}'s OS disk"),
                Planned("managed disk", f"{m.copy}-osdisk", "from the snapshot"),
                Planned("network interface", f"{m.copy}-nic", f"in {c.subnet_id}"),
                Planned("virtual machine", m.copy, f"{m.size}, attaching {m.copy}-osdisk"),
                Planned("gallery image version", f"{self.gallery}/{m.copy}/1.0.0", f"captured from {m.copy}"),
            ]
        return found

    def guard(self) -> None:
        """The cost guard on count: refuse a plan with more VMs than allowed, before anything."""
        if self.vm_count > self.config.max_vms:
            raise LiveBudgetError(
                f"the plan makes {self.vm_count} VMs, more than IMAGEREADY_LIVE_MAX_VMS={self.config.max_vms}"
            )

    def render(self) -> str:
        c = self.config
        lines = [
            f"imageready live suite: plan for run {c.run_id} against {c.target} "
            f"(subscription {c.subscription}, {c.location})",
            f"  cost guard: {self.vm_count} VMs (limit {c.max_vms}), {c.max_minutes} minutes "
            f"(everything is deleted by then; the sweeper removes what a crashed run left after "
            f"{self.tags()[TAG_EXPIRES]})",
        ]
        lines += [f"  create {p.kind:<22} {p.name}: {p.detail}" for p in self.resources()]
        lines.append(f"  then delete resource group {c.resource_group} and everything in it")
        return "\n".join(lines)


class LiveBudgetError(RuntimeError):
    """The cost guard refused: too many VMs, or past the time allowed."""


class CostGuard:
    """The cost guard of one run, on count and on time: a VM beyond the plan's count (or
    IMAGEREADY_LIVE_MAX_VMS) is refused before its request, and past IMAGEREADY_LIVE_MAX_MINUTES
    every wait stops so that the run goes on to delete what it made."""

    def __init__(self, plan: LivePlan) -> None:
        plan.guard()
        self.plan = plan
        self.vms_admitted: list[str] = []

    def admit_vm(self, name: str) -> None:
        """Count a VM about to be created; refuse it beyond the plan."""
        limit = min(self.plan.vm_count, self.plan.config.max_vms)
        if len(self.vms_admitted) >= limit:
            raise LiveBudgetError(
                f"refusing VM {name}: the run may create {limit} ({', '.join(self.vms_admitted)} made)"
            )
        self.vms_admitted.append(name)

    def seconds_left(self, now: dt.datetime | None = None) -> float:
        """Seconds before the time limit; past it, LiveBudgetError."""
        now = now or dt.datetime.now(dt.UTC)
        left = (self.plan.config.expires - now).total_seconds()
        if left <= 0:
            raise LiveBudgetError(
                f"past the time limit of {self.plan.config.max_minutes} minutes: stopping and cleaning up"
            )
        return left


def build_plan(config: LiveConfig) -> LivePlan:
    return LivePlan(
        config,
        (
            Machine("Linux", "lin-orig", "lin-copy", config.linux_size, LINUX_IMAGE, LINUX_ADMIN),
            Machine("Windows", "win-orig", "win-copy", config.windows_size, WINDOWS_IMAGE, WINDOWS_ADMIN),
        ),
    )

"""What the live contract suite runs against, from the environment (docs/live-tests.md).

Nothing here touches the network: a configuration is read and checked, and the plan
(``tests.live.plan``) is derived from it, so that a dry run can print what it would create and
exit without a single request.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

#: the variables the suite reads (all documented in docs/live-tests.md)
LIVE = "IMAGEREADY_LIVE"
SUBSCRIPTION = "IMAGEREADY_LIVE_SUBSCRIPTION"
PREFIX = "IMAGEREADY_LIVE_RG_PREFIX"
LOCATION = "IMAGEREADY_LIVE_LOCATION"
SUBNET = "IMAGEREADY_LIVE_SUBNET_ID"
MAX_VMS = "IMAGEREADY_LIVE_MAX_VMS"
MAX_MINUTES = "IMAGEREADY_LIVE_MAX_MINUTES"
DRY_RUN = "IMAGEREADY_LIVE_DRY_RUN"
LINUX_SIZE = "IMAGEREADY_LIVE_LINUX_SIZE"
WINDOWS_SIZE = "IMAGEREADY_LIVE_WINDOWS_SIZE"

# a resource group name: letters, digits, '-', '_', '.', '(', ')'; the run id and a suffix follow
_PREFIX = re.compile(r"^[A-Za-z0-9_.()-]{1,40}$")
_SUBNET = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/virtualNetworks/[^/]+"
    r"/subnets/[^/]+$",
    re.IGNORECASE,
)


class LiveConfigError(ValueError):
    """A live configuration that cannot be used; one line naming the variable."""


@dataclass(frozen=True)
class LiveConfig:
    """One run of the live suite: where, how much, and whether it only plans."""

    #: "azure" (IMAGEREADY_LIVE=1) or "azsim" (the default: make test)
    target: str
    subscription: str
    prefix: str
    location: str
    #: the subnet the VMs' NICs join; the runner must reach it (SSH 22, WinRM 5986)
    subnet_id: str
    max_vms: int
    max_minutes: int
    dry_run: bool
    linux_size: str = "Standard_B1s"
    windows_size: str = "Standard_B2s"
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    @property
    def resource_group(self) -> str:
        return f"{self.prefix}-{self.run_id}"

    @property
    def expires(self) -> dt.datetime:
        """When anything this run made counts as a leftover for the sweeper."""
        return self.started + dt.timedelta(minutes=self.max_minutes)

    @property
    def live(self) -> bool:
        return self.target == "azure"


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise LiveConfigError(f"{name}={raw!r}: expected a whole number") from None
    if not low <= value <= high:
        raise LiveConfigError(f"{name}={value}: expected {low} to {high}")
    return value


def from_env(env: Mapping[str, str] | None = None, *, azsim_subscription: str = "") -> LiveConfig:
    """The configuration of this run. Against Azure (IMAGEREADY_LIVE=1) the subscription, the
    resource-group prefix and the subnet are required; against azsim they default to what the
    suite's scenario (tests/scenarios/live.yaml) serves."""
    env = os.environ if env is None else env
    live = env.get(LIVE, "") == "1"
    subscription = env.get(SUBSCRIPTION, "") or (env.get("AZURE_SUBSCRIPTION_ID", "") if live else "")
    subscription = subscription or azsim_subscription
    prefix = env.get(PREFIX, "") or ("" if live else "rg-live")
    location = env.get(LOCATION, "") or "westeurope"
    subnet = env.get(SUBNET, "") or (
        ""
        if live
        else f"/subscriptions/{subscription}/resourceGroups/rg-live-net/providers/Microsoft.Network"
        "/virtualNetworks/vnet-live/subnets/default"
    )
    if live:
        for name, value in ((SUBSCRIPTION, subscription), (PREFIX, prefix), (SUBNET, subnet)):
            if not value:
                raise LiveConfigError(f"{name} is required with {LIVE}=1 (docs/live-tests.md)")
    if not re.match(r"^[0-9a-fA-F-]{36}$", subscription or ""):
        raise LiveConfigError(f"{SUBSCRIPTION}={subscription!r}: not a subscription id")
    if not _PREFIX.match(prefix):
        raise LiveConfigError(f"{PREFIX}={prefix!r}: 1-40 letters, digits, '-', '_', '.', '(' or ')'")
    if not re.match(r"^[a-z0-9]+$", location):
        raise LiveConfigError(f"{LOCATION}={location!r}: an Azure region name such as westeurope")
    if not _SUBNET.match(subnet):
        raise LiveConfigError(f"{SUBNET}={subnet!r}: not a subnet resource id")
    return LiveConfig(
        target="azure" if live else "azsim",
        subscription=subscription.lower(),
        prefix=prefix,
        location=location,
        subnet_id=subnet,
        max_vms=_int(env, MAX_VMS, 4, 1, 20),
        max_minutes=_int(env, MAX_MINUTES, 90, 10, 600),
        dry_run=env.get(DRY_RUN, "") == "1",
        linux_size=_size(env, LINUX_SIZE, "Standard_B1s"),
        windows_size=_size(env, WINDOWS_SIZE, "Standard_B2s"),
    )


def _size(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not re.match(r"^Standard_[A-Za-z0-9_]+$", value):
        raise LiveConfigError(f"{name}={value!r}: a VM size such as {default}")
    return value

"""Scenario files: load, validate, and turn into typed specs (schema: scenarios/README.md).

This module reads the top of a scenario (subscription, principal and its role definitions,
timings, faults, throttling, Marketplace images, guest addresses); the resource groups are read
by :mod:`azsim.scenario_resources`, every mapping through :class:`azsim.scenario_reader.Reader`.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from azsim.faults import Fault, FaultError, parse_fault
from azsim.scenario_reader import Reader, ScenarioError
from azsim.scenario_resources import ResourceGroupSpec, VmSpec, parse_resource_group
from azsim.throttling import Limits, ThrottlingError, parse_limits

__all__ = ["Principal", "Scenario", "ScenarioError", "load_scenario", "parse_scenario"]

DEFAULT_TENANT = "11111111-2222-3333-4444-555555555555"
DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
DEFAULT_CLIENT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
DEFAULT_OBJECT_ID = "99999999-8888-7777-6666-555555555555"
#: seconds each kind of operation takes unless the scenario says otherwise
DEFAULT_TIMINGS = {
    "deallocate": 0.2,
    "power_off": 0.2,
    "start": 0.2,
    "restart": 0.2,
    "run_command": 0.2,
    "create": 0.2,
    "delete": 0.2,
    # ARM waits this long for an operation to finish before answering 202 (see README)
    "settle": 0.5,
}


@dataclass(frozen=True)
class Principal:
    client_id: str
    object_id: str
    display_name: str
    denied_actions: tuple[str, ...]
    #: from `role_definitions` (Azure custom role JSON files): the actions granted, None = all
    allowed_actions: tuple[str, ...] | None = None
    not_actions: tuple[str, ...] = ()

    def may(self, action: str) -> bool:
        """Whether the principal's role definitions grant ``action`` (Azure's wildcards)."""
        wanted = action.lower()
        if wanted in {a.lower() for a in self.denied_actions}:
            return False
        if self.allowed_actions is None:
            return True
        granted = any(fnmatch.fnmatchcase(wanted, pattern.lower()) for pattern in self.allowed_actions)
        return granted and not any(fnmatch.fnmatchcase(wanted, p.lower()) for p in self.not_actions)


def _role_definitions(files: list[Any], base: Path, where: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Actions and NotActions of Azure custom role definition files (paths relative to the scenario)."""
    actions: list[str] = []
    not_actions: list[str] = []
    for entry in files:
        path = (base / str(entry)).resolve()
        try:
            role = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ScenarioError(f"{where}: role definition {entry}: {err}") from None
        actions += [str(a) for a in role.get("Actions") or role.get("actions") or []]
        not_actions += [str(a) for a in role.get("NotActions") or role.get("notActions") or []]
    return tuple(actions), tuple(not_actions)


@dataclass(frozen=True)
class MarketplaceImageSpec:
    """A platform image a VM may be created from, with what Azure shows of it (REST reference,
    Virtual Machine Images - Get: ``hyperVGeneration``, ``architecture``, the OS disk image)."""

    urn: str  # Publisher:Offer:Sku:Version ("latest" matches any requested version)
    os: str
    hyper_v_generation: str = "V2"
    architecture: str = "x64"
    size_gb: int = 30

    def matches(self, publisher: str, offer: str, sku: str, version: str) -> bool:
        mine = self.urn.lower().split(":")
        theirs = [publisher.lower(), offer.lower(), sku.lower(), version.lower()]
        return mine[:3] == theirs[:3] and (mine[3] == theirs[3] or "latest" in (mine[3], theirs[3]))


@dataclass(frozen=True)
class Scenario:
    source: str
    tenant: str
    subscription_id: str
    subscription_name: str
    principal: Principal
    guests: bool
    timings: dict[str, float]
    token_lifetime: int
    faults: tuple[Fault, ...]
    resource_groups: tuple[ResourceGroupSpec, ...]
    #: ``guest_addresses.swapped``: pairs of "rg/name" whose entries the address map the env
    #: file exports are exchanged (an operator's mistake; Azure has no part in it)
    swapped_addresses: tuple[tuple[str, str], ...] = ()
    #: platform images a VM may be created from (``marketplace:``); none: no VM from an image
    marketplace: tuple[MarketplaceImageSpec, ...] = ()
    #: ARM's request limits (azsim.throttling); Azure's own unless the scenario says otherwise
    throttling: Limits = field(default_factory=Limits)

    def vm_specs(self) -> list[tuple[ResourceGroupSpec, VmSpec]]:
        return [(rg, vm) for rg in self.resource_groups for vm in rg.vms]


def _vm_pair(item: Any, where: str, rgs: tuple[ResourceGroupSpec, ...]) -> tuple[str, str]:
    known = {f"{rg.name}/{vm.name}".lower() for rg in rgs for vm in rg.vms}
    if not isinstance(item, list) or len(item) != 2 or not all(isinstance(v, str) for v in item):
        raise ScenarioError(f"{where}: expected a pair [rg/name, rg/name]")
    for value in item:
        if value.lower() not in known:
            raise ScenarioError(f"{where}: {value!r} is not a VM of this scenario")
    if item[0].lower() == item[1].lower():
        raise ScenarioError(f"{where}: a VM cannot swap with itself")
    return item[0].lower(), item[1].lower()


def parse_scenario(data: Any, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate a loaded YAML document. Raises ScenarioError with the file and key path."""
    try:
        r = Reader(data if data is not None else {}, "")
        for key in r.data:
            if str(key).startswith("x-"):  # a place for YAML anchors, as in compose files
                r.skip(str(key))
        subscription = r.child("subscription")
        sub_id = subscription.guid("id", DEFAULT_SUBSCRIPTION)
        sub_name = subscription.text("name", "azsim")
        subscription.done()
        p = r.child("principal")
        roles = p.items("role_definitions")
        allowed, not_actions = (
            _role_definitions(roles, base_dir or Path.cwd(), p.where("role_definitions"))
            if roles
            else (None, ())
        )
        principal = Principal(
            client_id=p.guid("client_id", DEFAULT_CLIENT_ID),
            object_id=p.guid("object_id", DEFAULT_OBJECT_ID),
            display_name=p.text("display_name", "imageready-ci"),
            denied_actions=tuple(str(a) for a in p.items("denied_actions")),
            allowed_actions=allowed,
            not_actions=not_actions,
        )
        p.done()
        timings_reader = r.child("timings")
        timings = {key: timings_reader.number(key, default) for key, default in DEFAULT_TIMINGS.items()}
        timings_reader.done()
        faults = []
        for i, item in enumerate(r.items("faults")):
            try:
                faults.append(parse_fault(item, f"faults[{i}]"))
            except FaultError as err:
                raise ScenarioError(str(err)) from None
        try:
            throttling = parse_limits(r._get("throttling"), "throttling")
        except ThrottlingError as err:
            raise ScenarioError(str(err)) from None
        rgs = tuple(
            parse_resource_group(item, f"resource_groups[{i}]")
            for i, item in enumerate(r.items("resource_groups"))
        )
        images = []
        for i, item in enumerate(r.items("marketplace")):
            m = Reader(item, f"marketplace[{i}]")
            image = m.text("image")
            if len(image.split(":")) != 4:
                raise ScenarioError(f"{m.where('image')}: expected Publisher:Offer:Sku:Version: {image!r}")
            os_type = m.text("os", choices=("Linux", "Windows"))
            images.append(
                MarketplaceImageSpec(
                    urn=image,
                    os=os_type,
                    hyper_v_generation=m.text("hyper_v_generation", "V2", choices=("V1", "V2")),
                    architecture=m.text("architecture", "x64", choices=("x64", "Arm64")),
                    size_gb=m.integer("size_gb", 30 if os_type == "Linux" else 127, minimum=1),
                )
            )
            m.done()
        seen: set[str] = set()
        for rg in rgs:
            if rg.name.lower() in seen:
                raise ScenarioError(f"resource_groups: two resource groups named {rg.name!r}")
            seen.add(rg.name.lower())
        addresses = r.child("guest_addresses")
        swapped = tuple(
            _vm_pair(item, f"{addresses.where('swapped')}[{i}]", rgs)
            for i, item in enumerate(addresses.items("swapped"))
        )
        addresses.done()
        scenario = Scenario(
            source=source,
            tenant=r.guid("tenant", DEFAULT_TENANT),
            subscription_id=sub_id,
            subscription_name=sub_name,
            principal=principal,
            guests=r.text("guests", "all", choices=("all", "none")) == "all",
            timings=timings,
            token_lifetime=r.integer("token_lifetime", 3599, minimum=60),
            faults=tuple(faults),
            resource_groups=rgs,
            swapped_addresses=swapped,
            marketplace=tuple(images),
            throttling=throttling,
        )
        r.done()
    except ScenarioError as err:
        raise ScenarioError(f"{source}: {err}") from None
    return scenario


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ScenarioError(f"{path}: cannot read the scenario ({err.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ScenarioError(f"{path}: not valid YAML{where}") from None
    return parse_scenario(data, str(path), path.resolve().parent)

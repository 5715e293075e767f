"""Fixtures that checks and actions request. ``pytest --fixtures`` shows these docstrings."""

from __future__ import annotations

from typing import Any

import pytest

from imageready.categories import Category
from imageready.facts import FactsUnavailable, VmFacts
from imageready.facts.view import FactsView, guest_view, read_live
from imageready.gate import WaiverBook
from imageready.runstate import RunState, run_state
from imageready.target import VmRef


@pytest.fixture
def run(request: pytest.FixtureRequest) -> RunState:
    """The imageready run: targets, options (``run.apply``), gates, waivers, report directory."""
    return run_state(request.config)


@pytest.fixture
def facts(request: pytest.FixtureRequest, vm: VmRef) -> VmFacts:
    """Everything gathered about ``vm`` (Azure and guest, gathered once per run). A VM whose Azure
    facts could not be read makes the requesting case error with that one line."""
    gathered = run_state(request.config).facts(vm)
    if gathered.azure is None:
        raise FactsUnavailable(
            gathered.azure_error or f"{vm.key}: no Azure facts",
            gathered.azure_error_category or Category.AZURE_API,
        )
    return gathered


@pytest.fixture
def guest_facts(facts: VmFacts) -> FactsView:
    """The guest facts script's JSON for ``vm`` (facts/SCHEMA.md) as a strict view: a fact that
    is absent, null or of the wrong type makes the reading check error (category "guest facts"),
    never pass; ``.need("a.b", bool)`` reads a typed fact, ``.optional(...)`` one whose absence
    means something. Errors if the guest could not be reached."""
    return guest_view(facts.require_guest())


@pytest.fixture
def waivers(request: pytest.FixtureRequest) -> WaiverBook:
    """The run's waivers, for checks that waive single findings (e.g. by fingerprint)."""
    return run_state(request.config).waivers


@pytest.fixture
def host(request: pytest.FixtureRequest, vm: VmRef, facts: VmFacts) -> Any:
    """pytest-testinfra's ``Host`` on ``vm``'s guest, for checks of your own on Linux VMs:
    ``host.file(path)``, ``host.package(name)``, ``host.service(name)``, ``host.run(cmd)``.
    Commands run as the guest user the harness logs in as; ``with host.sudo():`` runs them as root
    through ``sudo -n``, as the harness's own root commands do. It is the run's own SSH connection,
    bound to the VM's identity like every guest session, and each command has a deadline. Errors
    ("guest unreachable") when the guest could not be reached or is not reached over SSH (a
    Windows VM, ``--transport run-command``). Replaces testinfra's ``--hosts`` fixture of the same
    name in imageready runs: the host is always the VM of the case."""
    facts.require_guest()  # the facts round trip reached the guest and it proved its identity
    read_live()  # what it reads is not on record: behind a verdict, the case runs again
    opener = getattr(run_state(request.config).provider, "guest", None)
    if opener is None:  # a facts provider of a conftest's own (e.g. replayed facts)
        raise FactsUnavailable(
            f"{vm.key}: this run's facts provider opens no guest", Category.GUEST_UNREACHABLE
        )
    guest = opener(vm)
    if not hasattr(guest, "testinfra_host"):
        raise FactsUnavailable(
            f"{vm.key}: the host fixture (testinfra) needs a guest reached over SSH; this one is "
            f"reached through {guest.transport}",
            Category.GUEST_UNREACHABLE,
        )
    return guest.testinfra_host

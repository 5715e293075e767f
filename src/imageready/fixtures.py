"""Fixtures that checks and actions request. ``pytest --fixtures`` shows these docstrings."""

from __future__ import annotations

import pytest

from imageready.facts import FactsUnavailable, VmFacts
from imageready.facts.view import FactsView, guest_view
from imageready.gate import WaiverBook
from imageready.gatekeeper import run_state
from imageready.runstate import RunState
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
            gathered.azure_error_category or "Azure API error",
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

"""One table of action steps (``imageready.steps.STEPS``): the fixture chain and the order of the
audit and of Allure's pages are built from it."""

from __future__ import annotations

import inspect

from imageready import action_fixtures
from imageready.steps import ORDER, RECORDED_ON_VM, STEPS


def test_the_order_and_the_tagged_steps_come_from_the_table() -> None:
    assert ORDER == ("lock", "guest", "deallocate", "generalize", "verify", "capture", "unlock")
    assert RECORDED_ON_VM == ("guest", "deallocate")
    assert [step.name for step in STEPS if step.irreversible] == ["guest", "generalize"]


def test_each_step_s_fixture_requests_the_one_before() -> None:
    previous = None
    for number, step in enumerate(STEPS, start=1):
        fixture = getattr(action_fixtures, step.fixture)
        # what pytest reads for the arguments (the signature, through pytest 9's fixture wrapper)
        names = list(inspect.signature(fixture).parameters)
        assert names == ["request", *([previous] if previous else []), "vm_actions"], step
        assert fixture.__doc__.startswith(f"Step {number}: "), fixture.__doc__
        assert ("Irreversible." in fixture.__doc__) == step.irreversible
        previous = step.fixture


def test_every_step_has_a_body() -> None:
    assert set(action_fixtures.BODIES) == set(ORDER)

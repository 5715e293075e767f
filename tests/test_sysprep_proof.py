"""The rule that decides whether sysprep resealed the guest (issue 11, hole 6), reading by reading.

``Seal`` is fed the readings the sysprep step takes (sysprep's own streamed lines, a second shell's
polls, sysprep's final report); these cases pin what counts as proof and what never does. The end
to end stages are in tests/e2e/test_actions_sysprep.py.
"""

from __future__ import annotations

import pytest

from imageready.steps.sysprep_proof import COMPLETE, RESEALED, UNDEPLOYABLE, Seal
from imageready.steps.sysprep_run import sysprep_arguments

SINCE = "2026-11-25T21:13:18.1234567Z"
BEFORE = "2026-11-25T21:13:18.1234560Z"
AFTER = "2026-11-25T21:20:02.5000000Z"


def test_resealed_image_state_is_proof() -> None:
    seal = Seal(SINCE)
    seal.observe({"image_state": UNDEPLOYABLE}, "poll", 1.0)
    assert not seal.proof
    seal.observe({"image_state": RESEALED}, "sysprep's shell", 2.0)
    assert seal.proof == f"ImageState {RESEALED} (sysprep's shell)" and seal.kind() == "imagestate"


@pytest.mark.parametrize(
    "written", [BEFORE, "yesterday", None, ""], ids=["before-the-start", "garbled", "null", "empty"]
)
def test_a_tag_not_written_after_the_start_proves_nothing(written: object) -> None:
    seal = Seal(SINCE)
    seal.observe({"image_state": "", "succeeded_tag_written": written}, "poll", 1.0)
    assert not seal.proof


def test_a_fresh_tag_proves_it_only_while_image_state_cannot_say_otherwise() -> None:
    unreadable = Seal(SINCE)
    unreadable.observe({"succeeded_tag_written": AFTER}, "poll", 1.0)
    assert (
        unreadable.proof.startswith(f"Sysprep_succeeded.tag written {AFTER}") and unreadable.kind() == "tag"
    )
    contradicted = Seal(SINCE)
    contradicted.observe({"image_state": COMPLETE, "succeeded_tag_written": AFTER}, "poll", 1.0)
    assert not contradicted.proof


def test_without_a_recorded_start_no_tag_counts() -> None:
    # a resumed run whose predecessor recorded no start cannot tell an old tag from a new one
    seal = Seal("")
    seal.observe({"succeeded_tag_written": AFTER}, "poll", 1.0)
    assert not seal.proof


def test_a_reading_asked_for_after_the_reseal_that_contradicts_it_withdraws_it() -> None:
    seal = Seal(SINCE)
    seal.observe({"image_state": RESEALED}, "sysprep's shell", 5.0)
    seal.observe({"image_state": UNDEPLOYABLE}, "poll", 4.0)  # asked before: it crossed the reseal
    assert seal.proof
    seal.observe({"image_state": COMPLETE}, "poll", 6.0)  # asked after: the guest ran setup again
    assert not seal.proof and seal.withdrawn == f"ImageState {COMPLETE} read after the reseal (poll)"


def test_a_recorded_reseal_stands_until_the_guest_contradicts_it() -> None:
    seal = Seal(SINCE, recorded="recorded by run r1: imagestate")
    assert seal.proof and seal.on_vm
    seal.observe({}, "poll", 1.0)  # nothing readable: nothing contradicts it
    assert seal.proof
    seal.observe({"image_state": COMPLETE}, "poll", 2.0)
    assert not seal.proof


def test_a_failing_exit_code_withdraws_the_proof() -> None:
    seal = Seal(SINCE)
    seal.observe({"image_state": RESEALED}, "poll", 1.0)
    seal.distrust("sysprep exited with code 1")
    assert not seal.proof and seal.withdrawn == "sysprep exited with code 1"


@pytest.mark.parametrize(
    ("configured", "accepted"),
    [
        ("/generalize /oobe /shutdown", ("/generalize", "/oobe", "/shutdown", "/quiet")),
        ("/generalize /oobe /quit /mode:vm", ("/generalize", "/oobe", "/quit", "/mode:vm", "/quiet")),
        ("/generalize /oobe /shutdown /unattend:C:\\u.xml", None),
        ("/generalize /oobe /shutdown /Unattend", None),
        ("/generalize /oobe /shutdown /mode:physical", None),
        ("/generalize /oobe", None),
    ],
)
def test_sysprep_flags_follow_the_page(configured: str, accepted: tuple[str, ...] | None) -> None:
    from imageready.steps import StepFailed

    if accepted is None:
        with pytest.raises(StepFailed):
            sysprep_arguments(tuple(configured.split()))
    else:
        assert sysprep_arguments(tuple(configured.split())) == accepted

"""The lease: two runs on one VM at once, one proceeds and the other fails fast naming the holder
and changing nothing; a live lease of another host is refused unless broken on purpose; an
expired one is taken over loudly."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from imageready import exitcodes
from imageready.steps.lease import LEASE_TAG, Lease

from .after_generalize import assert_no_vm_write_after_generalize, final_lease
from .conftest import Azsim, Run, harness
from .test_actions_resume import start_harness

SCENARIO = "tests/scenarios/actions-lease.yaml"
pytestmark = [pytest.mark.e2e, pytest.mark.azsim, pytest.mark.root]

SHARED, FOREIGN, EXPIRED = "rg-lease/lin-shared", "rg-lease/lin-foreign", "rg-lease/lin-expired"


def steps_of(run: Run, vm: str) -> dict[str, dict[str, Any]]:
    (found,) = [v for v in run.audit()["vms"] if v["vm"] == vm]
    return {step["step"]: step for step in found["actions"]}


def seconds(start: str, end: str) -> float:
    def parse(text: str) -> dt.datetime:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))

    return (parse(end) - parse(start)).total_seconds()


def test_two_runs_at_once_one_proceeds_the_other_fails_fast_naming_the_holder(
    azsim: Azsim, tmp_path: Path
) -> None:
    with start_harness(azsim, "--vm", SHARED, "--apply", report_dir=tmp_path / "holder") as holder:
        holder.wait_for(f"{SHARED}: step lock: done in ")
        # hold the first run right there, alive, lease in hand: the second run then meets the
        # lease, not a race (a stopped process is as alive as a busy one)
        os.kill(holder.process.pid, signal.SIGSTOP)
        try:
            time.sleep(1.0)  # a request it had in flight finishes in azsim meanwhile
            lease = Lease.parse(azsim.status()[SHARED]["tags"].get(LEASE_TAG))
            assert lease is not None and lease.pid == holder.process.pid
            before, seq = azsim.snapshot()[SHARED], azsim.last_seq()

            loser = harness(azsim, "--vm", SHARED, "--apply", report_dir=tmp_path / "loser")
            after, mutations = azsim.snapshot()[SHARED], azsim.mutations(seq)  # the holder still held
        finally:
            os.kill(holder.process.pid, signal.SIGCONT)
        won = holder.finish()

    assert loser.returncode == exitcodes.ACTION_FAILED, loser.output[-4000:]
    lock = steps_of(loser, SHARED)["lock"]
    assert lock["status"] == "failed"
    assert lock["detail"].startswith(f"{SHARED} is locked by {lease.describe()}"), lock["detail"]
    assert f"run {lease.run_id} by " in lock["detail"] and f"(pid {holder.process.pid})" in lock["detail"]
    assert seconds(lock["started"], lock["ended"]) <= 2, "the loser waited instead of failing fast"
    assert list(steps_of(loser, SHARED)) == ["lock"], "the loser went on past the lock"
    assert mutations == [], "the loser sent a mutating request"
    assert after == before, "the loser changed the VM"
    assert won.returncode == exitcodes.GREEN, won.output[-4000:]
    state = azsim.status()[SHARED]
    assert (state["power_state"], state["os_state"]) == ("deallocated", "generalized")
    final_lease(state, won.audit()["run_id"])  # no capture claimed: it binds nobody
    assert_no_vm_write_after_generalize(azsim, SHARED)


def test_a_live_lease_of_another_host_is_refused_an_expired_one_taken_over_loudly(
    azsim: Azsim, tmp_path: Path
) -> None:
    before, seq = azsim.snapshot()[FOREIGN], azsim.last_seq()
    run = harness(azsim, "--vm", FOREIGN, "--vm", EXPIRED, "--apply", report_dir=tmp_path / "first")
    assert run.returncode == exitcodes.ACTION_FAILED, run.output[-4000:]
    refused = steps_of(run, FOREIGN)["lock"]
    assert refused["status"] == "failed"
    assert (
        f"{FOREIGN} is locked by run 0c1d2e3f4a5b by pipeline@contoso.com on ci-agent-7 (pid 4242) "
        "until 2099-01-01T00:00:00Z; wait for it, or pass --break-lease" in refused["detail"]
    )
    assert azsim.snapshot()[FOREIGN] == before
    assert not any("lin-foreign" in m for m in azsim.mutations(seq)), "the refused run changed the VM"

    taken = steps_of(run, EXPIRED)
    assert (
        "took over the EXPIRED lease of run a5b4c3d2e1f0 by nightly@contoso.com on ci-agent-3"
        in (taken["lock"]["detail"])
    )
    assert f"{EXPIRED}: took over the EXPIRED lease of run a5b4c3d2e1f0" in run.stderr
    assert {name: s["status"] for name, s in taken.items() if name != "capture"} == dict.fromkeys(
        ("lock", "guest", "deallocate", "generalize", "verify", "unlock"), "done"
    )
    assert azsim.status()[EXPIRED]["os_state"] == "generalized"


def test_break_lease_takes_a_live_lease_on_purpose_and_says_so(azsim: Azsim, tmp_path: Path) -> None:
    run = harness(azsim, "--vm", FOREIGN, "--apply", "--break-lease", report_dir=tmp_path)
    assert run.returncode == exitcodes.GREEN, run.output[-4000:]
    lock = steps_of(run, FOREIGN)["lock"]
    assert "BROKE the live lease of run 0c1d2e3f4a5b by pipeline@contoso.com" in lock["detail"]
    state = azsim.status()[FOREIGN]
    final_lease(state, run.audit()["run_id"])
    assert_no_vm_write_after_generalize(azsim, FOREIGN)

"""ARM's request limits in azsim (rulebook THR-1..4) and the harness pacing itself by them.

Microsoft, "Understand how Azure Resource Manager throttles requests": token buckets per
subscription, principal and kind (reads 250 + 25/s, writes and deletes 200 + 10/s), what is left in
``x-ms-ratelimit-remaining-subscription-<kind>``, 429 with ``Retry-After`` when a bucket is empty.
The tests here use a small bucket (a scenario may set the numbers) so that it empties quickly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from azsim.throttling import AZURE_LIMITS, Limits, ThrottlingError, parse_limits

from .conftest import Azsim, raw, start_azsim, stop_azsim

pytestmark = pytest.mark.azsim

# the reads refill is Azure's: the harness assumes Azure's documented rates between answers
READS_BUCKET, READS_REFILL = 20, 25
VM_ENTRY = "      - {name: vm%d, os: Linux, admin_user: azureuser, os_disk: {size_gb: 30}}\n"
SCENARIO = f"""
guests: none
subscription: {{name: azsim-throttling}}
throttling:
  reads: {{bucket: {READS_BUCKET}, refill: {READS_REFILL}}}
  writes: {{bucket: 10, refill: 2}}
resource_groups:
  - name: rg-thr
    location: westeurope
    vms:
""" + "".join(VM_ENTRY % i for i in range(6))


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    """azsim with a reads bucket of 20 (refilled at 25 a second) and a writes bucket of 10."""
    directory = tmp_path_factory.mktemp("throttling")
    scenario = directory / "throttling.yaml"
    scenario.write_text(SCENARIO)
    instance = start_azsim(directory / "state", scenario)
    try:
        yield instance
    finally:
        stop_azsim(instance)


def vm_path(sim: Azsim, name: str) -> str:
    return (
        f"/subscriptions/{sim.subscription}/resourceGroups/rg-thr/providers/Microsoft.Compute/"
        f"virtualMachines/{name}?api-version=2024-07-01"
    )


def drain(sim: Azsim) -> None:
    """Wait until the reads bucket is full again."""
    time.sleep(READS_BUCKET / READS_REFILL + 0.5)


def test_each_request_spends_a_token_and_says_what_is_left(tight: Azsim) -> None:
    with tight.session() as azure:
        drain(tight)
        left = []
        for _ in range(3):
            status, headers, _ = raw(tight, azure, "GET", vm_path(tight, "vm0"))
            assert status == 200
            left.append(int(headers["x-ms-ratelimit-remaining-subscription-reads"]))
        assert left[0] <= READS_BUCKET - 1 and left[1] < left[0] and left[2] < left[1], left
        # a write spends the writes bucket, not the reads one
        status, headers, _ = raw(tight, azure, "PATCH", vm_path(tight, "vm5"), body={"tags": {"a": "b"}})
        assert status in (200, 202), headers
        assert int(headers["x-ms-ratelimit-remaining-subscription-writes"]) == 9
        assert "x-ms-ratelimit-remaining-subscription-reads" not in headers


def test_an_empty_bucket_answers_429_with_retry_after_and_refills(tight: Azsim) -> None:
    with tight.session() as azure:
        drain(tight)
        answers = [raw(tight, azure, "GET", vm_path(tight, "vm1")) for _ in range(READS_BUCKET + 5)]
        throttled = [(headers, body) for status, headers, body in answers if status == 429]
        assert throttled, [status for status, _, _ in answers]
        headers, body = throttled[0]
        assert body["error"]["code"] == "SubscriptionRequestsThrottled"
        assert "Number of 'read' requests for subscription" in body["error"]["message"]
        retry_after = int(headers["Retry-After"])
        assert 1 <= retry_after <= 2
        assert headers["x-ms-ratelimit-remaining-subscription-reads"] == "0"
        time.sleep(retry_after)
        assert raw(tight, azure, "GET", vm_path(tight, "vm1"))[0] == 200


def test_azure_s_numbers_are_the_default(fleet: Azsim) -> None:
    assert parse_limits(None) == parse_limits("azure") == Limits()
    assert (Limits().reads, Limits().writes, Limits().deletes) == ((250, 25), (200, 10), (200, 10))
    assert AZURE_LIMITS == {"reads": (250, 25), "writes": (200, 10), "deletes": (200, 10)}
    assert parse_limits("off").enabled is False
    with pytest.raises(ThrottlingError, match=r"throttling\.reads\.refill"):
        parse_limits({"reads": {"bucket": 5, "refill": 0}})
    with fleet.session() as azure:
        path = (
            f"/subscriptions/{fleet.subscription}/resourceGroups/rg-fleet/providers/"
            "Microsoft.Compute/virtualMachines/lin-fast?api-version=2024-07-01"
        )
        status, headers, _ = raw(fleet, azure, "GET", path)
        assert status == 200
        assert 0 < int(headers["x-ms-ratelimit-remaining-subscription-reads"]) < 250


def test_the_harness_paces_itself_by_what_is_left(tight: Azsim) -> None:
    """Three times the bucket in concurrent reads: all answered, next to no 429s, because the
    harness waited for tokens (what the remaining-headers told it) rather than being refused."""
    with tight.session() as azure:
        drain(tight)
        mark = tight.mark()
        failures: list[BaseException] = []

        def read(n: int) -> None:
            try:
                for i in range(n):
                    azure.get_vm(tight.ref(f"vm{i % 6}", rg="rg-thr"), instance_view=False)
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=read, args=(READS_BUCKET * 3 // 8,)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, failures
        log = [r for r in tight.requests(mark) if r.get("kind") == "arm"]
        throttled = sum(1 for r in log if r["status"] == 429)
        assert len(log) - throttled == 8 * (READS_BUCKET * 3 // 8)
        assert throttled <= 2, throttled
        assert azure.pacer.waits > 0


def test_the_harness_holds_every_request_for_a_429_s_retry_after(tight: Azsim) -> None:
    """A 429 with Retry-After 2 on one VM's read holds the reads of another thread too."""
    with tight.session() as azure:
        drain(tight)
        fault = tight.add_fault(kind="throttle", retry_after=2, count=1, path="/virtualMachines/vm2")
        try:
            mark = tight.mark()
            first = threading.Thread(target=azure.get_vm, args=(tight.ref("vm2", rg="rg-thr"),))
            first.start()
            time.sleep(0.5)
            azure.get_vm(tight.ref("vm3", rg="rg-thr"))
            first.join(timeout=30)
        finally:
            tight.admin("DELETE", f"/azsim/faults/{fault}")
        log = [r for r in tight.requests(mark) if r.get("kind") == "arm"]
        refused = next(r for r in log if r["status"] == 429)
        other = next(r for r in log if r["path"].endswith("/vm3"))
        assert other["time"] - other["duration"] >= refused["time"] + 1.8, (refused, other)


def test_scenario_key_is_validated(tmp_path: Path) -> None:
    from azsim.scenario import ScenarioError, parse_scenario

    assert parse_scenario({"throttling": "off"}).throttling.enabled is False
    assert parse_scenario({}).throttling == Limits()
    with pytest.raises(ScenarioError, match=r"throttling\.bytes: unknown kind"):
        parse_scenario({"throttling": {"bytes": {"bucket": 1, "refill": 1}}})

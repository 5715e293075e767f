"""Every fault azsim injects, and how the harness's AzureSession rides it out or reports it."""

# ruff: noqa: S310  (urllib opens https URLs of azsim on loopback only)

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from imageready.azure import (
    AzureAuthError,
    AzureConnectionError,
    AzureError,
    AzureNotFound,
    AzureSession,
    AzureTimeout,
)
from tests.azsim.conftest import SCENARIOS, Azsim, start_azsim, stop_azsim

pytestmark = pytest.mark.azsim
RG = "rg-fleet"


@pytest.fixture(autouse=True)
def no_faults_left(fleet: Azsim) -> Iterator[None]:
    yield
    fleet.clear_faults()


def arm_requests(fleet: Azsim, since: int) -> list[dict[str, object]]:
    return [r for r in fleet.requests(since) if r["kind"] == "arm"]


def test_fast_deallocate_returns_in_well_under_a_second(fleet: Azsim, session: AzureSession) -> None:
    session.get_vm(fleet.ref("lin-fast"))  # token and connection warm, as in a real run
    mark = fleet.mark()
    started = time.monotonic()
    call = session.deallocate(fleet.ref("lin-fast"))
    elapsed = time.monotonic() - started
    assert elapsed < 0.6, f"a 0.2 s deallocate took {elapsed:.2f} s"
    assert call.status == "Succeeded" and call.azure_async_operation is not None
    seen = [(r["method"], r["status"], r["operation"]) for r in arm_requests(fleet, mark)]
    assert seen == [
        ("POST", 202, "deallocate"),
        ("GET", 200, "operationStatus"),
        ("GET", 200, "operationStatus"),
    ]  # status poll, then the Location result
    assert len(call.request_ids) == 3


def test_latency_fault_slows_matching_requests_only(fleet: Azsim, session: AzureSession) -> None:
    fleet.add_fault(kind="latency", seconds=0.6, method="GET", vm="rg-fleet/lin-f1")
    started = time.monotonic()
    session.get_vm(fleet.ref("lin-f1"))
    assert time.monotonic() - started >= 0.6
    started = time.monotonic()
    session.get_vm(fleet.ref("lin-f2"))
    assert time.monotonic() - started < 0.5


def test_a_429_burst_is_ridden_out_honouring_retry_after(fleet: Azsim, session: AzureSession) -> None:
    session.get_vm(fleet.ref("lin-f1"))
    fleet.add_fault(kind="throttle", retry_after=1, count=2, path="/virtualMachines/lin-f1")
    mark = fleet.mark()
    started = time.monotonic()
    vm = session.get_vm(fleet.ref("lin-f1"))
    elapsed = time.monotonic() - started
    assert vm["name"] == "lin-f1"
    assert [r["status"] for r in arm_requests(fleet, mark)] == [429, 429, 200]
    assert 2.0 <= elapsed < 4.0  # two Retry-After: 1 waits, no more


def test_a_503_burst_on_a_post_is_ridden_out(fleet: Azsim, fleet_session_fast_retry: AzureSession) -> None:
    fleet.add_fault(kind="error", status=503, count=3, method="POST", vm="rg-fleet/lin-f2")
    mark = fleet.mark()
    call = fleet_session_fast_retry.deallocate(fleet.ref("lin-f2"))
    assert call.status == "Succeeded"
    statuses = [r["status"] for r in arm_requests(fleet, mark) if r["method"] == "POST"]
    assert statuses == [503, 503, 503, 202]
    assert len(call.request_ids) >= 6  # the failed attempts are evidence too
    assert fleet.vm_status(RG, "lin-f2")["power_state"] == "deallocated"


def test_a_persistent_503_ends_in_one_line_in_bounded_time(
    fleet: Azsim, fleet_session_fast_retry: AzureSession
) -> None:
    fleet.add_fault(kind="error", status=503, path="/virtualMachines/lin-f3")
    mark = fleet.mark()
    started = time.monotonic()
    with pytest.raises(AzureError) as caught:
        fleet_session_fast_retry.get_vm(fleet.ref("lin-f3"))
    elapsed = time.monotonic() - started
    assert elapsed < 5
    assert len(arm_requests(fleet, mark)) == 5  # first try + retry_total=4
    message = str(caught.value)
    assert message == (
        "get rg-fleet/lin-f3: Azure kept answering 503 ServiceUnavailable after the retries "
        "allowed: The service is temporarily unavailable; try again later."
    )
    assert caught.value.status == 503


def test_lro_failed_is_azure_s_error_and_leaves_the_vm_running(fleet: Azsim, session: AzureSession) -> None:
    fleet.add_fault(
        kind="lro_failed",
        operation="deallocate",
        vm="rg-fleet/lin-f4",
        code="AllocationFailed",
        message="Allocation failed. Please try again later.",
    )
    with pytest.raises(AzureError) as caught:
        session.deallocate(fleet.ref("lin-f4"))
    assert str(caught.value) == (
        "deallocate rg-fleet/lin-f4 failed in Azure: (AllocationFailed) "
        "Allocation failed. Please try again later."
    )
    assert session.calls[-1].status == "Failed"
    assert fleet.vm_status(RG, "lin-f4")["power_state"] == "running"
    assert fleet.vm_status(RG, "lin-f4")["provisioning_state"] == "Succeeded"


def test_lro_that_never_ends_hits_the_deadline_with_progress(fleet: Azsim) -> None:
    fleet.add_fault(kind="lro_never_ends", operation="powerOff", vm="rg-fleet/lin-f5")
    progress: list[str] = []
    with fleet.session(
        lro_deadline=2, poll_interval=5, progress=progress.append, progress_interval=0.9
    ) as short:
        started = time.monotonic()
        with pytest.raises(AzureTimeout) as caught:
            short.power_off(fleet.ref("lin-f5"))
        elapsed = time.monotonic() - started
        call = short.calls[-1]
    assert 2 <= elapsed < 3
    assert str(caught.value) == (
        "power off rg-fleet/lin-f5: not finished within the 2 s deadline; the operation may still "
        f"complete in Azure (correlation id {call.correlation_id})"
    )
    assert caught.value.category == "timeout"
    assert call.status == "TimedOut" and call.error == str(caught.value)
    assert progress == [
        "power off rg-fleet/lin-f5: waiting for Azure (1 s / deadline 2 s)",
        "power off rg-fleet/lin-f5: waiting for Azure (2 s / deadline 2 s)",
    ]
    assert fleet.vm_status(RG, "lin-f5")["power_state"] == "stopping"


def test_vm_deleted_mid_run(fleet: Azsim, session: AzureSession) -> None:
    assert session.get_vm(fleet.ref("lin-f6"))["name"] == "lin-f6"
    fleet.add_fault(kind="delete_vm", vm="rg-fleet/lin-f6", after_requests=1)
    assert session.get_vm(fleet.ref("lin-f6"))["name"] == "lin-f6"  # the one request allowed
    with pytest.raises(AzureNotFound) as caught:
        session.get_vm(fleet.ref("lin-f6"))
    assert str(caught.value) == f"VM rg-fleet/lin-f6 not found in subscription {fleet.subscription}"
    with pytest.raises(AzureNotFound):
        session.deallocate(fleet.ref("lin-f6"))


def test_token_expiry_mid_run_is_recovered_with_a_fresh_token(fleet: Azsim, session: AzureSession) -> None:
    session.get_vm(fleet.ref("lin-f7"))
    fleet.add_fault(kind="token_expiry", after_seconds=1)
    time.sleep(1.2)
    mark = fleet.mark()
    assert session.get_vm(fleet.ref("lin-f7"))["name"] == "lin-f7"
    seen = [(r["kind"], r["status"]) for r in fleet.requests(mark)]
    assert seen == [("arm", 401), ("aad", 200), ("arm", 200)]  # CAE challenge, new token, retry


def test_token_expiry_without_cae_is_a_clear_401(fleet: Azsim) -> None:
    """A client that does not take claims challenges gets Azure's ExpiredAuthenticationToken."""
    import json
    import ssl
    import urllib.error
    import urllib.request

    from azure.identity import ClientSecretCredential

    env = fleet.env
    credential = ClientSecretCredential(
        env["AZURE_TENANT_ID"],
        env["AZURE_CLIENT_ID"],
        env["AZURE_CLIENT_SECRET"],
        authority=env["AZURE_AUTHORITY_HOST"],
        disable_instance_discovery=True,
        connection_verify=fleet.ca_bundle,
    )
    token = credential.get_token("https://management.core.windows.net//.default").token
    time.sleep(1.1)  # iat has whole seconds: the cutoff must fall in a later second
    fleet.add_fault(kind="token_expiry", after_seconds=0)
    request = urllib.request.Request(
        f"{fleet.url}/subscriptions?api-version=2022-12-01", headers={"Authorization": f"Bearer {token}"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(
            request,
            timeout=10,
            context=ssl.create_default_context(cafile=fleet.ca_bundle),
        )
    assert caught.value.code == 401
    assert 'error="invalid_token"' in caught.value.headers["WWW-Authenticate"]
    body = json.loads(caught.value.read())
    assert body["error"]["code"] == "ExpiredAuthenticationToken"
    assert "is earlier than current UTC time" in body["error"]["message"]


def test_wrong_secret_is_one_aadsts_line(fleet: Azsim) -> None:
    with (
        fleet.session(env={"AZURE_CLIENT_SECRET": "not-the-secret"}) as wrong,
        pytest.raises(AzureAuthError) as caught,
    ):
        wrong.get_vm(fleet.ref("lin-f8"))
    message = str(caught.value)
    assert message.startswith(
        f"cannot sign in to Azure at https://localhost:{fleet.port}: AADSTS7000215: "
        "Invalid client secret provided."
    )
    assert "\n" not in message and "Trace ID" not in message
    assert "not-the-secret" not in message and fleet.env["AZURE_CLIENT_SECRET"] not in message


def test_wrong_ca_is_a_clear_error(fleet: Azsim) -> None:
    # the system CAs (REQUESTS_CA_BUNDLE on this machine) do not know azsim's CA
    with fleet.session(ca_bundle=None) as untrusting, pytest.raises(AzureConnectionError) as caught:
        untrusting.get_vm(fleet.ref("lin-f8"))
    message = str(caught.value)
    assert "TLS certificate is not trusted" in message and "IMAGEREADY_CA_BUNDLE" in message
    assert "\n" not in message


@pytest.fixture
def fleet_session_fast_retry(fleet: Azsim) -> Iterator[AzureSession]:
    """Bounded retries with a short backoff, so retry tests stay quick."""
    with fleet.session(retry_backoff=0.1) as azure:
        yield azure


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    """azsim whose deallocate takes 2.5 s and answers 202 at once."""
    instance = start_azsim(tmp_path_factory.mktemp("azsim-slow"), SCENARIOS / "arm-slow.yaml")
    try:
        yield instance
    finally:
        stop_azsim(instance)


def test_polling_honours_retry_after_not_the_30_s_default(slow: Azsim) -> None:
    progress: list[str] = []
    with slow.session(poll_interval=30, progress=progress.append, progress_interval=1) as azure:
        azure.get_vm(slow.ref("lin-slow-1", "rg-slow"))
        mark = slow.mark()
        started = time.monotonic()
        azure.deallocate(slow.ref("lin-slow-1", "rg-slow"))
        elapsed = time.monotonic() - started
    polls = [r for r in slow.requests(mark) if r["operation"] == "operationStatus"]
    assert 2.5 <= elapsed < 4.5
    assert 3 <= len(polls) <= 5  # an immediate poll, then one per Retry-After second, then Location
    assert progress and all("deallocate rg-slow/lin-slow-1: waiting for Azure" in p for p in progress)


def test_faults_from_the_scenario_are_live_from_the_start(slow: Azsim) -> None:
    assert slow.admin("GET", "/azsim/faults")["faults"] == [
        {"id": "f1", "kind": "latency", "method": "GET", "vm": "rg-slow/lin-slow-2", "seconds": 0.4}
    ]
    with slow.session() as azure:
        azure.get_vm(slow.ref("lin-slow-1", "rg-slow"))
        started = time.monotonic()
        azure.get_vm(slow.ref("lin-slow-2", "rg-slow"))
        assert time.monotonic() - started >= 0.4

"""The harness's Azure layer (src/imageready/azure/): clouds, credential, errors, audit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from imageready.azure import (
    AzureError,
    AzureSession,
    CloudSettings,
    resolve_ca_bundle,
    resolve_cloud,
)
from imageready.azure.cloud import CLOUDS
from tests.azsim.conftest import FLEET, Azsim, start_azsim, stop_azsim


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "IMAGEREADY_CLOUD",
        "IMAGEREADY_ARM_ENDPOINT",
        "AZURE_AUTHORITY_HOST",
        "IMAGEREADY_ARM_AUDIENCE",
        "IMAGEREADY_CA_BUNDLE",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("name", "arm", "authority"),
    [
        (None, "https://management.azure.com/", "https://login.microsoftonline.com"),
        ("public", "https://management.azure.com/", "https://login.microsoftonline.com"),
        ("AzureCloud", "https://management.azure.com/", "https://login.microsoftonline.com"),
        ("usgov", "https://management.usgovcloudapi.net/", "https://login.microsoftonline.us"),
        ("china", "https://management.chinacloudapi.cn/", "https://login.chinacloudapi.cn"),
    ],
)
def test_known_clouds(clean_env: pytest.MonkeyPatch, name: str | None, arm: str, authority: str) -> None:
    cloud = resolve_cloud(name)
    assert (cloud.arm_endpoint, cloud.authority_host) == (arm, authority)
    assert cloud.scope == cloud.audience.rstrip("/") + "/.default"
    assert cloud.known_authority


def test_custom_cloud_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("IMAGEREADY_ARM_ENDPOINT", "https://127.0.0.1:8443")
    clean_env.setenv("AZURE_AUTHORITY_HOST", "https://localhost:8443/")
    cloud = resolve_cloud()
    assert cloud == CloudSettings(
        "custom", "https://127.0.0.1:8443/", "https://localhost:8443", "https://management.core.windows.net/"
    )
    assert not cloud.known_authority  # so MSAL's instance discovery is switched off
    # AZURE_AUTHORITY_HOST applies to any cloud (as in azure-identity); an explicit cloud name
    # wins over IMAGEREADY_ARM_ENDPOINT
    assert resolve_cloud("public").authority_host == "https://localhost:8443"
    clean_env.delenv("AZURE_AUTHORITY_HOST")
    assert resolve_cloud("public") == CLOUDS["public"]


def test_cloud_option_errors_are_one_line(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(AzureError, match=r"^cloud 'mars': expected one of public, usgov, china, custom$"):
        resolve_cloud("mars")
    with pytest.raises(AzureError, match="needs an ARM endpoint"):
        resolve_cloud("custom")
    with pytest.raises(AzureError, match="expected an https:// URL"):
        resolve_cloud("custom", "http://127.0.0.1:80/")
    with pytest.raises(AzureError, match="use cloud 'custom'"):
        resolve_cloud("usgov", "https://127.0.0.1:8443/")
    clean_env.setenv("IMAGEREADY_CA_BUNDLE", "/nonexistent/ca.pem")
    with pytest.raises(AzureError, match=r"^CA bundle '/nonexistent/ca\.pem' does not exist$"):
        resolve_ca_bundle()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azsim]:
    instance = start_azsim(tmp_path_factory.mktemp("azsim"), FLEET)
    try:
        yield instance
    finally:
        stop_azsim(instance)


@pytest.mark.azsim
def test_operator_identity_comes_from_the_token_claims(fleet: Azsim) -> None:
    with fleet.session() as session:
        identity = session.operator_identity()
        assert identity == {
            "oid": "99999999-8888-7777-6666-555555555555",
            "tid": fleet.env["AZURE_TENANT_ID"],
            "appid": fleet.env["AZURE_CLIENT_ID"],
            "name": "imageready-tests",
            "idtyp": "app",
        }
        assert fleet.env["AZURE_CLIENT_SECRET"] not in repr(session)
        assert repr(session) == f"AzureSession(subscription={fleet.subscription}, cloud=custom)"


@pytest.mark.azsim
def test_reads_are_not_audited_changes_are(fleet: Azsim) -> None:
    with fleet.session() as session:
        session.get_vm(fleet.ref("lin-routes"))
        session.list_extensions(fleet.ref("lin-routes"))
        assert session.calls == []
        call = session.power_off(fleet.ref("lin-f1"))
        assert session.calls == [call]
    assert call.operation == "power off" and call.resource_id == fleet.ref("lin-f1").id
    assert call.started <= (call.ended or 0) and call.status == "Succeeded"
    logged = [r for r in fleet.requests() if r.get("correlation_id") == call.correlation_id]
    assert len(logged) == len(call.request_ids) == 3  # POST, status poll, Location: all correlated


@pytest.mark.azsim
def test_no_request_leaves_the_machine(fleet: Azsim) -> None:
    """Instance discovery is off for azsim's authority: the token came from azsim, first try."""
    mark = fleet.mark()
    with fleet.session() as session:
        session.get_vm(fleet.ref("lin-routes"))
    kinds = [(r["kind"], r["operation"]) for r in fleet.requests(mark)]
    assert kinds == [("aad", "openid"), ("aad", "token"), ("arm", "get")]


def test_a_missing_ca_bundle_is_refused_before_any_call() -> None:
    with pytest.raises(AzureError, match=r"^CA bundle '/nonexistent\.pem' does not exist$"):
        AzureSession(
            "00000000-0000-0000-0000-000000000001", cloud=CLOUDS["public"], ca_bundle="/nonexistent.pem"
        )

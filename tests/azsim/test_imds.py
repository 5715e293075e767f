"""azsim's Instance Metadata Service answers as Microsoft's page says IMDS does (served here on a
loopback port of the host; in a guest it listens on 169.254.169.254:80 of the guest's own network,
see tests/guests/test_guest_identity.py)."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest

from azsim.guestapi import Platform
from azsim.imds import ImdsServer

PLATFORM = Platform(
    vm_id="d0df4c54-4ecb-4a4b-9954-5bdf3ed5c3b8",
    name="lin-a",
    resource_id="/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/lin-a",
    resource_group="rg",
    subscription_id="s1",
)


@pytest.fixture
def imds() -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    server = ImdsServer(listener, PLATFORM)
    server.start()
    try:
        yield listener.getsockname()[1]
    finally:
        server.close()


def get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path, headers={"Metadata": "true", **(headers or {})})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_compute_and_a_leaf(imds: int) -> None:
    status, body = get(imds, "/metadata/instance/compute?api-version=2021-02-01")
    assert status == 200
    compute = json.loads(body)
    assert compute["vmId"] == PLATFORM.vm_id and compute["name"] == "lin-a"
    assert compute["resourceId"] == PLATFORM.resource_id
    assert all(isinstance(value, str) for value in compute.values())  # IMDS sends strings
    assert get(imds, "/metadata/instance/compute/vmId?api-version=2021-02-01&format=text") == (
        200,
        PLATFORM.vm_id,
    )
    status, body = get(imds, "/metadata/instance?api-version=2025-04-07")
    assert status == 200 and set(json.loads(body)) == {"compute", "network"}


@pytest.mark.parametrize(
    ("path", "headers", "method", "status", "says"),
    [
        ("/metadata/instance/compute?api-version=2021-02-01", {"Metadata": "false"}, "GET", 400,
         "Required metadata header not specified"),
        ("/metadata/instance/compute?api-version=2021-02-01", {"X-Forwarded-For": "10.0.0.9"}, "GET", 400,
         "X-Forwarded-For"),
        ("/metadata/instance/compute", {}, "GET", 400, "api-version is invalid or was not specified"),
        ("/metadata/instance/compute?api-version=2099-01-01", {}, "GET", 400, "newest-versions"),
        ("/metadata/instance/compute?api-version=2021-02-01&api-version=2021-02-01", {}, "GET", 400,
         "Duplicate"),
        ("/metadata/instance/compute/vmId?api-version=2021-02-01", {}, "GET", 400, "format=text"),
        ("/metadata/instance/compute/nothing?api-version=2021-02-01", {}, "GET", 404, "Not found"),
        ("/metadata/instance/compute?api-version=2021-02-01", {}, "POST", 405, "not allowed"),
    ],
    ids=["no-metadata-header", "forwarded", "no-version", "unknown-version", "duplicate", "leaf-json",
         "unknown", "post"],
)  # fmt: skip
def test_refusals(imds: int, path: str, headers: dict[str, str], method: str, status: int, says: str) -> None:
    got, body = get(imds, path, headers, method)
    assert got == status and says in body, body


def test_what_the_platform_shows_under_staging() -> None:
    other = "7cdc1f83-c56c-4e5e-9f1f-60b0072ec8e6"
    assert PLATFORM.smbios_uuid() == PLATFORM.vm_id.upper()
    swapped = Platform(**{**PLATFORM.__dict__, "smbios": "swapped"})
    assert swapped.smbios_uuid() == "544CDFD0-CB4E-4B4A-9954-5BDF3ED5C3B8"
    assert Platform(**{**PLATFORM.__dict__, "smbios": "unreadable"}).smbios_uuid() is None
    impostor = Platform(**{**PLATFORM.__dict__, "reported_vm_id": other})
    assert impostor.compute()["vmId"] == other and impostor.smbios_uuid() == other.upper()

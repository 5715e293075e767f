"""A small ARM client for what the live suite makes: resource groups, NICs, VMs from Marketplace
images, galleries and image definitions, and their deletion. It speaks plain REST through the
real Azure SDK pipeline (``ComputeManagementClient.send_request``: authentication, retries,
TLS), the same way against azsim and against Azure, and follows long-running operations the way
ARM documents them (``Azure-AsyncOperation``, then ``Location``, then the resource's
``provisioningState``). The copies go through imageready's own Azure layer (``AzureSession``).

Building a client is the first network-facing thing the suite does; a dry run never builds one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any
from unittest import mock

from azure.core.rest import HttpRequest, HttpResponse
from azure.identity import DefaultAzureCredential
from azure.mgmt.compute import ComputeManagementClient

from imageready.azure import AzureSession, resolve_ca_bundle, resolve_cloud

API = {
    "resourceGroups": "2021-04-01",
    "networkInterfaces": "2024-05-01",
    "virtualMachines": "2024-07-01",
    "galleries": "2023-07-03",
}
TERMINAL = ("Succeeded", "Failed", "Canceled")
#: how long a deletion is waited for: on its own clock, so that a run past its time limit still
#: sees its resource group go (Azure deletes a group with VMs in a few minutes)
CLEANUP_SECONDS = 1800.0


class LiveArmError(RuntimeError):
    """An ARM request of the live suite failed; one line, never a request body."""


class LiveArm:
    """Generic ARM requests with a deadline; every resource it creates is remembered."""

    def __init__(self, env: Mapping[str, str], subscription: str, *, deadline: Callable[[], float]) -> None:
        # imageready's cloud settings and azure-identity's EnvironmentCredential read os.environ
        # when they are built: against azsim the suite's process does not have azsim's
        # environment (the harness subprocesses get it), so it is lent for the construction only
        with mock.patch.dict(os.environ, dict(env)):
            self.cloud = resolve_cloud()
            self.ca_bundle = resolve_ca_bundle()
            transport: dict[str, Any] = {"connection_verify": self.ca_bundle} if self.ca_bundle else {}
            discovery = {} if self.cloud.known_authority else {"disable_instance_discovery": True}
            self._credential = DefaultAzureCredential(
                authority=self.cloud.authority_host, **discovery, **transport
            )
            self._client = ComputeManagementClient(
                self._credential,
                subscription,
                base_url=self.cloud.arm_endpoint,
                credential_scopes=[self.cloud.scope],
                user_agent="imageready-live",
                **transport,
            )
            self.session = AzureSession(subscription, cloud=self.cloud, ca_bundle=self.ca_bundle)
        self.subscription = subscription
        #: seconds left until the suite's time guard (raises when it has passed)
        self._remaining = deadline
        self.created: list[str] = []

    def close(self) -> None:
        self.session.close()
        self._client.close()
        self._credential.close()

    def path(self, rg: str, provider: str = "") -> str:
        base = f"/subscriptions/{self.subscription}/resourceGroups/{rg}"
        return f"{base}/providers/{provider}" if provider else base

    # --- requests -------------------------------------------------------------------------------

    def _send(self, method: str, path: str, api: str, body: Any = None) -> HttpResponse:
        url = f"{path}{'&' if '?' in path else '?'}api-version={api}"
        request = HttpRequest(method, url, json=body) if body is not None else HttpRequest(method, url)
        response: HttpResponse = self._client.send_request(request)
        return response

    @staticmethod
    def _fail(what: str, response: HttpResponse) -> LiveArmError:
        try:
            error = response.json().get("error") or {}
            why = f"{error.get('code')}: {error.get('message')}"
        except ValueError:
            why = response.text()[:200]
        return LiveArmError(f"{what}: HTTP {response.status_code} {why}")

    def get(self, path: str, api: str) -> dict[str, Any] | None:
        """The resource, or None when ARM answers 404."""
        response = self._send("GET", path, api)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._fail(f"GET {path}", response)
        found: dict[str, Any] = response.json()
        return found

    def list(self, path: str, api: str, query: str = "") -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        url = f"{path}?{query}" if query else path
        while url:
            response = self._send("GET", url, api)
            if response.status_code != 200:
                raise self._fail(f"GET {path}", response)
            body = response.json()
            found += list(body.get("value") or [])
            url = str(body.get("nextLink") or "").split(self.cloud.arm_endpoint.rstrip("/"), 1)[-1]
        return found

    def put(self, path: str, api: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create (or update) a resource and wait until Azure says it is done."""
        response = self._send("PUT", path, api, body)
        if response.status_code not in (200, 201, 202):
            raise self._fail(f"PUT {path}", response)
        self.created.append(path)
        self._follow(f"PUT {path}", response, self._remaining())
        deadline = time.monotonic() + self._remaining()
        while True:
            found = self.get(path, api)
            state = str(((found or {}).get("properties") or {}).get("provisioningState") or "Succeeded")
            if found is not None and state in TERMINAL:
                if state != "Succeeded":
                    raise LiveArmError(f"PUT {path}: ended {state}")
                return found
            if time.monotonic() > deadline:
                raise LiveArmError(f"PUT {path}: still {state} at the suite's time limit")
            time.sleep(2)

    def delete(self, path: str, api: str) -> bool:
        """Delete and wait (not bound by the time guard: cleaning up is what it stops for); False
        when there was nothing to delete (404)."""
        response = self._send("DELETE", path, api)
        if response.status_code == 404:
            return False
        if response.status_code not in (200, 202, 204):
            raise self._fail(f"DELETE {path}", response)
        self._follow(f"DELETE {path}", response, CLEANUP_SECONDS)
        return True

    def _follow(self, what: str, response: HttpResponse, seconds: float) -> None:
        """Wait up to ``seconds`` for the operation a 201/202 started (Azure-AsyncOperation, else
        Location)."""
        status_url = response.headers.get("Azure-AsyncOperation")
        location = response.headers.get("Location")
        if not status_url and not (location and response.status_code == 202):
            return
        deadline = time.monotonic() + seconds
        base = self.cloud.arm_endpoint.rstrip("/")
        url = str(status_url or location).split(base, 1)[-1]
        while time.monotonic() < deadline:
            delay = float(response.headers.get("Retry-After") or 2)
            time.sleep(min(max(delay, 1.0), 15.0))
            response = self._client.send_request(HttpRequest("GET", url))
            if status_url:
                status = str((response.json() or {}).get("status") or "")
                if status in TERMINAL:
                    if status != "Succeeded":
                        raise LiveArmError(f"{what}: the operation ended {status}")
                    return
            elif response.status_code != 202:
                if response.status_code >= 400:
                    raise self._fail(what, response)
                return
        raise LiveArmError(f"{what}: not finished at the suite's time limit")

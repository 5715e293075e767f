"""Azure Resource Manager as azsim serves it: one request in, one reply out.

:class:`Simulator` owns the state, the operations, the faults, the guests and the request log;
:meth:`Simulator.handle_arm` runs each ARM request through what Azure's front door does (request
ids, authentication, throttling, RBAC) and then its route. Routes live in :mod:`azsim.arm_vms`
and :mod:`azsim.arm_resources`.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from azsim import arm_groups, arm_resources, arm_restore_points, arm_vms
from azsim.aad import Directory, TokenError
from azsim.arm_http import ArmError, ArmReply, ArmRequest, Route, route
from azsim.faults import Fault, FaultSet, RequestFacts
from azsim.guests import Guests, GuestSettings
from azsim.lro import Operation, Operations, Outcome
from azsim.scenario import Scenario
from azsim.state import Store, Vm
from azsim.throttling import Throttle, Throttled

DEFAULT_LRO_ERROR = (
    "InternalExecutionError",
    "An internal execution error occurred. Please retry later.",
)


@dataclass(frozen=True)
class Secrets:
    """Generated per state directory by ``azsim up``; never in a scenario, argv or log."""

    client_secret: str
    admin_token: str
    admin_password: str
    signing_key: str  # hex; signs the JWTs azsim issues

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"


class RequestLog:
    """Every ARM and Entra ID request, for tests that count calls (``GET /azsim/requests``)."""

    def __init__(self, limit: int = 50_000) -> None:
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=limit)
        self._seq = 0

    def add(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._seq += 1
            entry["seq"] = self._seq
            self._entries.append(entry)

    def entries(self, since: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._entries if e["seq"] > since]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _subscriptions(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    return ArmReply(200, {"value": [sim.subscription_json()], "count": {"type": "Total", "value": 1}})


def _subscription(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    sim.check_subscription(m["sub"])
    return ArmReply(200, sim.subscription_json())


def _resource_group(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    sim.check_subscription(m["sub"])
    name = sim.check_rg(m["rg"])
    _, location, tags = sim.store.resource_groups[name.lower()]
    return ArmReply(
        200,
        {
            "id": f"/subscriptions/{sim.store.subscription_id}/resourceGroups/{name}",
            "name": name,
            "type": "Microsoft.Resources/resourceGroups",
            "location": location,
            "tags": tags,
            "properties": {"provisioningState": "Succeeded"},
        },
    )


def _operation(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """Both LRO URLs: the status (Azure-AsyncOperation) and, with ``monitor=true``, the result."""
    sim.check_subscription(m["sub"])
    op = sim.ops.get(m["op"])
    if op is None:
        raise ArmError(404, "OperationNotFound", f"The operation '{m['op']}' was not found.")
    if req.query.get("monitor", "").lower() == "true":
        if op.status == "InProgress":
            return ArmReply(
                202,
                None,
                {"Location": sim.operation_url(req, op, monitor=True), "Retry-After": "1"},
            )
        if op.status == "Failed" and op.error is not None:
            raise ArmError(500, op.error["code"], op.error["message"])
        return ArmReply(200, op.result)
    headers = {"Retry-After": "1"} if op.status == "InProgress" else {}
    return ArmReply(200, op.status_body(), headers)


def _cloud_metadata(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    """``/metadata/endpoints`` for ``az cloud register`` with endpoint discovery."""
    base = req.base_url
    aad = base.replace("127.0.0.1", "localhost")
    return ArmReply(
        200,
        {
            "name": "AzSim",
            "resourceManager": f"{base}/",
            "portal": f"{base}/",
            "authentication": {
                "loginEndpoint": aad,
                "audiences": [
                    "https://management.core.windows.net/",
                    "https://management.azure.com/",
                ],
                "tenant": "common",
                "identityProvider": "AAD",
            },
            "suffixes": {},
        },
    )


SUB = "/subscriptions/{sub}"
ROUTES: list[Route] = [
    route(
        "GET",
        "/subscriptions",
        _subscriptions,
        "Microsoft.Resources/subscriptions/read",
        "listSubscriptions",
    ),
    route("GET", SUB, _subscription, "Microsoft.Resources/subscriptions/read", "getSubscription"),
    route(
        "GET",
        SUB + "/resourceGroups/{rg}",
        _resource_group,
        "Microsoft.Resources/subscriptions/resourceGroups/read",
        "getResourceGroup",
    ),
    route(
        "GET",
        SUB + "/providers/Microsoft.Compute/locations/{loc}/operations/{op}",
        _operation,
        "Microsoft.Compute/locations/operations/read",
        "operationStatus",
    ),
    route("GET", "/metadata/endpoints", _cloud_metadata, "", "metadata", auth=False),
    *arm_groups.ROUTES,
    *arm_vms.ROUTES,
    *arm_resources.ROUTES,
    *arm_restore_points.ROUTES,
]


class Simulator:
    """The whole simulated subscription: ARM state, operations, faults, guests, request log."""

    def __init__(
        self,
        scenario: Scenario,
        secrets: Secrets,
        *,
        ssh_public_key: str = "",
        guest_settings: GuestSettings | None = None,
    ) -> None:
        self.scenario = scenario
        #: the one password azsim's Windows guests accept (a VM from an image must be given it)
        self.admin_password = secrets.admin_password
        self.timings = scenario.timings
        self.store = Store(scenario, ssh_public_key)
        self.directory = Directory(
            scenario.tenant,
            scenario.principal,
            secrets.client_secret,
            bytes.fromhex(secrets.signing_key),
            scenario.token_lifetime,
        )
        self.throttle = Throttle(scenario.throttling)
        self.faults = FaultSet()
        for fault in scenario.faults:
            self.faults.add(copy.copy(fault))
        self.ops = Operations(self.store.lock)
        self.guests = Guests(guest_settings if scenario.guests else None, self.on_guest_shutdown, self.faults)
        self.log = RequestLog()
        #: set by the server once guests have booted (or failed to)
        self.ready = threading.Event()

    # -- guests ------------------------------------------------------------------------------

    def create_guests(self) -> None:
        """Create (not boot) a guest per VM; a missing guest module fails here, loudly."""
        with self.store.lock:
            vms = self.store.vms()
        self.guests.check_classes({vm.os for vm in vms})
        for vm in vms:
            self.guests.create(
                vm.key,
                resource_group=vm.resource_group,
                vm_name=vm.name,
                os_type=vm.os,
                admin_user=vm.admin_user,
                spec=vm.guest_spec,
                platform=vm.platform(),
            )

    def boot_guests(self) -> dict[str, str]:
        with self.store.lock:
            running = [vm.key for vm in self.store.vms() if vm.power == "running"]
        return self.guests.start_many(running)

    def on_guest_shutdown(self, key: str) -> None:
        """The guest powered itself off: Azure shows the VM *stopped*, still allocated."""
        rg, _, name = key.partition("/")
        with self.store.lock:
            vm = self.store.vm(rg, name)
            if vm is not None and vm.power in ("running", "stopping"):
                vm.power = "stopped"
                vm.touch()

    def delete_vm(self, key: str) -> bool:
        rg, _, name = key.partition("/")
        with self.store.lock:
            vm = self.store.vm(rg, name)
            if vm is None:
                return False
            self.store.delete_vm(vm)
        # the guest's shutdown takes a moment; the request that triggered it should not wait
        threading.Thread(target=self.guests.remove, args=(vm.key,), daemon=True).start()
        return True

    # -- helpers for routes --------------------------------------------------------------------

    def subscription_json(self) -> dict[str, Any]:
        sub = self.store.subscription_id
        return {
            "id": f"/subscriptions/{sub}",
            "authorizationSource": "RoleBased",
            "managedByTenants": [],
            "subscriptionId": sub,
            "tenantId": self.store.tenant,
            "displayName": self.store.subscription_name,
            "state": "Enabled",
            "subscriptionPolicies": {
                "locationPlacementId": "Public_2014-09-01",
                "quotaId": "PayAsYouGo_2014-09-01",
                "spendingLimit": "Off",
            },
        }

    def check_subscription(self, sub: str) -> None:
        if sub.lower() != self.store.subscription_id:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")

    def check_rg(self, rg: str) -> str:
        name = self.store.rg_name(rg)
        if name is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")
        return name

    def vm_or_404(self, m: Mapping[str, str]) -> Vm:
        self.check_subscription(m["sub"])
        rg = self.check_rg(m["rg"])
        vm = self.store.vm(rg, m["name"])
        if vm is None:
            raise ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.Compute/virtualMachines/"
                f"{m['name']}' under resource group '{m['rg']}' was not found. For more "
                "details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return vm

    def operation_url(self, req: ArmRequest, op: Operation, *, monitor: bool = False) -> str:
        url = (
            f"{req.base_url}/subscriptions/{self.store.subscription_id}/providers/"
            f"Microsoft.Compute/locations/{op.location}/operations/{op.id}"
            f"?api-version={req.api_version or '2024-07-01'}"
        )
        return url + "&monitor=true" if monitor else url

    def start_operation(
        self,
        req: ArmRequest,
        *,
        kind: str,
        resource_id: str,
        location: str,
        vm_key: str | None,
        timing: str,
        work: Callable[[], Any] | None,
        finish: Callable[[Any], Any],
        fail: Callable[[], None],
        status: int = 202,
        body: Any = None,
    ) -> ArmReply:
        """Start an LRO and answer like ARM: 202 (or 201 + body for a PUT) and the poll URLs."""
        fault = self.faults.lro_outcome(kind, vm_key)
        outcome = Outcome()
        if fault is not None and fault.kind == "lro_never_ends":
            outcome = Outcome(never_ends=True, released=fault.released)
        elif fault is not None:
            outcome = Outcome(
                failed=(fault.code or DEFAULT_LRO_ERROR[0], fault.message or DEFAULT_LRO_ERROR[1])
            )
        duration = self.timings[timing]
        op = self.ops.start(
            kind,
            resource_id,
            location,
            duration=duration,
            outcome=outcome,
            work=work,
            finish=finish,
            fail=fail,
        )
        settle = self.timings["settle"]
        if not outcome.never_ends and duration <= settle:
            op.done.wait(settle)
        headers = {
            "Azure-AsyncOperation": self.operation_url(req, op),
            "Location": self.operation_url(req, op, monitor=True),
            "Retry-After": "1",
        }
        return ArmReply(status, body, headers)

    # -- the front door ----------------------------------------------------------------------

    def _match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed = False
        for candidate in ROUTES:
            found = candidate.pattern.match(path)
            if found is None:
                continue
            if candidate.method == method:
                return candidate, {k: unquote(v) for k, v in found.groupdict().items()}
            allowed = True
        if allowed:
            raise ArmError(
                405,
                "MethodNotAllowed",
                f"The requested method '{method}' is not allowed on this resource in azsim.",
            )
        raise ArmError(
            404,
            "InvalidResourceType",
            f"The resource type for path '{path}' could not "
            "be found in azsim (it serves the Microsoft.Compute subset imageready uses).",
        )

    def _authenticate(self, req: ArmRequest, base_url: str) -> dict[str, Any]:
        try:
            return self.directory.verify(req.header("Authorization"), self.faults.token_cutoff())
        except TokenError as err:
            authority = f"{base_url.replace('127.0.0.1', 'localhost')}/{self.store.tenant}"
            if err.cae:
                # a client that declared CAE gets a claims challenge and can recover in-flight
                cutoff = int(self.faults.token_cutoff() or time.time())
                claims = json.dumps({"access_token": {"nbf": {"essential": True, "value": str(cutoff)}}})
                encoded = base64.b64encode(claims.encode()).decode()
                challenge = (
                    f'Bearer authorization_uri="{authority}", error="insufficient_claims", claims="{encoded}"'
                )
            else:
                challenge = (
                    f'Bearer authorization_uri="{authority}", error="invalid_token", '
                    f'error_description="{err.message}"'
                )
            raise ArmError(401, err.code, err.message, {"WWW-Authenticate": challenge}) from None

    def _authorize(self, req: ArmRequest, matched: Route, facts: RequestFacts) -> None:
        denied = not self.scenario.principal.may(matched.action)
        if denied or self.faults.forbidden(facts):
            segments = req.path.rstrip("/").split("/")
            scope = "/".join(segments[: len(segments) - matched.scope_trim])
            principal = self.scenario.principal
            raise ArmError(
                403,
                "AuthorizationFailed",
                f"The client '{principal.client_id}' with "
                f"object id '{principal.object_id}' does not have authorization to "
                f"perform action '{matched.action}' over scope '{scope}' or the scope is "
                "invalid. If access was recently granted, please refresh your credentials.",
            )

    @staticmethod
    def _http_fault_reply(fault: Fault) -> ArmError:
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.kind == "throttle":
            return ArmError(
                429,
                "TooManyRequests",
                "The request is being throttled as the limit "
                "has been reached for operation type - Read_30Min. For more information, "
                "see - https://aka.ms/throttling",
                headers,
            )
        default_code = {
            500: "InternalServerError",
            502: "BadGateway",
            503: "ServiceUnavailable",
            504: "GatewayTimeout",
        }[fault.status]
        return ArmError(
            fault.status,
            fault.code or default_code,
            fault.message or "The service is temporarily unavailable; try again later.",
            headers,
        )

    def _throttle(self, req: ArmRequest, groups: Mapping[str, str]) -> dict[str, str]:
        """ARM's front door spends a token of the caller's buckets (rulebook THR-1..3)."""
        subscription = groups.get("sub")
        principal = str(req.claims.get("oid") or req.claims.get("appid") or "")
        try:
            return self.throttle.take(req.method, subscription, principal)
        except Throttled as err:
            scope = "subscription" if subscription else "tenant"
            what = {"reads": "read", "writes": "write", "deletes": "delete"}[err.kind]
            raise ArmError(
                429,
                "SubscriptionRequestsThrottled" if subscription else "TenantRequestsThrottled",
                f"Number of '{what}' requests for {scope} '{subscription or self.store.tenant}' actor "
                f"'{principal}' exceeded. Please try again after '{err.retry_after}' seconds after "
                "additional tokens are available. Refer to https://aka.ms/arm-throttling",
                {"Retry-After": str(err.retry_after), f"x-ms-ratelimit-remaining-{scope}-{err.kind}": "0"},
            ) from None

    def handle_arm(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes, base_url: str
    ) -> ArmReply:
        started = time.monotonic()
        split = urlsplit(target)
        path = unquote(split.path).rstrip("/") or "/"
        query = {
            k.lower() if k.lower() == "api-version" else k: v
            for k, v in parse_qsl(split.query, keep_blank_values=True)
        }
        req = ArmRequest(method, path, query, headers, body, base_url)
        correlation = req.header("x-ms-correlation-request-id") or str(uuid.uuid4())
        matched: Route | None = None
        try:
            for key in self.faults.due_deletions():
                self.delete_vm(key)
            matched, groups = self._match(method, path)
            vm_key = (
                f"{groups['rg']}/{groups['name']}"
                if "/virtualmachines/" in path.lower() and "name" in groups and "rg" in groups
                else None
            )
            facts = RequestFacts(method, path, vm_key, matched.action, matched.operation)
            delay = self.faults.latency(facts)
            if delay:
                time.sleep(delay)
            limits: dict[str, str] = {}
            if matched.auth:
                req.claims = self._authenticate(req, base_url)
                limits = self._throttle(req, groups)
                fault = self.faults.http_fault(facts)
                if fault is not None:
                    raise self._http_fault_reply(fault)
                self._authorize(req, matched, facts)
            reply = matched.handler(self, req, groups)
            reply.headers.update(limits)
        except ArmError as err:
            reply = ArmReply(
                err.status, {"error": {"code": err.code, "message": err.message}}, dict(err.headers)
            )
        reply.headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        reply.headers["x-ms-correlation-request-id"] = correlation
        self.log.add(
            {
                "time": time.time(),
                "kind": "arm",
                "method": method,
                "path": path,
                "query": {k: v for k, v in query.items() if k != "api-version"},
                "api_version": req.api_version,
                "operation": matched.operation if matched else None,
                "status": reply.status,
                "duration": round(time.monotonic() - started, 4),
                "correlation_id": correlation,
                "client_request_id": req.header("x-ms-client-request-id"),
            }
        )
        return reply

    # -- admin ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self.store.lock:
            vms = []
            for vm in self.store.vms():
                entry: dict[str, Any] = {
                    "id": vm.id,
                    "resource_group": vm.resource_group,
                    "name": vm.name,
                    "os": vm.os,
                    "power_state": vm.power,
                    "os_state": "generalized" if vm.generalized else "specialized",
                    "provisioning_state": vm.provisioning_state,
                    "tags": dict(vm.tags),
                    "etag": vm.etag,
                    "disks": {
                        "os": vm.os_disk.id if vm.os_disk else None,
                        "data": [disk.id for _, disk in sorted(vm.data_disks, key=lambda d: d[0])],
                    },
                }
                if vm.busy:
                    entry["operation_in_progress"] = vm.busy
                vms.append(entry)
        for entry in vms:
            guest = self.guests.describe(f"{entry['resource_group']}/{entry['name']}")
            if guest is not None:
                entry["guest"] = guest
        return {
            "tenant": self.store.tenant,
            "subscription": self.store.subscription_id,
            "scenario": self.scenario.source,
            "guests": "all" if self.guests.enabled else "none",
            "ready": self.ready.is_set(),
            "guest_errors": dict(self.guests.errors),
            "operations_in_progress": self.ops.in_progress(),
            "faults": self.faults.as_json(),
            "vms": vms,
        }

    def close(self) -> None:
        self.ops.shutdown()
        self.guests.close_all()

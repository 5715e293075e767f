"""What Azure's front door does to an ARM request before its route: authentication (a bearer
token, or a CAE claims challenge), throttling (rulebook THR-1..3), injected HTTP faults, and
RBAC (a 403 naming the action and the scope). :meth:`azsim.arm.Simulator.handle_arm` runs them
in that order."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from azsim.aad import TokenError
from azsim.arm_http import ArmError, ArmRequest, Route
from azsim.faults import Fault, RequestFacts
from azsim.throttling import Throttled

if TYPE_CHECKING:
    from azsim.arm import Simulator


def authenticate(sim: Simulator, req: ArmRequest, base_url: str) -> dict[str, Any]:
    """The claims of the request's bearer token, or a 401 with the challenge Azure sends."""
    try:
        return sim.directory.verify(req.header("Authorization"), sim.faults.token_cutoff())
    except TokenError as err:
        authority = f"{base_url.replace('127.0.0.1', 'localhost')}/{sim.store.tenant}"
        if err.cae:
            # a client that declared CAE gets a claims challenge and can recover in-flight
            cutoff = int(sim.faults.token_cutoff() or time.time())
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


def throttle(sim: Simulator, req: ArmRequest, groups: Mapping[str, str]) -> dict[str, str]:
    """ARM's front door spends a token of the caller's buckets (rulebook THR-1..3); the reply's
    ``x-ms-ratelimit-remaining-*`` headers, or a 429."""
    subscription = groups.get("sub")
    principal = str(req.claims.get("oid") or req.claims.get("appid") or "")
    try:
        return sim.throttle.take(req.method, subscription, principal)
    except Throttled as err:
        scope = "subscription" if subscription else "tenant"
        what = {"reads": "read", "writes": "write", "deletes": "delete"}[err.kind]
        raise ArmError(
            429,
            "SubscriptionRequestsThrottled" if subscription else "TenantRequestsThrottled",
            f"Number of '{what}' requests for {scope} '{subscription or sim.store.tenant}' actor "
            f"'{principal}' exceeded. Please try again after '{err.retry_after}' seconds after "
            "additional tokens are available. Refer to https://aka.ms/arm-throttling",
            {"Retry-After": str(err.retry_after), f"x-ms-ratelimit-remaining-{scope}-{err.kind}": "0"},
        ) from None


def http_fault_error(fault: Fault) -> ArmError:
    """The reply an injected ``throttle`` or ``error`` fault stands for."""
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


def authorize(sim: Simulator, req: ArmRequest, matched: Route, facts: RequestFacts) -> None:
    """A 403 unless the principal's roles grant the route's action (and no fault forbids it)."""
    denied = not sim.scenario.principal.may(matched.action)
    if denied or sim.faults.forbidden(facts):
        segments = req.path.rstrip("/").split("/")
        scope = "/".join(segments[: len(segments) - matched.scope_trim])
        principal = sim.scenario.principal
        raise ArmError(
            403,
            "AuthorizationFailed",
            f"The client '{principal.client_id}' with "
            f"object id '{principal.object_id}' does not have authorization to "
            f"perform action '{matched.action}' over scope '{scope}' or the scope is "
            "invalid. If access was recently granted, please refresh your credentials.",
        )

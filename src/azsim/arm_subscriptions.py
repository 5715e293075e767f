"""The subscription itself, the status of long-running operations, and the cloud's metadata:
what a client reads before and between the resource routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from azsim.arm_http import ArmError, ArmReply, ArmRequest, Route, route

if TYPE_CHECKING:
    from azsim.arm import Simulator

SUB = "/subscriptions/{sub}"


def subscription_json(sim: Simulator) -> dict[str, Any]:
    sub = sim.store.subscription_id
    return {
        "id": f"/subscriptions/{sub}",
        "authorizationSource": "RoleBased",
        "managedByTenants": [],
        "subscriptionId": sub,
        "tenantId": sim.store.tenant,
        "displayName": sim.store.subscription_name,
        "state": "Enabled",
        "subscriptionPolicies": {
            "locationPlacementId": "Public_2014-09-01",
            "quotaId": "PayAsYouGo_2014-09-01",
            "spendingLimit": "Off",
        },
    }


def list_subscriptions(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    return ArmReply(200, {"value": [subscription_json(sim)], "count": {"type": "Total", "value": 1}})


def get_subscription(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
    sim.check_subscription(m["sub"])
    return ArmReply(200, subscription_json(sim))


def get_operation(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
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


def cloud_metadata(sim: Simulator, req: ArmRequest, m: dict[str, str]) -> ArmReply:
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


ROUTES: list[Route] = [
    route(
        "GET",
        "/subscriptions",
        list_subscriptions,
        "Microsoft.Resources/subscriptions/read",
        "listSubscriptions",
    ),
    route("GET", SUB, get_subscription, "Microsoft.Resources/subscriptions/read", "getSubscription"),
    route(
        "GET",
        SUB + "/providers/Microsoft.Compute/locations/{loc}/operations/{op}",
        get_operation,
        "Microsoft.Compute/locations/operations/read",
        "operationStatus",
    ),
    route("GET", "/metadata/endpoints", cloud_metadata, "", "metadata", auth=False),
]

"""What an ARM route handler sees and returns: the request, the reply, ARM's error body."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from azsim.arm import Simulator


class ArmError(Exception):
    """An ARM error reply: ``{"error": {"code": ..., "message": ...}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass
class ArmRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]
    body: bytes
    #: scheme://host:port the client addressed (used for absolute LRO URLs)
    base_url: str
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def api_version(self) -> str:
        return self.query.get("api-version", "")

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> dict[str, Any]:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except ValueError:
            raise ArmError(
                400,
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized.",
            ) from None
        if not isinstance(data, dict):
            raise ArmError(400, "InvalidRequestContent", "The request content must be a JSON object.")
        return data


@dataclass
class ArmReply:
    status: int
    body: Any = None  # JSON-able; None sends an empty body
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[["Simulator", ArmRequest, dict[str, str]], ArmReply]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler
    #: the RBAC action this request needs (a 403 names it)
    action: str
    #: short name used by faults' ``operation`` key
    operation: str
    #: the request's scope drops this many trailing path segments (POST .../deallocate: 1)
    scope_trim: int = 0
    auth: bool = True


def route(
    method: str,
    template: str,
    handler: Handler,
    action: str,
    operation: str,
    *,
    scope_trim: int = 0,
    auth: bool = True,
) -> Route:
    """A route from a template such as ``/subscriptions/{sub}/resourceGroups/{rg}``."""
    pieces = re.split(r"(\{\w+\})", template)
    regex = "".join(
        f"(?P<{piece[1:-1]}>[^/]+)" if piece.startswith("{") else re.escape(piece) for piece in pieces
    )
    return Route(
        method,
        re.compile(f"^{regex}/?$", re.IGNORECASE),
        handler,
        action,
        operation,
        scope_trim,
        auth,
    )


def not_found(kind: str, name: str, rg: str) -> ArmError:
    return ArmError(
        404,
        "ResourceNotFound",
        f"The Resource '{kind}/{name}' under resource group "
        f"'{rg}' was not found. For more details please go to "
        "https://aka.ms/ARMResourceNotFoundFix",
    )


def not_allowed(message: str) -> ArmError:
    return ArmError(409, "OperationNotAllowed", message)


def invalid(message: str, code: str = "InvalidParameter") -> ArmError:
    return ArmError(400, code, message)


def string_tags(value: Any, where: str) -> dict[str, str]:
    """A tags object whose values are all strings (a VM's, a resource group's), else a 400."""
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise invalid(f"{where}: expected an object of string values.")
    return {str(k): v for k, v in value.items()}

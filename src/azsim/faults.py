"""Fault injection: what azsim does wrong on purpose, per scenario or added at runtime.

A fault applies to the ARM requests that match every key it gives (``method``, ``path`` substring,
``vm`` as ``rg/name``, ``operation``) and, with ``count``, to that many of them only. The kinds and
their keys are documented in ``scenarios/README.md``; :func:`parse_fault` is the one validator
used by the scenario loader, the admin API and ``azsim fault add``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: operations an lro_* fault can name (the ARM action's short name)
LRO_OPERATIONS = (
    "deallocate",
    "powerOff",
    "start",
    "restart",
    "runCommand",
    "createVm",
    "createDisk",
    "createSnapshot",
    "createImage",
    "createGalleryImageVersion",
)
_MATCH_KEYS = {"method", "path", "vm", "count"}
_KIND_KEYS: dict[str, set[str]] = {
    "latency": _MATCH_KEYS | {"seconds", "operation"},
    "throttle": _MATCH_KEYS | {"status", "retry_after", "operation"},
    "error": _MATCH_KEYS | {"status", "retry_after", "code", "message", "operation"},
    "lro_failed": {"operation", "vm", "count", "code", "message"},
    "lro_never_ends": {"operation", "vm", "count"},
    "delete_vm": {"vm", "after_requests", "after_seconds"},
    "token_expiry": {"after_seconds"},
    "forbidden": {"action", "vm", "method", "path", "count"},
    "guest_unreachable": {"vm", "count"},
    "guest_drop": {"vm", "count", "idle"},
}
#: faults on the network path to a guest (azsim.guestnet), not on ARM requests
GUEST_KINDS = ("guest_unreachable", "guest_drop")
_ERROR_STATUSES = (500, 502, 503, 504)


class FaultError(ValueError):
    """A fault definition that cannot be used; the message names the key."""


@dataclass
class Fault:
    """One injected fault. ``remaining`` is None for unlimited."""

    kind: str
    method: str | None = None
    path: str | None = None
    vm: str | None = None
    operation: str | None = None
    action: str | None = None
    seconds: float = 0.0
    status: int = 0
    retry_after: int | None = None
    code: str | None = None
    message: str | None = None
    after_requests: int | None = None
    after_seconds: float | None = None
    remaining: int | None = None
    id: str = ""
    added: float = field(default_factory=time.time)
    #: requests seen since the fault was added (delete_vm's after_requests)
    seen: int = 0
    fired: bool = False
    #: set when the fault is removed: operations an lro_never_ends fault held then end normally
    released: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def as_json(self) -> dict[str, Any]:
        shown = {
            "id": self.id,
            "kind": self.kind,
            "method": self.method,
            "path": self.path,
            "vm": self.vm,
            "operation": self.operation,
            "action": self.action,
            "seconds": self.seconds or None,
            "status": self.status or None,
            "retry_after": self.retry_after,
            "code": self.code,
            "message": self.message,
            "after_requests": self.after_requests,
            "after_seconds": self.after_seconds,
            "remaining": self.remaining,
            "fired": self.fired if self.kind in ("delete_vm", "token_expiry") else None,
            "idle": self.seconds if self.kind == "guest_drop" else None,
        }
        return {key: value for key, value in shown.items() if value is not None}


def _number(value: Any, where: str, *, integer: bool = False, minimum: float = 0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FaultError(f"{where}: expected a number, got {value!r}")
    if integer and not isinstance(value, int):
        raise FaultError(f"{where}: expected a whole number, got {value!r}")
    if value < minimum:
        raise FaultError(f"{where}: must be at least {minimum}, got {value!r}")
    return value


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise FaultError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def parse_fault(data: Any, where: str = "fault") -> Fault:
    """Validate one fault mapping; unknown keys and missing required keys are errors."""
    if not isinstance(data, Mapping):
        raise FaultError(f"{where}: expected a mapping with a 'kind', got {data!r}")
    kind = data.get("kind")
    if kind not in _KIND_KEYS:
        raise FaultError(f"{where}.kind: expected one of {', '.join(_KIND_KEYS)}, got {kind!r}")
    for key in data:
        if key != "kind" and key not in _KIND_KEYS[kind]:
            raise FaultError(f"{where}.{key}: unknown key for a {kind} fault")
    fault = Fault(kind=kind)
    if "method" in data:
        fault.method = _text(data["method"], f"{where}.method").upper()
    if "path" in data:
        fault.path = _text(data["path"], f"{where}.path")
    if "vm" in data:
        fault.vm = _text(data["vm"], f"{where}.vm")
        if fault.vm.count("/") != 1:
            raise FaultError(f"{where}.vm: expected RG/NAME, got {fault.vm!r}")
    if "count" in data:
        fault.remaining = int(_number(data["count"], f"{where}.count", integer=True, minimum=1))
    if "operation" in data:
        fault.operation = _text(data["operation"], f"{where}.operation")
    if kind in ("lro_failed", "lro_never_ends") and fault.operation not in LRO_OPERATIONS:
        raise FaultError(
            f"{where}.operation: expected one of {', '.join(LRO_OPERATIONS)}, got {fault.operation!r}"
        )
    if kind == "latency":
        if "seconds" not in data:
            raise FaultError(f"{where}.seconds: required for a latency fault")
        fault.seconds = _number(data["seconds"], f"{where}.seconds")
    if kind == "throttle":
        fault.status = int(_number(data.get("status", 429), f"{where}.status", integer=True))
        if fault.status != 429:
            raise FaultError(f"{where}.status: a throttle answers 429, got {fault.status}")
        fault.retry_after = int(_number(data.get("retry_after", 1), f"{where}.retry_after", integer=True))
    if kind == "error":
        fault.status = int(_number(data.get("status", 500), f"{where}.status", integer=True))
        if fault.status not in _ERROR_STATUSES:
            raise FaultError(f"{where}.status: expected one of {_ERROR_STATUSES}, got {fault.status}")
        if "retry_after" in data:
            fault.retry_after = int(_number(data["retry_after"], f"{where}.retry_after", integer=True))
    if kind in ("error", "lro_failed"):
        if "code" in data:
            fault.code = _text(data["code"], f"{where}.code")
        if "message" in data:
            fault.message = _text(data["message"], f"{where}.message")
    if kind == "delete_vm":
        if fault.vm is None:
            raise FaultError(f"{where}.vm: required for a delete_vm fault")
        if "after_requests" in data and "after_seconds" in data:
            raise FaultError(f"{where}: give after_requests or after_seconds, not both")
        if "after_seconds" in data:
            fault.after_seconds = _number(data["after_seconds"], f"{where}.after_seconds")
        else:
            fault.after_requests = int(
                _number(data.get("after_requests", 0), f"{where}.after_requests", integer=True)
            )
    if kind == "token_expiry":
        fault.after_seconds = _number(data.get("after_seconds", 0), f"{where}.after_seconds")
    if kind == "forbidden":
        fault.action = _text(data.get("action"), f"{where}.action")
    if kind in GUEST_KINDS and fault.vm is None:
        raise FaultError(f"{where}.vm: required for a {kind} fault")
    if kind == "guest_drop":
        fault.seconds = _number(data.get("idle", 0.5), f"{where}.idle", minimum=0.05)
        if fault.remaining is None:
            fault.remaining = 1  # one connection reset unless told otherwise
    return fault


@dataclass(frozen=True)
class RequestFacts:
    """What the fault matcher knows about one ARM request."""

    method: str
    path: str
    vm: str | None  # "rg/name" when the request is about a VM
    action: str  # e.g. Microsoft.Compute/virtualMachines/deallocate/action
    operation: str | None  # e.g. deallocate


class FaultSet:
    """The live faults of one azsim process; safe to use from request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, fault: Fault) -> str:
        with self._lock:
            fault.id = f"f{self._next_id}"
            fault.added = time.time()
            fault.released = threading.Event()  # a scenario's fault, added once per instance
            self._next_id += 1
            self._faults.append(fault)
            return fault.id

    def clear(self) -> int:
        with self._lock:
            count = len(self._faults)
            for fault in self._faults:
                fault.released.set()
            self._faults.clear()
            return count

    def remove(self, fault_id: str) -> bool:
        with self._lock:
            kept = [f for f in self._faults if f.id != fault_id]
            for fault in self._faults:
                if fault.id == fault_id:
                    fault.released.set()
            removed = len(kept) != len(self._faults)
            self._faults = kept
            return removed

    def as_json(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.as_json() for f in self._faults]

    @staticmethod
    def _matches(fault: Fault, request: RequestFacts) -> bool:
        if fault.remaining == 0:
            return False
        if fault.method and fault.method != request.method:
            return False
        if fault.path and fault.path.lower() not in request.path.lower():
            return False
        if fault.vm and (request.vm is None or fault.vm.lower() != request.vm.lower()):
            return False
        if fault.action and fault.action.lower() != request.action.lower():  # forbidden faults only
            return False
        return not (fault.operation and fault.operation != request.operation)

    def _take(self, kinds: tuple[str, ...], request: RequestFacts) -> Fault | None:
        """The first fault of one of ``kinds`` that matches ``request``, consumed."""
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and self._matches(fault, request):
                    self._consume(fault)
                    return fault
        return None

    @staticmethod
    def _consume(fault: Fault) -> None:
        if fault.remaining is not None:
            fault.remaining -= 1

    def latency(self, request: RequestFacts) -> float:
        """Seconds to stall this request (all matching latency faults add up)."""
        total = 0.0
        with self._lock:
            for fault in self._faults:
                if fault.kind == "latency" and self._matches(fault, request):
                    self._consume(fault)
                    total += fault.seconds
        return total

    def http_fault(self, request: RequestFacts) -> Fault | None:
        """The first matching throttle or error fault, consumed; None to serve normally."""
        return self._take(("throttle", "error"), request)

    def forbidden(self, request: RequestFacts) -> bool:
        """True when a forbidden fault denies this request's action."""
        return self._take(("forbidden",), request) is not None

    def lro_outcome(self, operation: str, vm: str | None) -> Fault | None:
        """An lro_failed or lro_never_ends fault for a starting operation, consumed."""
        return self._take(("lro_failed", "lro_never_ends"), RequestFacts("", "", vm, "", operation))

    def guest_fault(self, kind: str, vm: str, *, consume: bool) -> Fault | None:
        """The first live ``kind`` fault (guest_unreachable, guest_drop) of ``vm`` (rg/name)."""
        with self._lock:
            for fault in self._faults:
                if (
                    fault.kind == kind
                    and fault.remaining != 0
                    and fault.vm is not None
                    and fault.vm.lower() == vm.lower()
                ):
                    if consume:
                        self._consume(fault)
                    return fault
        return None

    def consume_guest_fault(self, fault: Fault) -> bool:
        """Use one count of ``fault`` if it has one left (two connections may race for it)."""
        with self._lock:
            if fault.remaining == 0 or not any(f is fault for f in self._faults):
                return False
            self._consume(fault)
            return True

    def due_deletions(self) -> list[str]:
        """Count one ARM request; return the VMs (rg/name) whose delete_vm fault fires now."""
        now = time.time()
        due: list[str] = []
        with self._lock:
            for fault in self._faults:
                if fault.kind != "delete_vm" or fault.fired or fault.vm is None:
                    continue
                fault.seen += 1
                by_count = fault.after_requests is not None and fault.seen > fault.after_requests
                by_time = fault.after_seconds is not None and now >= fault.added + fault.after_seconds
                if by_count or by_time:
                    fault.fired = True
                    due.append(fault.vm)
        return due

    def token_cutoff(self) -> float | None:
        """Tokens issued before the latest passed cutoff are expired; None if none passed."""
        now = time.time()
        cutoff: float | None = None
        with self._lock:
            for fault in self._faults:
                if fault.kind != "token_expiry":
                    continue
                moment = fault.added + (fault.after_seconds or 0.0)
                if now >= moment:
                    fault.fired = True
                    cutoff = moment if cutoff is None else max(cutoff, moment)
        return cutoff

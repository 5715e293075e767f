"""Long-running operations, as ARM runs them: started by a request, finished by a worker thread.

ARM answers the starting request with 202 and two URLs (``Azure-AsyncOperation`` for the status,
``Location`` for the result); :mod:`azsim.arm` renders those. This module only runs the work:
``work`` (outside the state lock: guest boot or shutdown, a Run Command script) and then, once the
operation's configured duration has passed, ``finish`` (inside the lock) to apply the end state.
A fault can make an operation end ``Failed`` (nothing applied, ``fail`` restores the state) or
never end at all.
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class OperationError(Exception):
    """Raised by ``work`` or ``finish`` to end an operation ``Failed`` with an ARM error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat()


@dataclass
class Operation:
    id: str
    kind: str
    resource_id: str
    location: str
    started: float = field(default_factory=time.time)
    ended: float | None = None
    status: str = "InProgress"
    error: dict[str, str] | None = None
    #: the body the Location URL answers with once Succeeded (None: empty body)
    result: Any = None
    done: threading.Event = field(default_factory=threading.Event)

    def status_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.id,
            "status": self.status,
            "startTime": _iso(self.started),
        }
        if self.ended is not None:
            body["endTime"] = _iso(self.ended)
        if self.error is not None:
            body["error"] = self.error
        return body


@dataclass(frozen=True)
class Outcome:
    """How a started operation is to end: normally, ``Failed`` with an error, or never."""

    failed: tuple[str, str] | None = None  # (code, message)
    never_ends: bool = False
    #: set when the fault that holds a never-ending operation is removed: it then ends normally
    #: (Azure's operations do reach a terminal state; azsim holds one only while told to)
    released: threading.Event | None = None


class Operations:
    """Every operation of one azsim process, by id; workers stop when ``shutdown`` is called."""

    def __init__(self, lock: threading.RLock) -> None:
        self._state_lock = lock
        self._lock = threading.Lock()
        self._ops: dict[str, Operation] = {}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def get(self, op_id: str) -> Operation | None:
        with self._lock:
            return self._ops.get(op_id.lower())

    def in_progress(self) -> int:
        with self._lock:
            return sum(1 for op in self._ops.values() if op.status == "InProgress")

    def start(
        self,
        kind: str,
        resource_id: str,
        location: str,
        *,
        duration: float,
        outcome: Outcome,
        work: Callable[[], Any] | None,
        finish: Callable[[Any], Any],
        fail: Callable[[], None],
    ) -> Operation:
        """Start an operation; the caller has already moved the resource to its transitional state.

        ``finish(work_result)`` runs under the state lock and returns the Location body.
        """
        op = Operation(id=str(uuid.uuid4()), kind=kind, resource_id=resource_id, location=location)
        with self._lock:
            self._ops[op.id] = op
        thread = threading.Thread(
            target=self._run,
            args=(op, duration, outcome, work, finish, fail),
            name=f"azsim-op-{kind}",
            daemon=True,
        )
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return op

    def _run(
        self,
        op: Operation,
        duration: float,
        outcome: Outcome,
        work: Callable[[], Any] | None,
        finish: Callable[[Any], Any],
        fail: Callable[[], None],
    ) -> None:
        deadline = op.started + duration
        if outcome.never_ends:
            while not (outcome.released is not None and outcome.released.is_set()):
                if self._stopping.wait(0.1):
                    return
            deadline = time.time() + duration
        try:
            if outcome.failed is not None:
                raise OperationError(*outcome.failed)
            result = work() if work is not None else None
            if self._stopping.wait(max(0.0, deadline - time.time())):
                return
            with self._state_lock:
                op.result = finish(result)
                op.status = "Succeeded"
        except OperationError as err:
            if self._stopping.wait(max(0.0, deadline - time.time())):
                return
            with self._state_lock:
                fail()
                op.error = {"code": err.code, "message": err.message}
                op.status = "Failed"
        except Exception as err:  # a guest crashed: report it like ARM would, keep serving
            with self._state_lock:
                fail()
                op.error = {
                    "code": "InternalExecutionError",
                    "message": f"An internal execution error occurred: {type(err).__name__}: {err}",
                }
                op.status = "Failed"
        op.ended = time.time()
        op.done.set()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop waiting workers (never-ending ones included) and join them briefly."""
        self._stopping.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

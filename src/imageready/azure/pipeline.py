"""What every ARM request goes through: the correlation id of its context, the audit record of a
mutating call (every ``x-ms-request-id``, polls included), pacing, a deadline carried into the
SDK's retries and polls, and long-running operations polled with progress lines."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO, Any

from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.mgmt.core.polling.arm_polling import ARMPolling

from imageready.arm_pacing import ArmPacer
from imageready.azure_errors import AzureError


@dataclass
class AzureCall:
    """Audit evidence of one mutating call: what, on what, when, and Azure's request ids."""

    operation: str
    resource_id: str
    started: float
    ended: float | None = None
    status: str = "InProgress"  # Succeeded | Failed | TimedOut
    request_ids: list[str] = field(default_factory=list)
    correlation_id: str = ""
    azure_async_operation: str | None = None
    error: str | None = None


#: the correlation id of the requests sent from this context (one per VM's facts, say)
_CORRELATION: ContextVar[str | None] = ContextVar("imageready_correlation", default=None)


@contextmanager
def correlated(correlation_id: str) -> Iterator[None]:
    """Send every ARM request of this block (threads started from its context included) with
    ``x-ms-correlation-request-id: correlation_id``, so that they read as one operation in Azure's
    logs. A mutating call keeps its own."""
    token = _CORRELATION.set(correlation_id)
    try:
        yield
    finally:
        _CORRELATION.reset(token)


class CallRecorder(SansIOHTTPPolicy[Any, Any]):
    """Sits after the retry policy: sees every attempt and poll, files ids under their call,
    and paces each attempt by what ARM said is left (:class:`ArmPacer`)."""

    def __init__(self, pacer: ArmPacer | None = None) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, AzureCall] = {}
        self.pacer = pacer or ArmPacer()

    def track(self, call: AzureCall) -> None:
        with self._lock:
            self._calls[call.correlation_id] = call

    def untrack(self, call: AzureCall) -> None:
        with self._lock:
            self._calls.pop(call.correlation_id, None)

    def on_request(self, request: PipelineRequest[Any]) -> None:
        headers = request.http_request.headers
        correlation = _CORRELATION.get()
        if correlation and "x-ms-correlation-request-id" not in headers:
            headers["x-ms-correlation-request-id"] = correlation
        self.pacer.before(request.http_request.method)

    def on_response(self, request: PipelineRequest[Any], response: PipelineResponse[Any, Any]) -> None:
        self.pacer.after(
            request.http_request.method, response.http_response.status_code, response.http_response.headers
        )
        correlation = request.http_request.headers.get("x-ms-correlation-request-id")
        if not correlation:
            return
        with self._lock:
            call = self._calls.get(correlation)
            if call is None:
                return
            headers = response.http_response.headers
            request_id = headers.get("x-ms-request-id")
            if request_id:
                call.request_ids.append(request_id)
            async_op = headers.get("Azure-AsyncOperation")
            if async_op and call.azure_async_operation is None:
                call.azure_async_operation = async_op


class PooledTransport(RequestsTransport):  # type: ignore[misc]  # requests is untyped here
    """azure-core's requests transport with room for ``pool`` connections to one host, so that
    concurrent reads reuse their TLS connections instead of opening and dropping extra ones."""

    def __init__(self, pool: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pool = pool

    def _init_session(self, session: Any) -> None:
        super()._init_session(session)
        for adapter in {id(a): a for a in session.adapters.values()}.values():
            adapter._pool_maxsize = self._pool
            adapter.init_poolmanager(adapter._pool_connections, self._pool, block=adapter._pool_block)


class DeadlinePassed(Exception):
    """Raised inside the pipeline (or the poller thread) when a call's deadline passes. Not an
    azure-core error, so the retry policy lets it through instead of retrying."""


#: the deadline (``time.monotonic()``) of the call the current thread is making, if any
_call_deadline = threading.local()
#: the per-call option an LRO's polls carry their deadline in (they run in the poller's thread)
DEADLINE_OPTION = "imageready_deadline"
#: how long one connection attempt may take, at most
CONNECT_TIMEOUT = 15.0


class DeadlinePolicy(SansIOHTTPPolicy[Any, Any]):
    """Every HTTP attempt of a call gets at most the time left before the call's deadline, as its
    connection and read timeouts; an attempt that would start past it ends the call. Without this
    a synchronous call (``generalize``) answered late waits the transport's read timeout, whatever
    the operation's deadline says. Sits after the retry policy: it sees each attempt."""

    def on_request(self, request: PipelineRequest[Any]) -> None:
        options = request.context.options
        carried = options.pop(DEADLINE_OPTION, None)
        if carried is not None:
            request.context[DEADLINE_OPTION] = carried
        deadline = request.context.get(DEADLINE_OPTION) or getattr(_call_deadline, "value", None)
        if deadline is None:
            return
        left = float(deadline) - time.monotonic()
        if left <= 0:
            raise DeadlinePassed
        options["read_timeout"] = max(0.1, left)
        options["connection_timeout"] = max(0.1, min(CONNECT_TIMEOUT, left))


class Deadline:
    """``with Deadline(seconds):`` the calls this thread makes inside end by then (an outer,
    nearer deadline stays)."""

    def __init__(self, seconds: float) -> None:
        self.moment = time.monotonic() + seconds
        self._outer: float | None = None

    def __enter__(self) -> Deadline:
        self._outer = getattr(_call_deadline, "value", None)
        if self._outer is not None:
            self.moment = min(self.moment, self._outer)
        _call_deadline.value = self.moment
        return self

    def __exit__(self, *exc: object) -> None:
        _call_deadline.value = self._outer

    @property
    def passed(self) -> bool:
        # a read timeout fires a little before the moment itself
        return time.monotonic() >= self.moment - 0.5


class WatchedPolling(ARMPolling):
    """ARM polling that honours Retry-After, reports progress and gives up at a deadline.

    azure-core's polling waits ``Retry-After`` (or the interval) between status polls; this
    overrides that wait (``_delay``, azure-core's own hook) to sleep in slices, report progress
    about every ``progress_every`` seconds and raise once the deadline has passed.
    """

    def __init__(
        self,
        interval: float,
        *,
        label: str,
        started: float,
        deadline: float,
        progress: Callable[[str], None] | None,
        progress_every: float,
        **operation_config: Any,
    ) -> None:
        super().__init__(interval, **operation_config)
        self._label = label
        self._started = started
        self._deadline = deadline
        self._progress = progress
        self._progress_every = progress_every
        self._next_progress = started + progress_every

    def _delay(self) -> None:
        wait = self._extract_delay()
        now = time.monotonic()
        end = now + wait
        limit = self._started + self._deadline
        while True:
            now = time.monotonic()
            if now >= limit:
                raise DeadlinePassed
            if now >= self._next_progress:
                if self._progress is not None:
                    self._progress(
                        f"{self._label}: waiting for Azure ({now - self._started:.0f} s / "
                        f"deadline {self._deadline:.0f} s)"
                    )
                self._next_progress = now + self._progress_every
            if now >= end:
                return
            self._sleep(max(0.0, min(end, limit, self._next_progress) - now))


def quiet_sdk_fallback_logging() -> None:
    """Keep the SDK's multi-line warnings (e.g. DefaultAzureCredential's list of attempts) off
    a bare terminal: with no handler configured, logging would print them; the one-line
    AzureError says it. Configured handlers (pytest's capture, an app's) still receive them."""
    sdk = logging.getLogger("azure")
    if not any(isinstance(h, logging.NullHandler) for h in sdk.handlers):
        sdk.addHandler(logging.NullHandler())


def raw_json(pipeline_response: Any, deserialized: Any, headers: Any) -> Any:
    """``cls`` for SDK calls: the body as Azure sent it (None when empty)."""
    response = pipeline_response.http_response
    text = response.text()
    return json.loads(text) if text else None


def json_body(body: Mapping[str, Any]) -> IO[bytes]:
    """A request body sent exactly as written (ARM REST JSON), not through the SDK's models."""
    return io.BytesIO(json.dumps(body).encode("utf-8"))


def id_parts(resource_id: str, kind: str) -> tuple[str, str]:
    """(resource group, name) of a ``.../resourceGroups/RG/providers/Microsoft.Compute/KIND/NAME`` id."""
    match = re.match(
        rf"^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft\.Compute/{kind}/([^/]+)/?$",
        resource_id,
        re.IGNORECASE,
    )
    if match is None:
        raise AzureError(f"{resource_id!r} is not a Microsoft.Compute/{kind} resource id")
    return match.group(1), match.group(2)

"""Azure access for the harness: credential, cloud endpoints, long-running operations with
deadlines and progress, bounded retries, one-line errors, and the audit trail of every change.

Everything goes through the real SDKs (azure-identity, azure-mgmt-compute). Results are the ARM
REST JSON (camelCase), exactly as Azure sent it. Each mutating call is an :class:`AzureCall` in
``AzureSession.calls``: correlation id, every ``x-ms-request-id`` Azure returned (retries and
polls included), the ``Azure-AsyncOperation`` URL, and how it ended.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar, cast
from urllib.parse import urlsplit

from azure.core import MatchConditions
from azure.core.credentials import TokenCredential
from azure.core.pipeline import PipelineRequest, PipelineResponse
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest
from azure.identity import DefaultAzureCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy
from azure.mgmt.core.polling.arm_polling import ARMPolling

from imageready.arm_pacing import ArmPacer
from imageready.azure_errors import (
    AzureAuthError,
    AzureConflict,
    AzureConnectionError,
    AzureError,
    AzureForbidden,
    AzureNotFound,
    AzurePreconditionFailed,
    AzureTimeout,
    map_error,
)
from imageready.target import VmRef

__all__ = [
    "AzureAuthError",
    "AzureCall",
    "AzureConflict",
    "AzureConnectionError",
    "AzureError",
    "AzureForbidden",
    "AzureNotFound",
    "AzurePreconditionFailed",
    "AzureSession",
    "AzureTimeout",
    "CloudSettings",
    "correlated",
    "resolve_ca_bundle",
    "resolve_cloud",
]

T = TypeVar("T")
NETWORK_API_VERSION = "2023-11-01"
_HOST_NAME = re.compile(r"^[A-Za-z0-9.\-]+(:\d+)?$")


@dataclass(frozen=True)
class CloudSettings:
    """Where ARM and Entra ID are for one cloud, and the token audience ARM expects."""

    name: str
    arm_endpoint: str
    authority_host: str
    audience: str

    @property
    def scope(self) -> str:
        return self.audience.rstrip("/") + "/.default"

    @property
    def known_authority(self) -> bool:
        """True for Microsoft's own clouds, where MSAL's instance discovery is right."""
        return self.authority_host in {c.authority_host for c in CLOUDS.values()}


CLOUDS = {
    "public": CloudSettings(
        "public",
        "https://management.azure.com/",
        "https://login.microsoftonline.com",
        "https://management.azure.com/",
    ),
    "usgov": CloudSettings(
        "usgov",
        "https://management.usgovcloudapi.net/",
        "https://login.microsoftonline.us",
        "https://management.usgovcloudapi.net/",
    ),
    "china": CloudSettings(
        "china",
        "https://management.chinacloudapi.cn/",
        "https://login.chinacloudapi.cn",
        "https://management.chinacloudapi.cn/",
    ),
}
_ALIASES = {"azurecloud": "public", "azureusgovernment": "usgov", "azurechinacloud": "china"}
#: the classic ARM audience; Azure Stack and other custom clouds accept it
CUSTOM_AUDIENCE = "https://management.core.windows.net/"


def _https_url(value: str, source: str) -> str:
    text = value.strip()
    if "://" not in text and _HOST_NAME.match(text):
        text = "https://" + text
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.netloc:
        raise AzureError(f"{source} {value!r}: expected an https:// URL")
    return text


def resolve_cloud(name: str | None = None, arm_endpoint: str | None = None) -> CloudSettings:
    """The cloud from the option or ``IMAGEREADY_CLOUD`` (public|usgov|china|custom).

    A custom ARM endpoint comes from the option or ``IMAGEREADY_ARM_ENDPOINT`` (and selects
    ``custom`` when no cloud is named); the authority from ``AZURE_AUTHORITY_HOST``, else the
    cloud's own; a custom audience from ``IMAGEREADY_ARM_AUDIENCE``.
    """
    chosen = (name or os.environ.get("IMAGEREADY_CLOUD") or "").strip().lower()
    endpoint = arm_endpoint or os.environ.get("IMAGEREADY_ARM_ENDPOINT") or None
    chosen = _ALIASES.get(chosen, chosen) or ("custom" if endpoint else "public")
    if chosen not in (*CLOUDS, "custom"):
        raise AzureError(f"cloud {chosen!r}: expected one of public, usgov, china, custom")
    authority_env = os.environ.get("AZURE_AUTHORITY_HOST")
    if chosen == "custom":
        if not endpoint:
            raise AzureError("cloud 'custom' needs an ARM endpoint (option or IMAGEREADY_ARM_ENDPOINT)")
        arm = _https_url(endpoint, "ARM endpoint").rstrip("/") + "/"
        authority = _https_url(authority_env, "AZURE_AUTHORITY_HOST") if authority_env else None
        return CloudSettings(
            name="custom",
            arm_endpoint=arm,
            authority_host=(authority or CLOUDS["public"].authority_host).rstrip("/"),
            audience=os.environ.get("IMAGEREADY_ARM_AUDIENCE") or CUSTOM_AUDIENCE,
        )
    if arm_endpoint:
        raise AzureError(f"an ARM endpoint was given with cloud {chosen!r}; use cloud 'custom'")
    cloud = CLOUDS[chosen]
    if authority_env:
        authority = _https_url(authority_env, "AZURE_AUTHORITY_HOST").rstrip("/")
        cloud = CloudSettings(cloud.name, cloud.arm_endpoint, authority, cloud.audience)
    return cloud


def resolve_ca_bundle(option: str | None = None) -> str | None:
    """The CA bundle from the option or ``IMAGEREADY_CA_BUNDLE``; None for the system store."""
    value = option or os.environ.get("IMAGEREADY_CA_BUNDLE") or None
    if value is not None and not os.path.isfile(value):
        raise AzureError(f"CA bundle {value!r} does not exist")
    return value


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


class _CallRecorder(SansIOHTTPPolicy[Any, Any]):
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


class _PooledTransport(RequestsTransport):  # type: ignore[misc]  # requests is untyped here
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


class _DeadlinePassed(Exception):
    """Raised inside the pipeline (or the poller thread) when a call's deadline passes. Not an
    azure-core error, so the retry policy lets it through instead of retrying."""


#: the deadline (``time.monotonic()``) of the call the current thread is making, if any
_call_deadline = threading.local()
#: the per-call option an LRO's polls carry their deadline in (they run in the poller's thread)
DEADLINE_OPTION = "imageready_deadline"
#: how long one connection attempt may take, at most
CONNECT_TIMEOUT = 15.0


class _DeadlinePolicy(SansIOHTTPPolicy[Any, Any]):
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
            raise _DeadlinePassed
        options["read_timeout"] = max(0.1, left)
        options["connection_timeout"] = max(0.1, min(CONNECT_TIMEOUT, left))


class _Deadline:
    """``with _Deadline(seconds):`` the calls this thread makes inside end by then (an outer,
    nearer deadline stays)."""

    def __init__(self, seconds: float) -> None:
        self.moment = time.monotonic() + seconds
        self._outer: float | None = None

    def __enter__(self) -> _Deadline:
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


class _WatchedPolling(ARMPolling):
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
                raise _DeadlinePassed
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


def _quiet_sdk_fallback_logging() -> None:
    """Keep the SDK's multi-line warnings (e.g. DefaultAzureCredential's list of attempts) off
    a bare terminal: with no handler configured, logging would print them; the one-line
    AzureError says it. Configured handlers (pytest's capture, an app's) still receive them."""
    sdk = logging.getLogger("azure")
    if not any(isinstance(h, logging.NullHandler) for h in sdk.handlers):
        sdk.addHandler(logging.NullHandler())


def _raw_json(pipeline_response: Any, deserialized: Any, headers: Any) -> Any:
    """``cls`` for SDK calls: the body as Azure sent it (None when empty)."""
    response = pipeline_response.http_response
    text = response.text()
    return json.loads(text) if text else None


def _json_body(body: Mapping[str, Any]) -> IO[bytes]:
    """A request body sent exactly as written (ARM REST JSON), not through the SDK's models."""
    return io.BytesIO(json.dumps(body).encode("utf-8"))


def _id_parts(resource_id: str, kind: str) -> tuple[str, str]:
    """(resource group, name) of a ``.../resourceGroups/RG/providers/Microsoft.Compute/KIND/NAME`` id."""
    match = re.match(
        rf"^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/Microsoft\.Compute/{kind}/([^/]+)/?$",
        resource_id,
        re.IGNORECASE,
    )
    if match is None:
        raise AzureError(f"{resource_id!r} is not a Microsoft.Compute/{kind} resource id")
    return match.group(1), match.group(2)


class AzureSession:
    """One subscription, one credential, one ARM client; reuse it for a whole run."""

    def __init__(
        self,
        subscription_id: str,
        *,
        cloud: CloudSettings,
        ca_bundle: str | None = None,
        lro_deadline: float = 1800,
        poll_interval: float = 5,
        progress: Callable[[str], None] | None = None,
        credential: TokenCredential | None = None,
        progress_interval: float = 10,
        retry_total: int = 4,
        retry_backoff: float = 0.8,
        read_timeout: float = 120,
        read_deadline: float = 120,
        max_connections: int = 10,
        pacer: ArmPacer | None = None,
    ) -> None:
        _quiet_sdk_fallback_logging()
        if ca_bundle is not None and not os.path.isfile(ca_bundle):
            raise AzureError(f"CA bundle {ca_bundle!r} does not exist")
        self.subscription_id = subscription_id
        self.cloud = cloud
        self.lro_deadline = lro_deadline
        self.poll_interval = poll_interval
        self.progress = progress
        self.progress_interval = progress_interval
        self.retry_total = retry_total
        #: how long one read (a GET, retries and Retry-After waits included) may take
        self.read_deadline = read_deadline
        self.calls: list[AzureCall] = []
        transport: dict[str, Any] = {"connection_verify": ca_bundle} if ca_bundle else {}
        self._owns_credential = credential is None
        if credential is None:
            # Instance discovery asks login.microsoftonline.com about the authority: right for
            # Microsoft's clouds, wrong (and off-box) for a custom authority such as azsim.
            discovery = {} if cloud.known_authority else {"disable_instance_discovery": True}
            credential = DefaultAzureCredential(authority=cloud.authority_host, **discovery, **transport)
        self._credential: TokenCredential = credential
        self._recorder = _CallRecorder(pacer)
        self._client = ComputeManagementClient(
            credential,
            subscription_id,
            base_url=cloud.arm_endpoint,
            credential_scopes=[cloud.scope],
            polling_interval=poll_interval,
            retry_total=retry_total,
            retry_status=retry_total,
            retry_backoff_factor=retry_backoff,
            retry_backoff_max=60,
            connection_timeout=15,
            read_timeout=read_timeout,
            custom_hook_policy=self._recorder,
            per_retry_policies=[_DeadlinePolicy()],
            # CAE: a token revoked (or expired early) mid-run is answered by a claims
            # challenge, which this policy meets with a fresh token instead of failing
            authentication_policy=ARMChallengeAuthenticationPolicy(credential, cloud.scope, enable_cae=True),
            user_agent="imageready",
            transport=_PooledTransport(
                max(10, max_connections), connection_timeout=15, read_timeout=read_timeout, **transport
            ),
        )

    def __repr__(self) -> str:
        return f"AzureSession(subscription={self.subscription_id}, cloud={self.cloud.name})"

    @property
    def pacer(self) -> ArmPacer:
        """What paces this session's requests (waits and 429s seen, for progress and tests)."""
        return self._recorder.pacer

    def __enter__(self) -> AzureSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()
        if self._owns_credential:
            close = getattr(self._credential, "close", None)
            if callable(close):
                close()

    # -- plumbing ------------------------------------------------------------------------------

    def _fail(self, error: Exception, what: str, target: str, not_found: str | None = None) -> AzureError:
        return map_error(
            error,
            what=what,
            target=target,
            arm_endpoint=self.cloud.arm_endpoint,
            authority=self.cloud.authority_host,
            not_found=not_found,
        )

    def _read(self, what: str, target: str, fetch: Callable[[], T], not_found: str | None = None) -> T:
        deadline = _Deadline(self.read_deadline)
        late = (
            f"{what} {target}: no answer from Azure within the {self.read_deadline:.0f} s deadline of a read"
        )
        try:
            with deadline:
                return fetch()
        except _DeadlinePassed:
            raise AzureTimeout(late) from None
        except Exception as err:  # every SDK failure becomes one AzureError line
            if deadline.passed:
                raise AzureTimeout(late) from None
            raise self._fail(err, what, target, not_found) from None

    def _vm_missing(self, ref: VmRef) -> str:
        return f"VM {ref.key} not found in subscription {ref.subscription}"

    def _change(
        self,
        operation: str,
        resource_id: str,
        target: str,
        run: Callable[[dict[str, Any], ARMPolling], T],
        not_found: str | None = None,
    ) -> tuple[T, AzureCall]:
        """Run one mutating call with its audit record, deadline, progress and error mapping.

        ``run(kwargs, polling)`` issues the SDK call; ``kwargs`` carries the correlation header.
        """
        call = AzureCall(operation, resource_id, time.time(), correlation_id=str(uuid.uuid4()))
        self.calls.append(call)
        self._recorder.track(call)
        headers = {"x-ms-correlation-request-id": call.correlation_id}
        label = f"{operation} {target}"
        deadline = _Deadline(self.lro_deadline)
        polling = _WatchedPolling(
            self.poll_interval,
            label=label,
            started=time.monotonic(),
            deadline=self.lro_deadline,
            progress=self.progress,
            progress_every=self.progress_interval,
            path_format_arguments={"endpoint": self.cloud.arm_endpoint.rstrip("/")},
            headers=headers,
            # the polls run in the poller's own thread: they carry the deadline with them
            **{DEADLINE_OPTION: deadline.moment},
        )
        try:
            # every request of the call (synchronous ones such as generalize included) ends by the
            # deadline, not by the transport's read timeout
            with deadline:
                result = run({"headers": dict(headers)}, polling)
            call.status = "Succeeded"
            return result, call
        except _DeadlinePassed:
            call.status = "TimedOut"
            error: AzureError = AzureTimeout(
                f"{label}: not finished within the {self.lro_deadline:.0f} s deadline; the operation "
                f"may still complete in Azure (correlation id {call.correlation_id})"
            )
            call.error = str(error)
            raise error from None
        except Exception as err:  # mapped to one line, recorded, re-raised
            if deadline.passed:
                call.status = "TimedOut"
                error = AzureTimeout(
                    f"{label}: no answer within the {self.lro_deadline:.0f} s deadline; the operation may "
                    f"still complete in Azure (correlation id {call.correlation_id})"
                )
                call.error = str(error)
                raise error from None
            call.status = "Failed"
            error = self._fail(err, operation, target, not_found)
            call.error = str(error)
            raise error from None
        finally:
            call.ended = time.time()
            self._recorder.untrack(call)

    # -- identity ------------------------------------------------------------------------------

    def operator_identity(self) -> dict[str, str]:
        """Who is acting, from the ARM token's claims: oid, upn or appid, tid, name. No token."""
        try:
            token = self._credential.get_token(self.cloud.scope, enable_cae=True).token
        except Exception as err:  # same one-line mapping as ARM calls
            raise self._fail(err, "sign in", self.cloud.authority_host) from None
        parts = token.split(".")
        if len(parts) != 3:
            return {}
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            return {}
        identity: dict[str, str] = {}
        for key, names in (
            ("oid", ("oid",)),
            ("tid", ("tid",)),
            ("upn", ("upn", "unique_name", "preferred_username")),
            ("appid", ("appid", "azp")),
            ("name", ("name", "app_displayname")),
            ("idtyp", ("idtyp",)),
        ):
            for claim in names:
                if isinstance(claims.get(claim), str) and claims[claim]:
                    identity[key] = claims[claim]
                    break
        return identity

    # -- reads ---------------------------------------------------------------------------------

    def get_vm(self, ref: VmRef, *, instance_view: bool = True) -> dict[str, Any]:
        vms = self._client.virtual_machines
        result: dict[str, Any] = self._read(
            "get",
            ref.key,
            lambda: cast(
                dict[str, Any],
                vms.get(
                    ref.resource_group,
                    ref.name,
                    expand="instanceView" if instance_view else None,
                    cls=_raw_json,
                ),
            ),
            self._vm_missing(ref),
        )
        return result

    def get_resource(self, resource_id: str, api_version: str) -> dict[str, Any]:
        """Any ARM resource by id (a NIC, a disk encryption set, ...)."""
        request = HttpRequest("GET", f"{resource_id}?api-version={api_version}")

        def fetch() -> dict[str, Any]:
            response = self._client.send_request(request)
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body

        return self._read("get", resource_id, fetch, f"{resource_id} not found")

    def get_disk(self, disk_id: str) -> dict[str, Any]:
        rg, name = _id_parts(disk_id, "disks")
        disks = self._client.disks
        result: dict[str, Any] = self._read(
            "get disk",
            disk_id,
            lambda: cast(dict[str, Any], disks.get(rg, name, cls=_raw_json)),
            f"disk {disk_id} not found",
        )
        return result

    def get_snapshot(self, snapshot_id: str) -> dict[str, Any]:
        rg, name = _id_parts(snapshot_id, "snapshots")
        snapshots = self._client.snapshots
        result: dict[str, Any] = self._read(
            "get snapshot",
            snapshot_id,
            lambda: cast(dict[str, Any], snapshots.get(rg, name, cls=_raw_json)),
            f"snapshot {snapshot_id} not found",
        )
        return result

    def list_extensions(self, ref: VmRef) -> list[dict[str, Any]]:
        extensions = self._client.virtual_machine_extensions
        body: dict[str, Any] = self._read(
            "list extensions",
            ref.key,
            lambda: cast(dict[str, Any], extensions.list(ref.resource_group, ref.name, cls=_raw_json)),
            self._vm_missing(ref),
        )
        value: list[dict[str, Any]] = (body or {}).get("value", [])
        return value

    # -- VM power and state --------------------------------------------------------------------

    def _vm_lro(self, operation: str, ref: VmRef, begin: Callable[..., Any]) -> AzureCall:
        def run(kwargs: dict[str, Any], polling: ARMPolling) -> None:
            begin(ref.resource_group, ref.name, polling=polling, cls=lambda *a: None, **kwargs).result()

        return self._change(operation, ref.id, ref.key, run, self._vm_missing(ref))[1]

    def deallocate(self, ref: VmRef) -> AzureCall:
        return self._vm_lro("deallocate", ref, self._client.virtual_machines.begin_deallocate)

    def power_off(self, ref: VmRef) -> AzureCall:
        return self._vm_lro("power off", ref, self._client.virtual_machines.begin_power_off)

    def start(self, ref: VmRef) -> AzureCall:
        return self._vm_lro("start", ref, self._client.virtual_machines.begin_start)

    def generalize(self, ref: VmRef) -> AzureCall:
        """Mark a stopped VM generalized (synchronous in Azure; it can never start again)."""
        vms = self._client.virtual_machines

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> None:
            vms.generalize(ref.resource_group, ref.name, **kwargs)

        return self._change("generalize", ref.id, ref.key, run, self._vm_missing(ref))[1]

    def update_tags(self, ref: VmRef, tags: dict[str, str], *, if_match: str | None) -> dict[str, Any]:
        """Replace the VM's tags (ARM PATCH semantics: merge with the current tags first to add
        one). With ``if_match`` (the etag read before), a concurrent change fails with
        :class:`AzurePreconditionFailed` instead of being overwritten."""
        vms = self._client.virtual_machines

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> dict[str, Any]:
            condition = MatchConditions.IfNotModified if if_match else None
            poller = vms.begin_update(
                ref.resource_group,
                ref.name,
                _json_body({"tags": dict(tags)}),
                etag=if_match,
                match_condition=condition,
                polling=polling,
                cls=_raw_json,
                **kwargs,
            )
            return cast(dict[str, Any], poller.result())

        return self._change("update tags", ref.id, ref.key, run, self._vm_missing(ref))[0]

    def run_command(self, ref: VmRef, command_id: str, script: list[str]) -> tuple[str, str]:
        """Azure Run Command; returns (stdout, stderr). Azure keeps only the last 4096 bytes of
        each, and reports no exit code on Windows: scripts should print what they need."""
        vms = self._client.virtual_machines

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> Any:
            body = {"commandId": command_id, "script": list(script)}
            return vms.begin_run_command(
                ref.resource_group, ref.name, _json_body(body), polling=polling, cls=_raw_json, **kwargs
            ).result()

        result = self._change("run command", ref.id, ref.key, run, self._vm_missing(ref))[0]
        return parse_run_command_output(result)

    # -- copies and images ---------------------------------------------------------------------

    def create_snapshot(
        self, rg: str, name: str, source_disk_id: str, location: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        snapshots = self._client.snapshots
        body = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "creationData": {"createOption": "Copy", "sourceResourceId": source_disk_id},
                "incremental": False,
            },
        }
        resource_id = self._compute_id(rg, "snapshots", name)

        return self._create(
            "create snapshot", resource_id, resource_id, snapshots.begin_create_or_update, rg, name, body=body
        )

    def create_disk_from_snapshot(
        self, rg: str, name: str, snapshot_id: str, location: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        disks = self._client.disks
        body = {
            "location": location,
            "tags": dict(tags),
            "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": snapshot_id}},
        }
        resource_id = self._compute_id(rg, "disks", name)

        return self._create(
            "create disk", resource_id, resource_id, disks.begin_create_or_update, rg, name, body=body
        )

    def _create_nic_like(
        self, rg: str, name: str, source_nic_id: str, location: str, tags: dict[str, str]
    ) -> str:
        """A NIC for a copy VM, in the source NIC's subnet; returns its id."""
        source = self.get_resource(source_nic_id, NETWORK_API_VERSION)
        configs = (source.get("properties") or {}).get("ipConfigurations") or [{}]
        subnet = ((configs[0].get("properties") or {}).get("subnet") or {}).get("id")
        resource_id = (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{rg}"
            f"/providers/Microsoft.Network/networkInterfaces/{name}"
        )
        body = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "ipConfigurations": [
                    {
                        "name": "ipconfig1",
                        "properties": {"subnet": {"id": subnet}, "privateIPAllocationMethod": "Dynamic"},
                    }
                ]
            },
        }

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> None:
            url = f"{resource_id}?api-version={NETWORK_API_VERSION}"
            response = self._client.send_request(HttpRequest("PUT", url, json=body), **kwargs)
            response.raise_for_status()
            deadline = time.monotonic() + self.lro_deadline
            state = (response.json().get("properties") or {}).get("provisioningState", "Succeeded")
            while state not in ("Succeeded", "Failed", "Canceled"):
                if time.monotonic() >= deadline:
                    raise _DeadlinePassed
                time.sleep(min(self.poll_interval, 5))
                state = (self.get_resource(resource_id, NETWORK_API_VERSION).get("properties") or {}).get(
                    "provisioningState", "Succeeded"
                )
            if state != "Succeeded":
                raise AzureError(f"create network interface {resource_id} ended {state}")

        self._change("create network interface", resource_id, resource_id, run)
        return resource_id

    def create_vm_from_disks(
        self,
        rg: str,
        name: str,
        *,
        source_vm: Mapping[str, Any],
        os_disk_id: str,
        data_disks: Sequence[Mapping[str, Any]],
        tags: dict[str, str],
    ) -> dict[str, Any]:
        """A copy VM that attaches ``os_disk_id`` and ``data_disks`` (``{"lun": n, "id": disk_id}``),
        with the source VM's size, location, plan and security settings and a NIC in the source
        NIC's subnet. Returns the new VM."""
        props = source_vm.get("properties") or {}
        location = str(source_vm.get("location"))
        nics = (props.get("networkProfile") or {}).get("networkInterfaces") or []
        if not nics:
            raise AzureError(f"create VM {rg}/{name}: the source VM has no network interface to copy")
        nic_id = self._create_nic_like(rg, f"{name}-nic", nics[0]["id"], location, tags)
        os_type = ((props.get("storageProfile") or {}).get("osDisk") or {}).get("osType")
        body: dict[str, Any] = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "hardwareProfile": {"vmSize": (props.get("hardwareProfile") or {}).get("vmSize")},
                "storageProfile": {
                    "osDisk": {
                        "osType": os_type,
                        "createOption": "Attach",
                        "managedDisk": {"id": os_disk_id},
                    },
                    "dataDisks": [
                        {"lun": int(d["lun"]), "createOption": "Attach", "managedDisk": {"id": str(d["id"])}}
                        for d in data_disks
                    ],
                },
                "networkProfile": {"networkInterfaces": [{"id": nic_id, "properties": {"primary": True}}]},
            },
        }
        for key in ("securityProfile", "diagnosticsProfile", "licenseType"):
            if props.get(key):
                body["properties"][key] = props[key]
        if source_vm.get("plan"):
            body["plan"] = source_vm["plan"]  # Marketplace images must carry their plan
        vms = self._client.virtual_machines
        resource_id = self._compute_id(rg, "virtualMachines", name)

        return self._create(
            "create VM", resource_id, f"{rg}/{name}", vms.begin_create_or_update, rg, name, body=body
        )

    def create_image(
        self, rg: str, name: str, source_vm_id: str, location: str, tags: dict[str, str]
    ) -> dict[str, Any]:
        """A managed image of a generalized VM, with the VM's Hyper-V generation."""
        images = self._client.images
        vm_rg, vm_name = _id_parts(source_vm_id, "virtualMachines")
        vms = self._client.virtual_machines
        source: dict[str, Any] = self._read(
            "get",
            source_vm_id,
            lambda: cast(dict[str, Any], vms.instance_view(vm_rg, vm_name, cls=_raw_json)),
            f"VM {source_vm_id} not found",
        )
        body = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "sourceVirtualMachine": {"id": source_vm_id},
                "hyperVGeneration": source.get("hyperVGeneration") or "V1",
            },
        }
        resource_id = self._compute_id(rg, "images", name)

        return self._create(
            "create image", resource_id, resource_id, images.begin_create_or_update, rg, name, body=body
        )

    def create_gallery_image_version(
        self,
        rg: str,
        gallery: str,
        definition: str,
        version: str,
        source_vm_id: str,
        location: str,
        tags: dict[str, str],
    ) -> dict[str, Any]:
        versions = self._client.gallery_image_versions
        body = {
            "location": location,
            "tags": dict(tags),
            "properties": {
                "storageProfile": {"source": {"virtualMachineId": source_vm_id}},
                "publishingProfile": {"targetRegions": [{"name": location, "regionalReplicaCount": 1}]},
            },
        }
        resource_id = f"{self._compute_id(rg, 'galleries', gallery)}/images/{definition}/versions/{version}"

        return self._create(
            "create gallery image version",
            resource_id,
            resource_id,
            versions.begin_create_or_update,
            rg,
            gallery,
            definition,
            version,
            body=body,
        )

    def _create(
        self,
        operation: str,
        resource_id: str,
        target: str,
        begin: Callable[..., Any],
        *names: str,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        """A PUT through the SDK's ``begin_create_or_update``, as one recorded change."""

        def run(kwargs: dict[str, Any], polling: ARMPolling) -> dict[str, Any]:
            poller = begin(*names, _json_body(body), polling=polling, cls=_raw_json, **kwargs)
            return cast(dict[str, Any], poller.result())

        return self._change(operation, resource_id, target, run)[0]

    def _compute_id(self, rg: str, kind: str, name: str) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{rg}"
            f"/providers/Microsoft.Compute/{kind}/{name}"
        )


def parse_run_command_output(result: Any) -> tuple[str, str]:
    """(stdout, stderr) from a Run Command result in either of Azure's shapes.

    Windows answers ``ComponentStatus/StdOut`` and ``ComponentStatus/StdErr`` statuses; Linux one
    status whose message is ``Enable succeeded: \\n[stdout]\\n...\\n[stderr]\\n...``.
    """
    statuses = (result or {}).get("value") or []
    stdout = stderr = ""
    for status in statuses:
        code = str(status.get("code", ""))
        message = str(status.get("message") or "")
        if "StdOut" in code:
            stdout = message
        elif "StdErr" in code:
            stderr = message
        elif "[stdout]\n" in message:
            after = message.split("[stdout]\n", 1)[1]
            stdout, _, stderr = after.partition("\n[stderr]\n")
    return stdout, stderr

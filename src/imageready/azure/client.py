"""The base of an Azure session: the credential and the ARM client built for one subscription
and cloud, and the two ways every call goes: a read with its deadline, a change with its audit
record, deadline, progress and one-line error."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, Self, TypeVar

from azure.core.credentials import TokenCredential
from azure.identity import DefaultAzureCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.core.policies import ARMChallengeAuthenticationPolicy
from azure.mgmt.core.polling.arm_polling import ARMPolling

from imageready.arm_pacing import ArmPacer
from imageready.azure.cloud import CloudSettings
from imageready.azure.pipeline import (
    DEADLINE_OPTION,
    AzureCall,
    CallRecorder,
    Deadline,
    DeadlinePassed,
    DeadlinePolicy,
    PooledTransport,
    WatchedPolling,
    quiet_sdk_fallback_logging,
)
from imageready.azure_errors import AzureError, AzureTimeout, map_error
from imageready.target import VmRef

T = TypeVar("T")


class ArmClient:
    """One subscription, one credential, one ARM client (``AzureSession`` adds what it reads
    and changes)."""

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
        quiet_sdk_fallback_logging()
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
        self._recorder = CallRecorder(pacer)
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
            per_retry_policies=[DeadlinePolicy()],
            # CAE: a token revoked (or expired early) mid-run is answered by a claims
            # challenge, which this policy meets with a fresh token instead of failing
            authentication_policy=ARMChallengeAuthenticationPolicy(credential, cloud.scope, enable_cae=True),
            user_agent="imageready",
            transport=PooledTransport(
                max(10, max_connections), connection_timeout=15, read_timeout=read_timeout, **transport
            ),
        )

    def __repr__(self) -> str:
        return f"AzureSession(subscription={self.subscription_id}, cloud={self.cloud.name})"

    @property
    def pacer(self) -> ArmPacer:
        """What paces this session's requests (waits and 429s seen, for progress and tests)."""
        return self._recorder.pacer

    def __enter__(self) -> Self:
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
        deadline = Deadline(self.read_deadline)
        late = (
            f"{what} {target}: no answer from Azure within the {self.read_deadline:.0f} s deadline of a read"
        )
        try:
            with deadline:
                return fetch()
        except DeadlinePassed:
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
        deadline = Deadline(self.lro_deadline)
        polling = WatchedPolling(
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
        except DeadlinePassed:
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

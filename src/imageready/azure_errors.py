"""Azure failures as one clear line each, and the mapping from SDK exceptions to them.

``str(error)`` is what a report shows: the operation, the target, what Azure said (its own words
for a refused operation), and for a 403 the permission that is missing. Tokens, secrets and
response bodies beyond Azure's error message never reach these strings.
"""

from __future__ import annotations

import json
import re
from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from imageready.categories import Category
from imageready.text import one_line

MAX_MESSAGE = 600
_AADSTS = re.compile(r"(AADSTS\d+:.*?)(?:\s+Trace ID:|\r|\n|$)", re.DOTALL)
_ACTION = re.compile(r"perform action '([^']+)'")
_SCOPE = re.compile(r"over scope '([^']+)'")


class AzureError(Exception):
    """An Azure call that failed; ``str()`` is one line fit for a report."""

    category: Category = Category.AZURE_API

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(one_line(message, MAX_MESSAGE))
        self.status = status
        self.code = code


class AzureNotFound(AzureError):
    """404: the VM, resource group, subscription or resource does not exist (or is not visible)."""


class AzureForbidden(AzureError):
    """403: the identity lacks a permission; ``action`` names it."""

    category = Category.AZURE_PERMISSION

    def __init__(
        self, message: str, *, action: str | None, status: int | None = 403, code: str | None = None
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.action = action


class AzureConflict(AzureError):
    """409 / OperationNotAllowed: Azure refused the operation in the resource's current state."""


class AzurePreconditionFailed(AzureConflict):
    """412: the resource changed since its etag was read (a lease was lost)."""


class AzureTimeout(AzureError):
    """An operation did not finish within its deadline; it may still complete in Azure."""

    category = Category.TIMEOUT


class AzureAuthError(AzureError):
    """No token could be obtained, or ARM rejected the one presented."""

    category = Category.AZURE_AUTHENTICATION


class AzureConnectionError(AzureError):
    """ARM or the token endpoint could not be reached (network, DNS, TLS trust)."""

    category = Category.AZURE_UNREACHABLE


def _chain_text(error: BaseException) -> str:
    """The messages of an exception and its causes (TLS details hide a few levels down)."""
    seen: list[str] = []
    current: BaseException | None = error
    for _ in range(8):
        if current is None:
            break
        seen.append(str(current))
        current = current.__cause__ or current.__context__
    return " | ".join(seen)


def _tls_hint(text: str) -> str | None:
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        detail = re.search(r"certificate verify failed: ([^(')\]]+)", text)
        reason = detail.group(1).strip() if detail else "certificate verify failed"
        return (
            f"its TLS certificate is not trusted ({reason}); give the right CA bundle (IMAGEREADY_CA_BUNDLE)"
        )
    if "SSLError" in text or "SSL:" in text:
        return "the TLS handshake failed"
    return None


def _error_body(error: HttpResponseError) -> tuple[str | None, str]:
    """ARM's error code and message; for a failed LRO, the operation's own error."""
    code = error.error.code if error.error is not None else None
    message = error.error.message if error.error is not None else None
    response = error.response
    if response is not None:
        try:
            body: Any = json.loads(response.text())
        except (ValueError, TypeError, AttributeError):
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = body["error"].get("code") or code
            message = body["error"].get("message") or message
    if not message:
        message = error.reason or error.message or "no details"
    return code, str(message)


def _from_token_endpoint(error: ClientAuthenticationError) -> bool:
    """True for a failure to get a token (no ARM response, or Entra ID's own response)."""
    response = error.response
    if response is None:
        return True
    request = getattr(response, "request", None)
    return "/oauth2/" in str(getattr(request, "url", ""))


def credential_error(error: BaseException, authority: str) -> AzureError:
    """A failure to get a token, as one line (AADSTS code kept, trace lines dropped)."""
    text = _chain_text(error)
    tls = _tls_hint(text)
    if tls:
        return AzureConnectionError(f"cannot get an Azure token from {authority}: {tls}")
    aadsts = _AADSTS.search(text)
    if aadsts:
        return AzureAuthError(f"cannot sign in to Azure at {authority}: {aadsts.group(1).strip()}")
    if "failed to retrieve a token from the included credentials" in text:
        return AzureAuthError(
            "no Azure credential available: set AZURE_TENANT_ID, AZURE_CLIENT_ID and "
            "AZURE_CLIENT_SECRET, use a managed or workload identity, or run `az login`"
        )
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return AzureAuthError(f"cannot get an Azure token from {authority}: {first}")


def map_error(
    error: Exception,
    *,
    what: str,
    target: str,
    arm_endpoint: str,
    authority: str,
    not_found: str | None = None,
) -> AzureError:
    """Turn an azure-core exception into the AzureError that says what happened in one line.

    ``what`` is the operation ("deallocate"), ``target`` the VM key or resource id, and
    ``not_found`` the message to use for a 404 of the target itself.
    """
    if isinstance(error, AzureError):
        return error
    if isinstance(error, ClientAuthenticationError) and _from_token_endpoint(error):
        return credential_error(error, authority)
    if isinstance(error, ServiceRequestError | ServiceResponseError):
        text = _chain_text(error)
        reason = _tls_hint(text) or one_line(error, MAX_MESSAGE).split(" | ")[0]
        return AzureConnectionError(
            f"{what} {target}: cannot reach Azure Resource Manager at {arm_endpoint}: {reason}"
        )
    if not isinstance(error, HttpResponseError):
        return AzureError(f"{what} {target}: {type(error).__name__}: {error}")
    status = error.status_code
    code, message = _error_body(error)
    if status == 200 or status is None:  # a long-running operation that ended Failed
        return AzureError(f"{what} {target} failed in Azure: ({code}) {message}", status=status, code=code)
    if status == 401:
        return AzureAuthError(
            f"{what} {target}: Azure rejected the access token ({code}): {message}", status=status, code=code
        )
    if status == 403:
        action = _ACTION.search(message)
        scope = _SCOPE.search(message)
        missing = f"'{action.group(1)}'" if action else "a permission"
        where = f" on {scope.group(1)}" if scope else ""
        return AzureForbidden(
            f"{what} {target}: permission denied: the signed-in identity lacks {missing}{where} ({code})",
            action=action.group(1) if action else None,
            status=status,
            code=code,
        )
    if status == 404:
        if code == "ResourceGroupNotFound" or code == "SubscriptionNotFound" or not not_found:
            return AzureNotFound(f"{what} {target}: {message} ({code})", status=status, code=code)
        return AzureNotFound(not_found, status=status, code=code)
    if status == 412:
        return AzurePreconditionFailed(
            f"{what} {target}: the resource changed since it was read "
            f"(etag mismatch); read it again ({code})",
            status=status,
            code=code,
        )
    if status == 409 or code == "OperationNotAllowed":
        return AzureConflict(f"{what} {target}: {message} ({code})", status=status, code=code)
    if status == 429 or status >= 500:
        return AzureError(
            f"{what} {target}: Azure kept answering {status} {code} after the retries allowed: {message}",
            status=status,
            code=code,
        )
    return AzureError(f"{what} {target}: {status} {code}: {message}", status=status, code=code)

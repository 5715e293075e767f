"""Azure access for the harness: credential, cloud endpoints, long-running operations with
deadlines and progress, bounded retries, one-line errors, and the audit trail of every change.

Everything goes through the real SDKs (azure-identity, azure-mgmt-compute). Results are the ARM
REST JSON (camelCase), exactly as Azure sent it. Each mutating call is an :class:`AzureCall` in
``AzureSession.calls``: correlation id, every ``x-ms-request-id`` Azure returned (retries and
polls included), the ``Azure-AsyncOperation`` URL, and how it ended.

The package, by concern: ``cloud`` (endpoints and trust), ``pipeline`` (correlation, the call
record, deadlines, polling), ``client`` (credential and ARM client; reads and changes as calls),
``reads`` and ``session`` (``AzureSession``: what is read and what is changed).
"""

from __future__ import annotations

from imageready.azure.cloud import CloudSettings, resolve_ca_bundle, resolve_cloud
from imageready.azure.pipeline import AzureCall, correlated
from imageready.azure.session import AzureSession
from imageready.azure_errors import (
    AzureAuthError,
    AzureConflict,
    AzureConnectionError,
    AzureError,
    AzureForbidden,
    AzureNotFound,
    AzurePreconditionFailed,
    AzureTimeout,
)

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

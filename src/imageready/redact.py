"""One masking function for every sink: logs, failure messages, attachments, reports.

Known secret values (from the environment variables the harness reads credentials from, and any
value registered at run time) are replaced wherever they appear; common credential shapes are
masked by pattern as a second line of defence. Scan findings never carry a secret in the first
place (they are masked on the guest); this guards everything else.
"""

from __future__ import annotations

import os
import re
import threading

MASK = "***"

#: environment variables whose values are secrets wherever they appear
SECRET_ENV_VARS = (
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_PASSWORD",
    "IMAGEREADY_WINRM_PASSWORD",
    "IMAGEREADY_SSH_PASSWORD",
    "IMAGEREADY_FINGERPRINT_KEY",
    "AZSIM_ADMIN_TOKEN",
    "ARM_CLIENT_SECRET",
)

_PATTERNS = [
    # bearer tokens and JWTs
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    # key=value credentials (connection strings, SAS signatures, client secrets in URLs/forms)
    re.compile(
        r"(?i)((?:password|passwd|pwd|secret|client_secret|accountkey|sharedaccesskey|sig|token)"
        r"\s*[=:]\s*)(?!\*\*\*)[^\s;&\"',]{4,}"
    ),
]

_lock = threading.Lock()
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` from now on wherever it appears (ignored when too short to be a secret)."""
    if value and len(value) >= 6:
        with _lock:
            _registered.add(value)


def _known_values() -> list[str]:
    with _lock:
        values = set(_registered)
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 6:
            values.add(value)
    # longest first, so a secret containing another is masked whole
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every known secret and credential-shaped value masked."""
    for value in _known_values():
        if value in text:
            text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + MASK, text)
    return text


def one_line(text: str, limit: int = 400) -> str:
    """The first meaningful line of ``text``, redacted and bounded."""
    for line in str(text).splitlines():
        line = line.strip()
        if line:
            line = redact(line)
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""

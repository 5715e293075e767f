"""One masking function for every sink: logs, failure messages, attachments, reports.

Known secret values (from the environment variables the harness reads credentials from, from any
environment variable whose name says it holds a credential, from the user:password part of any URL
in an option or the environment, and any value registered at run time) are replaced wherever they
appear; common credential shapes (bearer tokens, JWTs, ``password=...``, a URL's
``user:password@``) are masked by pattern as a second line of defence. Scan findings never carry a
secret in the first place (they are masked on the guest); this guards everything else.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable
from urllib.parse import unquote, urlsplit

from imageready.text import printable

MASK = "***"

#: environment variables whose values are secrets wherever they appear
SECRET_ENV_VARS = (
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_PASSWORD",
    "IMAGEREADY_WINRM_PASSWORD",
    "IMAGEREADY_SSH_PASSWORD",
    "IMAGEREADY_FINGERPRINT_KEY",
    "IMAGEREADY_VERDICT_KEY",
    "AZSIM_ADMIN_TOKEN",
    "ARM_CLIENT_SECRET",
    # App Service / Functions managed identity: the header value that proves the caller
    "IDENTITY_HEADER",
)

#: any other environment variable whose name says it holds a credential (CI systems add their
#: own: SYSTEM_ACCESSTOKEN, ACTIONS_ID_TOKEN_REQUEST_TOKEN, a proxy password ...)
_CREDENTIAL_NAME = re.compile(
    r"(?i)(SECRET|PASSWORD|PASSWD|PASSPHRASE|TOKEN|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY"
    r"|_KEY$|SAS$|SAS_|CONNECTION_?STRING|_PWD$)"
)
#: names that match the pattern above but never hold a secret
_NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD"})
#: a URL's user:password@ (or token@) part
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#]+(?=@)")

_PATTERNS = [
    # bearer tokens and JWTs
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"),
    re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),
    # key=value credentials (connection strings, SAS signatures, client secrets in URLs/forms)
    re.compile(
        r"(?i)((?:password|passwd|pwd|secret|client_secret|accountkey|sharedaccesskey|sig|token)"
        r"\s*[=:]\s*)(?!\*\*\*)[^\s;&\"',]{4,}"
    ),
    # credentials in a URL: scheme://user:password@host
    _URL_USERINFO,
]

_lock = threading.Lock()
_registered: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask ``value`` from now on wherever it appears (ignored when too short to be a secret)."""
    if value and len(value) >= 6:
        with _lock:
            _registered.add(value)


def url_credentials(text: str) -> list[str]:
    """The user:password parts of every URL in ``text`` (percent-decoded forms too)."""
    found = []
    for match in re.finditer(r"(?i)\b[a-z][a-z0-9+.\-]*://\S+", text):
        try:
            parts = urlsplit(match.group())
        except ValueError:
            continue
        for value in (parts.password, parts.username if parts.password is None else None):
            if value:
                found += [value, unquote(value)]
        if "@" in parts.netloc:
            found.append(parts.netloc.rpartition("@")[0])
    return found


def register_credentials(values: Iterable[str]) -> None:
    """Register the URL credentials found in ``values`` (option values, say) as secrets."""
    for value in values:
        for secret in url_credentials(value):
            register_secret(secret)


def _is_path(value: str) -> bool:
    return value.startswith(("/", "./", "~")) and os.path.exists(os.path.expanduser(value))


def environment_secrets(environ: dict[str, str] | None = None) -> set[str]:
    """Values of the environment that are credentials: the known variables, any variable named
    like a credential (unless its value is an existing file: a key *file* path is not the key),
    and the user:password part of any URL (a proxy's, say)."""
    env = dict(os.environ if environ is None else environ)
    values: set[str] = set()
    for name, value in env.items():
        if not value or len(value) < 6:
            continue
        if name in SECRET_ENV_VARS or (
            name not in _NOT_SECRET_NAMES and _CREDENTIAL_NAME.search(name) and not _is_path(value)
        ):
            values.add(value)
        if "://" in value:
            values.update(v for v in url_credentials(value) if len(v) >= 6)
    return values


#: the environment's secrets, by the environment they were read from (one entry: the last)
_from_environment: tuple[tuple[tuple[str, str], ...], frozenset[str]] | None = None


def _environment_secrets_now() -> frozenset[str]:
    """``environment_secrets()`` of the environment as it is now, read again only when it
    changed (judging every variable on every call was most of what redacting a text cost)."""
    global _from_environment
    snapshot = tuple(os.environ.items())
    cached = _from_environment
    if cached is not None and cached[0] == snapshot:
        return cached[1]
    values = frozenset(environment_secrets(dict(snapshot)))
    _from_environment = (snapshot, values)
    return values


def _known_values() -> list[str]:
    with _lock:
        values = set(_registered)
    values |= _environment_secrets_now()
    # longest first, so a secret containing another is masked whole
    return sorted(values, key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every known secret and credential-shaped value masked."""
    return _mask(text, _known_values())


def redactor() -> Callable[[str], str]:
    """``redact`` for several texts of one moment (one report's fields): the secrets known now
    are gathered once, not once per text (the environment's were most of its cost)."""
    values = _known_values()
    return lambda text: _mask(text, values)


def _mask(text: str, values: list[str]) -> str:
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.re.groups else "") + MASK, text)
    return text


def one_line(text: str, limit: int = 400) -> str:
    """The first meaningful line of ``text``, redacted, escaped (no control or bidi character
    reaches a one-line sink) and bounded: what a report, the audit or JUnit shows. Unlike
    ``text.one_line`` (which folds a message while it is built) it keeps only the first line and
    masks it, so it lives with the masking."""
    # split on line feeds only: str.splitlines() would also cut at U+2028, U+0085 and other
    # separators a guest-controlled name may carry; those are escaped below instead
    for line in str(text).split("\n"):
        line = line.strip()
        if line:
            line = printable(redact(line))
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""

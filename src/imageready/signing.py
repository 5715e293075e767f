"""Tamper evidence for verdict files: the checks stage signs what it decided, the actions stage
accepts only what carries that signature.

A verdict file travels between CI stages as an artifact. Its own consistency checks (its derived
fields recomputed from its cases, ``gate.verdict_inconsistency``) stop a careless edit, not a
careful one: whoever can write the artifact can write a consistent green verdict. So the checks
stage signs the verdict with HMAC-SHA256 under a key the *pipeline* holds (a CI secret given to
both stages, never to whoever can edit artifacts), and the actions stage refuses a verdict whose
signature is missing or does not match, unless told explicitly (``--accept-unsigned-verdicts``)
that this pipeline has no key.

Why an HMAC and not a tag on the VM: the checks stage may run with the read-only role
(docs/rbac/imageready-checks.json), which cannot write tags; and a tag is writable by anyone with
``virtualMachines/write``, the very people a forged verdict would be aimed past.

The key: ``IMAGEREADY_VERDICT_KEY`` (at least 32 characters: e.g. ``openssl rand -hex 32``), or
``IMAGEREADY_VERDICT_KEY_FILE``, a file only its owner can read. The key is a secret like any
other: redacted in every sink, never an option. The signature names the key by a one-way id, so
a verdict signed with another key is refused as such.

What it does not stop is in docs/threat-model.md: a holder of the key, or of the CI runner that
has it, can sign anything; and it says nothing about a verdict's freshness or VM, which the gate's
other rules check.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from imageready.redact import register_secret

KEY_ENV = "IMAGEREADY_VERDICT_KEY"
KEY_FILE_ENV = "IMAGEREADY_VERDICT_KEY_FILE"
ALGORITHM = "HMAC-SHA256"
MIN_KEY_LENGTH = 32
RELAX_OPTION = "--accept-unsigned-verdicts"


class SigningKeyError(ValueError):
    """The verdict key is set but unusable; one line."""


def verdict_key(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The pipeline's verdict key, or None when none is configured."""
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV)
    source = KEY_ENV
    if not value and env.get(KEY_FILE_ENV):
        path = Path(env[KEY_FILE_ENV])
        source = f"{KEY_FILE_ENV} {path}"
        try:
            mode = path.stat().st_mode
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SigningKeyError(f"{source}: cannot read the verdict key: {why}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(f"{source}: readable by others than its owner; chmod 600 it")
    if not value:
        return None
    value = value.strip()
    if len(value) < MIN_KEY_LENGTH:
        raise SigningKeyError(
            f"{source}: the verdict key is {len(value)} characters, at least {MIN_KEY_LENGTH} are "
            "needed (e.g. openssl rand -hex 32)"
        )
    register_secret(value)
    return value.encode("utf-8")


def key_id(key: bytes) -> str:
    """A one-way name of ``key``: says which key signed, reveals nothing of it."""
    return hashlib.sha256(b"imageready verdict key id\0" + key).hexdigest()[:16]


def canonical(document: Mapping[str, Any]) -> bytes:
    """What is signed: every field but the signature, in one canonical JSON form."""
    body = {key: value for key, value in document.items() if key != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(document: Mapping[str, Any], key: bytes | None) -> dict[str, Any]:
    """``document`` with its ``signature`` (None when there is no key: an unsigned verdict)."""
    signed = {k: v for k, v in document.items() if k != "signature"}
    if key is None:
        signed["signature"] = None
        return signed
    mac = hmac.new(key, canonical(signed), hashlib.sha256).hexdigest()
    signed["signature"] = {"alg": ALGORITHM, "key_id": key_id(key), "value": mac}
    return signed


def sign_verdict(document: Mapping[str, Any]) -> dict[str, Any]:
    """Sign with the pipeline's key when there is one (the checks stage, and the verdict written
    before the first action)."""
    return sign(document, verdict_key())


def check(document: Mapping[str, Any], key: bytes | None, *, accept_unsigned: bool) -> str | None:
    """None when the verdict may be trusted as signed (or, relaxed, as unsigned); else why not,
    one line. A signature that does not match is refused even when relaxed: it is evidence of an
    edit, not of a pipeline without a key."""
    signature = document.get("signature")
    if signature is None:
        if accept_unsigned:
            return None
        if key is None:
            return (
                f"it is unsigned and this run has no verdict key: give both stages {KEY_ENV} (or "
                f"{KEY_FILE_ENV}), or pass {RELAX_OPTION} to trust unsigned verdicts"
            )
        return f"it is unsigned (the checks stage had no verdict key); pass {RELAX_OPTION} to trust it"
    if not isinstance(signature, Mapping) or signature.get("alg") != ALGORITHM:
        return f"its signature is not an {ALGORITHM} signature"
    if key is None:
        # even relaxed: the checks stage had a key, so this pipeline has one; a signature that
        # cannot be checked proves nothing, and an edited one would pass unseen
        return (
            f"it is signed, but this run has no verdict key to check it with: give it {KEY_ENV} "
            f"(or {KEY_FILE_ENV})"
        )
    if signature.get("key_id") != key_id(key):
        return (
            f"it was signed with another key (key id {signature.get('key_id')}, this run's is {key_id(key)})"
        )
    expected = hmac.new(key, canonical(document), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, str(signature.get("value", ""))):
        return "its signature does not match its content: it was edited after the checks stage signed it"
    return None

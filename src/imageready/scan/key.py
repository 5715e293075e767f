"""The fingerprint key: a finding carries a keyed HMAC of the value, never the value, and the
key travels inside the guest program on stdin, never in an output."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

from imageready.redact import register_secret

KEY_ENV = "IMAGEREADY_FINGERPRINT_KEY"


class ScanKeyError(RuntimeError):
    """The fingerprint key cannot be read or created; one line, never the key."""


def fingerprint_key() -> bytes:
    """The HMAC key: ``IMAGEREADY_FINGERPRINT_KEY`` (hex or base64, 16+ bytes) or the key file
    ``$XDG_CONFIG_HOME/imageready/fingerprint.key``, created 0600 on first use. Stable across
    runs so that fingerprint waivers keep matching."""
    text = os.environ.get(KEY_ENV, "").strip()
    source = KEY_ENV
    if not text:
        config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
        path = Path(config) / "imageready" / "fingerprint.key"
        source = str(path)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ScanKeyError(f"fingerprint key {path}: cannot create: {exc.strerror}") from None
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
        try:
            text = path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            raise ScanKeyError(f"fingerprint key {path}: cannot read") from None
    key = _decode_key(text)
    if key is None:
        raise ScanKeyError(f"fingerprint key from {source}: expected 16+ bytes as hex or base64")
    for form in (key.hex(), base64.b64encode(key).decode(), text):
        register_secret(form)
    return key


def _decode_key(text: str) -> bytes | None:
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True)):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) >= 16:
            return key
    return None

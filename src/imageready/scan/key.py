"""The fingerprint key: a finding carries a keyed HMAC of the value, never the value, and the
key travels inside the guest program on stdin, never in an output."""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import tempfile
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
            _create_once(path)
        except OSError as exc:
            raise ScanKeyError(f"fingerprint key {path}: cannot create: {exc.strerror}") from None
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


def _create_once(path: Path) -> None:
    """Create the key file unless it exists, whole or not at all: the key is written to a file of
    its own and linked into place (a reader, another thread or process included, never sees an
    empty or half-written key; the first link wins, the others keep what it wrote)."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".fingerprint-")
    try:
        with os.fdopen(fd, "w") as handle:  # mkstemp: mode 0600
            handle.write(secrets.token_hex(32) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _decode_key(text: str) -> bytes | None:
    for decode in (bytes.fromhex, lambda t: base64.b64decode(t, validate=True)):
        try:
            key = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(key) >= 16:
            return key
    return None

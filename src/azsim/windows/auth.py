"""WinRM authentication: Basic, and Negotiate/NTLM with pyspnego's acceptor and WinRM encryption.

NTLM authenticates a connection, not a request: each HTTP connection gets a
:class:`NegotiateSession`; once it completes, later requests on that connection need no header,
and over HTTP their bodies travel sealed (``multipart/encrypted`` with
``application/HTTP-SPNEGO-session-encrypted``, MS-WSMV 2.2.9.1) through pyspnego's
``wrap_winrm``/``unwrap_winrm``. pyspnego's NTLM acceptor reads its credentials from the file
named by the process environment variable ``NTLM_USER_FILE``: that file holds the admin user's
NT hash only (never the password), mode 0600, and the variable is set in-process, around each
step, under a lock (several guests can share one azsim process). Over HTTPS the acceptor checks
the client's channel binding (the server certificate's hash), like CbtHardeningLevel=Strict.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import spnego
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from spnego._ntlm_raw.crypto import ntowfv1
from spnego.channel_bindings import GssChannelBindings

ENCRYPTED_PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
ENCRYPTED_CONTENT_TYPE = f'multipart/encrypted;protocol="{ENCRYPTED_PROTOCOL}";boundary="Encrypted Boundary"'
_BOUNDARY = b"--Encrypted Boundary"
_OCTET_STREAM = b"Content-Type: application/octet-stream\r\n"
_ENV_LOCK = threading.Lock()


class AuthFailed(Exception):
    """The client's credentials or token were refused (HTTP 401)."""


class EncryptionError(Exception):
    """A sealed body that does not unwrap (HTTP 400)."""


def write_ntlm_store(path: Path, user: str, password: str, hostname: str) -> None:
    """The acceptor's credential file (smbpasswd format): NT hash only, for the spellings
    Windows accepts for a local account (``user``, ``HOST\\user``, ``.\\user``)."""
    nt_hash = ntowfv1(password).hex().upper()
    lines = [
        f"{name}:500:{'0' * 32}:{nt_hash}:[U]:LCT-00000000\n"
        for name in (user, f"{hostname}\\{user}", f".\\{user}")
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(lines)


@contextmanager
def _credential_file(path: Path) -> Iterator[None]:
    with _ENV_LOCK:
        previous = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = str(path)
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = previous


def channel_bindings_for(cert_pem: Path) -> GssChannelBindings:
    """RFC 5929 tls-server-end-point binding for the (first) certificate in ``cert_pem``."""
    cert = x509.load_pem_x509_certificate(cert_pem.read_bytes())
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(Encoding.DER))
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest.finalize())


def _is_initial_token(token: bytes) -> bool:
    # a raw NTLM NEGOTIATE_MESSAGE, or a SPNEGO NegTokenInit (ASN.1 application tag 0x60)
    return token.startswith(b"NTLMSSP\x00\x01") or token[:1] == b"\x60"


class NegotiateSession:
    """One connection's Negotiate/NTLM context, and the message sealing it enables."""

    def __init__(self, store: Path, channel_bindings: GssChannelBindings | None) -> None:
        self._store = store
        self._bindings = channel_bindings
        self._context: Any = None
        self.complete = False

    def step(self, token: bytes) -> bytes | None:
        """Feed the client's token; returns the token to send back (None when there is none)."""
        try:
            with _credential_file(self._store):
                if self._context is None or (self.complete and _is_initial_token(token)):
                    self._context = spnego.server(
                        hostname="localhost",
                        service="http",
                        channel_bindings=self._bindings,
                        protocol="negotiate",
                    )
                    self.complete = False
                out: bytes | None = self._context.step(token)
        except spnego.exceptions.SpnegoError as err:
            self._context, self.complete = None, False
            raise AuthFailed(str(err).split(",")[0]) from None
        self.complete = bool(self._context.complete)
        return out

    def unwrap(self, body: bytes, content_type: str) -> bytes:
        if not self.complete or ENCRYPTED_PROTOCOL not in content_type:
            raise EncryptionError("not an SPNEGO-sealed body for this connection")
        try:
            head, _, rest = body.partition(_OCTET_STREAM)
            length = int(head.split(b"Length=")[1].split(b"\r\n")[0])
            header_length = struct.unpack("<i", rest[:4])[0]
            header = rest[4 : 4 + header_length]
            data = rest[4 + header_length : 4 + header_length + length]
            plain: bytes = self._context.unwrap_winrm(header, data)
        except (IndexError, ValueError, struct.error, spnego.exceptions.SpnegoError) as err:
            raise EncryptionError(f"cannot unwrap the sealed body: {err}") from None
        if len(plain) != length:
            raise EncryptionError("sealed body length does not match its header")
        return plain

    def wrap(self, message: bytes) -> bytes:
        sealed = self._context.wrap_winrm(message)
        header: bytes = sealed.header
        data: bytes = sealed.data
        return (
            _BOUNDARY + b"\r\n\tContent-Type: " + ENCRYPTED_PROTOCOL.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length="
            + str(len(message) + sealed.padding_length).encode()
            + b"\r\n"
            + _BOUNDARY
            + b"\r\n\t"
            + _OCTET_STREAM
            + struct.pack("<i", len(header))
            + header
            + data
            + _BOUNDARY
            + b"--\r\n"
        )


class Authenticator:
    """The WinRM service's auth settings for one machine."""

    def __init__(
        self,
        *,
        user: str,
        password: str,
        hostname: str,
        store: Path,
        basic: bool,
        allow_unencrypted: bool,
    ) -> None:
        self.user = user
        self._password = password
        self.hostname = hostname
        self.store = store
        self.basic = basic
        self.allow_unencrypted = allow_unencrypted
        write_ntlm_store(store, user, password, hostname)

    def __repr__(self) -> str:
        return f"Authenticator(user={self.user!r}, hostname={self.hostname!r})"

    @property
    def account(self) -> str:
        return f"{self.hostname}\\{self.user}"

    def offers(self, tls: bool) -> list[str]:
        """WWW-Authenticate values of a 401."""
        offers = ["Negotiate"]
        if self.basic and (tls or self.allow_unencrypted):
            offers.append('Basic realm="WSMAN"')
        return offers

    def check_basic(self, value: str, tls: bool) -> str:
        """The account a Basic header authenticates; raises AuthFailed."""
        if not self.basic or not (tls or self.allow_unencrypted):
            raise AuthFailed("Basic authentication is disabled for this listener")
        try:
            user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthFailed("malformed Basic credentials") from None
        name = user.rsplit("\\", 1)[-1]
        domain = user.rsplit("\\", 1)[0] if "\\" in user else ""
        known_domain = domain.lower() in ("", ".", self.hostname.lower())
        good = hmac.compare_digest(password.encode(), self._password.encode())
        if not (known_domain and name.lower() == self.user.lower() and good):
            raise AuthFailed("the user name or password is incorrect")
        return self.account

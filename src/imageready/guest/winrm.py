"""WinRM transport for Windows guests: pywinrm's WS-Man client, with deadlines and clean output.

A script never travels on the command line (cmd.exe stops at 8191 characters): the command is
a short bootstrap, ``powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass
-EncodedCommand <BOOTSTRAP_PS1>``, that silences progress, switches the console to UTF-8, reads
the script from stdin and runs it; the script follows as WS-Man Send chunks that stay well
under the envelope size. stdout comes back as the script's UTF-8; stderr is freed of the CLIXML
that ``-EncodedCommand`` wraps errors and progress records in.

Defaults are the safe ones: HTTPS with certificate validation (CA bundle from the argument,
``IMAGEREADY_WINRM_CA_BUNDLE`` or ``IMAGEREADY_CA_BUNDLE``, else the default trust store), NTLM
(``auth="basic"`` and ``"credssp"`` are available; ``"kerberos"`` needs the ``kerberos`` extra,
a ticket for the user and the host's SPN, and is not exercised by the tests), no proxy from the
environment. The password comes only from ``IMAGEREADY_WINRM_PASSWORD`` or a caller's
``password_source`` (e.g. a Key Vault lookup), never from argv or a host string, and never
appears in a message or ``repr``. pywinrm's read timeout always stays above its operation
timeout: each WS-Man request is bounded by what remains of the command's deadline.

One transport, one module (a little over 500 lines): the session, the identity proof, the
command loop with its deadlines and the error classification share the WS-Man session's state.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import math
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Literal

import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from imageready.guest.base import (
    AddressedGuest,
    CommandResult,
    GuestAuthError,
    GuestDisconnected,
    GuestError,
    GuestTarget,
    GuestTimeout,
    GuestUnreachable,
    ProgressLines,
    parse_address,
)
from imageready.guest.identity import ExpectedIdentity, GuestIdentityError, Pins, probe_script
from imageready.redact import register_secret
from imageready.text import one_line

PASSWORD_ENV = "IMAGEREADY_WINRM_PASSWORD"  # noqa: S105 - a variable name
CA_BUNDLE_ENVS = ("IMAGEREADY_WINRM_CA_BUNDLE", "IMAGEREADY_CA_BUNDLE")
AuthMethod = Literal["ntlm", "basic", "kerberos", "credssp"]

#: runs the script that follows on stdin; PowerShell 5.1 compatible
BOOTSTRAP_PS1 = (
    "$ProgressPreference='SilentlyContinue'; "
    "[Console]::InputEncoding=[Text.Encoding]::UTF8; "
    "[Console]::OutputEncoding=[Text.Encoding]::UTF8; "
    "$s=[Console]::In.ReadToEnd(); & ([scriptblock]::Create($s))"
)
POWERSHELL_ARGS = (
    "-NoProfile",
    "-NonInteractive",
    "-ExecutionPolicy",
    "Bypass",
    "-EncodedCommand",
    base64.b64encode(BOOTSTRAP_PS1.encode("utf-16-le")).decode("ascii"),
)
#: raw stdin bytes per Send: Base64 of this plus the SOAP header stays under pywinrm's
#: MaxEnvelopeSize (153600 bytes)
STDIN_CHUNK = (153600 - 8192) * 3 // 4
DEFAULT_OPERATION_TIMEOUT = 20
#: how far pywinrm's HTTP read timeout stays above its WS-Man operation timeout
READ_MARGIN = 5
_CLIXML = re.compile(rb"#< CLIXML\r?\n(<Objs\b.*?</Objs>)", re.DOTALL)
_CLIXML_STRING = re.compile(r'<S S="(\w+)">(.*?)</S>', re.DOTALL)
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


class _DeadlinePassed(Exception):
    pass


def clean_stderr(data: bytes) -> bytes:
    """stderr with CLIXML blocks replaced by the text of their error/warning records (progress
    records dropped); plain lines (e.g. ``PROGRESS`` lines) stay as they are."""

    def text_of(match: re.Match[bytes]) -> bytes:
        block = match.group(1).decode("utf-8", "backslashreplace")
        parts = []
        for _stream, value in _CLIXML_STRING.findall(block):
            value = html.unescape(value)
            parts.append(_CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), value))
        return "".join(parts).encode("utf-8")

    return _CLIXML.sub(text_of, data)


def _purpose(script: str) -> str:
    """A label for error messages: the script's own first comment line (its description), never
    its code, which may embed configuration such as the scan's fingerprint key."""
    lines = [line.strip() for line in script.splitlines() if line.strip()]
    comment = next((line.lstrip("#").strip() for line in lines if line.startswith("#")), "")
    return f"script {comment[:60]!r}" if comment else "script"


class WinRmGuest(AddressedGuest):
    """One Windows guest over WinRM; the HTTP session is reused across commands."""

    transport = "winrm"
    os_type = "Windows"
    os_types = ("Windows",)
    default_port = 5986

    def __init__(
        self,
        host: str,
        port: int,
        user: str,
        *,
        vm_key: str,
        scheme: Literal["https", "http"] = "https",
        auth: AuthMethod = "ntlm",
        ca_bundle: str | os.PathLike[str] | None = None,
        password_source: Callable[[], str] | None = None,
        operation_timeout: int = DEFAULT_OPERATION_TIMEOUT,
        expected: ExpectedIdentity | None = None,
        pins: Pins | None = None,
    ) -> None:
        self.scheme = scheme  # before the endpoint is named
        super().__init__(host, port, user, vm_key=vm_key, expected=expected, pins=pins)
        self.auth = auth
        env_ca = next((os.environ[name] for name in CA_BUNDLE_ENVS if os.environ.get(name)), None)
        self.ca_bundle = str(ca_bundle) if ca_bundle else env_ca
        self.operation_timeout = operation_timeout
        self._password_source = password_source
        self._protocol: Protocol | None = None
        #: SHA-256 of the certificate this object trusts (the pinned one, else the first seen)
        self._cert_digest = (pins.tls_cert_sha256 if pins else "") or ""

    @classmethod
    def open(cls, target: GuestTarget) -> WinRmGuest:
        """``target``'s guest as ``IMAGEREADY_WINRM_USER`` (else the VM's admin user), over
        HTTPS trusting ``IMAGEREADY_WINRM_CA_BUNDLE`` (else the run's CA bundle)."""
        return connect_winrm(
            target.address,
            os.environ.get("IMAGEREADY_WINRM_USER") or target.admin,
            vm_key=target.vm.key,
            auth=target.winrm_auth,  # type: ignore[arg-type]  # --winrm-auth's choices
            ca_bundle=os.environ.get("IMAGEREADY_WINRM_CA_BUNDLE") or target.ca_bundle,
            expected=target.expected,
            pins=target.pins,
            prove=target.prove,
        )

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host_port}/wsman"

    def pins(self) -> Pins:
        return Pins(tls_cert_sha256=self._cert_digest)

    def _password(self) -> str | None:
        if self._password_source is not None:
            secret = self._password_source()
            register_secret(secret)
            return secret
        password = os.environ.get(PASSWORD_ENV) or None
        if password is None and self.auth != "kerberos":
            raise GuestAuthError(
                f"{self._where()}: no password: set {PASSWORD_ENV} or pass a password source"
            )
        return password

    def _get_protocol(self) -> Protocol:
        if self._protocol is None:
            transport = {"basic": "ssl" if self.scheme == "https" else "basic"}.get(self.auth, self.auth)
            self._protocol = Protocol(
                self.endpoint,
                transport=transport,  # type: ignore[arg-type]
                username=self.user,
                password=self._password(),
                server_cert_validation="validate",
                ca_trust_path=self.ca_bundle,  # type: ignore[arg-type]
                operation_timeout_sec=self.operation_timeout,
                read_timeout_sec=self.operation_timeout + READ_MARGIN,
                message_encryption="auto",
                proxy=None,
            )
            self._pin_sessions(self._protocol)
        return self._protocol

    def _pin_sessions(self, protocol: Protocol) -> None:
        """Every TLS connection pywinrm opens must present the certificate this object trusts
        (urllib3's ``assert_fingerprint``, checked in the handshake, before a credential or a
        command is sent), also after pywinrm rebuilds its session. Over HTTPS pywinrm sends
        nothing while it builds one, so the pin is in place before the first connection."""
        winrm_transport = protocol.transport
        build = winrm_transport.build_session

        def build_pinned() -> requests.Session:
            fresh = winrm_transport.session is None
            session: requests.Session = build()
            if fresh and self.scheme == "https" and self._cert_digest:
                adapter = session.get_adapter(self.endpoint)
                pool_kw = adapter.poolmanager.connection_pool_kw  # type: ignore[attr-defined]
                pool_kw["assert_fingerprint"] = self._cert_digest
            return session

        winrm_transport.build_session = build_pinned  # type: ignore[method-assign]

    def _bound(self, protocol: Protocol, deadline: float) -> None:
        """Fit the next WS-Man request into what remains of the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _DeadlinePassed
        operation = max(1, min(self.operation_timeout, math.ceil(remaining)))
        protocol.operation_timeout_sec = operation
        protocol.transport.read_timeout_sec = operation + READ_MARGIN

    def connect(self, *, prove: bool = True) -> None:
        """Check now that the endpoint answers, trusts us and is trusted (else a first run would)
        and, with ``prove`` and an expected identity, that it is the VM."""
        if self.scheme == "https":
            digest = self._server_certificate_digest()
            if self._cert_digest and digest != self._cert_digest:
                error = GuestIdentityError(
                    f"{self._where()}: another machine answers: its TLS certificate has SHA-256 "
                    f"{digest}, the one seen when {self.vm_key} proved its identity {self._cert_digest}"
                )
                self._binding.refuse(error)
                raise error
            self._cert_digest = digest
            self._evidence["tls_cert_sha256"] = digest
        deadline = time.monotonic() + self.operation_timeout + READ_MARGIN
        protocol = self._get_protocol()
        shell_id = None
        try:
            self._bound(protocol, deadline)
            shell_id = self._open_shell(protocol)
            if prove and self._binding.needs_proof(shell_id):
                self._prove(protocol, shell_id, deadline + 60)
        except _DeadlinePassed:
            self._close_quietly(protocol, shell_id)
            raise GuestTimeout(f"{self._where()}: no answer within {self.operation_timeout} s") from None
        except Exception as err:
            self._close_quietly(protocol, shell_id)
            raise self._error(err, started=False) from None
        self._close_quietly(protocol, shell_id)

    def _prove(self, protocol: Protocol, shell_id: str, deadline: float) -> None:
        """The identity probe, in the shell the next command will run in (a shell lives on one
        machine: a connection that lands elsewhere cannot reach it)."""
        code, out, err = self._command(protocol, shell_id, probe_script("Windows"), deadline, [], None)
        self._binding.accept(self._probe_reading(code, out, clean_stderr(err)), shell_id)

    def _server_certificate_digest(self) -> str:
        context = (
            ssl.create_default_context(cafile=self.ca_bundle)
            if self.ca_bundle
            else ssl.create_default_context()
        )
        address = (self.host, self.port)
        try:
            with (
                socket.create_connection(address, timeout=self.operation_timeout) as raw,
                context.wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                der = tls.getpeercert(binary_form=True) or b""
        except ssl.SSLCertVerificationError as err:
            raise GuestUnreachable(
                f"{self._where()}: TLS certificate not trusted ({err.verify_message}); {self._ca_hint()}"
            ) from None
        except OSError as err:
            raise GuestUnreachable(f"{self._where()}: {err.strerror or type(err).__name__}") from None
        return hashlib.sha256(der).hexdigest()

    def _ca_hint(self) -> str:
        if self.ca_bundle:
            return f"CA bundle {self.ca_bundle}"
        return f"no CA bundle given (set {CA_BUNDLE_ENVS[0]})"

    def _open_shell(self, protocol: Protocol) -> str:
        try:
            return protocol.open_shell(noprofile=True)
        except (requests.exceptions.ConnectionError, WinRMTransportError) as err:
            refused = isinstance(err, requests.exceptions.ConnectionError) and _refused(err)
            stale = isinstance(err, WinRMTransportError) and err.code == 400
            if (
                refused
                or isinstance(err, requests.exceptions.SSLError)
                or not (stale or isinstance(err, requests.exceptions.ConnectionError))
            ):
                raise
            # the keep-alive connection (and with it the NTLM sealing keys) died while we idled,
            # e.g. the guest restarted: authenticate afresh. No shell was created.
            protocol.transport.close_session()
            return protocol.open_shell(noprofile=True)

    def run(
        self,
        script: str,
        *,
        timeout: float,
        stdin: bytes = b"",
        elevated: bool = False,
        on_progress: Callable[[str], None] | None = None,
        proof_in: Callable[[CommandResult], object] | None = None,
    ) -> CommandResult:
        """Run PowerShell ``script``. ``elevated`` changes nothing: a WinRM session of the
        (built-in) administrator already has a full token. With an expected identity, every
        shell proves it first (WinRM opens one per command). One command at a time."""
        if stdin:
            raise ValueError("winrm: Windows scripts take no stdin (the script itself travels there)")
        with self._serial:
            return self._run_serial(script, timeout, on_progress, proof_in)

    def _run_serial(
        self,
        script: str,
        timeout: float,
        on_progress: Callable[[str], None] | None,
        proof_in: Callable[[CommandResult], object] | None,
    ) -> CommandResult:
        binding = self._binding
        binding.check()
        started = time.monotonic()
        deadline = started + timeout
        protocol = self._get_protocol()
        shell_id = None
        command: list[str] = []  # the running command's id, for _abandon
        progress = ProgressLines(on_progress)
        try:
            self._bound(protocol, deadline)
            shell_id = self._open_shell(protocol)
            if binding.needs_proof(shell_id) and proof_in is None:
                self._prove(protocol, shell_id, deadline)
            exit_code, out_bytes, err_bytes = self._command(
                protocol, shell_id, script, deadline, command, progress.feed
            )
        except _DeadlinePassed:
            self._abandon(protocol, shell_id, command[-1] if command else None)
            raise GuestTimeout(
                f"{self._where()}: {_purpose(script)} did not finish within {timeout:g} s (terminated)"
            ) from None
        except GuestIdentityError:
            self._close_quietly(protocol, shell_id)
            raise
        except Exception as err:
            raise self._error(err, started=bool(command)) from None
        progress.flush()
        self._close_quietly(protocol, shell_id)
        result = CommandResult(
            exit_code=exit_code,
            stdout=out_bytes,
            stderr=clean_stderr(err_bytes),
            duration=time.monotonic() - started,
        )
        if proof_in is not None and binding.needs_proof(shell_id):
            binding.accept(proof_in(result), shell_id)
        return result

    def _command(
        self,
        protocol: Protocol,
        shell_id: str,
        script: str,
        deadline: float,
        ids: list[str],
        feed_progress: Callable[[bytes], None] | None,
    ) -> tuple[int, bytes, bytes]:
        """Run ``script`` in ``shell_id`` and collect its output (its command id goes to ``ids``)."""
        self._bound(protocol, deadline)
        command_id = protocol.run_command(shell_id, "powershell.exe", POWERSHELL_ARGS)
        ids.append(command_id)
        data = script.encode("utf-8")
        for offset in range(0, max(len(data), 1), STDIN_CHUNK):
            self._bound(protocol, deadline)
            last = offset + STDIN_CHUNK >= len(data)
            protocol.send_command_input(shell_id, command_id, data[offset : offset + STDIN_CHUNK], end=last)
        stdout: list[bytes] = []
        stderr: list[bytes] = []
        while True:
            self._bound(protocol, deadline)
            try:
                out, err, exit_code, done = protocol.get_command_output_raw(shell_id, command_id)
            except WinRMOperationTimeoutError:
                continue  # no output during this long poll; poll again
            stdout.append(out)
            stderr.append(err)
            if feed_progress is not None:
                feed_progress(err)
            if done:
                break
        out_bytes = b"".join(stdout)
        if out_bytes.startswith(b"\xef\xbb\xbf"):
            out_bytes = out_bytes[3:]
        return exit_code, out_bytes, b"".join(stderr)

    def _abandon(self, protocol: Protocol, shell_id: str | None, command_id: str | None) -> None:
        """Stop the remote command and drop its shell, within a few seconds at most."""
        protocol.operation_timeout_sec = 1
        protocol.transport.read_timeout_sec = 1 + READ_MARGIN
        if shell_id and command_id:
            with contextlib.suppress(Exception):
                protocol.cleanup_command(shell_id, command_id)  # Signal terminate
        self._close_quietly(protocol, shell_id)

    def _close_quietly(self, protocol: Protocol, shell_id: str | None) -> None:
        if shell_id:
            with contextlib.suppress(Exception):
                protocol.close_shell(shell_id, close_session=False)

    def _error(self, err: BaseException, *, started: bool) -> GuestError:
        where = self._where()
        if isinstance(err, GuestError):
            return err
        if isinstance(err, InvalidCredentialsError):
            return GuestAuthError(f"{where}: the guest refused the credentials ({self.auth})")
        if isinstance(err, requests.exceptions.SSLError) and "fingerprint" in str(err).lower():
            error = GuestIdentityError(
                f"{where}: another machine answers: its TLS certificate is not the one seen when "
                f"{self.vm_key} proved its identity (SHA-256 {self._cert_digest})"
            )
            self._binding.refuse(error)
            return error
        if isinstance(err, requests.exceptions.SSLError):
            if "CERTIFICATE_VERIFY_FAILED" in str(err):
                return GuestUnreachable(f"{where}: TLS certificate not trusted; {self._ca_hint()}")
            # cut short (the peer closed or reset the connection mid-handshake), not a distrust
            return GuestUnreachable(f"{where}: TLS handshake failed: {one_line(err, 200)}")
        if isinstance(err, requests.exceptions.ConnectTimeout):
            return GuestTimeout(f"{where}: no connection within the operation timeout")
        if isinstance(err, requests.exceptions.ReadTimeout):
            return GuestTimeout(f"{where}: the guest stopped answering (read timeout)")
        if isinstance(err, requests.exceptions.ConnectionError):
            if started:
                return GuestDisconnected(
                    f"{where}: the connection dropped while the command ran (the guest may have shut down)"
                )
            return GuestUnreachable(
                f"{where}: {'connection refused' if _refused(err) else 'connection failed'}"
            )
        if isinstance(err, WSManFaultError):
            return GuestError(f"{where}: WS-Man fault {err.wsman_fault_code}: {one_line(err.reason, 300)}")
        if isinstance(err, WinRMTransportError):
            return GuestError(f"{where}: HTTP {err.code} from the WinRM service")
        if isinstance(err, WinRMError):
            return GuestError(f"{where}: {one_line(err, 300)}")
        return GuestError(f"{where}: {type(err).__name__}: {one_line(err, 300)}")

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.transport.close_session()
            self._protocol = None


def _refused(err: BaseException) -> bool:
    seen: set[int] = set()
    current: Any = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return True
        reason = getattr(current, "reason", None)  # urllib3's MaxRetryError: an error or a string
        current = (
            current.__cause__
            or current.__context__
            or (reason if isinstance(reason, BaseException) else None)
        )
    return "refused" in str(err).lower()


def connect_winrm(
    address: str,
    user: str,
    *,
    vm_key: str,
    scheme: Literal["https", "http"] = "https",
    auth: AuthMethod = "ntlm",
    ca_bundle: str | os.PathLike[str] | None = None,
    password_source: Callable[[], str] | None = None,
    operation_timeout: int = DEFAULT_OPERATION_TIMEOUT,
    expected: ExpectedIdentity | None = None,
    pins: Pins | None = None,
    prove: bool = True,
) -> WinRmGuest:
    """Connect to ``address`` (``host[:port]``; 5986 for HTTPS, 5985 for HTTP) as ``user``; with
    ``expected``, proven to be that VM (unless ``prove`` is False: the first command proves)."""
    host, port = parse_address(address, WinRmGuest.default_port if scheme == "https" else 5985)
    return WinRmGuest(
        host,
        port,
        user,
        vm_key=vm_key,
        scheme=scheme,
        auth=auth,
        ca_bundle=ca_bundle,
        password_source=password_source,
        operation_timeout=operation_timeout,
        expected=expected,
        pins=pins,
    ).connected(prove=prove)

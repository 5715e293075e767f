"""A WinRM listener: HTTP/1.1 (keep-alive, as NTLM needs) on 127.0.0.1, with or without TLS.

Requests go to ``/wsman``. The listener authenticates (``auth``), unseals and seals encrypted
bodies, and hands SOAP to the shared :class:`~azsim.windows.wsman.WsmanService`. ``stop`` closes
the listening socket and every open connection, so clients see refused or dropped connections,
as when a VM powers off; ``start`` listens again, on the same port when it is still free.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from spnego.channel_bindings import GssChannelBindings

from azsim.guestnet import reset
from azsim.windows.auth import (
    ENCRYPTED_CONTENT_TYPE,
    Authenticator,
    AuthFailed,
    EncryptionError,
    NegotiateSession,
)
from azsim.windows.wsman import MAX_REQUEST_ENVELOPE, ConnectionDropped, ServiceStopped, WsmanService

#: an idle keep-alive connection is closed after this long (HTTP.sys closes after 120 s)
IDLE_SECONDS = 120.0
_MAX_BODY = 2 * MAX_REQUEST_ENVELOPE


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close joins the connection threads
    # socketserver's default backlog is 5: connections of a fleet's harness, arriving while a
    # busy simulator has not yet accepted the ones before, would be turned away (Windows' own
    # listen backlog is far larger)
    request_queue_size = 128

    def __init__(self, port: int, listener: WinRmListener) -> None:
        self.listener = listener
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        if self.listener.tls is not None:
            # the handshake happens in the connection's thread, never in the accept loop
            sock = self.listener.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.connections_lock:
            self.connections.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that vanishes mid-request is not news

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Microsoft-HTTPAPI/2.0"
    sys_version = ""
    timeout = IDLE_SECONDS
    # headers and body leave as separate writes: without TCP_NODELAY each response waits for
    # the client's delayed ACK (40 ms)
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.negotiate: NegotiateSession | None = None
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests carry nothing worth a log line here, and bodies may be sealed

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _challenge(self, token: bytes | None = None, *, close: bool = False) -> None:
        listener = self.server.listener
        self.send_response(401)
        if token:
            self.send_header("WWW-Authenticate", "Negotiate " + _b64(token))
        else:
            for offer in listener.auth.offers(listener.tls is not None):
                self.send_header("WWW-Authenticate", offer)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._reply(405)

    def do_POST(self) -> None:
        listener = self.server.listener
        tls = listener.tls is not None
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self.close_connection = True
            self._reply(413)
            return
        body = self.rfile.read(length) if length else b""
        if self.path.split("?")[0].lower() != "/wsman":
            self._reply(404)
            return
        account, final_token = self._authenticate(tls)
        if account is None:
            return
        extra = {"WWW-Authenticate": "Negotiate " + _b64(final_token)} if final_token else {}
        if not body:  # the empty POST clients send to set up the security context
            self._reply(200, headers=extra)
            return
        content_type = self.headers.get("Content-Type", "")
        sealed = content_type.lower().startswith("multipart/encrypted")
        try:
            if sealed:
                if self.negotiate is None:
                    raise EncryptionError("a sealed body needs Negotiate authentication")
                body = self.negotiate.unwrap(body, content_type)
            elif not tls and not listener.auth.allow_unencrypted:
                self._reply(400, headers=extra)  # AllowUnencrypted=false refuses plain HTTP
                return
            elif not content_type.lower().startswith("application/soap+xml"):
                self._reply(415, headers=extra)
                return
        except EncryptionError:
            self._reply(400, headers=extra)
            return
        address = f"{'https' if tls else 'http'}://{self.headers.get('Host', 'localhost')}/wsman"
        try:
            status, response = listener.service.handle(
                body, owner=account, client_ip=self.client_address[0], endpoint=address
            )
        except ServiceStopped:
            self.close_connection = True
            return
        except ConnectionDropped:
            self.close_connection = True
            reset(self.connection)
            return
        if sealed and self.negotiate is not None:
            self._reply(
                status, self.negotiate.wrap(response), {**extra, "Content-Type": ENCRYPTED_CONTENT_TYPE}
            )
        else:
            headers = {**extra, "Content-Type": "application/soap+xml;charset=UTF-8"}
            self._reply(status, response, headers)

    def _authenticate(self, tls: bool) -> tuple[str | None, bytes | None]:
        """(account, final server token) or (None, None) once a 401 has been sent."""
        listener = self.server.listener
        scheme, _, value = (self.headers.get("Authorization") or "").partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            try:
                return listener.auth.check_basic(value.strip(), tls), None
            except AuthFailed:
                self._challenge(close=True)
                return None, None
        if scheme in ("negotiate", "ntlm"):
            if self.negotiate is None:
                self.negotiate = NegotiateSession(listener.auth.store, listener.channel_bindings)
            try:
                token = self.negotiate.step(_unb64(value))
            except (AuthFailed, ValueError):
                self.negotiate = None
                self._challenge(close=True)
                return None, None
            if not self.negotiate.complete:
                self._challenge(token)
                return None, None
            return listener.auth.account, token
        if self.negotiate is not None and self.negotiate.complete:
            return listener.auth.account, None
        self._challenge()
        return None, None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise ValueError("malformed token") from None


class WinRmListener:
    """One port (HTTP or HTTPS) of a machine's WinRM service."""

    def __init__(
        self,
        service: WsmanService,
        auth: Authenticator,
        *,
        tls: ssl.SSLContext | None = None,
        channel_bindings: GssChannelBindings | None = None,
    ) -> None:
        self.service = service
        self.auth = auth
        self.tls = tls
        self.channel_bindings = channel_bindings
        self.port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        try:
            server = _Server(self.port, self)
        except OSError:  # the old port was taken meanwhile: any free one will do
            server = _Server(0, self)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True, name=f"winrm-{self.port}"
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.socket.close()
        server.drop_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)

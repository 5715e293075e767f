"""The azsim process: one HTTPS port on loopback serving ARM, Entra ID and the admin API.

``azsim serve`` runs :func:`serve` in the foreground; ``azsim up`` starts it detached. SIGTERM,
SIGINT or ``POST /azsim/shutdown`` stop it cleanly: the port closes, operations stop, every guest
is stopped and closed, and ``server.json`` is removed.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from azsim.aad import AadReply
from azsim.arm import Secrets, Simulator
from azsim.faults import FaultError, parse_fault
from azsim.guests import GuestSettings, GuestSetupError
from azsim.scenario import Scenario, load_scenario
from azsim.tls import TlsFiles, server_context

MAX_BODY = 16 * 1024 * 1024
_OPENID = re.compile(r"^/(?P<tenant>[^/]+)/v2\.0/\.well-known/openid-configuration$", re.IGNORECASE)
_TOKEN = re.compile(r"^/(?P<tenant>[^/]+)/oauth2/(v2\.0/)?token$", re.IGNORECASE)
_ADMIN_VM = re.compile(r"^/azsim/vms/(?P<rg>[^/]+)/(?P<name>[^/]+)/(?P<action>delete|guest-shutdown)$")


@dataclass(frozen=True)
class StateDir:
    """The files of one azsim instance."""

    root: Path

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def pid_file(self) -> Path:
        return self.root / "azsim.pid"

    @property
    def server_file(self) -> Path:
        return self.root / "server.json"

    @property
    def secrets_file(self) -> Path:
        return self.root / "secrets.json"

    @property
    def log_file(self) -> Path:
        return self.root / "azsim.log"

    @property
    def addresses_file(self) -> Path:
        return self.root / "guest-addresses.json"

    @property
    def ssh_key(self) -> Path:
        return self.root / "ssh" / "id_ed25519"

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles.in_state_dir(self.root)

    def secrets(self) -> Secrets:
        data = json.loads(self.secrets_file.read_text())
        return Secrets(**data)

    def server_info(self) -> dict[str, Any] | None:
        try:
            info: dict[str, Any] = json.loads(self.server_file.read_text())
        except (OSError, ValueError):
            return None
        return info


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "azsim"
    sys_version = ""
    # idle keep-alive connections close after this long
    timeout = 120
    # one buffered write per response: headers and body in separate TCP segments would meet the
    # client's delayed ACK (Nagle) and cost ~40 ms per request
    wbufsize = -1
    server: AzsimServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log (GET /azsim/requests) records every request instead."""

    def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data and self.command != "HEAD":
            self.wfile.write(data)

    def _base_url(self) -> str:
        port = self.server.server_address[1]
        host = (self.headers.get("Host") or "").lower()
        if host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            return f"https://{host}"
        return f"https://127.0.0.1:{port}"

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._send(413, {"error": {"code": "RequestEntityTooLarge", "message": "Body too large."}})
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        path = unquote(urlsplit(self.path).path)
        sim = self.server.sim
        if path.startswith("/azsim/") or path == "/azsim":
            self._admin(path, body)
            return
        openid = _OPENID.match(path)
        token = _TOKEN.match(path)
        if (openid and self.command == "GET") or (token and self.command == "POST"):
            started = time.monotonic()
            if openid:
                reply: AadReply = sim.directory.openid_configuration(self._base_url(), openid["tenant"])
            else:
                assert token is not None
                reply = sim.directory.token(token["tenant"], body)
            self._send(reply.status, reply.body, {"Cache-Control": "no-store"})
            sim.log.add(
                {
                    "time": time.time(),
                    "kind": "aad",
                    "method": self.command,
                    "path": path,
                    "query": {},
                    "api_version": "",
                    "operation": "token" if token else "openid",
                    "status": reply.status,
                    "duration": round(time.monotonic() - started, 4),
                }
            )
            return
        result = sim.handle_arm(self.command, self.path, dict(self.headers.items()), body, self._base_url())
        self._send(result.status, result.body, result.headers)

    def _admin(self, path: str, body: bytes) -> None:
        supplied = self.headers.get("X-Azsim-Admin") or ""
        if not hmac.compare_digest(supplied.encode(), self.server.admin_token.encode()):
            self._send(401, {"error": "missing or wrong X-Azsim-Admin header"})
            return
        sim = self.server.sim
        method = self.command
        if method == "GET" and path == "/azsim/status":
            status = sim.status()
            status["url"] = f"https://127.0.0.1:{self.server.server_address[1]}"
            status["pid"] = os.getpid()
            self._send(200, status)
        elif method == "GET" and path == "/azsim/requests":
            since = int((parse_qs(urlsplit(self.path).query).get("since") or ["0"])[0])
            self._send(200, {"requests": sim.log.entries(since)})
        elif method == "DELETE" and path == "/azsim/requests":
            sim.log.clear()
            self._send(200, {"cleared": True})
        elif method == "GET" and path == "/azsim/faults":
            self._send(200, {"faults": sim.faults.as_json()})
        elif method == "POST" and path == "/azsim/faults":
            try:
                fault = parse_fault(json.loads(body or b"null"))
            except (FaultError, ValueError) as err:
                self._send(400, {"error": str(err)})
                return
            self._send(201, {"id": sim.faults.add(fault)})
        elif method == "DELETE" and path == "/azsim/faults":
            self._send(200, {"removed": sim.faults.clear()})
        elif method == "DELETE" and path.startswith("/azsim/faults/"):
            removed = sim.faults.remove(path.rsplit("/", 1)[1])
            self._send(200 if removed else 404, {"removed": removed})
        elif method == "POST" and path == "/azsim/shutdown":
            self._send(200, {"stopping": True})
            self.close_connection = True
            self.server.stop_requested.set()
        elif method == "POST" and (vm_action := _ADMIN_VM.match(path)):
            key = f"{vm_action['rg']}/{vm_action['name']}"
            if vm_action["action"] == "delete":
                self._send(200 if sim.delete_vm(key) else 404, {"vm": key})
            else:
                sim.guests.stop(key)
                sim.on_guest_shutdown(key)
                self._send(200, {"vm": key})
        else:
            self._send(404, {"error": f"no admin route {method} {path}"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _dispatch


class AzsimServer(ThreadingHTTPServer):
    """HTTPS on one loopback port; TLS handshakes run in the request threads, not the listener."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, sim: Simulator, context: ssl.SSLContext, admin_token: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.sim = sim
        self.context = context
        self.admin_token = admin_token
        self.stop_requested = threading.Event()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as err:
            # e.g. a client that does not trust the CA; it gets its own clear error
            print(f"azsim: TLS handshake with {client_address[0]} failed: {err}", file=sys.stderr)
            return
        request.settimeout(None)
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError | ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def serve(
    scenario_path: Path,
    state: StateDir,
    *,
    guests: str = "all",
    port: int = 0,
    on_ready: Callable[[Scenario, int], None] | None = None,
) -> int:
    """Run azsim in the foreground until SIGTERM/SIGINT or the admin shutdown; returns an exit code.

    ``on_ready(scenario, port)`` runs once ARM answers and the guests have booted, before the
    status says ``ready`` (``azsim serve`` writes ``STATE/env`` there).
    """
    scenario = load_scenario(scenario_path)
    if guests == "none":
        scenario = dataclasses.replace(scenario, guests=False)
    secrets = state.secrets()
    settings = GuestSettings(
        state_dir=state.root,
        tls_cert=state.tls.server_cert,
        tls_key=state.tls.server_key,
        ssh_public_key=state.ssh_key.with_suffix(".pub").read_text().strip()
        if state.ssh_key.with_suffix(".pub").exists()
        else "",
        admin_password=secrets.admin_password,
        addresses_file=state.addresses_file,
        swapped_addresses=scenario.swapped_addresses,
    )
    sim = Simulator(scenario, secrets, ssh_public_key=settings.ssh_public_key, guest_settings=settings)
    try:
        sim.create_guests()
    except GuestSetupError as err:
        print(f"azsim: {err}", file=sys.stderr)
        sim.close()
        return 2
    try:
        server = AzsimServer(port, sim, server_context(state.tls), secrets.admin_token)
    except OSError as err:
        print(f"azsim: cannot listen on 127.0.0.1:{port}: {err.strerror}", file=sys.stderr)
        sim.close()
        return 2
    bound_port = server.server_address[1]

    def request_stop(signum: int, frame: Any) -> None:
        server.stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    listener = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="azsim-https", daemon=True
    )
    listener.start()
    _write_json(
        state.server_file, {"pid": os.getpid(), "port": bound_port, "url": f"https://127.0.0.1:{bound_port}"}
    )
    print(f"azsim: serving {scenario.source} on https://127.0.0.1:{bound_port}", file=sys.stderr)
    try:
        errors = sim.boot_guests()
        for key, error in sorted(errors.items()):
            print(f"azsim: guest {key} failed to start: {error}", file=sys.stderr)
        if on_ready is not None:
            on_ready(scenario, bound_port)
        sim.ready.set()
        server.stop_requested.wait()
    finally:
        print("azsim: stopping", file=sys.stderr)
        server.shutdown()
        server.server_close()
        sim.close()
        state.server_file.unlink(missing_ok=True)
    return 0

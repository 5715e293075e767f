"""Azure's Instance Metadata Service, as one VM's guest sees it at http://169.254.169.254.

Each Linux guest gets its own server, on a socket azsim creates inside the guest's network
namespace (``azsim.linux.netns``), bound to 169.254.169.254:80 on the guest's own loopback: only
that guest reaches it, and it answers with that guest's VM (``azsim.guestapi.Platform``).

What it does follows Microsoft's page
(https://learn.microsoft.com/azure/virtual-machines/instance-metadata-service):

* ``GET /metadata/instance`` and route filters below it (``/metadata/instance/compute/vmId``);
  a leaf answers only with ``format=text``;
* every request needs the header ``Metadata: true`` ("400 Bad Request, Required metadata header
  not specified") and must not carry ``X-Forwarded-For``;
* ``api-version`` is mandatory and one of the published versions (else the documented 400 body
  with ``newest-versions``); duplicate query parameters are rejected;
* only GET (405 otherwise); an unknown element is 404; JSON values are strings.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from azsim.guestapi import Platform

log = logging.getLogger("azsim.imds")

IMDS_ADDRESS = "169.254.169.254"
#: the page's "Supported API versions"
_VERSIONS = """2025-04-07 2024-07-17 2024-03-15 2023-11-15 2023-07-01 2021-12-13 2021-11-15
2021-11-01 2021-10-01 2021-08-01 2021-05-01 2021-03-01 2021-02-01 2021-01-01 2020-12-01 2020-10-01
2020-09-01 2020-07-15 2020-06-01 2019-11-01 2019-08-15 2019-08-01 2019-06-04 2019-06-01 2019-04-30
2019-03-11 2019-02-01 2018-10-01 2018-04-02 2018-02-01 2017-12-01 2017-10-01 2017-08-01 2017-04-02
2017-03-01"""
API_VERSIONS = frozenset(_VERSIONS.split())
NEWEST = ["2025-04-07", "2024-07-17", "2024-03-15"]


def instance_document(platform: Platform) -> dict[str, Any]:
    """``/metadata/instance``: the compute part, and a network part of the VM's one NIC."""
    ipv4 = {
        "ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": ""}],
        "subnet": [{"address": "10.0.0.0", "prefix": "24"}],
    }
    interface = {"ipv4": ipv4, "ipv6": {"ipAddress": []}, "macAddress": "000D3A000000"}
    return {"compute": platform.compute(), "network": {"interface": [interface]}}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "Microsoft-IIS/10.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s: %s", self.server.platform.name, format % args)

    def _reply(self, status: int, body: Any, text: bool = False) -> None:
        data = (body if text else json.dumps(body)).encode()
        self.send_response(status)
        kind = "text/plain" if text else "application/json"
        self.send_header("Content-Type", f"{kind}; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.headers.get("Metadata", "").lower() != "true":
            self._reply(400, {"error": "Bad request. Required metadata header not specified"})
            return
        if self.headers.get("X-Forwarded-For") is not None:
            self._reply(400, {"error": "Bad request. Request contains X-Forwarded-For header"})
            return
        url = urlsplit(self.path)
        pairs = parse_qsl(url.query, keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs):
            self._reply(400, {"error": "Bad request. Duplicate query parameter names"})
            return
        if query.get("api-version") not in API_VERSIONS:
            self._reply(
                400,
                {
                    "error": "Bad request. api-version is invalid or was not specified in the request. "
                    "For more information refer to aka.ms/azureimds",
                    "newest-versions": NEWEST,
                },
            )
            return
        parts = [p for p in url.path.split("/") if p]
        if parts[:2] != ["metadata", "instance"]:
            self._reply(404, {"error": "Not found"})
            return
        node: Any = instance_document(self.server.platform)
        for key in parts[2:]:
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                self._reply(404, {"error": "Not found"})
                return
        fmt = query.get("format", "json")
        if not isinstance(node, dict | list):
            if fmt != "text":
                self._reply(400, {"error": "Bad request. Leaf nodes can only be queried with format=text"})
                return
            self._reply(200, str(node), text=True)
            return
        if fmt == "text":
            keys = node if isinstance(node, dict) else range(len(node))
            self._reply(200, "\n".join(str(key) for key in keys), text=True)
            return
        self._reply(200, node)

    def _not_allowed(self) -> None:
        self._reply(405, {"error": "Method not allowed"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    platform: Platform


class ImdsServer:
    """IMDS for one guest, served from a listening socket azsim created in the guest's network."""

    def __init__(self, listener: socket.socket, platform: Platform) -> None:
        server = _Server(listener.getsockname()[:2], _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = listener
        server.server_address = listener.getsockname()[:2]
        server.platform = platform
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            daemon=True,
            name=f"imds-{platform.name}",
        )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

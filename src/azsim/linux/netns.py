"""A Linux guest's own network: sockets made inside its namespace, and a relay to its sshd.

Each sandbox runs in a network namespace of its own (``unshare --net``) whose only device is its
loopback, carrying 127.0.0.1 and, when the VM's IMDS is reachable, 169.254.169.254. azsim serves
that guest's IMDS on a socket it creates *inside* the namespace, and relays the host's
127.0.0.1:PORT to the guest's sshd on its own 127.0.0.1:22, so real OpenSSH clients (paramiko,
testinfra, ``ssh``) keep reaching the guest at ``endpoints()["ssh"]``.

A socket belongs to the network namespace of the thread that created it, for its whole life.
So :func:`socket_in` creates each one on a short-lived thread that first enters the guest's
namespace (``setns(2)``; Python 3.11 has no ``os.setns``) and then ends: no other thread of
azsim ever leaves the host's namespace. Nothing is changed outside the sandbox: no host device,
address or route is added.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import threading
from typing import Any

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_READ = 65536


def socket_in(netns_fd: int, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket of the network namespace open at ``netns_fd`` (``/proc/PID/ns/net``)."""
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def make() -> None:
        if _libc.setns(netns_fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            failed.append(OSError(errno, f"setns: {os.strerror(errno)}"))
            return
        made.append(socket.socket(family, kind))

    worker = threading.Thread(target=make, name="azsim-netns")
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    return made[0]


class Relay:
    """Host ``127.0.0.1:host_port`` -> ``target`` inside the guest's namespace, byte for byte.

    One pair of pump threads per connection; a connection the guest refuses (sshd not up yet, or
    gone) is closed at once, as a refused connection would be."""

    def __init__(self, host_port: int, netns_fd: int, target: tuple[str, int], name: str) -> None:
        self.host_port = host_port
        self.netns_fd = netns_fd
        self.target = target
        self.name = name
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", host_port))
        self._listener.listen(16)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept, daemon=True, name=f"relay-{name}")

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            while not self._closed.is_set():
                if not selector.select(timeout=0.2):
                    continue
                try:
                    client, _ = self._listener.accept()
                except OSError:
                    continue
                self._thread_for(self._connect, client)

    def _connect(self, client: socket.socket) -> None:
        try:
            upstream = socket_in(self.netns_fd)
        except OSError:
            client.close()
            return
        try:
            upstream.settimeout(5)
            upstream.connect(self.target)
            upstream.settimeout(None)
        except OSError:
            upstream.close()
            client.close()
            return
        with self._lock:
            if self._closed.is_set():
                upstream.close()
                client.close()
                return
            self._open.update((client, upstream))
        done = threading.Barrier(2, action=lambda: self._finish(client, upstream))
        for source, sink in ((client, upstream), (upstream, client)):
            self._thread_for(_pump, source, sink, done)

    def _thread_for(self, target: Any, *args: Any) -> None:
        threading.Thread(target=target, args=args, daemon=True, name=f"relay-{self.name}").start()

    def _finish(self, *pair: socket.socket) -> None:
        with self._lock:
            for sock in pair:
                self._open.discard(sock)
                sock.close()

    def close(self) -> None:
        """Stop listening and cut every relayed connection."""
        self._closed.set()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        self._listener.close()


def _pump(source: socket.socket, sink: socket.socket, done: threading.Barrier) -> None:
    try:
        while True:
            data = source.recv(_READ)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        # pass the end on (half-close), then wait for the other direction before closing
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with contextlib.suppress(threading.BrokenBarrierError):
            done.wait()

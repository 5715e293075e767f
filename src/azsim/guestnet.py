"""The network path to a guest: a TCP relay in front of each guest's endpoint (SSH for Linux,
WinRM over HTTPS for Windows), where azsim injects the guest faults.

The harness connects to the relay (``guest-addresses.json`` names it); the relay forwards bytes
both ways to the guest's real endpoint and changes nothing in them (TLS and SSH stay end to end:
host keys and certificates are the guest's). Two faults act here (``azsim.faults``):

``guest_unreachable``
    a new connection is accepted and then never answered, as when a network security group rule
    or a guest firewall drops the packets (Microsoft, "Troubleshoot SSH connections to an Azure
    Linux VM that fails, errors out, or is refused": NSG rules and the guest firewall are the
    first causes; "Troubleshoot WinRM connectivity": the listener's port blocked). The client
    sees no banner and no handshake: it must give up by its own deadline.
``guest_drop``
    a connection whose client waits for the guest (the client spoke last) while the guest stays
    silent ``idle`` seconds is reset (TCP RST both ways): what Azure Load Balancer and NAT Gateway
    do to a flow idle past their idle timeout when TCP reset is on (Microsoft, "Load Balancer TCP
    Reset and Idle Timeout"), and what a command that prints nothing while it works meets on such
    a path. The guest's command goes on; only the connection is lost. (WinRM, whose idle waits
    are the server's long polls, is dropped by the WS-Man endpoint itself on a Receive:
    ``azsim.windows.endpoint``.)

A guest that is not running has no listener: the relay closes its port while the guest is down,
so a client is refused, as by a VM that is off.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from azsim.faults import Fault, FaultSet

#: how often a relayed connection looks at the clock while a guest_drop fault is live (idle
#: detection), and otherwise (to notice the relay closing), seconds
TICK = 0.05
IDLE_TICK = 0.25
BUFFER = 64 * 1024


class GuestNetwork:
    """What the faults say about one VM's guest network path, asked by its relay and endpoints."""

    def __init__(self, vm_key: str, faults: FaultSet | None) -> None:
        self.vm_key = vm_key
        self.faults = faults

    def unreachable(self) -> bool:
        """A new connection to the guest goes nowhere (a ``guest_unreachable`` fault, consumed)."""
        if self.faults is None:
            return False
        return self.faults.guest_fault("guest_unreachable", self.vm_key, consume=True) is not None

    def drop(self) -> Fault | None:
        """The live ``guest_drop`` fault of this VM, not yet consumed (``consume`` when it fires)."""
        if self.faults is None:
            return None
        return self.faults.guest_fault("guest_drop", self.vm_key, consume=False)

    def consume(self, fault: Fault) -> bool:
        return self.faults is not None and self.faults.consume_guest_fault(fault)


def reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP RST (SO_LINGER 0): the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class Relay:
    """A TCP relay on 127.0.0.1 to ``target()`` (None: the guest is down: refuse)."""

    def __init__(self, network: GuestNetwork, target: Callable[[], tuple[str, int] | None]) -> None:
        self.network = network
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def open(self) -> None:
        """Listen (again): on the same port when it is still free."""
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", self.port))
            except OSError:
                listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            self.port = listener.getsockname()[1]
            self._listener = listener
            self._stopping.clear()
            thread = threading.Thread(
                target=self._accept, args=(listener,), daemon=True, name=f"relay-{self.port}"
            )
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def close(self) -> None:
        """Stop listening and reset every relayed connection (the guest went down)."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections = list(self._connections)
            self._connections.clear()
            threads = list(self._threads)
        self._stopping.set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for sock in connections:
            reset(sock)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=2)

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self._listener is not listener:
                    reset(client)
                    return
                self._connections.add(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True, name="relay-conn")
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._connections.discard(sock)

    def _serve(self, client: socket.socket) -> None:
        if self.network.unreachable():
            # a black hole: the connection is there, nothing ever answers; the client gives up
            self._hold(client)
            return
        target = self.target()
        upstream: socket.socket | None = None
        if target is not None:
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                upstream = None
        if upstream is None:
            self._forget(client)
            reset(client)
            return
        with self._lock:
            self._connections.add(upstream)
        try:
            self._pump(client, upstream)
        finally:
            self._forget(client, upstream)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()

    def _hold(self, client: socket.socket) -> None:
        """Read and drop what the client sends, answer nothing, until it gives up."""
        try:
            while not self._stopping.is_set():
                if _ready(client, select.POLLIN, TICK * 4) and not client.recv(BUFFER):
                    return
        except OSError:
            return
        finally:
            self._forget(client)
            reset(client)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        client.setblocking(False)
        upstream.setblocking(False)
        last_client = last_guest = time.monotonic()
        open_ends = {client: upstream, upstream: client}
        by_fd = {client.fileno(): client, upstream.fileno(): upstream}
        # poll, not select: a relay of a large fleet holds more than select's 1024 descriptors
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        fault = self.network.drop()
        while open_ends and not self._stopping.is_set():
            try:
                events = poller.poll((TICK if fault is not None else IDLE_TICK) * 1000)
            except OSError:
                return
            now = time.monotonic()
            for fd, _event in events:
                sock = by_fd[fd]
                try:
                    data = sock.recv(BUFFER)
                except BlockingIOError:
                    continue
                except OSError:
                    return
                peer = open_ends.get(sock)
                if peer is None:
                    continue
                if not data:
                    # half close: the other side learns there is no more
                    with contextlib.suppress(OSError):
                        peer.shutdown(socket.SHUT_WR)
                    del open_ends[sock]
                    poller.unregister(fd)
                    continue
                if sock is client:
                    last_client = now
                else:
                    last_guest = now
                if not _send_all(peer, data):
                    return
            fault = self.network.drop()
            # the client spoke last and the guest has said nothing since for `idle` seconds:
            # a command is under way and its connection is idle; an idle-timeout reset cuts it
            if (
                fault is not None
                and last_client > last_guest
                and now - last_client >= fault.seconds
                and self.network.consume(fault)
            ):
                reset(client)
                reset(upstream)
                return


def _send_all(sock: socket.socket, data: bytes) -> bool:
    view = memoryview(data)
    deadline = time.monotonic() + 60
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            _ready(sock, select.POLLOUT, TICK)
            continue
        except OSError:
            return False
        view = view[sent:]
    return True


def _ready(sock: socket.socket, events: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``events`` on ``sock`` (poll: any descriptor number)."""
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(timeout * 1000))

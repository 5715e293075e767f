"""azsim's guest relay (azsim.guestnet) under a large fleet's load."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator

import pytest

from azsim.guestnet import GuestNetwork, Relay
from tests.descriptors import FD_SETSIZE, descriptors_past_fd_setsize


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
    listener.close()
    thread.join(timeout=5)


def test_relays_connections_whose_descriptors_are_past_fd_setsize(echo_server: tuple[str, int]) -> None:
    relay = Relay(GuestNetwork("rg/vm", None), lambda: echo_server)
    relay.open()
    try:
        with (
            descriptors_past_fd_setsize(),
            socket.create_connection(("127.0.0.1", relay.port), timeout=10) as client,
        ):
            assert client.fileno() >= FD_SETSIZE
            payload = os.urandom(300_000)
            client.sendall(payload)
            client.shutdown(socket.SHUT_WR)
            received = bytearray()
            while chunk := client.recv(65536):
                received += chunk
        assert bytes(received) == payload
    finally:
        relay.close()

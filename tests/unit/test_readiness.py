"""The readiness probe tells a listening service from a port that only accepts and drops."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from oneplatform.compute.operations import accepts


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock
    sock.close()


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


SETTLE = 0.15  # a VM's forwarded port


def test_a_listening_service_is_ready(listener: socket.socket) -> None:
    assert accepts("127.0.0.1", _port(listener), SETTLE)
    assert accepts("127.0.0.1", _port(listener), 0.0)


def test_a_service_that_greets_is_ready(listener: socket.socket) -> None:
    def greet() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"hello\n")

    threading.Thread(target=greet, daemon=True).start()
    assert accepts("127.0.0.1", _port(listener), SETTLE)


def test_a_port_that_accepts_and_drops_is_not_ready(listener: socket.socket) -> None:
    """What QEMU user networking does for a forward while nothing listens in the guest."""

    def drop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    assert not accepts("127.0.0.1", _port(listener), SETTLE)
    # Without a settle time a connect is the answer: right for a container's port, which
    # refuses until its service listens (the compute type says which applies).
    assert accepts("127.0.0.1", _port(listener), 0.0)


def test_a_closed_port_is_not_ready() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = _port(sock)
    sock.close()
    assert not accepts("127.0.0.1", port, SETTLE)
    assert not accepts("127.0.0.1", port, 0.0)

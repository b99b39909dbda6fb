"""The replication relay: how a MariaDB or Redis standby reaches its primary.

Every replica reaches its primary through the platform's replication hub (one port on the
host's service address, whatever the compute type). The hub routes a connection on its
first bytes: PostgreSQL's startup packet names the replication role, but MariaDB speaks
first (the server's greeting) and a Redis replica opens with ``PING``, so neither says
where it goes. Their standby connects to this relay instead, on the guest's loopback; the
relay opens a connection to the hub, sends one line, the *preamble*, naming the database's
replication user and a key derived from its password, then copies bytes both ways. The
hub routes on the preamble, strips it and leads to the primary's engine port; without the
right key a connection leads nowhere (a tenant who knows another database's id learns
nothing from the hub).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import threading

log = logging.getLogger("onep-agent")

RELAY_PORT = 8472  # on the guest's loopback: the standby's "primary"
MARKER = b"ONEP-RELAY-1:"  # 13 bytes: the key starts where PostgreSQL's user name does
KEY_LEN = 42 + 1 + 32  # onep_repl_<32 hex> ":" <32 hex>
PREAMBLE_LEN = len(MARKER) + KEY_LEN + 1  # and a newline


def relay_key(user: str, password: str) -> str:
    """What the hub routes a relayed connection on: the user and a digest of its password."""
    digest = hashlib.sha256(b"onep-relay\0" + password.encode("utf-8")).hexdigest()[:32]
    return f"{user}:{digest}"


def preamble(user: str, password: str) -> bytes:
    key = relay_key(user, password).encode("ascii")
    if len(key) != KEY_LEN:
        raise ValueError(f"a replication user is {KEY_LEN - 33} characters, not {user!r}")
    return MARKER + key + b"\n"


class Relay:
    """Listens on ``127.0.0.1:port``; each connection goes to the hub after the preamble."""

    def __init__(self, hub: tuple[str, int], user: str, password: str, port: int = RELAY_PORT):
        self.hub = hub
        self.preamble = preamble(user, password)
        self.port = port
        self._server: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", self.port))
            server.listen(16)
            self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True, name="relay").start()
        log.info("replication relay on 127.0.0.1:%d to the hub %s:%d", self.port, *self.hub)

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # stopped
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.hub, timeout=5.0)
        except OSError as exc:
            log.warning("relay: the hub %s:%d does not answer: %s", *self.hub, exc)
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        try:
            upstream.sendall(self.preamble)
        except OSError:
            client.close()
            upstream.close()
            return
        back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
        back.start()
        _pipe(client, upstream)
        back.join()
        client.close()
        upstream.close()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then end ``sink``'s writing side (both ways close)."""
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

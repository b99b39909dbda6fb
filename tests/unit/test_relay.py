"""The replication relay and what the hub routes it on (the real HAProxy doing it: the
integration test test_relayed_replication)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from oneplatform.config import Settings
from oneplatform.guest.engines.mariadb import _dump_position, gtid_seq
from oneplatform.guest.processes import EngineError
from oneplatform.guest.relay import MARKER, PREAMBLE_LEN, Relay, preamble, relay_key
from oneplatform.hostsvc.proxy import Route, Server, render, repl_user

USER = repl_user("0123456789abcdef0123456789abcdef")


def test_the_key_sits_where_postgresql_names_its_user_and_depends_on_the_password() -> None:
    line = preamble(USER, "secret-1")
    assert len(line) == PREAMBLE_LEN and line.startswith(MARKER) and line.endswith(b"\n")
    assert line[13 : 13 + len(USER)] == USER.encode()  # PostgreSQL's user offset
    assert relay_key(USER, "secret-1") != relay_key(USER, "secret-2")
    assert "secret-1" not in relay_key(USER, "secret-1")
    with pytest.raises(ValueError):
        preamble("onep_repl_short", "secret-1")


def test_the_hub_routes_a_relayed_key_and_strips_its_preamble(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    key = relay_key(USER, "pw")
    with_key = Route("0123456789abcdef0123456789abcdef", 20001, 20002, Server("127.0.0.1", 5000),
                     relay_key=key)  # fmt: skip
    rendered = render(settings, [with_key])
    backend = "repl_0123456789abcdef0123456789abcdef"
    assert rendered.map.splitlines() == [f"{USER} {backend}", f"{key} {backend}"]
    assert f"lua-load {tmp_path / 'proxy' / 'relay.lua'}" in rendered.config
    assert "lua.onep_strip_preamble if { var(sess.key) -m found }" in rendered.config
    without = render(settings, [Route(with_key.db_id, 20001, 20002, Server("127.0.0.1", 5000))])
    assert without.map.splitlines() == [f"{USER} {backend}"]  # no replication password yet


def test_the_relay_sends_the_preamble_then_copies_both_ways() -> None:
    hub = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def serve() -> None:
        conn, _ = hub.accept()
        with conn:
            conn.sendall(b"greeting\n")  # a server that speaks first, as MariaDB
            data = b""
            while len(data) < PREAMBLE_LEN + 5:
                data += conn.recv(1024)
            seen.append(data)
            conn.sendall(b"pong")

    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    relay = Relay(hub.getsockname(), USER, "pw", port)
    relay.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            assert client.recv(100) == b"greeting\n"
            client.sendall(b"hello")
            assert client.recv(100) == b"pong"
    finally:
        relay.stop()
        hub.close()
    assert seen == [preamble(USER, "pw") + b"hello"]


def test_a_gtid_position_gives_its_domain_zero_sequence_number() -> None:
    assert gtid_seq("0-1-42") == 42
    assert gtid_seq("1-7-3,0-12-99") == 99
    assert gtid_seq("") == 0 and gtid_seq("1-2-3") == 0


def test_a_dump_names_its_gtid_position_near_its_end(tmp_path: Path) -> None:
    dump = tmp_path / "seed.sql"
    dump.write_text(
        "-- CHANGE MASTER TO MASTER_USE_GTID=slave_pos;\n"
        + "INSERT INTO t VALUES ('gtid_slave_pos=''9-9-9''');\n" * 5000
        + "-- SET GLOBAL gtid_slave_pos='0-166905395-62';\n-- Dump completed\n"
    )
    assert _dump_position(dump) == "0-166905395-62"
    dump.write_text("-- no position\n")
    with pytest.raises(EngineError, match="no GTID position"):
        _dump_position(dump)

"""MariaDB and Redis replication for real, on the host: two engines as the agent runs them,
the replica reaching its primary through its relay and the platform's replication hub (the
endpoint proxy's HAProxy, with the configuration the platform renders), a switchover as the
platform does it (the primary demoted running, the replica waited for and promoted, the hub
turned to it), and every acknowledged write on both afterwards."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest
import redis

from oneplatform.config import Settings
from oneplatform.dbaas.datastores.base import ConnInfo, Datastore
from oneplatform.dbaas.datastores.mariadb import MariaDB
from oneplatform.dbaas.datastores.redis import Redis
from oneplatform.guest.bundle import UpstreamSettings, generate_password
from oneplatform.guest.engines.mariadb import MariaDbEngine
from oneplatform.guest.engines.redis import RedisEngine
from oneplatform.guest.relay import MARKER, relay_key
from oneplatform.hostsvc.proxy import EndpointProxy, Route, Server, render, repl_user
from tests.integration import engines
from tests.integration.conftest import find_free_port, require_or_fail

pytestmark = pytest.mark.integration

ROOT = Path("/var/lib/oneplatform/repltest")  # the servers' users must reach it


@dataclass
class Engine:
    make: type[Any]
    ds: Datastore
    data: str
    write: Callable[[ConnInfo, range], None]
    read: Callable[[ConnInfo], set[int]]
    refused: Callable[[ConnInfo, str], None]  # a tenant user's write on a standby


def _mysql(conn: ConnInfo, user: str = "", password: str = "") -> Any:
    return pymysql.connect(
        host=conn.host, port=conn.port, user=user or conn.username,
        password=password or conn.password, autocommit=True, connect_timeout=10,
    )  # fmt: skip


def _maria_write(conn: ConnInfo, seqs: range) -> None:
    with _mysql(conn) as c, c.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS app.w (seq INT PRIMARY KEY)")
        for n in seqs:
            cur.execute("INSERT INTO app.w VALUES (%s)", (n,))


def _maria_read(conn: ConnInfo) -> set[int]:
    with _mysql(conn) as c, c.cursor() as cur:
        cur.execute("SELECT seq FROM app.w")
        return {int(row[0]) for row in cur.fetchall()}


def _maria_refused(conn: ConnInfo, password: str) -> None:
    with (
        _mysql(conn, "alice", password) as c,
        c.cursor() as cur,
        pytest.raises(pymysql.err.OperationalError) as err,
    ):
        cur.execute("INSERT INTO app.w VALUES (-1)")
    assert err.value.args[0] == 1290, err.value  # --read-only


def _redis(conn: ConnInfo, user: str = "", password: str = "") -> redis.Redis:
    return redis.Redis(
        host=conn.host, port=conn.port, username=user or conn.username,
        password=password or conn.password, socket_timeout=10, decode_responses=True,
    )  # fmt: skip


def _redis_write(conn: ConnInfo, seqs: range) -> None:
    client = _redis(conn)
    for n in seqs:
        client.sadd("w", n)


def _redis_read(conn: ConnInfo) -> set[int]:
    return {int(n) for n in _redis(conn).smembers("w")}


def _redis_refused(conn: ConnInfo, password: str) -> None:
    with pytest.raises(redis.exceptions.ReadOnlyError):
        _redis(conn, "alice", password).sadd("w", -1)


ENGINES = {
    "mariadb": Engine(MariaDbEngine, MariaDB(), "mysql", _maria_write, _maria_read, _maria_refused),
    "redis": Engine(RedisEngine, Redis(), "redis", _redis_write, _redis_read, _redis_refused),
}


class Hub:
    """The platform's replication hub: HAProxy on the configuration it renders, on a free
    port of the loopback; re-rendered and restarted when the primary changes."""

    def __init__(self, home: Path, db_id: str, relay_key: str) -> None:
        self.settings = Settings(home=home, service_address="127.0.0.1")
        self.port = find_free_port()
        self.db_id, self.relay_key = db_id, relay_key
        self.proc: subprocess.Popen[bytes] | None = None

    def lead_to(self, primary: engines.Server[Any]) -> None:
        self.stop()
        proxy = EndpointProxy(self.settings)
        route = Route(
            self.db_id, find_free_port(), find_free_port(), Server("127.0.0.1", primary.port),
            relay_key=self.relay_key,
        )  # fmt: skip
        rendered = render(self.settings, [route])
        hub_bind = f"bind 127.0.0.1:{self.settings.replication_port}"
        assert hub_bind in rendered.config
        config = rendered.config.replace(hub_bind, f"bind 127.0.0.1:{self.port}")
        proxy.apply(type(rendered)(config, rendered.map, rendered.servers))
        self.proc = subprocess.Popen(
            ["/usr/sbin/haproxy", "-db", "-f", str(proxy.config_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "the hub does not listen"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        (self.settings.home / "proxy" / "admin.sock").unlink(missing_ok=True)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Callable[[str, str], Hub]]:
    require_or_fail(Path("/usr/sbin/haproxy").exists(), "HAProxy is not installed (setup.sh)")
    made: list[Hub] = []

    def make(db_id: str, key: str) -> Hub:
        made.append(Hub(tmp_path, db_id, key))
        return made[-1]

    yield make
    for h in made:
        h.stop()


def _until(what: str, check: Callable[[], Any], timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except Exception as exc:  # not yet: the last error says why, at the deadline
            result, last = None, exc
        else:
            last = None
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s ({last})"
        time.sleep(0.2)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_a_replica_follows_through_the_hub_and_a_switchover_keeps_every_write(
    name: str, hub: Callable[[str, str], Hub]
) -> None:
    e = ENGINES[name]
    binary = "mariadbd" if name == "mariadb" else "redis-server"
    require_or_fail(shutil.which(binary) or Path(f"/usr/sbin/{binary}").exists(), binary)
    db_id = uuid.uuid4().hex
    user, password = repl_user(db_id), generate_password()
    with engines.serving(e.make, e.ds, ROOT, e.data, relay_port=find_free_port()) as primary:
        conn_p = primary.platform
        if name == "mariadb":
            e.ds.create_database(conn_p, "app")
        e.write(conn_p, range(1, 51))
        primary.engine.ensure_replication_role(user, password)
        the_hub = hub(db_id, relay_key(user, password))
        the_hub.lead_to(primary)

        # A wrong key leads nowhere: the connection closes, no server greets.
        with socket.create_connection(("127.0.0.1", the_hub.port), timeout=10) as raw:
            raw.sendall(MARKER + f"{user}:{'0' * 32}\n".encode())
            assert raw.recv(100) == b""

        upstream = UpstreamSettings("127.0.0.1", the_hub.port, user, password, name="r1")
        with engines.serving(
            e.make, e.ds, ROOT, e.data, standby=upstream, like=primary,
            relay_port=find_free_port(),
        ) as replica:  # fmt: skip
            conn_r = replica.platform
            e.write(conn_p, range(51, 101))
            written = primary.engine.replication_status()["lsn_bytes"]
            _until(
                "the replica streams and has received the primary's writes",
                lambda: (
                    (s := replica.engine.replication_status())["receiver"] == "streaming"
                    and s["receive_bytes"] >= written
                ),
            )
            _until("the replica has every row", lambda: e.read(conn_r) == set(range(1, 101)))
            assert replica.engine.replication_status()["role"] == "standby"

            # A user made on the primary logs in on the replica, where it cannot write.
            alice = "Alice-pass-" + generate_password()[:8]
            e.ds.create_user(conn_p, "alice", alice)
            if name == "mariadb":
                e.ds.grant(conn_p, "alice", "app")
            _until("alice on the replica", lambda: e.refused(conn_r, alice) is None)
            assert "alice" in [u.name for u in e.ds.list_users(conn_r)]
            assert not any(u.name.startswith("onep_") for u in e.ds.list_users(conn_p))

            # The switchover, as the platform's step does it.
            demoted = primary.engine.demote_live(
                UpstreamSettings("127.0.0.1", the_hub.port, user, password, name="p")
            )
            assert demoted is not None and demoted["clean"]
            replayed = e.ds.wait_replayed(conn_r, int(demoted["checkpoint_bytes"]), 30)
            assert replayed is not None
            assert replica.engine.promote(30) == {"role": "primary"}
            the_hub.lead_to(replica)
            assert replica.engine.replication_status()["role"] == "primary"
            e.write(conn_r, range(101, 151))

            every = set(range(1, 151))
            assert e.read(conn_r) == every
            _until(
                "the former primary follows the new one and has every write",
                lambda: (
                    primary.engine.replication_status()["receiver"] == "streaming"
                    and e.read(conn_p) == every
                ),
            )
            e.refused(conn_p, alice)  # a standby now: no writes

"""Replicas and switchover end to end, on containers (moves between compute types: the lab
module): the real HAProxy endpoint proxy, PostgreSQL streaming through the replication hub,
and a client writing every 50 ms through the stable endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from tests.e2e.conftest import (
    Platform,
    member_container,
    record_timing,
    reset_timings,
)
from tests.e2e.writer import Writer

pytestmark = pytest.mark.e2e
PW = "Alice-pw-5e1c0a"


def dsn(endpoint: dict[str, Any], dbname: str = "appdb") -> str:
    return (
        f"host={endpoint['host']} port={endpoint['port']} user=alice password={PW} "
        f"dbname={dbname} connect_timeout=5"
    )


def query(endpoint: dict[str, Any], sql: str) -> Any:
    with psycopg.connect(dsn(endpoint), autocommit=True) as conn:
        return conn.execute(sql).fetchone()


def execute(endpoint: dict[str, Any], sql: str) -> None:
    with psycopg.connect(dsn(endpoint), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="module")
def group(platform: Platform) -> Iterator[dict[str, Any]]:
    """pgha: a primary and one replica, made in one call."""
    reset_timings("switch")
    db = platform.json(
        "db", "create", "pgha", "--flavor", "container.small", "--database", "appdb",
        "--user", f"alice:{PW}", "--replicas", "1", "--wait",
    )  # fmt: skip
    yield db
    platform.run("db", "delete", "pgha", "--wait", check=False)


def members(platform: Platform) -> list[tuple[str, str, str]]:
    return [
        (m["name"], m["role"], m["state"]) for m in platform.json("db", "replica", "list", "pgha")
    ]


def test_a_group_made_in_one_call_streams_and_serves_reads(
    platform: Platform, group: dict[str, Any]
) -> None:
    assert group["status"] == "ACTIVE"
    listed = platform.json("db", "replica", "list", "pgha")
    assert [(m["name"], m["role"], m["state"], m["compute_type"]) for m in listed] == [
        ("pgha", "primary", "ACTIVE", "container"),
        ("pgha-r1", "replica", "ACTIVE", "container"),
    ]
    assert set(listed[1]) == {
        "name", "role", "flavor", "compute_type", "state", "status_message", "lag_bytes",
        "lag_seconds", "endpoint",
    }  # fmt: skip
    rw, ro = group["endpoint"], group["read_only_endpoint"]
    replica = listed[1]["endpoint"]
    assert len({rw["port"], ro["port"], replica["port"], listed[0]["endpoint"]["port"]}) == 4
    with psycopg.connect(dsn(rw), autocommit=True) as conn:
        conn.execute("CREATE TABLE seen (v text)")
        conn.execute("INSERT INTO seen VALUES ('through the endpoint')")
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    deadline = time.monotonic() + 30
    while True:  # the read-only endpoint leads to the replica, which has the row
        try:
            row = query(ro, "SELECT pg_is_in_recovery(), (SELECT v FROM seen)")
        except psycopg.errors.UndefinedTable:
            row = None
        if row == (True, "through the endpoint"):
            break
        assert time.monotonic() < deadline, row
        time.sleep(0.3)
    assert query(replica, "SELECT pg_is_in_recovery()") == (True,)  # its own endpoint
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        query(ro, "INSERT INTO seen VALUES ('no')")
    assert platform.json("db", "replica", "list", "pgha")[1]["lag_bytes"] is not None
    assert "seeded from the primary (pg_basebackup)" in listed[1]["status_message"]  # no backup


def test_a_replica_is_seeded_from_the_latest_backup_and_the_wal_after_it(
    platform: Platform, group: dict[str, Any]
) -> None:
    """Once a backup exists, a new replica restores it from the repository and replays the
    WAL since (archived, then streamed): rows written after the backup are there."""
    rw = group["endpoint"]
    execute(rw, "CREATE TABLE after_backup (v int, pad text)")
    made = platform.json("db", "backup", "create", "pgha", "--name", "pgha-seed", "--wait")
    assert made["status"] == "COMPLETED"
    # ~30 MB of WAL after the backup: segments the repository archives, then the rest the
    # primary streams
    execute(
        rw, "INSERT INTO after_backup SELECT g, repeat('x', 100) FROM generate_series(1, 150000) g"
    )
    execute(rw, "INSERT INTO after_backup VALUES (150001, '')")
    platform.run("db", "replica", "create", "pgha", "--name", "pgha-seeded", "--wait", timeout=600)
    (seeded,) = [
        m for m in platform.json("db", "replica", "list", "pgha") if m["name"] == "pgha-seeded"
    ]
    assert seeded["state"] == "ACTIVE"
    assert "seeded from the latest backup" in seeded["status_message"], seeded
    deadline = time.monotonic() + 30
    while query(seeded["endpoint"], "SELECT count(*), max(v) FROM after_backup") != (
        150001,
        150001,
    ):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    platform.run("db", "replica", "delete", "pgha-seeded", "--wait", timeout=300)


def _switch(platform: Platform, rw: dict[str, Any], *args: str) -> Writer:
    writer = Writer.running(dsn(rw))
    try:
        platform.run("db", "switchover", "pgha", *args, "--wait", timeout=300)
        time.sleep(1.0)
    finally:
        writer.stop()
    return writer


def test_a_switchover_loses_no_acknowledged_write_and_keeps_the_endpoint(
    platform: Platform, group: dict[str, Any]
) -> None:
    rw = group["endpoint"]
    for target, primary, replica in (("", "pgha-r1", "pgha"), ("pgha", "pgha", "pgha-r1")):
        writer = _switch(platform, rw, *(["--to", target] if target else []))
        record_timing("switch", f"switchover container -> container (to {primary})", writer.gap())
        assert writer.missing() == []  # RPO 0: every acknowledged write is there
        assert len(writer.acked) > 30
        shown = platform.json("db", "show", "pgha")
        assert (shown["id"], shown["endpoint"], shown["status"]) == (group["id"], rw, "ACTIVE")
        assert members(platform) == [(primary, "primary", "ACTIVE"), (replica, "replica", "ACTIVE")]
        assert query(rw, "SELECT pg_is_in_recovery()") == (False,)
        # The former primary follows the new one: it has the last write.
        former = next(m for m in shown["members"] if m["name"] == replica)["endpoint"]
        last = writer.acked[-1][0]
        deadline = time.monotonic() + 30
        while query(former, "SELECT max(seq) FROM onep_writes")[0] != last:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert query(former, "SELECT pg_is_in_recovery()") == (True,)


def _walreceiver_of(platform: Platform, member: str) -> int:
    """The host pid of the member's WAL receiver (a process in its container)."""
    init = subprocess.run(
        ["podman", "inspect", "--format", "{{.State.Pid}}", member_container(platform, member)],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    ns = os.readlink(f"/proc/{init}/ns/pid")
    pids = subprocess.run(
        ["pgrep", "-f", "walreceiver"], capture_output=True, text=True
    ).stdout.split()
    (pid,) = [int(p) for p in pids if os.readlink(f"/proc/{p}/ns/pid") == ns]
    return pid


def test_a_switchover_to_a_replica_that_cannot_catch_up_changes_nothing(
    platform: Platform, group: dict[str, Any]
) -> None:
    """The target's WAL receiver frozen: the primary serves on, and nothing changed."""
    rw = group["endpoint"]
    frozen = _walreceiver_of(platform, "pgha-r1")
    os.kill(frozen, signal.SIGSTOP)
    try:
        out = platform.run(
            "db", "switchover", "pgha", "--to", "pgha-r1", "--timeout", "5", "--wait",
            check=False, timeout=300,
        )  # fmt: skip
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert out.returncode != 0
    assert "switchover_timeout" in out.stderr or "switchover_failed" in out.stderr, out.stderr
    assert "nothing was changed" in out.stderr.replace("\n", " ")
    shown = platform.json("db", "show", "pgha")
    assert shown["status"] == "ACTIVE" and "nothing was changed" in shown["status_message"]
    assert members(platform)[0] == ("pgha", "primary", "ACTIVE")
    with psycopg.connect(dsn(rw), autocommit=True) as conn:
        conn.execute("INSERT INTO seen VALUES ('after the refusal')")


def test_replica_requests_that_cannot_be_done_are_refused(
    platform: Platform, group: dict[str, Any]
) -> None:
    for argv, code in (
        (("db", "replica", "delete", "pgha"), "is_primary"),
        (("db", "replica", "create", "pgha", "--name", "pgha-r1"), "replica_exists"),
        (("db", "replica", "create", "pgha", "--flavor", "no.such"), "flavor_not_found"),
        (("db", "move", "pgha", "--flavor", "container.small"), "same_flavor"),
        (("db", "switchover", "nope"), "db_instance_not_found"),
    ):
        out = platform.run(*argv, check=False)
        assert out.returncode != 0 and code in out.stderr, (argv, out.stderr)
    assert len(members(platform)) == 2


def test_a_resize_is_a_move_to_a_flavor_of_the_same_type(
    platform: Platform, group: dict[str, Any]
) -> None:
    """container.small -> container.medium by the one path of every flavor change: a
    replica there, a switchover, the former primary retired; no acknowledged write lost."""
    rw = group["endpoint"]
    writer = Writer.running(dsn(rw))
    try:
        moved = platform.json("db", "move", "pgha", "--flavor", "container.medium", "--wait")
        time.sleep(1.0)
    finally:
        writer.stop()
    record_timing("switch", "resize container.small -> container.medium", writer.gap())
    assert writer.missing() == [] and len(writer.acked) > 20
    assert (moved["id"], moved["endpoint"], moved["status"]) == (group["id"], rw, "ACTIVE")
    assert (moved["flavor"], moved["compute_type"]) == ("container.medium", "container")
    deadline = time.monotonic() + 60  # the former primary retired (its delete may still run)
    while [(m[1], m[2]) for m in members(platform)] != [
        ("primary", "ACTIVE"),
        ("replica", "ACTIVE"),
    ]:
        assert time.monotonic() < deadline, members(platform)
        time.sleep(0.5)


def _primary_container(platform: Platform) -> tuple[str, str]:
    (name, role, _) = members(platform)[0]
    assert role == "primary"
    return name, member_container(platform, name)


def _in_container(container: str, script: str, user: str = "postgres") -> str:
    """A shell script run in a member's container (``$PG``: psql as the superuser over the
    engine's socket)."""
    prelude = (
        "for s in /var/run/postgresql/.s.PGSQL.*[0-9]; do port=${s##*.}; done; "
        'PG="$(echo /usr/lib/postgresql/*/bin/psql) -X -At -h /var/run/postgresql '
        '-p $port -U postgres -d postgres"; '
    )
    argv = ["podman", "exec", "--user", user, container, "sh", "-c", prelude + script]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


PGBACKREST = "pgbackrest --config=/etc/pgbackrest/pgbackrest.conf --stanza=db"


def _unarchived_segments(container: str) -> list[str]:
    """Freeze the primary's archiving (its archiver and pgBackRest's processes stopped),
    complete two WAL segments and wait until the replicas received them: segments only the
    replicas hold, as when a primary dies before its archiver's next round."""
    _in_container(
        container,
        "for p in /proc/[0-9]*; do [ ${p#/proc/} = $$ ] && continue; "
        "case \"$(tr '\\0' ' ' < $p/cmdline 2>/dev/null)\" in "
        "*archiver*|*pgbackrest*) kill -STOP ${p#/proc/};; esac; done",
        user="root",
    )
    segments = []
    for _ in range(2):
        time.sleep(0.3)  # the writer's rows in it
        segments.append(
            _in_container(container, '$PG -c "SELECT pg_walfile_name(pg_switch_wal())"')
        )
    lsn = _in_container(container, '$PG -c "SELECT pg_current_wal_lsn()"')
    deadline = time.monotonic() + 30
    while (
        _in_container(
            container, f"$PG -c \"SELECT bool_and(flush_lsn >= '{lsn}') FROM pg_stat_replication\""
        )
        != "t"
    ):
        assert time.monotonic() < deadline, "the replica did not receive the segments"
        time.sleep(0.3)
    return segments


def _failover(
    platform: Platform,
    rw: dict[str, Any],
    break_it: list[str],
    case: str,
    before_break: Callable[[str], object] = lambda container: None,
) -> tuple[Writer, str, dict[str, Any]]:
    """Break the primary with ``break_it`` (its container id appended) while a client
    writes; wait for another member to be the primary and the group whole again."""
    old, container = _primary_container(platform)
    before = platform.json("db", "show", "pgha")
    writer = Writer.running(dsn(rw), 1.5)
    lag = platform.json("db", "replica", "list", "pgha")[1]["lag_bytes"]
    before_break(container)
    broken_at = time.monotonic()
    subprocess.run([*break_it, container], check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            shown = platform.json("db", "show", "pgha")
            if shown["status"] == "ACTIVE" and shown["members"][0]["name"] != old:
                break
            assert time.monotonic() < deadline, shown
            time.sleep(0.5)
        switched_at = time.monotonic()
        wrote_after = writer.wait_for_writes(3, switched_at)
    finally:
        writer.stop()
    record_timing("switch", f"failover container ({case})", writer.gap())
    assert wrote_after >= 3, writer.errors[-5:]  # the client writes again, to the new primary
    # Writes lost are at most what the replica had not received: the last instants only.
    lost = set(writer.missing())
    lost_at = [t for seq, t in writer.acked if seq in lost]
    assert all(broken_at - t < 1.0 for t in lost_at), (lag, sorted(lost)[:10])
    assert shown["id"] == before["id"] and shown["endpoint"] == rw
    # The group's size comes back: a new replica on the former primary's flavor.
    deadline = time.monotonic() + 180
    while [m[1:] for m in members(platform)] != [("primary", "ACTIVE"), ("replica", "ACTIVE")]:
        assert time.monotonic() < deadline, members(platform)
        time.sleep(1)
    assert old not in [m[0] for m in members(platform)]  # the former primary is discarded
    return writer, old, shown


def test_a_primary_killed_fails_over_to_its_replica(
    platform: Platform, group: dict[str, Any]
) -> None:
    # A replica promoted behind the same endpoint, the client writing again, no more than
    # the last instant's writes lost, the group whole again: all asserted in _failover.
    # The primary dies with completed segments it never archived: the promoted replica
    # sends them to the repository (else a replica seeded from an older backup could never
    # catch up once the new primary recycles them).
    unarchived: list[str] = []
    _failover(
        platform, group["endpoint"], ["podman", "kill"], "podman kill",
        before_break=lambda container: unarchived.extend(_unarchived_segments(container)),
    )  # fmt: skip
    _, container = _primary_container(platform)
    for segment in unarchived:
        deadline = time.monotonic() + 60
        while True:
            try:
                _in_container(container, f"{PGBACKREST} archive-get {segment} /tmp/{segment}")
                break
            except subprocess.CalledProcessError as exc:
                assert time.monotonic() < deadline, (segment, exc.stdout, exc.stderr)
                time.sleep(1)


def test_a_frozen_primary_is_fenced_and_never_writable_again(
    platform: Platform, group: dict[str, Any]
) -> None:
    """A partition: the primary frozen (``podman pause``) until the failover is done, then
    thawed: it was fenced (its compute killed through the compute API), so its writes are
    refused; one writable primary, never two."""
    _, container = _primary_container(platform)
    former = platform.json("db", "show", "pgha")["members"][0]["endpoint"]
    _failover(platform, group["endpoint"], ["podman", "pause"], "podman pause")
    subprocess.run(["podman", "unpause", container], capture_output=True)  # may be gone
    # Refused: nothing listens there any more (or, the port given to the new replica, it
    # is a standby's).
    with pytest.raises(psycopg.Error):
        query(former, "INSERT INTO seen VALUES ('from the former primary')")
    assert query(group["endpoint"], "SELECT pg_is_in_recovery()") == (False,)


def test_a_replica_deleted_leaves_the_read_only_endpoint_to_the_primary(
    platform: Platform, group: dict[str, Any]
) -> None:
    replica = members(platform)[1][0]
    out = platform.run("db", "replica", "delete", replica, "--wait", timeout=300)
    assert f"deleted {replica}" in out.stdout
    assert [m[1:] for m in members(platform)] == [("primary", "ACTIVE")]
    deadline = time.monotonic() + 20
    while query(group["read_only_endpoint"], "SELECT pg_is_in_recovery()") != (False,):
        assert time.monotonic() < deadline
        time.sleep(0.3)


def test_a_detached_replica_is_a_database_of_its_own(
    platform: Platform, group: dict[str, Any]
) -> None:
    """``onep db replica detach``: the replica keeps its data as of the detach and the
    group's users, takes writes behind endpoints of its own, backs up into a repository of
    its own; the two diverge from then on, and the group keeps its primary."""
    rw = group["endpoint"]
    execute(rw, "CREATE TABLE IF NOT EXISTS seen (v text)")
    execute(rw, "INSERT INTO seen VALUES ('before the detach')")
    platform.run("db", "replica", "create", "pgha", "--name", "pgha-leaving", "--wait", timeout=600)
    detached = platform.json(
        "db", "replica", "detach", "pgha-leaving", "--name", "pgsolo", "--wait", timeout=600
    )  # fmt: skip
    try:
        assert (detached["name"], detached["status"]) == ("pgsolo", "ACTIVE")
        assert detached["id"] != group["id"] and detached["endpoint"] != rw
        assert [(m["name"], m["role"]) for m in detached["members"]] == [("pgsolo", "primary")]
        assert "pgha-leaving" not in [m[0] for m in members(platform)]
        own = detached["endpoint"]
        assert query(own, "SELECT pg_is_in_recovery()") == (False,)  # as alice: her password
        execute(own, "INSERT INTO seen VALUES ('only in pgsolo')")
        execute(rw, "INSERT INTO seen VALUES ('only in pgha')")
        time.sleep(1.0)
        assert query(
            own, "SELECT string_agg(v, ',' ORDER BY v) FROM seen WHERE v LIKE 'only%'"
        ) == ("only in pgsolo",)
        assert query(rw, "SELECT count(*) FROM seen WHERE v = 'only in pgsolo'") == (0,)
        assert query(own, "SELECT count(*) FROM seen WHERE v = 'before the detach'") == (1,)
        assert query(own, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'onep_repl_%'") == (0,)
        made = platform.json("db", "backup", "create", "pgsolo", "--name", "pgsolo-1", "--wait")
        assert (made["status"], made["database"]) == ("COMPLETED", "pgsolo")
    finally:
        platform.run("db", "delete", "pgsolo", "--wait", timeout=300, check=False)

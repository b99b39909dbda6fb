"""Backup and restore of a ~1 GB PostgreSQL database (pgbench scale 70) through the platform,
against pgBackRest run by hand with the same settings to the same store, in one run.

Each side first takes an untimed full backup (the warm-up: it also waits for the archiving
of the load's WAL to catch up, which a first backup's stop would otherwise wait for).

(a) platform, for a container and a VM source: a database on ``container.small`` /
    ``vm.small`` is loaded with ``pgbench -i -s 70`` (generated server-side). Backup: from
    ``client.db.create_backup(type=full)`` until the backup shows ``COMPLETED`` (the guest
    agent runs pgBackRest; the platform polls and records it). Restore: from
    ``client.db.create(restore=B)`` onto the source's own flavor until the create succeeded
    (compute made, pgBackRest restore, recovery, promotion, the owner's roles: a database
    ready for its users). The restored row count is checked, untimed.
(b) by hand, on the host: a PostgreSQL 15 cluster in a temporary directory, loaded the same
    way, archiving to a bucket of its own in the same embedded store (made through the
    store's admin shell, as the platform makes a database's). Its pgBackRest configuration
    is written by the guest agent's own ``render_config`` (lz4, bundles, aes-256-cbc,
    io-timeout, process-max of the source's flavor), so the settings cannot drift from what
    guests run. Backup: ``pgbackrest backup --type=full``. Restore: ``pgbackrest restore
    --type=immediate --target-action=promote`` (what the agent runs) into an empty
    directory, then ``pg_ctl start`` until the server answers out of recovery.

Throughput is the database's size (pgBackRest's "backup size" of the platform's backup, the
cluster's size for (b)) over the seconds. The host's pgBackRest runs natively while the VM's
runs under TCG: the VM ratio includes the emulation, the container one is the platform's own
cost. Everything talks to 127.0.0.1, the store's service address and the project's guests.
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.common import BenchError, PlatformProcess, free_port, now
from oneplatform.config import Settings
from oneplatform.errors import BackendUnavailable
from oneplatform.guest.bundle import StoreSettings
from oneplatform.guest.engines.pgbackrest import CA_PATH, render_config
from oneplatform.hostsvc.objectstore import StoreAdmin, store_config
from oneplatform.sdk.client import Client

NAME = "backup-restore"
SCALE = 70  # pgbench scale: ~1.05 GB
SIZE_GB = 4  # the data volume: the tables, their WAL until archived, the restore
SOURCES = {"container": "container.small", "vm": "vm.small"}
STORE_PORT = "8339"  # a store of its own (never run beside the tests, which use 8330-8339)
ROUNDS = 2  # timed rounds, after an untimed warm-up backup on each side
TIMEOUT_S = 3600.0
PG_BIN = Path("/usr/lib/postgresql/15/bin")
POLL_S = 0.5
PASSWORD = "Bench-" + secrets.token_hex(8)


def platform_env() -> dict[str, str]:
    return {"ONEP_STORE_PORT": STORE_PORT, "ONEP_REPLICATION_PORT": "8330"}


@dataclass
class Figures:
    label: str
    size_bytes: int
    backup_s: list[float]
    restore_s: list[float]

    def mb_s(self, seconds: float) -> float:
        return self.size_bytes / 1e6 / seconds

    def as_dict(self) -> dict[str, Any]:
        b, r = statistics.median(self.backup_s), statistics.median(self.restore_s)
        return {
            "size_bytes": self.size_bytes,
            "backup_seconds": self.backup_s,
            "restore_seconds": self.restore_s,
            "backup_median_s": b,
            "restore_median_s": r,
            "backup_mb_s": self.mb_s(b),
            "restore_mb_s": self.mb_s(r),
        }


def _pgbench_init(host: str, port: int, user: str, password: str | None, db: str) -> None:
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
    if password is not None:
        env["PGPASSWORD"] = password
    proc = subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(SCALE), "-I", "dtGvp",
         "-h", host, "-p", str(port), "-U", user, db],
        capture_output=True, text=True, env=env, timeout=TIMEOUT_S,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BenchError(f"pgbench -i failed: {proc.stderr.strip()[-500:]}")


# -- (a) the platform -------------------------------------------------------------------------
def _wait_op(client: Client, op_id: str, timeout: float) -> None:
    deadline = now() + timeout
    while (op := client.operations.get(op_id)).status not in ("SUCCEEDED", "FAILED"):
        if now() > deadline:
            raise BenchError(f"operation {op_id} still {op.status} after {timeout:g}s")
        time.sleep(POLL_S)
    if op.status != "SUCCEEDED":
        raise BenchError(f"{op.kind} failed: {op.error_code} {op.error_message}")


def _count(client: Client, name: str) -> int:
    db = client.db.get(name)
    assert db.endpoint is not None
    creds = client.db.credentials(name)
    with psycopg.connect(
        host="127.0.0.1", port=db.endpoint.port, user=creds.username, password=creds.password,
        dbname="bench", connect_timeout=10, sslmode="disable",
    ) as conn:  # fmt: skip
        row = conn.execute("SELECT count(*) FROM pgbench_accounts").fetchone()
    return int(row[0]) if row else -1


def measure_platform(
    platform: PlatformProcess, compute_type: str, flavor: str, rounds: int, timeout: float
) -> Figures:
    client = platform.client
    source = f"bk-{compute_type}"
    accepted = client.db.create(source, flavor=flavor, size_gb=SIZE_GB, databases=["bench"])
    _wait_op(client, accepted.operation.id, timeout)
    try:
        db = client.db.get(source)
        assert db.endpoint is not None
        creds = client.db.credentials(source)
        started = now()
        _pgbench_init("127.0.0.1", db.endpoint.port, creds.username, creds.password, "bench")
        print(f"  {compute_type}: pgbench -i -s {SCALE} took {now() - started:.1f}s", flush=True)
        figures = Figures(f"platform/{compute_type}", 0, [], [])
        for rnd in range(rounds + 1):  # round 0: the warm-up, untimed
            t0 = now()
            name = f"{source}-{rnd}"
            client.db.create_backup(source, type="full", name=name)
            deadline = t0 + timeout
            while (backup := client.db.get_backup(name)).status not in ("COMPLETED", "FAILED"):
                if now() > deadline:
                    raise BenchError(f"backup {name} still {backup.status} after {timeout:g}s")
                time.sleep(POLL_S)
            seconds = now() - t0
            if backup.status != "COMPLETED":
                raise BenchError(f"backup {name} failed: {backup.status_message}")
            print(f"  round {rnd} platform/{compute_type} backup {seconds:.1f}s", flush=True)
            if rnd == 0:
                continue
            figures.size_bytes = int(backup.size_bytes or 0)
            figures.backup_s.append(seconds)
            copy = f"{source}-r{rnd}"
            t0 = now()
            accepted = client.db.create(copy, flavor=flavor, size_gb=SIZE_GB, restore=name)
            _wait_op(client, accepted.operation.id, timeout)
            seconds = now() - t0
            figures.restore_s.append(seconds)
            print(f"  round {rnd} platform/{compute_type} restore {seconds:.1f}s", flush=True)
            rows = _count(client, copy)
            if rows != SCALE * 100_000:
                raise BenchError(f"{copy} has {rows} accounts, not {SCALE * 100_000}")
            _wait_op(client, client.db.delete(copy).operation.id, timeout)
        return figures
    finally:
        with suppress(Exception):
            _wait_op(client, client.db.delete(source).operation.id, timeout)


# -- (b) pgBackRest by hand on the host -------------------------------------------------------
def _as_postgres(*argv: str, timeout: float = TIMEOUT_S) -> str:
    proc = subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BenchError(f"{Path(argv[0]).name} failed: {(proc.stderr or proc.stdout)[-500:]}")
    return proc.stdout


@contextmanager
def _cluster(root: Path, name: str, port: int, conf: Path | None) -> Iterator[Path]:
    """A PostgreSQL 15 cluster under ``root/name`` listening on a socket in ``root`` only;
    archiving through ``conf``'s stanza when given. Stopped (immediate) on exit."""
    data = root / name
    if not data.exists():
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    settings = [f"port = {port}", "listen_addresses = ''", f"unix_socket_directories = '{root}'"]
    if conf is not None:
        push = f"pgbackrest --config={conf} --stanza=db archive-push %p"
        settings += ["archive_mode = on", f"archive_command = '{push}'"]
    with (data / "postgresql.auto.conf").open("a") as f:
        f.write("\n".join(settings) + "\n")
    _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "3600", "-l",
                 str(root / f"{name}.log"), "start")  # fmt: skip
    try:
        yield data
    finally:
        with suppress(BenchError, subprocess.TimeoutExpired):
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop",
                         timeout=60)  # fmt: skip


def measure_by_hand(settings: Settings, processes: int, rounds: int) -> Figures:
    admin = StoreAdmin(settings)
    store = store_config(settings)
    bucket = f"bench-raw-{secrets.token_hex(4)}"
    access, secret = "BNR" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    deadline = now() + 120  # `onep up` answers before its store does
    while True:
        try:
            admin.create_repository(bucket, access, secret)
            break
        except BackendUnavailable:
            if now() > deadline:
                raise
            time.sleep(1)
    root = Path(tempfile.mkdtemp(prefix="onep-bench-pgbr-"))
    try:
        shutil.chown(root, "postgres", "postgres")
        ca = root / "ca.pem"
        ca.write_text(store.ca_pem)
        repo = StoreSettings(
            host="localhost", address="127.0.0.1", port=store.port, bucket=bucket,
            access_key=access, secret_key=secret, ca_pem=store.ca_pem,
            cipher_pass=secrets.token_urlsafe(32), region=store.region,
        )  # fmt: skip
        port = free_port()
        text = render_config(repo, root / "src", root, port, root / "work", processes)
        conf = root / "pgbackrest.conf"
        conf.write_text(text.replace(f"={CA_PATH}", f"={ca}"))
        for path in (conf, ca):
            shutil.chown(path, "postgres", "postgres")
            path.chmod(0o600)
        figures = Figures("by hand (host)", 0, [], [])
        with _cluster(root, "src", port, conf):
            _pgbench_init(str(root), port, "postgres", None, "postgres")
            size = _as_postgres(
                str(PG_BIN / "psql"), "-h", str(root), "-p", str(port), "-tAc",
                "SELECT sum(pg_database_size(oid)) FROM pg_database", "postgres",
            )  # fmt: skip
            figures.size_bytes = int(size.strip())
            _as_postgres("pgbackrest", f"--config={conf}", "--stanza=db", "stanza-create")
            for rnd in range(rounds + 1):  # round 0: the warm-up, untimed
                t0 = now()
                _as_postgres("pgbackrest", f"--config={conf}", "--stanza=db", "--type=full",
                             "backup")  # fmt: skip
                seconds = now() - t0
                print(f"  round {rnd} by hand backup {seconds:.1f}s", flush=True)
                if rnd:
                    figures.backup_s.append(seconds)
        for rnd in range(1, rounds + 1):
            target = root / f"restored-{rnd}"
            target.mkdir(mode=0o700)
            shutil.chown(target, "postgres", "postgres")
            t0 = now()
            _as_postgres("pgbackrest", f"--config={conf}", "--stanza=db", f"--pg1-path={target}",
                         "--type=immediate", "--target-action=promote", "--archive-mode=off",
                         "--process-max=2", "restore")  # fmt: skip
            with _cluster(root, target.name, free_port(), None) as data:
                _wait_promoted(data)
                figures.restore_s.append(now() - t0)
            print(f"  round {rnd} by hand restore {figures.restore_s[-1]:.1f}s", flush=True)
            shutil.rmtree(target, ignore_errors=True)
        return figures
    finally:
        with suppress(Exception):
            admin.delete_repository(bucket)
        shutil.rmtree(root, ignore_errors=True)


def _wait_promoted(data: Path) -> None:
    """Until recovery ended (PostgreSQL removes recovery.signal when it promotes)."""
    deadline = now() + TIMEOUT_S
    while (data / "recovery.signal").exists() or not (data / "postmaster.pid").exists():
        if now() > deadline:
            raise BenchError(f"{data} did not leave recovery")
        time.sleep(0.05)


# -- the benchmark ------------------------------------------------------------------------------
def run(platform: PlatformProcess, rounds: int, timeout: float) -> dict[str, Any]:
    settings = Settings(home=platform.home, store_port=int(STORE_PORT))
    flavors = {f.name: f for f in platform.client.flavors.list()}
    results: dict[str, Any] = {"scale": SCALE, "rounds": rounds, "sources": {}}
    print(f"{NAME}: pgbench scale {SCALE}, {rounds} round(s)", flush=True)
    by_hand: dict[int, Figures] = {}  # by process-max: the flavors' vCPUs
    for compute_type, flavor in SOURCES.items():
        processes = flavors[flavor].vcpus
        if processes not in by_hand:
            by_hand[processes] = measure_by_hand(settings, processes, rounds)
        hand = by_hand[processes]
        mine = measure_platform(platform, compute_type, flavor, rounds, timeout)
        ours, raw = mine.as_dict(), hand.as_dict()
        entry = {
            "flavor": flavor,
            "platform": ours,
            "by_hand": raw,
            "backup_ratio": ours["backup_median_s"] / raw["backup_median_s"],
            "restore_ratio": ours["restore_median_s"] / raw["restore_median_s"],
        }
        results["sources"][compute_type] = entry
        print(f"{NAME} summary, {compute_type} source ({flavor}), medians:", flush=True)
        for label, f in (("platform", ours), ("by hand", raw)):
            print(
                f"  {label:<9} {f['size_bytes'] / 1e6:7.0f} MB  backup {f['backup_median_s']:6.1f}s"
                f" {f['backup_mb_s']:6.1f} MB/s  restore {f['restore_median_s']:6.1f}s"
                f" {f['restore_mb_s']:6.1f} MB/s",
                flush=True,
            )
        print(
            f"  ratio platform/by hand (seconds): backup {entry['backup_ratio']:.2f}, "
            f"restore {entry['restore_ratio']:.2f}",
            flush=True,
        )
    return results

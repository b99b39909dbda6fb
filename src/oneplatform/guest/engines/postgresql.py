"""PostgreSQL from Debian's packages: initdb, configuration, start, readiness, admin role."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import stringprep
import subprocess
import threading
import time
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..bundle import Bundle, UpstreamSettings
from ..contract import DATA_ROOT, DEFAULT_VERSION
from ..enginelog import SERVER_OUTPUT
from .base import ChildProcesses, Engine, EngineError
from .following import read_upstream
from .pgbackrest import PgBackRest, restoring

log = logging.getLogger("onep-agent")


class PostgresEngine(Engine):
    """PostgreSQL from Debian's packages, data under /var/lib/oneplatform/pgdata."""

    datastore = "postgresql"
    OS_USER = "postgres"
    CONF_NAME = "oneplatform.conf"
    PENDING_NAME = "oneplatform-bootstrap.pending"
    # A standby's upstream (the replication hub and role): with PostgreSQL's standby.signal,
    # what makes this member a replica; written by the seed and by a demote.
    UPSTREAM_NAME = "oneplatform-upstream.json"
    SEEDED_NAME = "oneplatform-seeded"  # how this replica was seeded: "backup" or "primary"
    STANDBY_SIGNAL = "standby.signal"
    INCLUDE_LINE = f"include_if_exists = '{CONF_NAME}'  # written by the OnePlatform agent"
    # Settings the agent owns; the bundle cannot override them.
    RESERVED = frozenset(
        {
            "listen_addresses",
            "port",
            "unix_socket_directories",
            "data_directory",
            "hba_file",
            "ident_file",
            "config_file",
            "external_pid_file",
            "logging_collector",
            "log_destination",
            "jit",
            "password_encryption",
            "include",
            "include_if_exists",
            "include_dir",
            "archive_mode",
            "archive_command",
            "restore_command",
            "wal_level",
            "wal_log_hints",
            "hot_standby",
            "primary_conninfo",
            "primary_slot_name",
            "recovery_target_timeline",
        }
    )
    HBA = (
        "# Written by the OnePlatform guest agent at initialisation.\n"
        "# TYPE  DATABASE     USER  ADDRESS     METHOD\n"
        "local   all          all               peer\n"
        "local   replication  all               peer\n"
        "host    all          all   0.0.0.0/0   scram-sha-256\n"
        "host    all          all   ::/0        scram-sha-256\n"
        "host    replication  all   0.0.0.0/0   scram-sha-256\n"
        "host    replication  all   ::/0        scram-sha-256\n"
    )

    def __init__(
        self,
        bundle: Bundle | None,
        children: ChildProcesses,
        *,
        version: str = DEFAULT_VERSION,
        data_dir: Path | None = None,
        socket_dir: Path = Path("/var/run/postgresql"),
    ) -> None:
        super().__init__(bundle, children, version=version)
        self.bin_dir = Path(f"/usr/lib/postgresql/{version}/bin")
        self.data_dir = data_dir or Path(DATA_ROOT) / "pgdata"
        self.socket_dir = socket_dir
        self.port = bundle.engine.port if bundle else 5432
        self._first_start = True
        self._promoting = False
        # Until then (monotonic), a standby asks only its primary for WAL: a switchover is
        # under way (:meth:`prepare_promotion`).
        self._streaming_only_until = 0.0
        self._fallback_timer: threading.Timer | None = None
        self._fallback_lock = threading.Lock()
        self.repo = PgBackRest(
            lambda argv, timeout: self.children.run(argv, timeout=timeout, **self._as_postgres()),
            self.data_dir,
            self.socket_dir,
            self.data_dir.parent / "pgbackrest",
        )

    # -- lifecycle

    def initialize(self) -> None:
        if not (self.bin_dir / "postgres").is_file():
            raise EngineError(f"PostgreSQL {self.version} is not installed in this image")
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir)
        self.socket_dir.chmod(0o2775)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / "PG_VERSION").is_file():
            self._own_tree(self.data_dir)
            # pgBackRest's spool and locks too (its subdirectories are its own making): left
            # to the former owner, every archive-push fails and WAL is archived no more.
            self._own_tree(self.repo.work, every_entry=True)
            self.data_dir.chmod(0o700)
            return
        make = self._initdb
        if self.bundle is not None and self.bundle.restore is not None:
            make = self._restore
        elif self.bundle is not None and self.bundle.standby is not None:
            make = self._seed
        if self.data_dir.exists():
            if any(self.data_dir.iterdir()):
                raise EngineError(
                    f"{self.data_dir} is not empty but holds no PostgreSQL cluster; "
                    "refusing to touch it"
                )
            if os.path.ismount(self.data_dir):
                make(self.data_dir)
                return
            self.data_dir.rmdir()
        # initdb (or restore) into a temporary directory and rename it into place, so a crash
        # mid-way never leaves a half-made cluster that a later start would trust.
        scratch = self.data_dir.with_name(self.data_dir.name + ".initdb")
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        make(scratch)
        os.rename(scratch, self.data_dir)
        _fsync_dir(self.data_dir.parent)

    def _restore(self, target: Path) -> None:
        """The data directory from the bundle's restore source; the first start recovers
        and promotes it, and the bootstrap then sets this instance's own credentials."""
        assert self.bundle is not None and self.bundle.restore is not None
        self._chown(target)
        target.chmod(0o700)
        self._configure_repo()
        self.repo.restore(self.bundle.restore, target)
        self._write(target / self.PENDING_NAME, "set the admin role from the bundle\n")

    def _seed(self, target: Path) -> None:
        """A replica's data directory: with ``from_backup``, the repository's latest backup
        (the WAL since then comes from the repository, then streams from the primary: the
        primary only ships what is new); else, or when that restore fails, a base backup of
        the primary through the platform's replication hub. It starts as a standby."""
        assert self.bundle is not None and self.bundle.standby is not None
        upstream = self.bundle.standby
        self._chown(target)
        target.chmod(0o700)
        started = time.monotonic()
        if upstream.from_backup and self.bundle.backup is not None:
            self._configure_repo()
            try:
                self.repo.restore_standby(target)
            except EngineError as exc:
                log.warning("seeding from the latest backup failed (%s): from the primary", exc)
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            else:
                self._make_standby(target, upstream, "backup")
                log.info(
                    "replica seeded from the latest backup in %.1f s", time.monotonic() - started
                )
                return
        log.info("seeding a replica from its primary (%s:%d)", upstream.host, upstream.port)
        kwargs = self._as_postgres()
        kwargs["env"] = {**kwargs["env"], "PGPASSWORD": upstream.password}
        proc = self.children.run(
            [
                str(self.bin_dir / "pg_basebackup"),
                "-D",
                str(target),
                "-d",
                conninfo(upstream, with_password=False),
                "-X",
                "stream",
                "-c",
                "fast",
                "-w",
            ],
            timeout=6 * 3600,
            **kwargs,
        )
        if proc.returncode != 0:
            raise EngineError(
                f"pg_basebackup failed with exit code {proc.returncode}: {_tail(proc.stderr)}"
            )
        self._make_standby(target, upstream, "primary")
        log.info("replica seeded from its primary in %.1f s", time.monotonic() - started)

    def _make_standby(self, pgdata: Path, upstream: UpstreamSettings, seeded: str = "") -> None:
        if seeded:
            self._write(pgdata / self.SEEDED_NAME, seeded + "\n")
        self._write(pgdata / self.UPSTREAM_NAME, json.dumps(upstream.to_dict()))
        self._write(pgdata / self.STANDBY_SIGNAL, "")

    def seeded_from(self) -> str | None:
        try:
            return (self.data_dir / self.SEEDED_NAME).read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    def upstream(self) -> UpstreamSettings | None:
        """The primary this member follows, when it is a standby."""
        if not (self.data_dir / self.STANDBY_SIGNAL).exists():
            return None
        return read_upstream(self.data_dir / self.UPSTREAM_NAME)

    def _initdb(self, target: Path) -> None:
        self._chown(target)
        target.chmod(0o700)
        log.info("initialising a new PostgreSQL %s cluster in %s", self.version, self.data_dir)
        started = time.monotonic()
        proc = self.children.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(target),
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                # A clean shutdown of an archiving server closes its WAL segment, and its
                # replicas must receive the rest of it (zeros) before the shutdown checkpoint
                # after it: a switchover's pause. 16 MiB of it took 5-6 s to or from a VM
                # here (TCG); 1 MiB bounds it. Replicas and restores keep their source's.
                "--wal-segsize=1",
                "--no-instructions",
            ],
            timeout=300,
            **self._as_postgres(),
        )
        if proc.returncode != 0:
            raise EngineError(
                f"initdb failed with exit code {proc.returncode}: {_tail(proc.stderr)}"
            )
        self._write(target / "pg_hba.conf", self.HBA)
        conf = target / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as handle:
            handle.write(f"\n{self.INCLUDE_LINE}\n")
        self._write(target / self.PENDING_NAME, "create the admin role from the bundle\n")
        log.info("initdb finished in %.1f s", time.monotonic() - started)

    def _configure_repo(self) -> None:
        bundle = self.bundle
        if bundle is None:
            return
        restore = bundle.restore if bundle.restore and not self._has_cluster() else None
        if bundle.restore and restoring(self.data_dir):
            restore = bundle.restore  # recovery still reads the source's archive
        vcpus = max(1, int(bundle.engine.settings.get("max_worker_processes", "2")) // 2)
        self.repo.configure(bundle.backup, restore, self.port, vcpus, self._write, self._chown)

    def _has_cluster(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def configure(self) -> None:
        self._configure_repo()
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text(encoding="utf-8") if conf.exists() else ""
        if self.INCLUDE_LINE not in text:
            with conf.open("a", encoding="utf-8") as handle:
                handle.write(f"\n{self.INCLUDE_LINE}\n")
        self._write(self.data_dir / self.CONF_NAME, self.render_conf())

    def reconfigure(self) -> bool:
        """No restart when the include file and the port stay the same but for the archive
        command (a warm instance claimed on its own flavor: its repository is set, then the
        server reloads); else write it, and the engine restarts."""
        port = self.bundle.engine.port if self.bundle else 5432
        conf = self.data_dir / self.CONF_NAME
        current = conf.read_text(encoding="utf-8") if conf.exists() else ""
        new = self.render_conf()
        if port == self.port and _without_reloadable(current) == _without_reloadable(new):
            if current != new:
                self.configure()
                self._psql("SELECT pg_catalog.pg_reload_conf();\n", "reloading the settings")
            return False
        self.port = port
        self.configure()
        return True

    def apply_live(self, changed: list[str], settings: Mapping[str, str]) -> list[str]:
        """Rewrite the include file and reload: what the server takes at a reload applies
        now; the postmaster's settings (``max_connections``, ``shared_buffers`` ...) wait
        for a restart, as pg_settings says."""
        self.configure()
        names = ", ".join(sql_literal(name.lower()) for name in changed)
        self._query("SELECT pg_catalog.pg_reload_conf()")
        out = self._query(
            "SELECT name FROM pg_catalog.pg_settings "
            f"WHERE name IN ({names}) AND (context = 'postmaster' OR pending_restart)"
        )
        return [name for name in out.split() if name in changed]

    def backup_status(self) -> dict[str, Any] | None:
        """The repository's state, and up to when commits are archived (epoch; None before
        the first segment is)."""
        if self.bundle is None or self.bundle.backup is None:
            return None
        status = self.repo.status()
        try:
            last = self._query(
                "SELECT coalesce(extract(epoch FROM last_archived_time)::text, '') "
                "FROM pg_catalog.pg_stat_archiver"
            )
            status["archived_until"] = float(last) if last else None
        except (EngineError, OSError, ValueError) as exc:
            status["archived_until"] = None
            status["archive_detail"] = str(exc)
        return status

    def start_backup(self, kind: str) -> tuple[int, dict[str, Any]]:
        if self.bundle is None or self.bundle.backup is None:
            return 409, {"code": "no_repository", "message": "this instance has no repository"}
        # A checkpoint first: right after a promotion pg_control still names the timeline of
        # the last restartpoint until the (spread) end-of-recovery checkpoint ends, and
        # pgBackRest refuses a backup whose WAL timeline is not pg_control's.
        return self.repo.start_backup(kind, prepare=lambda: self._query("CHECKPOINT"))

    def backup_job(self) -> dict[str, Any] | None:
        return self.repo.job()

    def archive_now(self, timeout: float, switch: bool = True) -> float:
        """Switch to a new WAL segment and wait until every completed one up to there (and
        every timeline history file) is archived: nothing of them is left ``.ready`` in
        pg_wal/archive_status. Returns the moment up to which commits are archived.
        (``pg_stat_archiver.last_archived_wal`` cannot tell: after a promotion it names a
        history or ``.partial`` file, and an idle server switches to no new segment.)
        Without ``switch``, only what is completed already: nothing is left for the
        archiver (whose last round a shutdown waits for)."""
        if self.bundle is None or self.bundle.backup is None:
            raise EngineError("this instance has no repository")
        moment = time.time()
        # pg_walfile_name of the boundary pg_switch_wal returns names the completed segment
        # (or, with no WAL since the last switch, the one before the current: done already).
        segment = (
            self._query("SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())")
            if switch
            else "F" * 24  # every file marked ready
        )
        deadline = time.monotonic() + timeout
        woken = time.monotonic()
        while True:
            pending = waiting_for_archive(self.data_dir / "pg_wal" / "archive_status", segment)
            if not pending:
                return moment
            if time.monotonic() - woken > 2.0:  # it may sleep a minute after failed tries
                self._wake_archiver()
                woken = time.monotonic()
            if time.monotonic() > deadline:
                raise EngineError(
                    f"WAL up to {segment} was not archived within {timeout:.0f} s (waiting: "
                    f"{', '.join(pending[:3])}; repository: {self.repo.status()['detail']})"
                )
            time.sleep(0.2)

    def _wake_archiver(self) -> None:
        """A configuration reload sets the archiver's latch: it tries its pending files now
        instead of after the minute it sleeps following three failed tries."""
        self._query("SELECT pg_catalog.pg_reload_conf()")

    # -- replication

    def replication_status(self) -> dict[str, Any]:
        """This member's role and WAL positions (LSNs as text and as bytes from 0/0) and,
        on a primary, its streaming replicas."""
        row = self._query(
            "SELECT pg_catalog.pg_is_in_recovery(), "
            "coalesce(CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL "
            "ELSE pg_catalog.pg_current_wal_lsn() END::text, ''), "
            "coalesce(pg_catalog.pg_last_wal_receive_lsn()::text, ''), "
            "coalesce(pg_catalog.pg_last_wal_replay_lsn()::text, ''), "
            "coalesce((SELECT status FROM pg_catalog.pg_stat_wal_receiver), ''), "
            "coalesce(CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE "
            "substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8) END, '')"
        ).split("|")
        in_recovery = row[0] == "t"
        status: dict[str, Any] = {
            "role": "standby" if in_recovery else "primary",
            "lsn": row[1] or None,
            "lsn_bytes": lsn_bytes(row[1]),
            "receive_lsn": row[2] or None,
            "receive_bytes": lsn_bytes(row[2]),
            "replay_lsn": row[3] or None,
            "replay_bytes": lsn_bytes(row[3]),
            "receiver": row[4] or None,
            "timeline": int(row[5], 16) if row[5] else None,
            "seeded_from": self.seeded_from() if in_recovery else None,
            "replicas": [],
        }
        if not in_recovery:
            rows = self._query(
                "SELECT application_name, state, coalesce(replay_lsn::text, ''), "
                "coalesce(extract(epoch FROM replay_lag)::text, '0') "
                "FROM pg_catalog.pg_stat_replication ORDER BY application_name"
            )
            for line in filter(None, rows.splitlines()):
                name, state, replay, lag = line.split("|")
                status["replicas"].append(
                    {
                        "name": name,
                        "state": state,
                        "replay_lsn": replay or None,
                        "replay_bytes": lsn_bytes(replay),
                        "lag_seconds": float(lag or 0),
                    }
                )
        return status

    def ensure_replication_role(self, user: str, password: str) -> None:
        """The database's replication role (on the primary): streaming, base backups, and
        the functions pg_rewind reads the source with."""
        if self.upstream() is not None:
            raise EngineError("this member is a standby: roles are made on the primary")
        ident = sql_identifier(user)
        lines = [
            "SET log_statement = 'none';",
            *_role_lines(user, password, "LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE"),
            *(
                f"GRANT EXECUTE ON FUNCTION pg_catalog.{fn} TO {ident};"
                for fn in (
                    "pg_ls_dir(text, boolean, boolean)",
                    "pg_stat_file(text, boolean)",
                    "pg_read_binary_file(text)",
                    "pg_read_binary_file(text, bigint, bigint, boolean)",
                )
            ),
            "",
        ]
        self._psql("\n".join(lines), "making the replication role")

    def prepare_promotion(self, seconds: float) -> dict[str, Any]:
        """A switchover to this standby is coming: for up to ``seconds`` it asks only its
        primary for WAL, not the repository. When the primary stops, the startup process
        then waits on streaming, where it sees a promotion at once, instead of running
        restore_command (a repository round trip for the next segment and one for every
        newer timeline's history file, seconds on a slow machine) before it looks. Taken
        back by itself after ``seconds`` if no promotion came (a switchover rolled back)."""
        if self.upstream() is None:
            raise EngineError("this member is not a standby: there is nothing to prepare")
        seconds = max(1.0, min(float(seconds), 600.0))
        self._stream_only_until(time.monotonic() + seconds)
        self._apply_conf()
        log.info("preparing a promotion: WAL from the primary only for %.0f s", seconds)
        return self.replication_status()

    def _stream_only_until(self, until: float) -> None:
        """A standby streams only until ``until`` (monotonic; 0: no longer), then a timer
        lets it ask the repository again."""
        with self._fallback_lock:
            self._streaming_only_until = until
            if self._fallback_timer is not None:
                self._fallback_timer.cancel()
                self._fallback_timer = None
            if until:
                delay = until - time.monotonic() + 0.5
                self._fallback_timer = threading.Timer(delay, self._archive_fallback_back)
                self._fallback_timer.daemon = True
                self._fallback_timer.start()

    def _apply_conf(self) -> None:
        """Write the agent's settings and have the running server reload them."""
        self._write(self.data_dir / self.CONF_NAME, self.render_conf())
        self._query("SELECT pg_catalog.pg_reload_conf()")

    def _archive_fallback_back(self) -> None:
        """The preparation expired: a standby asks the repository again."""
        if self.upstream() is None or time.monotonic() < self._streaming_only_until:
            return
        try:
            self._apply_conf()
            log.info("no promotion came: missing WAL is fetched from the repository again")
        except (EngineError, OSError) as exc:  # the next start renders it in any case
            log.warning("restoring restore_command: %s", exc)

    def promote(self, timeout: float, archive_streamed: bool = True) -> dict[str, Any]:
        """End recovery (``pg_promote``, waiting for it); this member is the primary. With
        ``archive_streamed``, what it streamed goes to its repository too (not on a detach:
        the group's WAL is no history of the new database's repository)."""
        # At its promotion PostgreSQL asks restore_command for every newer timeline's history
        # file (a round trip to the backup store each): the command goes first (a reload).
        self._promoting = True
        try:
            if archive_streamed:
                self._archive_what_was_streamed()
            self._write(self.data_dir / self.CONF_NAME, self.render_conf())
            answer = self._query(
                "SELECT pg_catalog.pg_reload_conf(); SELECT pg_catalog.pg_sleep(0.05); "
                "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() "
                f"THEN pg_catalog.pg_promote(true, {int(timeout)}) ELSE true END"
            )
        finally:
            self._promoting = False
        done = answer.splitlines()[-1].strip() if answer else ""
        if done != "t":
            self._write(self.data_dir / self.CONF_NAME, self.render_conf())
            raise EngineError(f"the promotion did not end within {timeout:.0f} s")
        (self.data_dir / self.UPSTREAM_NAME).unlink(missing_ok=True)
        self._stream_only_until(0.0)
        log.info("promoted: this member is the primary")
        self.repo.ensure_stanza(self.bundle.backup if self.bundle else None, self._wake_archiver)
        return {"role": "primary"}

    def _archive_what_was_streamed(self) -> None:
        """Before a promotion: the completed segments this standby holds of its newest
        timeline go to the repository once it is the primary. PostgreSQL (archive_mode=on)
        marks what a standby streams as archived already, so the segments a primary that
        died had not archived yet would be missing from the repository for good, and a
        replica seeded from an older backup could never catch up. Marked ready here, the
        new primary's archiver sends them (pgBackRest takes a segment it holds already,
        with the same checksum, as sent)."""
        try:
            row = self._query(
                "SELECT coalesce(pg_catalog.pg_last_wal_receive_lsn()::text, ''), "
                "(SELECT setting FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size')"
            ).split("|")
            received, segment_size = lsn_bytes(row[0]), int(row[1])
            if received is None:
                return  # nothing streamed: what it replayed came from the repository
            marked = mark_streamed_for_archive(
                self.data_dir / "pg_wal" / "archive_status", received // segment_size, segment_size
            )
        except (EngineError, OSError, ValueError, IndexError) as exc:
            log.warning("streamed WAL not marked for archiving: %s", exc)
            return
        if marked:
            log.info(
                "%d streamed segment(s) will be archived (%s..%s)",
                len(marked),
                marked[0],
                marked[-1],
            )

    def demote_stopped(self, upstream: UpstreamSettings, rewind: bool) -> dict[str, Any]:
        """With the server stopped: make this member a standby of ``upstream``. A clean
        shutdown's data directory follows the new primary as it is (its last record, the
        shutdown checkpoint, is what the new primary was promoted after); otherwise only
        with ``rewind`` (pg_rewind from the new primary). Returns the shutdown state and
        the last checkpoint's location."""
        control = self._controldata()
        clean = control.get("Database cluster state") in ("shut down", "shut down in recovery")
        answer = {
            "clean": clean,
            "checkpoint_lsn": control.get("Latest checkpoint location"),
            "checkpoint_bytes": lsn_bytes(control.get("Latest checkpoint location", "")),
            "timeline": int(control.get("Latest checkpoint's TimeLineID", "0") or 0),
            "rewound": False,
        }
        if rewind:
            self._rewind(upstream)
            answer["rewound"] = True
        elif not clean:
            log.error("not demoted: the server did not shut down cleanly and no rewind asked")
            return answer
        self._make_standby(self.data_dir, upstream)
        log.info("demoted: following %s:%d", upstream.host, upstream.port)
        return answer

    def demoted_when_shut_down(self, upstream: UpstreamSettings) -> dict[str, Any] | None:
        """While the server stops: once its control file says it is shut down (the shutdown
        checkpoint is written and it takes no more connections), demoted as
        :meth:`demote_stopped` does, and its answer, before the postmaster has exited. The
        exit can take seconds more: an archiving server's shutdown closes its WAL segment
        and its archiver's last round sends it. None while it is not shut down yet."""
        try:
            control = self._controldata()
        except EngineError:
            return None
        if control.get("Database cluster state") != "shut down":
            return None
        return self.demote_stopped(upstream, rewind=False)

    def detach(self, bundle: Bundle, timeout: float) -> dict[str, Any]:
        """This standby becomes an independent primary with ``bundle`` (its own repository):
        archiving goes to the new repository before the promotion, so the new timeline never
        reaches the group's; then promoted; the group's replication role goes. On a failure
        before the promotion it stays the group's standby, with its former bundle."""
        upstream = self.upstream()
        if upstream is None:
            raise EngineError("this member is not a standby: there is nothing to detach from")
        former = self.bundle
        self.bundle = bundle
        try:
            self._configure_repo()
            self._apply_conf()
            self.promote(timeout, archive_streamed=False)
        except (EngineError, OSError):
            self.bundle = former
            try:
                self._configure_repo()
                self._apply_conf()
            except (EngineError, OSError) as exc:
                log.error("restoring the former settings after a failed detach: %s", exc)
            raise
        (self.data_dir / self.SEEDED_NAME).unlink(missing_ok=True)
        try:
            role = sql_identifier(upstream.user)
            self._psql(  # its grants (the functions pg_rewind reads with) go first
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = "
                f"{sql_literal(upstream.user)}) AS has_role \\gset\n"
                f"\\if :has_role\nDROP OWNED BY {role};\nDROP ROLE {role};\n\\endif\n",
                "dropping the group's replication role",
            )
        except EngineError as exc:  # it only lets one into the former group's hub backend
            log.warning("the group's replication role stays: %s", exc)
        log.info("detached: an independent primary (instance %s)", bundle.instance_id)
        return self.replication_status()

    def _rewind(self, upstream: UpstreamSettings) -> None:
        kwargs = self._as_postgres()
        kwargs["env"] = {**kwargs["env"], "PGPASSWORD": upstream.password}
        proc = self.children.run(
            [
                str(self.bin_dir / "pg_rewind"),
                f"--target-pgdata={self.data_dir}",
                f"--source-server={conninfo(upstream, with_password=False)} dbname=postgres",
                "--progress",
            ],
            timeout=3600,
            **kwargs,
        )
        if proc.returncode != 0:
            raise EngineError(f"pg_rewind failed: {_tail(proc.stderr)}")
        log.info("pg_rewind: %s", _tail(proc.stderr + proc.stdout, 2))

    def _controldata(self) -> dict[str, str]:
        proc = self.children.run(
            [str(self.bin_dir / "pg_controldata"), str(self.data_dir)],
            timeout=30,
            **self._as_postgres(),
        )
        if proc.returncode != 0:
            raise EngineError(f"pg_controldata failed: {_tail(proc.stderr)}")
        values = {}
        for line in proc.stdout.decode("utf-8", "replace").splitlines():
            key, _, value = line.partition(":")
            values[key.strip()] = value.strip()
        return values

    def stats(self) -> dict[str, int]:
        """From pg_stat_activity and pg_stat_database (the databases one connects to)."""
        row = self._query(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_stat_activity "
            "WHERE backend_type = 'client backend'), "
            "sum(s.xact_commit + s.xact_rollback), "
            "sum(pg_catalog.pg_database_size(d.oid)), sum(s.blks_hit), sum(s.blks_read) "
            "FROM pg_catalog.pg_database d JOIN pg_catalog.pg_stat_database s "
            "ON s.datid = d.oid WHERE d.datallowconn"
        ).split("|")
        keys = ("connections", "transactions", "size_bytes", "cache_hits", "cache_misses")
        return {key: int(value or 0) for key, value in zip(keys, row, strict=True)}

    def _query(self, query: str) -> str:
        proc = self.children.run(
            self._psql_argv("-A", "-t", "-c", query),
            timeout=60,
            **self._as_postgres(),
        )
        if proc.returncode != 0:
            raise EngineError(f"psql failed: {_tail(proc.stderr)}")
        return proc.stdout.decode("utf-8", "replace").strip()

    def ready_timeout(self, default: float) -> float:
        """Recovery after a restore may replay a lot of WAL before the server takes
        connections: give it hours, not the usual start's minutes."""
        return max(default, 6 * 3600.0) if restoring(self.data_dir) else default

    def render_conf(self) -> str:
        """The include file: the bundle's settings, then the ones the agent owns."""
        lines = ["# Written by the OnePlatform guest agent at every start; edits are lost."]
        lines += [f"{name} = {pg_quote(value)}" for name, value in self.bundle_settings()]
        lines.append("# Managed by the agent (these win over the settings above).")
        managed = {
            "listen_addresses": "*",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "jit": "off",  # the image leaves out the LLVM JIT provider
            "logging_collector": "off",
            "log_destination": "stderr",
            "password_encryption": "scram-sha-256",
            # Archiving is always on (a restart setting); the command is a reloadable one:
            # the instance's repository, or nothing kept while it has none (a warm one).
            "wal_level": "replica",
            "wal_log_hints": "on",  # pg_rewind of a former primary needs it
            "archive_mode": "on",
            "archive_timeout": "60",
            "archive_command": self.repo.archive_command(
                self.bundle.backup if self.bundle else None
            ),
        }
        if self.bundle is not None and self.bundle.restore and restoring(self.data_dir):
            managed["hot_standby"] = "off"  # no connection until the restore has promoted
        upstream = self.upstream()
        if upstream is not None:
            managed["primary_conninfo"] = conninfo(upstream)
            managed["recovery_target_timeline"] = "latest"
            managed["hot_standby"] = "on"
            if (
                self.bundle is not None
                and self.bundle.backup is not None
                and not self._promoting
                and time.monotonic() >= self._streaming_only_until
            ):
                # Segments the primary no longer holds come from the repository.
                managed["restore_command"] = self.repo.archive_get_command()
        lines += [f"{name} = {pg_quote(value)}" for name, value in managed.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> subprocess.Popen[bytes]:
        pid_file = self.data_dir / "postmaster.pid"
        if self._first_start and os.getpid() == 1 and pid_file.exists():
            # A fresh container (we are its PID 1 and have started no server yet): the file
            # is left from a server that died with the previous container, and its PID may
            # now belong to another process, which would keep the server from starting.
            log.info("removing a stale postmaster.pid left by the previous container")
            pid_file.unlink()
        self._first_start = False
        return self.children.popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **SERVER_OUTPUT,
            **self._as_postgres(),
        )

    def health(self) -> tuple[bool, str]:
        try:
            proc = self.children.run(
                [
                    str(self.bin_dir / "pg_isready"),
                    "-q",
                    "-h",
                    str(self.socket_dir),
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-t",
                    "3",
                ],
                timeout=10,
                **self._as_postgres(),
            )
        except (EngineError, OSError) as exc:
            return False, f"pg_isready failed: {exc}"
        return proc.returncode == 0, {
            0: "accepting connections",
            1: "rejecting connections (starting up or shutting down)",
            2: "no response",
        }.get(proc.returncode, f"pg_isready exit code {proc.returncode}")

    def bootstrap(self) -> None:
        """Make the bundle's roles once (and, right after a claim, the owner's initial
        databases and users, :attr:`initial`), in one local psql run as the superuser."""
        pending = self.data_dir / self.PENDING_NAME
        initial, self.initial = self.initial, None
        if self.bundle is not None and not self.bundle.warm and self.upstream() is None:
            self.repo.ensure_stanza(self.bundle.backup, self._wake_archiver)
        if not pending.exists():
            return
        if self.bundle is None:
            log.info("no bundle: no admin role is created, so nobody can log in remotely")
            return
        if self.bundle.warm:
            # No role yet. A spare database (made now, renamed at the claim) spares the
            # claim a CREATE DATABASE, which copies the template; this also loads psql.
            self._psql(SPARE_SQL, "making the spare database")
            log.info("warm: no role is made until the instance is claimed")
            return
        admin = self.bundle.admin
        creds = self.bundle.platform
        platform = (creds.username, creds.password) if creds else None
        script = admin_role_sql(admin.username, admin.password, platform)
        if initial is not None:
            script += initial_sql(admin.username, initial)
        script += f"DROP DATABASE IF EXISTS {SPARE_DATABASE};\n"  # a warm one's, unused
        self._psql(script, "creating the admin role")
        pending.unlink()
        log.info("created the admin role %s", admin.username)
        if initial is not None:
            self.initialized = True

    def _psql_argv(self, *args: str) -> list[str]:
        """psql as the superuser over the local socket, quiet, stopping at the first error."""
        return [
            str(self.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
            *args,
        ]  # fmt: skip

    def _psql(self, script: str, what: str) -> None:
        proc = self.children.run(
            self._psql_argv("-f", "-"),
            stdin=script.encode("utf-8"),
            timeout=60,
            **self._as_postgres(),
        )
        if proc.returncode != 0:
            # psql may echo the failing statement, which holds the password verifier.
            errors = [
                line
                for line in proc.stderr.decode("utf-8", "replace").splitlines()
                if "ERROR" in line and "SCRAM-SHA-256$" not in line
            ]
            raise EngineError(
                f"{what} failed (psql exit code {proc.returncode}): "
                + ("; ".join(errors)[:300] or "no error message")
            )

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        """SIGINT is PostgreSQL's fast shutdown; SIGQUIT (immediate) if it hangs."""
        return self._stop_by_signals(
            proc, ((signal.SIGINT, timeout), (signal.SIGQUIT, 2.0), (signal.SIGKILL, 1.0))
        )

    # -- helpers

    def _env(self) -> dict[str, str]:
        return {**super()._env(), "HOME": "/var/lib/postgresql", "PGDATA": str(self.data_dir)}

    def _as_postgres(self) -> dict[str, Any]:
        """Popen arguments that run a child as the postgres user (setuid before exec)."""
        kwargs: dict[str, Any] = {"env": self._env()}
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.OS_USER)
            kwargs.update(
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=os.getgrouplist(self.OS_USER, user.pw_gid),
            )
        return kwargs


_RELOADABLE = ("archive_command ", "primary_conninfo ", "restore_command ")


def _without_reloadable(conf: str) -> list[str]:
    return [line for line in conf.splitlines() if not line.startswith(_RELOADABLE)]


def waiting_for_archive(status_dir: Path, segment: str) -> list[str]:
    """The WAL files up to ``segment`` (of its timeline or an earlier one) and the history
    files that PostgreSQL has marked ready but not yet archived."""
    try:
        ready = sorted(p.name.removesuffix(".ready") for p in status_dir.glob("*.ready"))
    except OSError:
        return []
    return [n for n in ready if n.endswith(".history") or n[:24] <= segment]


def mark_streamed_for_archive(status_dir: Path, receiving: int, segment_size: int) -> list[str]:
    """Mark ready the WAL segments of the newest timeline in ``status_dir`` that are marked
    archived and come before segment number ``receiving`` (the one being received, maybe
    incomplete: a promotion archives it as ``.partial``). Older timelines are left alone
    (their segments past a switch point are not the history that won). Returns the names."""
    per_id = 0x1_0000_0000 // segment_size
    done: dict[str, Path] = {}
    for path in status_dir.glob("*.done"):
        name = path.name.removesuffix(".done")
        if len(name) == 24 and all(c in "0123456789ABCDEF" for c in name):
            done[name] = path
    if not done:
        return []
    newest = max(name[:8] for name in done)
    marked: list[str] = []
    for name in sorted(done):
        segment = int(name[8:16], 16) * per_id + int(name[16:], 16)
        if name[:8] == newest and segment < receiving:
            done[name].rename(done[name].with_name(name + ".ready"))
            marked.append(name)
    return marked


def conninfo(upstream: UpstreamSettings, with_password: bool = True) -> str:
    """A libpq connection string to the replication hub. No TLS (the hub routes on the
    startup packet; the path is the host's own), no GSSAPI probe (the hub would take it
    for the startup packet)."""
    values = {
        "host": upstream.host,
        "port": str(upstream.port),
        "user": upstream.user,
        **({"password": upstream.password} if with_password else {}),
        "application_name": upstream.name,
        "sslmode": "disable",
        "gssencmode": "disable",
        "connect_timeout": "5",
    }
    return " ".join(f"{k}={_libpq_quote(v)}" for k, v in values.items())


def _libpq_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def lsn_bytes(lsn: str) -> int | None:
    """An LSN ("16/B374D848") as bytes from 0/0."""
    if not lsn or "/" not in lsn:
        return None
    high, low = lsn.split("/", 1)
    return (int(high, 16) << 32) + int(low, 16)


def pg_quote(value: str) -> str:
    """A postgresql.conf string value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def sql_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings is on in every supported version)."""
    if "\x00" in value:
        raise ValueError("NUL cannot appear in a SQL literal")
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# What the tenant's admin gets beside LOGIN and CREATEDB: PostgreSQL's predefined roles for
# monitoring and maintenance (as RDS's rds_superuser or Cloud SQL's cloudsqlsuperuser do),
# never superuser, never CREATEROLE (in PostgreSQL 15 a CREATEROLE role can grant itself
# pg_execute_server_program and run shell commands), never the server-file roles.
TENANT_ADMIN_ROLES = (
    "pg_monitor",
    "pg_read_all_settings",
    "pg_read_all_stats",
    "pg_stat_scan_tables",
    "pg_signal_backend",
    "pg_checkpoint",
)


def admin_role_sql(username: str, password: str, platform: tuple[str, str] | None = None) -> str:
    """psql script that creates (or updates) the tenant's admin role, and the platform's.

    The admin is no superuser: LOGIN, CREATEDB and :data:`TENANT_ADMIN_ROLES`, and owns the
    ``postgres`` database (so it may create tables in its public schema). The
    platform's role (when the bundle names one) has LOGIN, CREATEROLE and CREATEDB and is a
    member of the admin, for the work only the platform does (users and their passwords);
    its password is known to the platform alone. Without one (bundles from before it), the
    admin is made superuser as it used to be. Passwords go in as SCRAM-SHA-256 verifiers
    computed here, so the server never sees the plain text; statement logging is off for
    the session.
    """
    lines = [
        "SET log_statement = 'none';",
        "SET log_min_error_statement = 'panic';",
        "SET log_min_duration_statement = -1;",
    ]
    if platform is None:
        lines += _role_lines(username, password, "LOGIN SUPERUSER CREATEDB CREATEROLE")
        return "\n".join([*lines, ""])
    admin = sql_identifier(username)
    lines += _role_lines(username, password, "LOGIN NOSUPERUSER CREATEDB NOCREATEROLE")
    lines.append(f"GRANT {', '.join(TENANT_ADMIN_ROLES)} TO {admin};")
    # The database a client lands in is the tenant's: its public schema is theirs to use.
    lines.append(f"ALTER DATABASE postgres OWNER TO {admin};")
    name, secret = platform
    lines += _role_lines(name, secret, "LOGIN NOSUPERUSER CREATEDB CREATEROLE")
    lines.append(f"GRANT {admin} TO {sql_identifier(name)};")
    return "\n".join([*lines, ""])


# A warm instance's spare database: the first of its owner's initial databases is this one,
# renamed. Users cannot name a database pg_* (the platform refuses it).
SPARE_DATABASE = "pg_onep_spare"
SPARE_SQL = (
    f"SELECT 'CREATE DATABASE {SPARE_DATABASE}' WHERE NOT EXISTS (SELECT 1 FROM "
    f"pg_catalog.pg_database WHERE datname = '{SPARE_DATABASE}') \\gexec\n"
)


def initial_sql(admin: str, initial: Mapping[str, Any]) -> str:
    """psql script for a claimed instance's initial databases and users (``{"databases":
    [...], "users": [{"name", "verifier", "databases"}]}``, verifiers as SCRAM-SHA-256),
    idempotent, with what a cold create's SQL gives: databases owned by the admin, closed to
    PUBLIC; users with LOGIN, CONNECT/CREATE/TEMPORARY on their databases and USAGE/CREATE
    on each one's schema public."""
    # As the superuser, grants are recorded as made by the objects' owner (the admin).
    lines: list[str] = []
    for index, name in enumerate(initial.get("databases", [])):
        missing = (
            f"NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = {sql_literal(name)})"
        )
        if index == 0:  # the spare database of a warm instance, if it has one
            lines.append(
                f"SELECT format('ALTER DATABASE {SPARE_DATABASE} RENAME TO %I', "
                f"{sql_literal(name)}) WHERE {missing} AND EXISTS (SELECT 1 FROM "
                f"pg_catalog.pg_database WHERE datname = '{SPARE_DATABASE}') \\gexec"
            )
        lines += [
            f"SELECT format('CREATE DATABASE %I', {sql_literal(name)}) WHERE {missing} \\gexec",
            f"ALTER DATABASE {sql_identifier(name)} OWNER TO {sql_identifier(admin)};",
            f"REVOKE ALL ON DATABASE {sql_identifier(name)} FROM PUBLIC;",
        ]
    granted: dict[str, list[str]] = {}
    for user in initial.get("users", []):
        name, ident = user["name"], sql_identifier(user["name"])
        lines += [
            "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = "
            f"{sql_literal(name)}) AS onep_missing \\gset",
            "\\if :onep_missing",
            f"CREATE ROLE {ident};",
            "\\endif",
            f"ALTER ROLE {ident} WITH LOGIN PASSWORD {sql_literal(user['verifier'])};",
        ]
        for database in user.get("databases", []):
            lines.append(
                f"GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {sql_identifier(database)} "
                f"TO {ident};"
            )
            granted.setdefault(database, []).append(name)
    for database, names in granted.items():
        lines.append(f"\\connect {sql_identifier(database)}")
        lines += [f"GRANT USAGE, CREATE ON SCHEMA public TO {sql_identifier(n)};" for n in names]
    return "\n".join([*lines, ""]) if lines else ""


def _role_lines(username: str, password: str, attributes: str) -> list[str]:
    ident = sql_identifier(username)
    return [
        "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = "
        f"{sql_literal(username)}) AS onep_missing \\gset",
        "\\if :onep_missing",
        f"CREATE ROLE {ident};",
        "\\endif",
        f"ALTER ROLE {ident} WITH {attributes} "
        f"PASSWORD {sql_literal(scram_sha256_verifier(password))};",
    ]


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = 4096
) -> str:
    """The verifier PostgreSQL stores for ``password`` (as ``pg_authid.rolpassword``)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,
)


def saslprep(password: str) -> bytes:
    """SASLprep (RFC 4013) as PostgreSQL applies it: on failure the raw bytes are used."""
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    if not prepared or any(check(ch) for ch in prepared for check in _PROHIBITED):
        return raw
    rand_al = [stringprep.in_table_d1(ch) for ch in prepared]
    if any(rand_al) and (
        any(stringprep.in_table_d2(ch) for ch in prepared) or not (rand_al[0] and rand_al[-1])
    ):
        return raw
    return prepared.encode("utf-8")


def _tail(data: bytes, lines: int = 5) -> str:
    return " | ".join(data.decode("utf-8", "replace").strip().splitlines()[-lines:])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

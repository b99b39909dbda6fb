"""MariaDB from Debian's packages: install-db, configuration, start, readiness, admin user.

The data directory is ``/var/lib/oneplatform/mysql`` on the data disk; the server reads one
option file the agent writes at every start (``oneplatform.cnf`` beside the data directory,
``--defaults-file``: nothing of Debian's /etc/mysql applies). The agent talks to the server
as the OS root user over the local socket (``root@localhost`` authenticates by
``unix_socket``); nobody logs in as root over the network.

Backups are mariadb-backup's, streamed into the instance's repository
(:mod:`.mariabackup`); a first start with a restore source fills the data directory from it.

Replicas follow their primary by GTID (``MASTER_USE_GTID=slave_pos``) through the guest's
replication relay (:mod:`..relay`): a new one is seeded with a consistent dump of the
primary taken through the relay (``mariadb-dump --single-transaction --gtid``, loaded
without binary logging), then replicates from the dump's GTID position. A position is the
sequence number of the last transaction in GTID domain 0 (the platform's positions are
"bytes" for PostgreSQL, transactions here). A switchover demotes the running primary
(``read_only``, then following the new one) instead of stopping it: MariaDB's shutdown does
not wait for its replicas to receive the last transactions, as PostgreSQL's does.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..bundle import Bundle, StoreSettings, UpstreamSettings
from ..contract import DATA_ROOT
from ..enginelog import SERVER_OUTPUT
from ..relay import RELAY_PORT
from . import filerepo
from .base import ChildProcesses, Engine, EngineError, NotSupported, tail
from .filerepo import CONF_DIR
from .following import Following
from .mariabackup import MariaBackup

log = logging.getLogger("onep-agent")

DEFAULT_VERSION = "10.11"
HELP_TABLES = ("topic", "category", "relation", "keyword")


class MariaDbEngine(Engine):
    """MariaDB from Debian's packages, data under /var/lib/oneplatform/mysql."""

    datastore = "mariadb"
    OS_USER = "mysql"
    CONF_NAME = "oneplatform.cnf"
    PENDING_NAME = "oneplatform-bootstrap.pending"
    SEED_NAME = "oneplatform-seed.pending"  # a new replica: its data from the primary
    UPSTREAM_NAME = "mariadb-upstream.json"  # beside the data directory
    SERVER_ID_NAME = "mariadb-server-id"  # beside it too: the member's, never copied
    LINEAGE_NAME = "mariadb-lineage"  # and the data files' lineage (see MariaBackup.lineage)
    # Options the agent owns; the bundle cannot override them.
    RESERVED = frozenset(
        {
            "datadir",
            "socket",
            "port",
            "bind_address",
            "user",
            "pid_file",
            "log_error",
            "skip_networking",
            "skip_grant_tables",
            "local_infile",
            "secure_file_priv",
            "plugin_load_add",
            "init_file",
        }
    )

    def __init__(
        self,
        bundle: Bundle | None,
        children: ChildProcesses,
        *,
        version: str = DEFAULT_VERSION,
        data_dir: Path | None = None,
        socket_dir: Path = Path("/run/mysqld"),
        bind_address: str = "0.0.0.0",  # the guest's; a test on the host uses 127.0.0.1
        backup_conf_dir: Path = CONF_DIR,
        map_store_host: Callable[[StoreSettings], None] | None = None,  # a test's: none
        relay_port: int = RELAY_PORT,
    ) -> None:
        super().__init__(bundle, children, version=version)
        self.data_dir = data_dir or Path(DATA_ROOT) / "mysql"
        self.following = Following(
            self.data_dir.parent / self.UPSTREAM_NAME, self._write, relay_port
        )
        self.socket_dir = socket_dir
        self.bind_address = bind_address
        self.port = bundle.engine.port if bundle else 3306
        self.backups = MariaBackup(
            self._run_root,
            self.socket,
            self.data_dir.parent / "backup-work",
            backup_conf_dir,
            map_host=map_store_host or filerepo.map_store_host,
        )

    @property
    def socket(self) -> Path:
        return self.socket_dir / "mysqld.sock"

    @property
    def conf_path(self) -> Path:
        return self.data_dir.parent / self.CONF_NAME

    # -- lifecycle

    def initialize(self) -> None:
        if shutil.which("mariadbd") is None and not Path("/usr/sbin/mariadbd").is_file():
            raise EngineError(f"MariaDB {self.version} is not installed in this image")
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if self._has_data():
            self._own_tree(self.data_dir)
            return
        make = self._install_db
        if self.bundle is not None and self.bundle.restore is not None:
            make = self._restore
        elif self.bundle is not None and self.bundle.standby is not None:
            make = self._install_standby
        if self.data_dir.exists():
            if any(self.data_dir.iterdir()):
                raise EngineError(
                    f"{self.data_dir} is not empty but holds no MariaDB data directory; "
                    "refusing to touch it"
                )
            if os.path.ismount(self.data_dir):
                make(self.data_dir)
                return
            self.data_dir.rmdir()
        # Install (or restore) into a scratch directory and rename it into place: a crash
        # mid-way never leaves a half-made data directory that a later start would trust.
        scratch = self.data_dir.with_name(self.data_dir.name + ".install")
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o750)
        make(scratch)
        os.rename(scratch, self.data_dir)

    def _owned(self, name: str) -> bool:
        return name.lower().replace("-", "_") in self.RESERVED  # both spellings are options

    def _has_data(self) -> bool:
        return (self.data_dir / "mysql").is_dir()

    def _install_db(self, target: Path) -> None:
        self._chown(target)
        log.info("initialising a new MariaDB %s data directory in %s", self.version, target)
        started = time.monotonic()
        proc = self.children.run(
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={target}",
                f"--user={self.OS_USER}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                "--skip-name-resolve",
                # Its own hostname check first looks the host up: a guest with no name
                # server waited minutes for it, then failed. No name is resolved anyway.
                "--force",
            ],
            timeout=300,
            env=self._env(),
        )
        if proc.returncode != 0:
            output = ((proc.stderr or b"") + (proc.stdout or b"")).decode("utf-8", "replace")
            log.error("mariadb-install-db said:\n%s", output.strip())
            # Its reason comes first (or as ERROR lines), its advice after.
            lines = [line.strip() for line in output.splitlines() if line.strip()]
            reason = [line for line in lines if "ERROR" in line] or lines[:4]
            raise EngineError(
                f"mariadb-install-db failed with exit code {proc.returncode}: "
                f"{' | '.join(reason[:4])[:500]}"
            )
        self._write(target / self.PENDING_NAME, "create the admin user from the bundle\n")
        self.lineage(secrets.token_hex(16))  # new data files
        log.info("mariadb-install-db finished in %.1f s", time.monotonic() - started)

    def _install_standby(self, target: Path) -> None:
        """A new replica: an empty data directory now; the bootstrap fills it from the
        primary, then follows it."""
        assert self.bundle is not None and self.bundle.standby is not None
        self._install_db(target)
        self._write(target / self.SEED_NAME, "seed from the primary\n")
        self.following.follow(self.bundle.standby)

    def _restore(self, target: Path) -> None:
        """The data directory from the bundle's restore source; the bootstrap then sets this
        instance's own credentials (the source's users and grants come with the data)."""
        assert self.bundle is not None and self.bundle.restore is not None
        self._configure_backups()
        self.lineage(self.backups.restore(self.bundle.restore, target))
        self._own_tree(target)
        self._write(target / self.PENDING_NAME, "set the admin user from the bundle\n")

    def _configure_backups(self) -> None:
        if self.bundle is None or self.bundle.warm:
            return
        if self.bundle.backup is None and self.bundle.restore is None:
            return
        (self.data_dir.parent / "backup-work").mkdir(mode=0o700, exist_ok=True)
        self.backups.configure(self.bundle.backup, self.bundle.restore, self._write)

    def configure(self) -> None:
        self._write(self.conf_path, self.render_conf())
        self.backups.lineage = self.lineage()
        self._configure_backups()

    def render_conf(self) -> str:
        """The option file: the bundle's settings, then the ones the agent owns."""
        lines = [
            "# Written by the OnePlatform guest agent at every start; edits are lost.",
            "[mariadbd]",
        ]
        lines += [f"{name} = {value}" for name, value in self.bundle_settings()]
        lines.append("# Managed by the agent (these win over the settings above).")
        managed = {
            "datadir": str(self.data_dir),
            "socket": str(self.socket),
            "port": str(self.port),
            "bind_address": self.bind_address,
            "skip_name_resolve": "ON",
            "local_infile": "OFF",
            "secure_file_priv": str(self.data_dir.parent / "mysql-files"),
            "character_set_server": "utf8mb4",
            "collation_server": "utf8mb4_unicode_ci",
            # The binary log with GTIDs: what point-in-time recovery and replicas read.
            "log_bin": "mariadb-bin",
            "binlog_format": "ROW",
            "server_id": str(self.server_id()),
            "log_slave_updates": "ON",
            # A standby takes no writes but replication's, and starts replicating only when
            # the agent has pointed it at its primary (the bootstrap).
            "read_only": "ON" if self.following.upstream() is not None else "OFF",
            "skip_slave_start": "ON",
            "slave_net_timeout": "10",  # a silent primary is noticed in seconds
        }
        lines += [f"{name} = {value}" for name, value in managed.items()]
        return "\n".join(lines) + "\n"

    def lineage(self, new: str | None = None) -> str:
        """The data files' lineage, kept beside the data directory: ``new`` sets it (a new
        data directory, a seeding, a restore); one is drawn when there is none."""
        path = self.data_dir.parent / self.LINEAGE_NAME
        if new is None:
            try:
                new = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                new = ""
            if new:
                return new
            new = secrets.token_hex(16)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write(path, new + "\n")
        return new

    def server_id(self) -> int:
        """Distinct per member (replication refuses two members with one id; a database's
        members share its bundle's identity): drawn once, kept beside the data directory."""
        path = self.data_dir.parent / self.SERVER_ID_NAME
        try:
            return int(path.read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            server_id = secrets.randbelow(2**31 - 3) + 2
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write(path, f"{server_id}\n")
            return server_id

    def start(self) -> subprocess.Popen[bytes]:
        files = self.data_dir.parent / "mysql-files"
        files.mkdir(mode=0o750, exist_ok=True)
        self._chown(files)
        return self.children.popen(
            ["mariadbd", f"--defaults-file={self.conf_path}", f"--user={self.OS_USER}"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **SERVER_OUTPUT,
            env=self._env(),
        )

    def health(self) -> tuple[bool, str]:
        try:
            proc = self.children.run(
                [*self._client_argv(), "--connect-timeout=3", "-e", "SELECT 1"],
                timeout=10,
                env=self._env(),
            )
        except (EngineError, OSError) as exc:
            return False, f"the mariadb client failed: {exc}"
        if proc.returncode == 0:
            return True, "accepting connections"
        return False, tail(proc.stderr or proc.stdout) or f"exit code {proc.returncode}"

    def apply_live(self, changed: list[str], settings: Mapping[str, str]) -> list[str]:
        """Rewrite the option file (every later start) and ``SET GLOBAL`` each changed
        variable the server changes while it runs (one it no longer names goes back to its
        default); a read-only one waits for a restart."""
        self.configure()
        pending = []
        for name in changed:
            variable = name.lower().replace("-", "_")
            if not re.fullmatch(r"[a-z0-9_]+", variable):
                pending.append(name)
                continue
            value = settings.get(name)
            literal = "DEFAULT" if value is None else _set_literal(value)
            try:
                self._sql(f"SET GLOBAL {variable} = {literal};\n", f"setting {variable}")
            except EngineError as exc:
                log.info("%s waits for a restart: %s", variable, exc)
                pending.append(name)
        return pending

    def _client_argv(self) -> list[str]:
        """The mariadb client as root over the local socket, no option file read."""
        return ["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root", "--batch"]

    def bootstrap(self) -> None:
        """A replica: seeded from its primary (once), then following it. Else: make the
        bundle's users once, in one local client run as root."""
        upstream = self.following.upstream()
        if upstream is not None:
            self.following.run(upstream, self._watch)
            if (self.data_dir / self.SEED_NAME).exists():
                self._seed(upstream)
            self._replicate_from(upstream)
            return
        pending = self.data_dir / self.PENDING_NAME
        if not pending.exists():
            return
        if self.bundle is None:
            log.info("no bundle: no admin user is created, so nobody can log in remotely")
            return
        if self.bundle.warm:
            log.info("warm: no user is made until the instance is claimed")
            return
        admin = self.bundle.admin
        creds = self.bundle.platform
        platform = (creds.username, creds.password) if creds else None
        self._sql(admin_users_sql(admin.username, admin.password, platform), "creating users")
        pending.unlink()
        log.info("created the admin user %s", admin.username)

    def _sql(self, script: str, what: str) -> None:
        """Run ``script`` as root over the socket; it never reaches argv (passwords)."""
        proc = self.children.run(
            self._client_argv(),
            stdin=script.encode("utf-8"),
            timeout=60,
            env=self._env(),
        )
        if proc.returncode != 0:
            raise EngineError(
                f"{what} failed (mariadb exit code {proc.returncode}): "
                + (tail(proc.stderr) or "no error message")
            )

    # -- backups

    def backup_status(self) -> dict[str, Any] | None:
        if self.bundle is None or self.bundle.backup is None:
            return None
        return self.backups.status()

    def start_backup(self, kind: str) -> tuple[int, dict[str, Any]]:
        return self.backups.start_backup(kind)

    def backup_job(self) -> dict[str, Any] | None:
        return self.backups.job()

    # -- replication

    def upstream(self) -> UpstreamSettings | None:
        return self.following.upstream()

    def _seed(self, upstream: UpstreamSettings) -> None:
        """The primary's data and users, from a consistent dump taken through the relay,
        loaded without binary logging (the transactions are the primary's, not new ones);
        the dump's GTID position is where replication starts."""
        started = time.monotonic()
        dump = self.data_dir.parent / "seed.sql"
        log.info("seeding the replica from its primary (%s:%d)", upstream.host, upstream.port)
        with open(dump, "wb") as out:
            proc = self.children.run(
                [
                    "mariadb-dump",
                    "--no-defaults",
                    "--host=127.0.0.1",
                    f"--port={self.following.port}",
                    f"--user={upstream.user}",
                    "--all-databases",
                    "--single-transaction",
                    "--gtid",
                    "--master-data=2",
                    "--routines",
                    "--events",
                    "--triggers",
                    "--ignore-table=mysql.gtid_slave_pos",  # its position is set after
                    # the server's help text: the replica's install has it (megabytes)
                    *(f"--ignore-table=mysql.help_{t}" for t in HELP_TABLES),
                ],
                timeout=6 * 3600,
                env={**self._env(), "MYSQL_PWD": upstream.password},
                stdout=out,
            )
        try:
            if proc.returncode != 0:
                raise EngineError(
                    f"mariadb-dump of the primary failed (exit code {proc.returncode}): "
                    + (tail(proc.stderr) or "no error message")
                )
            position = _dump_position(dump)
            with open(dump, "rb") as source:
                loaded = self.children.run(
                    [*self._client_argv(), "--init-command=SET SESSION sql_log_bin = 0"],
                    timeout=6 * 3600,
                    env=self._env(),
                    stdin_file=source,
                )
            if loaded.returncode != 0:
                raise EngineError(
                    "loading the primary's dump failed: "
                    + (tail(loaded.stderr) or f"exit code {loaded.returncode}")
                )
        finally:
            dump.unlink(missing_ok=True)
        self._sql(
            f"FLUSH PRIVILEGES;\nSET GLOBAL gtid_slave_pos = {sql_string(position)};\n",
            "setting the replica's position",
        )
        (self.data_dir / self.PENDING_NAME).unlink(missing_ok=True)  # the users came with it
        (self.data_dir / self.SEED_NAME).unlink()
        log.info(
            "replica seeded from its primary in %.1f s (at GTID %s)",
            time.monotonic() - started,
            position or "none",
        )

    def _replicate_from(self, upstream: UpstreamSettings) -> None:
        """Point replication at the relay and start it, from the furthest this member has
        (what it replicated, or what it wrote itself as a primary: a former primary)."""
        binlog = self._value("SELECT @@GLOBAL.gtid_binlog_pos")
        applied = self._value("SELECT @@GLOBAL.gtid_slave_pos")
        position = binlog if gtid_seq(binlog) > gtid_seq(applied) else applied
        self._sql(
            "\n".join(
                [
                    "STOP SLAVE;",
                    f"SET GLOBAL gtid_slave_pos = {sql_string(position)};",
                    "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', "
                    f"MASTER_PORT = {self.following.port}, "
                    f"MASTER_USER = {sql_string(upstream.user)}, "
                    f"MASTER_PASSWORD = {sql_string(upstream.password)}, "
                    "MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1;",
                    "START SLAVE;",
                    "",
                ]
            ),
            "starting replication",
        )
        log.info("replicating from the primary (from GTID %s)", position or "the start")

    def _watch(self, upstream: UpstreamSettings) -> None:
        """A replication thread that stopped on an error starts again (a connection that
        reached this member itself, before the hub led to the new primary, stops it)."""
        status = self._slave_status()
        if not status:
            return
        if status.get("Slave_IO_Running") == "No" or status.get("Slave_SQL_Running") == "No":
            error = status.get("Last_IO_Error") or status.get("Last_SQL_Error") or ""
            log.info("replication stopped (%s): starting it again", error or "no error")
            self._sql("START SLAVE;\n", "starting replication again")

    def _slave_status(self) -> dict[str, str]:
        proc = self.children.run(
            [*self._client_argv(), "--vertical", "-e", "SHOW SLAVE STATUS"],
            timeout=30,
            env=self._env(),
        )
        if proc.returncode != 0:
            raise EngineError(f"SHOW SLAVE STATUS failed: {tail(proc.stderr)}")
        found: dict[str, str] = {}
        for line in (proc.stdout or b"").decode("utf-8", "replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and not key.startswith("*"):
                found[key.strip()] = value.strip()
        return found

    def _value(self, query: str) -> str:
        proc = self.children.run(
            [*self._client_argv(), "--skip-column-names", "-e", query],
            timeout=30,
            env=self._env(),
        )
        if proc.returncode != 0:
            raise EngineError(f"the query failed: {tail(proc.stderr)}")
        return (proc.stdout or b"").decode("utf-8", "replace").strip()

    def stats(self) -> dict[str, int]:
        """From the global status (InnoDB's buffer pool for the cache; Handler_commit
        counts every commit, autocommitted statements too) and the tables' sizes."""

        def status(name: str) -> str:
            return (
                "(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
                f"WHERE VARIABLE_NAME = '{name}')"
            )

        row = self._value(
            f"SELECT {status('THREADS_CONNECTED')}, "
            f"{status('HANDLER_COMMIT')} + {status('HANDLER_ROLLBACK')}, "
            "(SELECT coalesce(sum(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES), "
            f"{status('INNODB_BUFFER_POOL_READ_REQUESTS')} - "
            f"{status('INNODB_BUFFER_POOL_READS')}, "
            f"{status('INNODB_BUFFER_POOL_READS')}"
        ).split("\t")
        keys = ("connections", "transactions", "size_bytes", "cache_hits", "cache_misses")
        return {key: int(float(value or 0)) for key, value in zip(keys, row, strict=True)}

    def replication_status(self) -> dict[str, Any]:
        """Role and positions (GTID sequence numbers of domain 0); a primary cannot tell
        how far its replicas are (MariaDB has no such feedback): no replica list."""
        if self.following.upstream() is None:
            position = gtid_seq(self._value("SELECT @@GLOBAL.gtid_binlog_pos"))
            return {"role": "primary", "lsn_bytes": position, "replicas": []}
        status = self._slave_status()
        running = status.get("Slave_IO_Running") == "Yes"
        applying = status.get("Slave_SQL_Running") == "Yes"
        replayed = gtid_seq(self._value("SELECT @@GLOBAL.gtid_slave_pos"))
        received = max(gtid_seq(status.get("Gtid_IO_Pos", "")), replayed)
        return {
            "role": "standby",
            "lsn_bytes": None,
            "receive_bytes": received,
            "replay_bytes": replayed,
            "receiver": "streaming" if running and applying else ("stopped" if status else None),
            "detail": status.get("Last_IO_Error") or status.get("Last_SQL_Error") or None,
            "seeded_from": "dump",
            "replicas": [],
        }

    def ensure_replication_role(self, user: str, password: str) -> None:
        """The replication user (on the primary; replicated to its replicas): replication,
        and the reads a new replica's seeding dump takes."""
        if self.following.upstream() is not None:
            raise EngineError("this member is a standby: users are made on the primary")
        name = f"{sql_string(user)}@'%'"
        self._sql(
            "\n".join(
                [
                    *_user_lines(user, password),
                    "GRANT REPLICATION SLAVE, BINLOG MONITOR, SELECT, SHOW VIEW, TRIGGER, "
                    f"EVENT, RELOAD, LOCK TABLES ON *.* TO {name};",
                    "",
                ]
            ),
            "making the replication user",
        )

    def prepare_promotion(self, seconds: float) -> dict[str, Any]:
        """Nothing to prepare: a standby applies what it receives as it comes."""
        if self.following.upstream() is None:
            raise EngineError("this member is not a standby: there is nothing to prepare")
        return self.replication_status()

    def promote(self, timeout: float) -> dict[str, Any]:
        """Stop receiving, apply everything received, stop replicating; take writes."""
        if self.following.upstream() is None:
            self._sql("SET GLOBAL read_only = OFF;\n", "taking writes")
            return {"role": "primary"}
        self._sql("STOP SLAVE IO_THREAD;\n", "stopping the receiver")
        received = self._slave_status().get("Gtid_IO_Pos", "")
        if received:
            waited = self._value(
                f"SELECT MASTER_GTID_WAIT({sql_string(received)}, {max(1, int(timeout))})"
            )
            if waited != "0":
                self._sql("START SLAVE IO_THREAD;\n", "starting the receiver again")
                raise EngineError(
                    f"the promotion did not end within {timeout:.0f} s (applying up to {received})"
                )
        self.following.stop_following()
        self._sql("STOP SLAVE;\nRESET SLAVE ALL;\nSET GLOBAL read_only = OFF;\n", "promoting")
        log.info("promoted: this member is the primary (at GTID %s)", received or "none")
        return {"role": "primary"}

    def demote_live(self, upstream: UpstreamSettings) -> dict[str, Any] | None:
        """The running primary takes no more writes and follows ``upstream``; its last
        position is what the new primary must have applied before its promotion."""
        self._sql("SET GLOBAL read_only = ON;\n", "refusing writes")
        try:
            last = gtid_seq(self._value("SELECT @@GLOBAL.gtid_binlog_pos"))
            self.following.follow(upstream)
            self.following.run(upstream, self._watch)
            self._replicate_from(upstream)
        except (EngineError, OSError):
            self.following.stop_following()  # it serves on as the primary
            self._sql("STOP SLAVE;\nRESET SLAVE ALL;\nSET GLOBAL read_only = OFF;\n", "undoing")
            raise
        log.info("demoted at GTID sequence %d: following %s:%d", last, upstream.host, upstream.port)
        return {"clean": True, "checkpoint_bytes": last - 1, "timeline": None, "rewound": False}

    def demote_stopped(self, upstream: UpstreamSettings, rewind: bool) -> dict[str, Any]:
        raise NotSupported("MariaDB is demoted while it runs (there is no rewind)")

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        """SIGTERM is MariaDB's clean shutdown; SIGKILL if it hangs (InnoDB recovers)."""
        return self._stop_by_signals(proc, ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)))

    # -- helpers


def gtid_seq(position: str, domain: int = 0) -> int:
    """The sequence number of ``domain`` in a GTID position ("0-1-42,1-2-7" -> 42); 0 when
    it has none."""
    for gtid in filter(None, (p.strip() for p in position.split(","))):
        parts = gtid.split("-")
        if len(parts) == 3 and parts[0] == str(domain) and parts[2].isdigit():
            return int(parts[2])
    return 0


_DUMP_GTID = re.compile(rb"^-- SET GLOBAL gtid_slave_pos='([0-9,\-]*)';$", re.MULTILINE)


def _dump_position(dump: Path) -> str:
    """The GTID position a dump (``--gtid --master-data=2``) was taken at: a comment line
    near its end (after the data)."""
    with open(dump, "rb") as handle:
        handle.seek(max(0, dump.stat().st_size - 64 * 1024))
        tail_ = handle.read()
    found = _DUMP_GTID.search(tail_)
    if found is None:
        raise EngineError("the primary's dump names no GTID position")
    return found.group(1).decode().strip()


def sql_string(value: str) -> str:
    """A MariaDB string literal that means ``value`` whatever the SQL mode (backslashes
    doubled as well as quotes: NO_BACKSLASH_ESCAPES is off by default)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def admin_users_sql(username: str, password: str, platform: tuple[str, str] | None) -> str:
    """The platform's own user (every privilege; its password known to the platform alone)
    and the tenant's admin, from any host, by password only. The admin gets no global
    privilege: it is granted each database the platform makes (as PostgreSQL's admin owns
    them), never the system schema, files or the server."""
    lines = []
    if platform is not None:
        name, secret = platform
        lines += _user_lines(name, secret)
        lines.append(f"GRANT ALL PRIVILEGES ON *.* TO {sql_string(name)}@'%' WITH GRANT OPTION;")
    lines += [*_user_lines(username, password), "FLUSH PRIVILEGES;"]
    return "\n".join(lines) + "\n"


def _user_lines(username: str, password: str) -> list[str]:
    """The user with this password; one that exists (a restore's) keeps its grants."""
    user, secret = f"{sql_string(username)}@'%'", sql_string(password)
    return [
        f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY {secret};",
        f"ALTER USER {user} IDENTIFIED BY {secret};",
    ]


def _set_literal(value: str) -> str:
    """A value of ``SET GLOBAL``: a number or a word as it is, else a quoted string."""
    if re.fullmatch(r"-?\d+(\.\d+)?|[A-Za-z_][A-Za-z0-9_]*", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"

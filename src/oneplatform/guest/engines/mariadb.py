"""MariaDB from Debian's packages: install-db, configuration, start, readiness, admin user.

The data directory is ``/var/lib/oneplatform/mysql`` on the data disk; the server reads one
option file the agent writes at every start (``oneplatform.cnf`` beside the data directory,
``--defaults-file``: nothing of Debian's /etc/mysql applies). The agent talks to the server
as the OS root user over the local socket (``root@localhost`` authenticates by
``unix_socket``); nobody logs in as root over the network.

Backups are mariadb-backup's, streamed into the instance's repository
(:mod:`.mariabackup`); a first start with a restore source fills the data directory from it.
Replication comes later (the platform's datastore says so in its capabilities).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bundle import Bundle, StoreSettings
from ..contract import DATA_ROOT
from . import filerepo
from .base import ChildProcesses, Engine, EngineError, tail
from .filerepo import CONF_DIR
from .mariabackup import MariaBackup

log = logging.getLogger("onep-agent")

DEFAULT_VERSION = "10.11"


class MariaDbEngine(Engine):
    """MariaDB from Debian's packages, data under /var/lib/oneplatform/mysql."""

    datastore = "mariadb"
    OS_USER = "mysql"
    CONF_NAME = "oneplatform.cnf"
    PENDING_NAME = "oneplatform-bootstrap.pending"
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
    ) -> None:
        super().__init__(bundle, children, version=version)
        self.data_dir = data_dir or Path(DATA_ROOT) / "mysql"
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
        log.info("mariadb-install-db finished in %.1f s", time.monotonic() - started)

    def _restore(self, target: Path) -> None:
        """The data directory from the bundle's restore source; the bootstrap then sets this
        instance's own credentials (the source's users and grants come with the data)."""
        assert self.bundle is not None and self.bundle.restore is not None
        self._configure_backups()
        self.backups.restore(self.bundle.restore, target)
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
            "server_id": "1",
            "log_slave_updates": "ON",
        }
        lines += [f"{name} = {value}" for name, value in managed.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> subprocess.Popen[bytes]:
        files = self.data_dir.parent / "mysql-files"
        files.mkdir(mode=0o750, exist_ok=True)
        self._chown(files)
        return self.children.popen(
            ["mariadbd", f"--defaults-file={self.conf_path}", f"--user={self.OS_USER}"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
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

    def _client_argv(self) -> list[str]:
        """The mariadb client as root over the local socket, no option file read."""
        return ["mariadb", "--no-defaults", f"--socket={self.socket}", "--user=root", "--batch"]

    def bootstrap(self) -> None:
        """Make the bundle's users once, in one local client run as root."""
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

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        """SIGTERM is MariaDB's clean shutdown; SIGKILL if it hangs (InnoDB recovers)."""
        return self._stop_by_signals(proc, ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)))

    # -- helpers


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

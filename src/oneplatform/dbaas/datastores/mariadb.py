"""MariaDB: SQL-level work over the engine's port with PyMySQL, every name checked and quoted.

The platform logs in as its own user (every privilege; its password known to the platform
alone). The tenant's admin has no global privilege: it is granted each database the
platform makes, with the grant option (as PostgreSQL's admin owns them), never the system
schema, files or the server. Users are ``'name'@'%'``; a grant is every privilege on one
database; a user's databases are the databases it holds privileges on.

PyMySQL: a pure-Python client, well kept, no C library to match in the image or the host.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any

from oneplatform.dbaas.datastores.base import ConnInfo, Datastore, DatastoreVersion, UserInfo
from oneplatform.dbaas.datastores.features import Feature
from oneplatform.errors import (
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    InvalidInput,
    NotFound,
)
from oneplatform.guest.engines.mariadb import gtid_seq

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,79}$")
_RESERVED = frozenset(
    {
        "mysql", "information_schema", "performance_schema", "sys", "test",
        "root", "admin", "mariadb.sys", "onep_platform", "public",
    }
)  # fmt: skip
STATEMENT_TIMEOUT_S = 30
PLATFORM_PREFIX = "onep_"  # the platform's own users (its role, the replication user)

# MariaDB's error numbers the platform answers for.
ER_DB_CREATE_EXISTS = 1007
ER_DB_DROP_EXISTS = 1008
ER_CANNOT_USER = 1396
ER_BAD_DB_ERROR = 1049
ER_NONEXISTING_GRANT = 1141


class MariaDB(Datastore):
    name = "mariadb"
    versions = (DatastoreVersion("10.11", "mariadb-10.11"),)
    default_version = "10.11"
    engine_endpoint = "mariadb"
    position_unit = "transactions"  # GTID sequence numbers
    admin_username = "admin"
    uri_scheme = "mysql"
    admin_database = ""
    unsupported = {
        Feature.PITR: (
            "a MariaDB backup restores as it was taken: point-in-time recovery needs the "
            "binary logs archived, which this release does not do yet"
        ),
        Feature.DETACH: (
            "not built for MariaDB in this release: a replica stays a member of its "
            "database (delete it, or restore a backup into a database of its own)"
        ),
    }
    backup_types = ("full", "incr")  # mariadb-backup's; no differential
    repository_kind = "files"

    # -- sizing and names ---------------------------------------------------------------------
    def engine_settings(self, vcpus: int, ram_mb: int) -> dict[str, str]:
        return {
            "innodb_buffer_pool_size": f"{max(64, ram_mb // 2)}M",
            "innodb_log_file_size": f"{min(1024, max(48, ram_mb // 8))}M",
            "max_connections": str(min(500, max(50, ram_mb // 10))),
            "thread_pool_size": str(max(1, vcpus)),
            "table_open_cache": str(min(4000, max(400, ram_mb))),
        }

    def _check(self, kind: str, name: str, pattern: re.Pattern[str] = _NAME) -> None:
        if not pattern.match(name):
            raise InvalidInput(
                f"invalid {kind} name {name!r}: use lower-case letters, digits and '_', "
                "starting with a letter or '_'",
                code="invalid_input",
            )
        if name in _RESERVED:
            raise InvalidInput(f"{kind} name {name!r} is reserved", code="invalid_input")

    def validate_database_name(self, name: str) -> None:
        self._check("database", name)

    def validate_user_name(self, name: str) -> None:
        self._check("user", name, _USER_NAME)
        if name.startswith(PLATFORM_PREFIX):
            raise InvalidInput(
                f"user names starting with {PLATFORM_PREFIX!r} are the platform's",
                code="invalid_input",
            )

    # -- connections ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self, conn: ConnInfo, timeout: float = 10) -> Iterator[Any]:
        import pymysql

        try:
            connection = pymysql.connect(
                host=conn.host,
                port=conn.port,
                user=conn.username,
                password=conn.password,
                connect_timeout=max(1, int(timeout)),
                read_timeout=STATEMENT_TIMEOUT_S,
                write_timeout=STATEMENT_TIMEOUT_S,
                autocommit=True,
                charset="utf8mb4",
            )
        except pymysql.err.OperationalError as exc:
            raise BackendUnavailable(
                f"cannot reach MariaDB at {conn.host}:{conn.port}: {_message(exc)}",
                code="engine_unreachable",
            ) from None
        try:
            with connection.cursor() as cursor:
                yield cursor
        except pymysql.err.MySQLError as exc:
            number = exc.args[0] if exc.args else 0
            if number == ER_DB_CREATE_EXISTS:
                raise AlreadyExists("database already exists", code="database_exists") from None
            if number in (ER_DB_DROP_EXISTS, ER_BAD_DB_ERROR):
                raise NotFound("database not found", code="database_not_found") from None
            raise BackendError(f"MariaDB refused: {_message(exc)}", code="engine_error") from None
        finally:
            connection.close()

    def ping(self, conn: ConnInfo, timeout: float = 10.0) -> None:
        with self._connect(conn, timeout=timeout) as c:
            c.execute("SELECT 1")

    # -- replication ------------------------------------------------------------------------------
    def checkpoint(self, conn: ConnInfo) -> None:
        """Nothing: a switchover does not stop a MariaDB primary (it is demoted running)."""

    def wait_replayed(self, conn: ConnInfo, past: int, timeout: float) -> int | None:
        """Positions are GTID sequence numbers (domain 0) the standby has applied."""
        deadline = time.monotonic() + timeout
        with self._connect(conn) as c:
            while True:
                c.execute("SELECT @@GLOBAL.gtid_slave_pos")
                row = c.fetchone()
                position = gtid_seq(str(row[0]) if row else "")
                if position > past:
                    return position
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.02)

    # -- databases --------------------------------------------------------------------------------
    def list_databases(self, conn: ConnInfo) -> list[str]:
        with self._connect(conn) as c:
            return sorted(self._databases(c))

    @staticmethod
    def _databases(c: Any) -> set[str]:
        c.execute("SELECT schema_name FROM information_schema.schemata")
        return {row[0] for row in c.fetchall()} - _RESERVED

    def create_database(self, conn: ConnInfo, name: str) -> None:
        self.validate_database_name(name)
        with self._connect(conn) as c:
            c.execute(f"CREATE DATABASE {_ident(name)}")
            c.execute(
                f"GRANT ALL PRIVILEGES ON {_on(name)} TO %s@'%%' WITH GRANT OPTION",
                (conn.admin,),
            )

    def delete_database(self, conn: ConnInfo, name: str) -> None:
        self.validate_database_name(name)
        with self._connect(conn) as c:
            if name not in self._databases(c):
                raise NotFound(f"database {name!r} not found", code="database_not_found")
            c.execute(f"DROP DATABASE {_ident(name)}")
            # Privileges on a database outlive it in MariaDB: a new one of the same name
            # must not open to the users of the old.
            c.execute("DELETE FROM mysql.db WHERE Db = %s", (_like_escaped(name),))
            c.execute("FLUSH PRIVILEGES")

    # -- users ------------------------------------------------------------------------------------
    def list_users(self, conn: ConnInfo) -> list[UserInfo]:
        hidden = {conn.username, conn.admin}
        with self._connect(conn) as c:
            c.execute("SELECT User FROM mysql.user WHERE Host = '%' ORDER BY User")
            names = [
                row[0]
                for row in c.fetchall()
                if row[0] not in hidden and not row[0].startswith(PLATFORM_PREFIX)
            ]
            c.execute("SELECT User, Db FROM mysql.db WHERE Host = '%' ORDER BY Db")
            grants: dict[str, list[str]] = {}
            for user, db in c.fetchall():
                grants.setdefault(user, []).append(_like_unescaped(db))
        return [UserInfo(name=n, databases=tuple(grants.get(n, ()))) for n in names]

    def _user_exists(self, c: Any, name: str) -> bool:
        c.execute("SELECT 1 FROM mysql.user WHERE User = %s AND Host = '%%'", (name,))
        return c.fetchone() is not None

    def create_user(self, conn: ConnInfo, name: str, password: str) -> None:
        self.validate_user_name(name)
        with self._connect(conn) as c:
            if self._user_exists(c, name):
                raise AlreadyExists(f"user {name!r} already exists", code="user_exists")
            c.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (name, password))

    def delete_user(self, conn: ConnInfo, name: str) -> None:
        self.validate_user_name(name)
        with self._connect(conn) as c:
            self._require_user(c, name, conn)
            c.execute("DROP USER %s@'%%'", (name,))

    def set_password(self, conn: ConnInfo, name: str, password: str) -> None:
        with self._connect(conn) as c:
            self._require_user(c, name, conn)
            c.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (name, password))

    def set_admin_password(self, conn: ConnInfo, password: str) -> None:
        with self._connect(conn) as c:
            c.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (conn.admin, password))

    def _require_user(self, c: Any, name: str, conn: ConnInfo) -> None:
        if name in (conn.username, conn.admin) or not self._user_exists(c, name):
            raise NotFound(f"user {name!r} not found", code="user_not_found")

    # -- grants -----------------------------------------------------------------------------------
    def grant(self, conn: ConnInfo, user: str, database: str) -> None:
        self.validate_user_name(user)
        self.validate_database_name(database)
        with self._connect(conn) as c:
            self._require_user(c, user, conn)
            if database not in self._databases(c):
                raise NotFound(f"database {database!r} not found", code="database_not_found")
            c.execute(f"GRANT ALL PRIVILEGES ON {_on(database)} TO %s@'%%'", (user,))

    def revoke(self, conn: ConnInfo, user: str, database: str) -> None:
        import pymysql

        self.validate_user_name(user)
        self.validate_database_name(database)
        with self._connect(conn) as c:
            self._require_user(c, user, conn)
            try:
                c.execute(f"REVOKE ALL PRIVILEGES ON {_on(database)} FROM %s@'%%'", (user,))
            except pymysql.err.MySQLError as exc:
                if not exc.args or exc.args[0] != ER_NONEXISTING_GRANT:
                    raise
            # Sessions open with the grant keep it: end them (as PostgreSQL's revoke does).
            c.execute(
                "SELECT id FROM information_schema.processlist WHERE user = %s AND db = %s",
                (user, database),
            )
            for (session_id,) in c.fetchall():
                with contextlib.suppress(pymysql.err.MySQLError):
                    c.execute("KILL CONNECTION %s", (int(session_id),))


def _ident(name: str) -> str:
    """A checked name as a quoted identifier (names never hold a backtick: checked first)."""
    if "`" in name:
        raise InvalidInput(f"invalid name {name!r}", code="invalid_input")
    return f"`{name}`"


def _on(database: str) -> str:
    """The object of a grant on exactly ``database``: in a GRANT a database name is a
    pattern, where '_' matches any character (``app_db`` would grant ``appXdb`` too)."""
    return f"{_ident(_like_escaped(database))}.*"


def _like_escaped(name: str) -> str:
    """A database name as GRANT and mysql.db take it: a LIKE pattern, '_' escaped."""
    return name.replace("_", "\\_")


def _like_unescaped(pattern: str) -> str:
    return pattern.replace("\\_", "_")


def _message(exc: BaseException) -> str:
    args: tuple[Any, ...] = tuple(exc.args)
    text = str(args[1]) if len(args) > 1 else str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__

"""PostgreSQL: SQL-level work over the engine's port with psycopg, every name quoted.

The platform logs in as its own role (LOGIN, CREATEROLE, CREATEDB, member of the tenant's
admin; its password known to the platform alone) and takes the admin's role (``SET ROLE``)
for what the admin must own: databases and their grants. Users and passwords are the
platform's work (the tenant's admin has no CREATEROLE: in PostgreSQL 15 that would let it
grant itself pg_execute_server_program). Passwords are sent as SCRAM-SHA-256 verifiers.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from oneplatform.dbaas.datastores.base import ConnInfo, Datastore, DatastoreVersion, UserInfo
from oneplatform.errors import (
    AlreadyExists,
    BackendError,
    BackendUnavailable,
    InvalidInput,
    NotFound,
)
from oneplatform.guest.engines.postgresql import scram_sha256_verifier

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_RESERVED = frozenset(
    {"postgres", "template0", "template1", "public", "admin", "root", "onep_platform"}
)


STATEMENT_TIMEOUT_MS = 30_000


class PostgreSQL(Datastore):
    name = "postgresql"
    versions = (DatastoreVersion("15", "postgresql-15"),)
    default_version = "15"
    engine_endpoint = "postgresql"
    admin_username = "admin"
    uri_scheme = "postgresql"
    admin_database = "postgres"

    # -- sizing and names ---------------------------------------------------------------------
    def engine_settings(self, vcpus: int, ram_mb: int) -> dict[str, str]:
        shared = max(32, ram_mb // 4)
        return {
            "shared_buffers": f"{shared}MB",
            "effective_cache_size": f"{max(64, ram_mb * 3 // 4)}MB",
            "maintenance_work_mem": f"{min(1024, max(16, ram_mb // 16))}MB",
            "work_mem": f"{max(1, ram_mb // 128)}MB",
            "max_connections": str(min(500, max(50, ram_mb // 10))),
            "max_worker_processes": str(max(2, vcpus * 2)),
        }

    def _check(self, kind: str, name: str) -> None:
        if not _NAME.match(name):
            raise InvalidInput(
                f"invalid {kind} name {name!r}: use lower-case letters, digits and '_', "
                "starting with a letter or '_', at most 63 characters",
                code="invalid_input",
            )
        if name in _RESERVED or name.startswith("pg_"):
            raise InvalidInput(f"{kind} name {name!r} is reserved", code="invalid_input")

    def validate_database_name(self, name: str) -> None:
        self._check("database", name)

    def validate_user_name(self, name: str) -> None:
        self._check("user", name)

    # -- connections ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(
        self, conn: ConnInfo, database: str = "postgres", owner: bool = False, timeout: float = 10
    ) -> Iterator[Any]:
        """A session as ``conn``'s role; ``owner``: as the tenant's admin (``SET ROLE``), for
        what the admin must own and grant."""
        import psycopg
        from psycopg import sql

        try:
            with psycopg.connect(
                host=conn.host,
                port=conn.port,
                user=conn.username,
                password=conn.password,
                dbname=database,
                connect_timeout=max(1, int(timeout)),
                autocommit=True,
                # the platform's sessions never wait long on an engine a tenant keeps busy
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout=10000",
            ) as connection:
                if owner and conn.act_as:
                    connection.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(conn.act_as)))
                yield connection
        except psycopg.OperationalError as exc:
            raise BackendUnavailable(
                f"cannot reach PostgreSQL at {conn.host}:{conn.port}: {_first_line(exc)}",
                code="engine_unreachable",
            ) from None
        except psycopg.errors.DuplicateDatabase:
            raise AlreadyExists("database already exists", code="database_exists") from None
        except psycopg.errors.DuplicateObject:
            raise AlreadyExists("user already exists", code="user_exists") from None
        except psycopg.errors.InvalidCatalogName:
            raise NotFound("database not found", code="database_not_found") from None
        except psycopg.errors.UndefinedObject:
            raise NotFound("user not found", code="user_not_found") from None
        except psycopg.Error as exc:
            raise BackendError(
                f"PostgreSQL refused: {_first_line(exc)}", code="engine_error"
            ) from None

    def ping(self, conn: ConnInfo, timeout: float = 10.0) -> None:
        with self._connect(conn, timeout=timeout) as c:
            c.execute("SELECT 1")

    # -- databases --------------------------------------------------------------------------------
    def list_databases(self, conn: ConnInfo) -> list[str]:
        with self._connect(conn) as c:
            rows = c.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate "
                "AND datname <> 'postgres' ORDER BY datname"
            ).fetchall()
        return [r[0] for r in rows]

    def create_database(self, conn: ConnInfo, name: str) -> None:
        from psycopg import sql

        self.validate_database_name(name)
        ident = sql.Identifier(name)
        with self._connect(conn, owner=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(ident))
            c.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))

    def delete_database(self, conn: ConnInfo, name: str) -> None:
        from psycopg import sql

        self.validate_database_name(name)
        with self._connect(conn, owner=True) as c:
            if name not in self._databases(c):
                raise NotFound(f"database {name!r} not found", code="database_not_found")
            c.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    @staticmethod
    def _databases(c: Any) -> set[str]:
        return {r[0] for r in c.execute("SELECT datname FROM pg_database").fetchall()}

    # -- users ------------------------------------------------------------------------------------
    def list_users(self, conn: ConnInfo) -> list[UserInfo]:
        with self._connect(conn) as c:
            rows = c.execute(
                """
                SELECT r.rolname,
                       COALESCE(array_agg(d.datname ORDER BY d.datname)
                                FILTER (WHERE d.datname IS NOT NULL), '{}')
                FROM pg_roles r
                LEFT JOIN (
                    SELECT d.datname, a.grantee
                    FROM pg_database d, aclexplode(d.datacl) a
                    WHERE a.privilege_type = 'CONNECT'
                ) d ON d.grantee = r.oid
                WHERE r.rolcanlogin AND r.rolname <> ALL(%s) AND r.rolname <> 'postgres'
                  AND r.rolname NOT LIKE 'pg\\_%%'
                GROUP BY r.rolname ORDER BY r.rolname
                """,
                ([conn.username, conn.admin],),
            ).fetchall()
        return [UserInfo(name=r[0], databases=tuple(r[1])) for r in rows]

    def create_user(self, conn: ConnInfo, name: str, password: str) -> None:
        from psycopg import sql

        self.validate_user_name(name)
        with self._connect(conn) as c:
            c.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(scram_sha256_verifier(password))
                )
            )

    def set_password(self, conn: ConnInfo, name: str, password: str) -> None:
        from psycopg import sql

        with self._connect(conn) as c:
            self._require_user(c, name, conn)
            c.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(scram_sha256_verifier(password))
                )
            )

    def set_admin_password(self, conn: ConnInfo, password: str) -> None:
        from psycopg import sql

        with self._connect(conn) as c:
            c.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(conn.admin), sql.Literal(scram_sha256_verifier(password))
                )
            )

    def delete_user(self, conn: ConnInfo, name: str) -> None:
        """Drop the user; objects it owned are handed to the admin, never dropped."""
        from psycopg import sql

        self.validate_user_name(name)
        user, admin = sql.Identifier(name), sql.Identifier(conn.admin)
        with self._connect(conn) as c:
            self._require_user(c, name, conn)
            if conn.act_as:  # REASSIGN OWNED needs the platform's role to hold both roles
                c.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(user))
            databases = [
                r[0]
                for r in c.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn ORDER BY datname"
                ).fetchall()
            ]
        for database in databases:
            with self._connect(conn, database) as c:
                c.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(user, admin))
                c.execute(sql.SQL("DROP OWNED BY {}").format(user))
        with self._connect(conn) as c:
            c.execute(sql.SQL("DROP ROLE {}").format(user))

    def _require_user(self, c: Any, name: str, conn: ConnInfo) -> None:
        found = c.execute(
            "SELECT 1 FROM pg_roles WHERE rolname = %s AND rolcanlogin", (name,)
        ).fetchone()
        if found is None or name in (conn.username, conn.admin, "postgres"):
            raise NotFound(f"user {name!r} not found", code="user_not_found")

    # -- grants -----------------------------------------------------------------------------------
    def grant(self, conn: ConnInfo, user: str, database: str) -> None:
        """CONNECT, CREATE and TEMP on the database, USAGE and CREATE on its schema public
        (PostgreSQL 15 no longer lets every user create in public)."""
        from psycopg import sql

        self.validate_user_name(user)
        self.validate_database_name(database)
        u, d = sql.Identifier(user), sql.Identifier(database)
        with self._connect(conn, owner=True) as c:
            self._require_user(c, user, conn)
            if database not in self._databases(c):
                raise NotFound(f"database {database!r} not found", code="database_not_found")
            c.execute(sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(d, u))
        with self._connect(conn, database, owner=True) as c:
            c.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(u))

    def revoke(self, conn: ConnInfo, user: str, database: str) -> None:
        from psycopg import sql

        self.validate_user_name(user)
        self.validate_database_name(database)
        u, d = sql.Identifier(user), sql.Identifier(database)
        with self._connect(conn) as c:
            self._require_user(c, user, conn)
            if database not in self._databases(c):
                raise NotFound(f"database {database!r} not found", code="database_not_found")
        with self._connect(conn, database, owner=True) as c:
            c.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(u))
        with self._connect(conn, owner=True) as c:
            c.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(d, u))

    # -- a new instance ---------------------------------------------------------------------
    def initial_for_agent(
        self, databases: Sequence[str], users: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any] | None:
        """For the agent's ``initial_sql``: the users' passwords as SCRAM verifiers."""
        for name in databases:
            self.validate_database_name(name)
        for user in users:
            self.validate_user_name(user["name"])
        return {
            "databases": list(databases),
            "users": [
                {
                    "name": u["name"],
                    "verifier": scram_sha256_verifier(u["password"]),
                    "databases": list(u["databases"]),
                }
                for u in users
            ],
        }

    def checkpoint(self, conn: ConnInfo) -> None:
        # The platform's role holds pg_checkpoint through the admin's membership.
        with self._connect(conn) as session:
            session.execute("CHECKPOINT")

    def wait_replayed(self, conn: ConnInfo, past: int, timeout: float) -> int | None:
        # One session, polled every 20 ms: the wait is the whole of a switchover's pause.
        deadline = time.monotonic() + timeout
        with self._connect(conn) as session:
            while True:
                row = session.execute(
                    "SELECT pg_catalog.pg_wal_lsn_diff("
                    "pg_catalog.pg_last_wal_replay_lsn(), '0/0')::bigint"
                ).fetchone()
                position = row[0] if row else None
                if position is not None and position > past:
                    return int(position)
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.02)

    def initialize(
        self, conn: ConnInfo, databases: Sequence[str], users: Sequence[Mapping[str, Any]]
    ) -> None:
        """What :meth:`create_database`, :meth:`create_user` and :meth:`grant` do, in one
        session plus one per granted database (each login costs an authentication)."""
        from psycopg import sql

        for name in databases:
            self.validate_database_name(name)
        for user in users:
            self.validate_user_name(user["name"])
        with self._connect(conn) as c:
            existing = self._databases(c)
            for name in databases:
                if name in existing:
                    continue
                ident = sql.Identifier(name)
                with self._as_owner(c, conn):
                    c.execute(sql.SQL("CREATE DATABASE {}").format(ident))
                    c.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
            for user in users:
                u = sql.Identifier(user["name"])
                known = c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user["name"],))
                verb = (
                    "ALTER ROLE {} LOGIN PASSWORD {}"
                    if known.fetchone()
                    else ("CREATE ROLE {} LOGIN PASSWORD {}")
                )
                verifier = sql.Literal(scram_sha256_verifier(user["password"]))
                c.execute(sql.SQL(verb).format(u, verifier))
                with self._as_owner(c, conn):
                    for database in user["databases"]:
                        c.execute(
                            sql.SQL("GRANT CONNECT, CREATE, TEMPORARY ON DATABASE {} TO {}").format(
                                sql.Identifier(database), u
                            )
                        )
        granted: dict[str, list[str]] = {}
        for user in users:
            for database in user["databases"]:
                granted.setdefault(database, []).append(user["name"])
        for database, names in granted.items():
            with self._connect(conn, database, owner=True) as c:
                for name in names:
                    c.execute(
                        sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {}").format(
                            sql.Identifier(name)
                        )
                    )

    @staticmethod
    @contextlib.contextmanager
    def _as_owner(c: Any, conn: ConnInfo) -> Iterator[None]:
        """Within a session of the platform's role: act as the tenant's admin for a while."""
        from psycopg import sql

        if not conn.act_as:
            yield
            return
        c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(conn.act_as)))
        try:
            yield
        finally:
            c.execute("RESET ROLE")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

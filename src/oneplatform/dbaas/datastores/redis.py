"""Redis: ACL users over the engine's port with redis-py; no databases.

The platform logs in as its own user (every command); the tenant's admin and the users made
here reach every key and channel with every command but the server's own (``-@admin``:
CONFIG, ACL, SHUTDOWN, REPLICAOF, DEBUG, SAVE …). Users are Redis ACL users; a change is
saved to the ACL file on the data volume (``ACL SAVE``) before it is answered.

Redis has no databases to make, delete or grant (its numbered ones are one keyspace split by
``SELECT``, not a unit of access): those requests are refused with the reason, and a user
reaches every key. Key patterns per user are Redis's own way to narrow that; the platform
does not offer them yet.

redis-py: the Redis project's own Python client, pure Python.
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

_USER_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_RESERVED = frozenset({"default", "admin", "onep_platform", "root"})
TENANT_RULES = ("~*", "&*", "+@all", "-@admin")  # as the guest's ACL file has them
PLATFORM_PREFIX = "onep_"  # the platform's own users (its own, the replication user)
NO_DATABASES = "Redis has no databases: an instance is one keyspace, and its users reach every key"


class Redis(Datastore):
    name = "redis"
    versions = (DatastoreVersion("7.0", "redis-7.0"),)
    default_version = "7.0"
    engine_endpoint = "redis"
    admin_username = "admin"
    uri_scheme = "redis"
    admin_database = ""
    unsupported = {
        Feature.DATABASES: NO_DATABASES,
        Feature.GRANTS: NO_DATABASES,
        Feature.PITR: (
            "a Redis backup is a snapshot (RDB): it restores as it was taken, there is no "
            "window to recover to a moment of"
        ),
        Feature.DETACH: (
            "not built for Redis in this release: a replica stays a member of its "
            "database (delete it, or restore a backup into a database of its own)"
        ),
    }
    backup_types = ("full",)  # a snapshot
    repository_kind = "files"

    def connection_uri(self, host: str, port: int, user: str, database: str | None = None) -> str:
        host = f"[{host}]" if ":" in host else host
        return f"{self.uri_scheme}://{user}@{host}:{port}"

    # -- sizing and names ---------------------------------------------------------------------
    def engine_settings(self, vcpus: int, ram_mb: int) -> dict[str, str]:
        """Half the RAM for the dataset: a snapshot or an append-only rewrite forks, and the
        copy-on-write of a busy instance can take as much again."""
        return {
            "maxmemory": f"{max(32, ram_mb // 2)}mb",
            "maxmemory-policy": "noeviction",  # a database: a full one refuses, never drops
            "maxclients": str(min(10000, max(100, ram_mb * 2))),
            "io-threads": str(max(1, min(4, vcpus))),
        }

    def validate_database_name(self, name: str) -> None:
        raise InvalidInput(NO_DATABASES, code="invalid_input")

    def validate_user_name(self, name: str) -> None:
        if not _USER_NAME.match(name):
            raise InvalidInput(
                f"invalid user name {name!r}: use lower-case letters, digits and '_', "
                "starting with a letter or '_'",
                code="invalid_input",
            )
        if name in _RESERVED or name.startswith(PLATFORM_PREFIX):
            raise InvalidInput(f"user name {name!r} is reserved", code="invalid_input")

    # -- connections ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self, conn: ConnInfo, timeout: float = 10) -> Iterator[Any]:
        import redis

        client = redis.Redis(
            host=conn.host,
            port=conn.port,
            username=conn.username,
            password=conn.password,
            socket_connect_timeout=timeout,
            socket_timeout=30,
            decode_responses=True,
        )
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as exc:
            client.close()
            raise BackendUnavailable(
                f"cannot reach Redis at {conn.host}:{conn.port}: {exc}",
                code="engine_unreachable",
            ) from None
        try:
            yield client
        except redis.RedisError as exc:
            raise BackendError(f"Redis refused: {exc}", code="engine_error") from None
        finally:
            client.close()

    def ping(self, conn: ConnInfo, timeout: float = 10.0) -> None:
        with self._connect(conn, timeout=timeout):
            pass

    # -- replication ------------------------------------------------------------------------------
    def checkpoint(self, conn: ConnInfo) -> None:
        """Nothing: a switchover does not stop a Redis primary (it is demoted running)."""

    def wait_replayed(self, conn: ConnInfo, past: int, timeout: float) -> int | None:
        """Positions are replication offsets (bytes) the replica has processed."""
        deadline = time.monotonic() + timeout
        with self._connect(conn) as c:
            while True:
                info = c.info("replication")
                position = int(info.get("slave_repl_offset", -1))
                if position > past:
                    return position
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.02)

    # -- databases: none --------------------------------------------------------------------------
    def list_databases(self, conn: ConnInfo) -> list[str]:
        return []

    def create_database(self, conn: ConnInfo, name: str) -> None:
        raise InvalidInput(NO_DATABASES, code="invalid_input")

    def delete_database(self, conn: ConnInfo, name: str) -> None:
        raise InvalidInput(NO_DATABASES, code="invalid_input")

    def grant(self, conn: ConnInfo, user: str, database: str) -> None:
        raise InvalidInput(NO_DATABASES, code="invalid_input")

    def revoke(self, conn: ConnInfo, user: str, database: str) -> None:
        raise InvalidInput(NO_DATABASES, code="invalid_input")

    # -- users ------------------------------------------------------------------------------------
    def list_users(self, conn: ConnInfo) -> list[UserInfo]:
        hidden = {conn.username, conn.admin, "default"}
        with self._connect(conn) as c:
            listed = [str(n) for n in c.acl_users()]
        names = sorted(n for n in listed if n not in hidden and not n.startswith(PLATFORM_PREFIX))
        return [UserInfo(name=n, databases=()) for n in names]

    def create_user(self, conn: ConnInfo, name: str, password: str) -> None:
        self.validate_user_name(name)
        with self._connect(conn) as c:
            if c.acl_getuser(name) is not None:
                raise AlreadyExists(f"user {name!r} already exists", code="user_exists")
            c.execute_command("ACL", "SETUSER", name, "reset", "on", f">{password}",
                              *TENANT_RULES)  # fmt: skip
            c.execute_command("ACL", "SAVE")

    def delete_user(self, conn: ConnInfo, name: str) -> None:
        self.validate_user_name(name)
        with self._connect(conn) as c:
            if not c.acl_deluser(name):
                raise NotFound(f"user {name!r} not found", code="user_not_found")
            c.execute_command("ACL", "SAVE")

    def set_password(self, conn: ConnInfo, name: str, password: str) -> None:
        self.validate_user_name(name)
        self._set_password(conn, name, password)

    def set_admin_password(self, conn: ConnInfo, password: str) -> None:
        self._set_password(conn, conn.admin, password)

    def _set_password(self, conn: ConnInfo, name: str, password: str) -> None:
        with self._connect(conn) as c:
            if c.acl_getuser(name) is None:
                raise NotFound(f"user {name!r} not found", code="user_not_found")
            c.execute_command("ACL", "SETUSER", name, "resetpass", f">{password}")
            c.execute_command("ACL", "SAVE")

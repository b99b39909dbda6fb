"""The engine contract every datastore implements.

The platform does SQL-level work (databases, users, grants) over the engine's own port with
the admin credentials, so nothing here knows which compute type the engine runs on.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from oneplatform.dbaas.datastores.features import BACKUP_TYPES, Feature, refusal
from oneplatform.errors import AlreadyExists, CapabilityNotSupported


@dataclass(frozen=True)
class DatastoreVersion:
    version: str
    image: str
    # What this version lacks beyond its datastore's ``unsupported``, and why.
    unsupported: Mapping[Feature, str] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class ConnInfo:
    """How the platform logs in to an engine. ``act_as``: the tenant's admin, whose role the
    platform takes for what the admin must own (databases and their grants); empty for
    instances from before the platform had a role of its own (their admin logs in)."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    act_as: str = ""

    @property
    def admin(self) -> str:
        """The tenant's admin role."""
        return self.act_as or self.username


@dataclass(frozen=True)
class UserInfo:
    name: str
    databases: tuple[str, ...]


class Datastore(abc.ABC):
    name: ClassVar[str]
    versions: ClassVar[tuple[DatastoreVersion, ...]]
    default_version: ClassVar[str]
    engine_endpoint: ClassVar[str]  # the endpoint name clients connect to
    admin_username: ClassVar[str] = "admin"
    platform_username: ClassVar[str] = "onep_platform"  # the platform's own role, never shown
    uri_scheme: ClassVar[str]  # of connection URIs: postgresql://user@host:port/database
    admin_database: ClassVar[str] = ""  # the database an admin connects to by default
    # What the engine cannot do through the platform, and why (see ``features``).
    unsupported: ClassVar[Mapping[Feature, str]] = {}
    backup_types: ClassVar[tuple[str, ...]] = tuple(BACKUP_TYPES)
    # What its guests write into a repository: pgBackRest's, or backup folders of files
    # (the host expires and deletes them with the matching tool).
    repository_kind: ClassVar[str] = "pgbackrest"
    # What its replication positions count: how far behind a replica is, in these.
    position_unit: ClassVar[str] = "bytes"

    def lacks(self, version: str) -> dict[Feature, str]:
        """Every feature ``version`` does not support, with the reason."""
        extra = next((v.unsupported for v in self.versions if v.version == version), {})
        return {**self.unsupported, **extra}

    def require(self, version: str, *features: Feature) -> None:
        """Refuse up front, with the reason, a feature ``version`` does not support."""
        lacking = self.lacks(version)
        for feature in features:
            err = refusal(lacking, feature, self.name, version)
            if err is not None:
                raise err

    def require_backup_type(self, version: str, backup_type: str) -> None:
        self.require(version, Feature.BACKUPS)
        if backup_type not in self.backup_types:
            raise CapabilityNotSupported(
                f"{self.name} {version} has no {backup_type!r} backups "
                f"(it takes: {', '.join(self.backup_types)})",
                capability=Feature.BACKUPS.value,
                datastore=self.name,
                version=version,
                backup_type=backup_type,
            )

    def connection_uri(self, host: str, port: int, user: str, database: str | None = None) -> str:
        """A URI the engine's own clients take; never with a password in it."""
        host = f"[{host}]" if ":" in host else host
        return f"{self.uri_scheme}://{user}@{host}:{port}/{database or self.admin_database}"

    @abc.abstractmethod
    def engine_settings(self, vcpus: int, ram_mb: int) -> dict[str, str]:
        """Engine settings sized from the flavor."""

    @abc.abstractmethod
    def validate_database_name(self, name: str) -> None:
        """Raise InvalidInput for a name the engine must not get."""

    @abc.abstractmethod
    def validate_user_name(self, name: str) -> None:
        """Raise InvalidInput for a name the engine must not get."""

    @abc.abstractmethod
    def ping(self, conn: ConnInfo, timeout: float = 10.0) -> None:
        """Log in and run a trivial query within ``timeout`` seconds; raise BackendError
        (BackendUnavailable when it does not answer) if that fails."""

    @abc.abstractmethod
    def list_databases(self, conn: ConnInfo) -> list[str]: ...

    @abc.abstractmethod
    def create_database(self, conn: ConnInfo, name: str) -> None:
        """Create it; AlreadyExists if it exists. Nobody but the admin may connect yet."""

    @abc.abstractmethod
    def delete_database(self, conn: ConnInfo, name: str) -> None: ...

    @abc.abstractmethod
    def list_users(self, conn: ConnInfo) -> list[UserInfo]: ...

    @abc.abstractmethod
    def create_user(self, conn: ConnInfo, name: str, password: str) -> None: ...

    @abc.abstractmethod
    def delete_user(self, conn: ConnInfo, name: str) -> None: ...

    @abc.abstractmethod
    def set_password(self, conn: ConnInfo, name: str, password: str) -> None: ...

    @abc.abstractmethod
    def set_admin_password(self, conn: ConnInfo, password: str) -> None:
        """Change the password of the admin user ``conn`` logs in as."""

    @abc.abstractmethod
    def grant(self, conn: ConnInfo, user: str, database: str) -> None:
        """Let ``user`` connect to ``database`` and create and use objects in it."""

    @abc.abstractmethod
    def revoke(self, conn: ConnInfo, user: str, database: str) -> None: ...

    def initial_for_agent(
        self, databases: Sequence[str], users: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any] | None:
        """The initial databases and users as a claimed warm instance's agent makes them
        (no plain password in it), or None: then they are made over SQL as in any create."""
        return None

    def checkpoint(self, conn: ConnInfo) -> None:
        """Write the engine's dirty pages out now (before a planned stop)."""
        raise NotImplementedError(f"{self.name} has no checkpoint")

    def wait_replayed(self, conn: ConnInfo, past: int, timeout: float) -> int | None:
        """Watch the standby at ``conn`` until it has replayed beyond ``past`` (a WAL
        position in bytes); its position then, or None after ``timeout`` seconds."""
        raise NotImplementedError(f"{self.name} has no replication")

    def initialize(
        self, conn: ConnInfo, databases: Sequence[str], users: Sequence[Mapping[str, Any]]
    ) -> None:
        """A new instance's initial databases and users (``{"name", "password",
        "databases"}``), idempotently: what exists is kept, a user's password is set again.
        An engine may do it in fewer round trips than these calls."""
        for name in databases:
            with contextlib.suppress(AlreadyExists):
                self.create_database(conn, name)
        for user in users:
            try:
                self.create_user(conn, user["name"], user["password"])
            except AlreadyExists:
                self.set_password(conn, user["name"], user["password"])
            for database in user["databases"]:
                self.grant(conn, user["name"], database)

"""`onep db`: database instances, their databases, users and grants."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import typer

from oneplatform.cli.backups import backup_app
from oneplatform.cli.configurations import config_app
from oneplatform.cli.output import (
    Format,
    OutputOpt,
    WideOpt,
    api_errors,
    console,
    emit,
    fail,
    wait_with_progress,
)
from oneplatform.schemas.databases import DbInstanceAccepted, DbInstanceOut
from oneplatform.schemas.operations import Intent, OperationOut
from oneplatform.sdk.client import Client, OperationFailed

db_app = typer.Typer(help="Databases as a service.", no_args_is_help=True)
database_app = typer.Typer(help="Databases inside a database instance.", no_args_is_help=True)
user_app = typer.Typer(help="Users of a database instance, and their grants.", no_args_is_help=True)
datastore_app = typer.Typer(help="Database engines and versions.", no_args_is_help=True)
db_app.add_typer(database_app, name="database")
db_app.add_typer(user_app, name="user")
db_app.add_typer(backup_app, name="backup")
replica_app = typer.Typer(
    help="Streaming replicas of a database instance, on any flavor.", no_args_is_help=True
)
db_app.add_typer(replica_app, name="replica")
db_app.add_typer(config_app, name="config")

DB_COLUMNS = (
    "name",
    "status",
    "health",
    "datastore",
    "flavor",
    "endpoint",
    "compute_type",
    "version",
)
SHOW_COLUMNS = (
    "id",
    "name",
    "status",
    "health",
    "datastore",
    "version",
    "flavor",
    "compute_type",
    "size_gb",
    "autogrow_max_gb",
    "max_size_gb",
    "endpoint",
    "read_only_endpoint",
    "connection_uri",
    "restorable_from",
    "restorable_until",
    "configuration",
    "restart_required",
    "status_message",
    "health_message",
)
# Each kind of connection URI's own client: its Debian package, and the environment
# variable it reads a password from (never put on its command line).
CLIENTS: dict[str, tuple[str, str, str]] = {
    "postgresql": ("psql", "postgresql-client", "PGPASSWORD"),
    "mysql": ("mariadb", "mariadb-client", "MYSQL_PWD"),
    "redis": ("redis-cli", "redis-tools", "REDISCLI_AUTH"),
}


def client_argv(uri: str) -> list[str]:
    """The command that opens ``uri`` with its engine's client (psql takes the URI; the
    mariadb client takes host, port, user and database; redis-cli host, port and user)."""
    parts = urlsplit(uri)
    program = CLIENTS[parts.scheme][0]
    if parts.scheme == "postgresql":
        return [program, uri]
    if parts.scheme == "redis":
        argv = [program, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
        return argv + (["--user", parts.username] if parts.username else [])
    argv = [program, "-h", parts.hostname or "127.0.0.1", "-P", str(parts.port or 3306)]
    if parts.username:
        argv += ["-u", parts.username]
    database = parts.path.lstrip("/")
    return argv + ([database] if database else [])


WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="Wait until the work is done.")]


def _finish(c: Client, accepted: DbInstanceAccepted, wait: bool, fmt: Format) -> None:
    op, db = accepted.operation, accepted.instance
    if not wait:
        if fmt is Format.json:
            emit(op, fmt, ())
        else:
            console.print(f"{op.kind} accepted: operation {op.id}  (onep operation show {op.id})")
        return
    _wait(c, op)
    if op.intent is Intent.DELETE:
        if fmt is Format.json:
            emit(c.operations.get(op.id), fmt, ())
        else:
            console.print(f"deleted {db.name}")
        return
    _show(c.db.get(db.id), fmt)


def _with(uri: str, user: str | None, database: str | None) -> str:
    """``uri`` with another user and/or database."""
    parts = urlsplit(uri)
    netloc = f"{user}@{parts.netloc.split('@', 1)[1]}" if user else parts.netloc
    return urlunsplit(
        parts._replace(netloc=netloc, path=f"/{database}" if database else parts.path)
    )


def _show(db: DbInstanceOut, fmt: Format) -> None:
    emit(db, fmt, SHOW_COLUMNS)
    if fmt is Format.table and db.storage is not None:
        gb = 1024**3
        s = db.storage
        console.print(
            f"storage: {s.used_bytes / gb:.2f} GB used of {s.total_bytes / gb:.2f} GB, "
            f"{s.free_bytes / gb:.2f} GB free (reported {s.checked_at:%Y-%m-%d %H:%M:%S} UTC)",
            highlight=False,
        )
    if fmt is Format.table and db.connection_uri:
        console.print(
            f"\nconnect: onep db connect {db.name}    password: onep db credentials {db.name}",
            highlight=False,
        )


def _user_spec(raw: str, databases: list[str]) -> dict[str, object]:
    name, sep, password = raw.partition(":")
    if not sep or not name or not password:
        raise fail(f"--user takes NAME:PASSWORD, got {raw!r}")
    return {"name": name, "password": password, "databases": databases}


@db_app.command("create")
def db_create(
    name: str,
    flavor: Annotated[str, typer.Option(help="Flavor: picks the compute type and size.")],
    datastore: Annotated[
        str | None,
        typer.Option(help="Engine (default: a restore's source's, else postgresql)."),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="Engine version (default: a restore's source's, else the newest)."),
    ] = None,
    size_gb: Annotated[int, typer.Option("--size-gb", help="Data volume size in GB.")] = 1,
    database: Annotated[list[str] | None, typer.Option(help="Create this database.")] = None,
    user: Annotated[
        list[str] | None,
        typer.Option(help="NAME:PASSWORD; the user gets access to every --database."),
    ] = None,
    restore: Annotated[
        str | None, typer.Option(help="Start from this backup (name or id): its data and users.")
    ] = None,
    restore_from: Annotated[
        str | None,
        typer.Option(help="Start from this database instance's window (deleted or not)."),
    ] = None,
    to_time: Annotated[
        str | None,
        typer.Option(help="With --restore or --restore-from: recover to this ISO 8601 moment."),
    ] = None,
    replicas: Annotated[
        int, typer.Option(help="Streaming replicas to make with it (an HA group), 0-7.")
    ] = 0,
    replica_flavor: Annotated[
        str | None,
        typer.Option(help="The replicas' flavor, of any compute type (default: --flavor)."),
    ] = None,
    configuration: Annotated[
        str | None,
        typer.Option(help="A configuration group (onep db config) the engine starts with."),
    ] = None,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Create a database instance on any flavor: the same database on any compute type; or
    restore one (--restore, --restore-from) onto any flavor."""
    databases = database or []
    moment = _iso(to_time) if to_time else None
    with Client.from_home() as c, api_errors():
        accepted = c.db.create(
            name,
            flavor=flavor,
            datastore=datastore,
            version=version,
            size_gb=size_gb,
            databases=databases,
            users=[_user_spec(u, databases) for u in user or []],
            restore=restore,
            restore_from=restore_from,
            to_time=moment,
            replicas=replicas,
            replica_flavor=replica_flavor,
            configuration=configuration,
        )
        _finish(c, accepted, wait, output)


def _iso(raw: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise fail(
            f"--to-time takes an ISO 8601 moment (2026-11-26T04:00:00Z), got {raw!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@db_app.command("list")
def db_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.db.list(), output, DB_COLUMNS, wide=wide)


@db_app.command("show")
def db_show(name: str, output: Format = OutputOpt) -> None:
    """A database instance: status, health, endpoint and its connection URI."""
    with Client.from_home() as c, api_errors():
        _show(c.db.get(name), output)


@db_app.command(
    "connect", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def db_connect(
    ctx: typer.Context,
    name: str,
    database: Annotated[str | None, typer.Option(help="Database (the admin's default).")] = None,
    user: Annotated[
        str | None,
        typer.Option(help="Connect as this user (its client asks for the password)."),
    ] = None,
) -> None:
    """Open the engine's own client on the database (psql for PostgreSQL, mariadb for
    MariaDB, redis-cli for Redis); arguments after `--` go to the client, e.g. `onep db
    connect pg1 -- -c 'select 1'`."""
    with Client.from_home() as c, api_errors():
        db = c.db.get(name)
        if db.endpoint is None or db.connection_uri is None:
            raise fail(f"database instance {name!r} has no endpoint yet (it is {db.status})")
        password = None if user else c.db.credentials(name).password
    scheme = db.connection_uri.split("://", 1)[0]
    if scheme not in CLIENTS:
        raise fail(f"no client is known for {scheme}:// URIs")
    program, package, password_env = CLIENTS[scheme]
    if shutil.which(program) is None:
        raise fail(f"{program} is not installed here (Debian: apt-get install {package})")
    argv = client_argv(_with(db.connection_uri, user, database))
    env = dict(os.environ)
    if password is not None:
        env[password_env] = password
    elif scheme == "redis":
        argv.append("--askpass")  # redis-cli asks only when told to
    os.execvpe(program, [*argv, *ctx.args], env)


@db_app.command("restart")
def db_restart(name: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    """Restart the database engine."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.db.restart(name), wait, output)


@db_app.command("delete")
def db_delete(name: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    """Delete the database instance with its data and compute."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.db.delete(name), wait, output)


MEMBER_COLUMNS = (
    "name",
    "role",
    "state",
    "flavor",
    "compute_type",
    "lag_bytes",
    "lag_seconds",
    "endpoint",
)
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds the target has to catch up; past them nothing changes and the "
        "primary serves on.",
    ),
]


@replica_app.command("create")
def replica_create(
    name: str,
    flavor: Annotated[
        str | None, typer.Option(help="Any flavor, of any compute type (default: the primary's).")
    ] = None,
    replica_name: Annotated[
        str | None, typer.Option("--name", help="The replica's name (default: NAME-r<n>).")
    ] = None,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Add a streaming replica to database instance NAME."""
    with Client.from_home() as c, api_errors():
        accepted = c.db.create_replica(name, name=replica_name, flavor=flavor)
        op = accepted.operation
        if not wait:
            if output is Format.json:
                emit(op, output, ())
            else:
                console.print(f"{op.kind} accepted: operation {op.id}")
            return
        _wait(c, op)
        member = next(m for m in c.db.list_replicas(name) if m.name == accepted.replica.name)
        emit(member, output, MEMBER_COLUMNS)


EVENT_COLUMNS = ("at", "resource", "name", "from_status", "to_status", "message")


@db_app.command("events")
def db_events(
    name: str,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="How many of the latest.")
    ] = 50,
    output: Format = OutputOpt,
) -> None:
    """What happened to database instance NAME (live or deleted), its members, their compute
    and its backups: state changes, repairs, switchovers, failovers; the latest, oldest
    first."""
    with Client.from_home() as c, api_errors():
        emit(c.db.events(name, limit), output, EVENT_COLUMNS)


@db_app.command("logs")
def db_logs(
    name: str,
    tail: Annotated[int, typer.Option("--tail", min=1, max=5000, help="How many lines.")] = 100,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines (Ctrl-C stops).")
    ] = False,
    member: Annotated[
        str | None, typer.Option("--member", help="A member's log (default: the primary's).")
    ] = None,
    output: Format = OutputOpt,
) -> None:
    """The engine's own log (its server's output) on NAME's primary or on one member."""
    with Client.from_home() as c, api_errors():
        got = c.db.logs(name, tail=tail, member=member)
        if output is Format.json and not follow:
            emit(got, output, ())
            return
        for line in got.lines:
            console.out(line, highlight=False)
        after = got.next
        try:
            while follow:
                time.sleep(1.0)
                got = c.db.logs(name, tail=5000, after=after, member=got.member)
                for line in got.lines:
                    console.out(line, highlight=False)
                after = got.next
        except KeyboardInterrupt:
            return


@replica_app.command("list")
def replica_list(name: str, output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    """The members of database instance NAME (the primary first), with each replica's lag."""
    with Client.from_home() as c, api_errors():
        emit(c.db.list_replicas(name), output, MEMBER_COLUMNS, wide)


@replica_app.command("delete")
def replica_delete(replica: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    """Delete replica REPLICA (by its name) and its compute."""
    with Client.from_home() as c, api_errors():
        accepted = c.db.delete_replica(replica)
        if wait:
            _wait(c, accepted.operation)
        if output is Format.json:
            emit(c.operations.get(accepted.operation.id), output, ())
        elif wait:
            console.print(f"deleted {replica}")
        else:
            console.print(f"{accepted.operation.kind} accepted: operation {accepted.operation.id}")


@replica_app.command("detach")
def replica_detach(
    replica: str,
    new_name: Annotated[
        str | None,
        typer.Option("--name", help="The new database instance's name (default: the replica's)."),
    ] = None,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Make replica REPLICA a database instance of its own: its data as of now, the group's
    users and passwords, its own endpoints and backup repository."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.db.detach_replica(replica, new_name), wait, output)


def _wait(c: Client, op: OperationOut) -> None:
    try:
        wait_with_progress(c, op, quiet=False)
    except OperationFailed as failed:
        raise fail(
            f"{failed.operation.kind} failed: {failed.message} [{failed.code}] (operation {op.id})"
        ) from None


@db_app.command("switchover")
def db_switchover(
    name: str,
    to: Annotated[
        str | None, typer.Option(help="The replica to promote (default: the most advanced).")
    ] = None,
    timeout: TimeoutOpt = 60.0,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Make a replica the primary, losing no acknowledged write; the endpoint follows it and
    the former primary becomes a replica."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.db.switchover(name, to=to, timeout_seconds=timeout), wait, output)


@db_app.command("move")
def db_move(
    name: str,
    flavor: Annotated[str, typer.Option(help="The new flavor, of any compute type.")],
    timeout: TimeoutOpt = 60.0,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Move (or resize) a live database to another flavor, of any compute type: a replica
    there, a switchover to it, the former primary retired. Its id, name, endpoint, users,
    backups and recovery window stay."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.db.move(name, flavor, timeout_seconds=timeout), wait, output)


@db_app.command("resize")
def db_resize(
    name: str,
    size_gb: Annotated[
        int, typer.Option("--size-gb", help="The data volume's new size in GB (larger).")
    ],
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Grow the database's storage: every member's data volume, then its filesystem, online
    (a VM's disk and ext4 filesystem; a bare-metal node's data partition and its ext4, up to
    the end of the node's disk: the database's max_size_gb; a container's volume size is a
    record, not enforced). Storage only grows: a smaller size is refused, and so is one past
    max_size_gb."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.db.resize(name, size_gb), wait, output)


@db_app.command("autogrow")
def db_autogrow(
    name: str,
    max_gb: Annotated[
        int | None,
        typer.Option("--max-gb", help="Grow up to this size in GB (above the current one)."),
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="Turn auto-growth off.")] = False,
    output: Format = OutputOpt,
) -> None:
    """Auto-growth: once the data filesystem is over 80 % full, grow the storage by half (at
    least 1 GB), up to --max-gb, as `onep db resize` does. It acts where a volume's size is
    what the guest gets (VMs, bare-metal nodes); a container's volume is not size-limited, so
    it never fills."""
    if (max_gb is not None) == off:
        raise typer.BadParameter("give --max-gb N, or --off")
    with Client.from_home() as c, api_errors():
        _show(c.db.set_autogrow(name, None if off else max_gb), output)


@db_app.command("credentials")
def db_credentials(name: str, output: Format = OutputOpt) -> None:
    """The admin user and password (your project only)."""
    with Client.from_home() as c, api_errors():
        emit(c.db.credentials(name), output, ("username", "password"))


@db_app.command("reset-password")
def db_reset_password(name: str, output: Format = OutputOpt) -> None:
    """Give the admin user a new generated password, and print it."""
    with Client.from_home() as c, api_errors():
        emit(c.db.reset_password(name), output, ("username", "password"))


# -- databases ---------------------------------------------------------------------------------
@database_app.command("create")
def database_create(name: str, database: str, output: Format = OutputOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.db.create_database(name, database), output, ("name",))


@database_app.command("list")
def database_list(name: str, output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.db.list_databases(name), output, ("name",), wide=wide)


@database_app.command("delete")
def database_delete(name: str, database: str) -> None:
    """Drop a database and everything in it."""
    with Client.from_home() as c, api_errors():
        c.db.delete_database(name, database)
        console.print(f"deleted database {database}")


# -- users -------------------------------------------------------------------------------------
@user_app.command("create")
def user_create(
    name: str,
    user: str,
    password: Annotated[str | None, typer.Option(help="Generated when omitted.")] = None,
    database: Annotated[list[str] | None, typer.Option(help="Grant access to it.")] = None,
    output: Format = OutputOpt,
) -> None:
    """Create a user; prints its password once when it was generated."""
    with Client.from_home() as c, api_errors():
        created = c.db.create_user(name, user, password=password, databases=database or [])
        if output is Format.json:
            emit(created, output, ())
        else:
            console.print(
                f"user {created.user.name} with access to "
                f"{', '.join(created.user.databases) or 'no database'}"
            )
            if password is None:
                console.print(f"password (shown once): {created.password}", highlight=False)


@user_app.command("list")
def user_list(name: str, output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.db.list_users(name), output, ("name", "databases"), wide=wide)


@user_app.command("delete")
def user_delete(name: str, user: str) -> None:
    """Drop a user; what it owned passes to the admin user."""
    with Client.from_home() as c, api_errors():
        c.db.delete_user(name, user)
        console.print(f"deleted user {user}")


@user_app.command("password")
def user_password(
    name: str,
    user: str,
    password: Annotated[str | None, typer.Option(help="Generated when omitted.")] = None,
    output: Format = OutputOpt,
) -> None:
    """Change a user's password."""
    with Client.from_home() as c, api_errors():
        emit(c.db.set_password(name, user, password), output, ("username", "password"))


@user_app.command("grant")
def user_grant(name: str, user: str, database: str, output: Format = OutputOpt) -> None:
    """Let USER connect to DATABASE and create and use tables in it."""
    with Client.from_home() as c, api_errors():
        emit(c.db.grant(name, user, database), output, ("name", "databases"))


@user_app.command("revoke")
def user_revoke(name: str, user: str, database: str, output: Format = OutputOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.db.revoke(name, user, database), output, ("name", "databases"))


@datastore_app.command("list")
def datastore_list(output: Format = OutputOpt) -> None:
    """Engines and versions, and what the platform can do with each (the reason when not)."""
    with Client.from_home() as c, api_errors():
        datastores = c.db.datastores()
        if output is Format.json:
            emit(datastores, output, ())
            return
        for ds in datastores:
            for v in ds.versions:
                default = " (default)" if v.default else ""
                console.print(f"[bold]{ds.name} {v.version}[/]{default}  image {v.image}")
                for cap in v.capabilities:
                    mark = "[green]yes[/]" if cap.supported else "[red]no[/] "
                    console.print(
                        f"  {mark} {cap.name:<11} {cap.reason or cap.description}",
                        highlight=False,
                    )
                if v.backup_types:
                    console.print(f"  backup types: {', '.join(v.backup_types)}", highlight=False)

"""`onep db`: database instances, their databases, users and grants."""

from __future__ import annotations

from typing import Annotated

import typer

from oneplatform.cli.output import (
    Format,
    OutputOpt,
    api_errors,
    console,
    emit,
    fail,
    wait_with_progress,
)
from oneplatform.schemas.databases import DbInstanceAccepted
from oneplatform.schemas.operations import Intent
from oneplatform.sdk.client import Client, OperationFailed

db_app = typer.Typer(help="Databases as a service.", no_args_is_help=True)
database_app = typer.Typer(help="Databases inside a database instance.", no_args_is_help=True)
user_app = typer.Typer(help="Users of a database instance, and their grants.", no_args_is_help=True)
datastore_app = typer.Typer(help="Database engines and versions.", no_args_is_help=True)
db_app.add_typer(database_app, name="database")
db_app.add_typer(user_app, name="user")

DB_COLUMNS = (
    "name",
    "status",
    "health",
    "datastore",
    "version",
    "flavor",
    "compute_type",
    "endpoint",
)
WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="Wait until the work is done.")]


def _finish(c: Client, accepted: DbInstanceAccepted, wait: bool, fmt: Format) -> None:
    op, db = accepted.operation, accepted.instance
    if not wait:
        if fmt is Format.json:
            emit(op, fmt, ())
        else:
            console.print(f"{op.kind} accepted: operation {op.id}  (onep operation show {op.id})")
        return
    try:
        wait_with_progress(c, op, quiet=False)
    except OperationFailed as failed:
        raise fail(
            f"{failed.operation.kind} failed: {failed.message} [{failed.code}] (operation {op.id})"
        ) from None
    if op.intent is Intent.DELETE:
        if fmt is Format.json:
            emit(c.operations.get(op.id), fmt, ())
        else:
            console.print(f"deleted {db.name}")
        return
    emit(c.db.get(db.id), fmt, DB_COLUMNS)


def _user_spec(raw: str, databases: list[str]) -> dict[str, object]:
    name, sep, password = raw.partition(":")
    if not sep or not name or not password:
        raise fail(f"--user takes NAME:PASSWORD, got {raw!r}")
    return {"name": name, "password": password, "databases": databases}


@db_app.command("create")
def db_create(
    name: str,
    flavor: Annotated[str, typer.Option(help="Flavor: picks the compute type and size.")],
    datastore: Annotated[str, typer.Option(help="Engine.")] = "postgresql",
    version: Annotated[str | None, typer.Option(help="Engine version (default: newest).")] = None,
    size_gb: Annotated[int, typer.Option("--size-gb", help="Data volume size in GB.")] = 1,
    database: Annotated[list[str] | None, typer.Option(help="Create this database.")] = None,
    user: Annotated[
        list[str] | None,
        typer.Option(help="NAME:PASSWORD; the user gets access to every --database."),
    ] = None,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Create a database instance on any flavor: the same database on any compute type."""
    databases = database or []
    with Client.from_home() as c, api_errors():
        accepted = c.db.create(
            name,
            flavor=flavor,
            datastore=datastore,
            version=version,
            size_gb=size_gb,
            databases=databases,
            users=[_user_spec(u, databases) for u in user or []],
        )
        _finish(c, accepted, wait, output)


@db_app.command("list")
def db_list(output: Format = OutputOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.db.list(), output, DB_COLUMNS)


@db_app.command("show")
def db_show(name: str, output: Format = OutputOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(
            c.db.get(name),
            output,
            ("id", *DB_COLUMNS, "size_gb", "status_message", "health_message"),
        )


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
def database_list(name: str, output: Format = OutputOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.db.list_databases(name), output, ("name",))


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
def user_list(name: str, output: Format = OutputOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.db.list_users(name), output, ("name", "databases"))


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
    with Client.from_home() as c, api_errors():
        emit(c.db.datastores(), output, ("name", "versions"))

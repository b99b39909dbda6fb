"""`onep db config`: configuration groups, engine parameters attached to database instances."""

from __future__ import annotations

from typing import Annotated

import typer

from oneplatform.cli.output import Format, OutputOpt, WideOpt, api_errors, console, emit, fail
from oneplatform.schemas.databases import DbInstanceOut
from oneplatform.sdk.client import Client

config_app = typer.Typer(
    help="Configuration groups: engine parameters (checked against the engine's own catalog) "
    "that database instances run with.",
    no_args_is_help=True,
)
LIST_COLUMNS = ("name", "datastore", "version", "values", "instances", "description")
SHOW_COLUMNS = (
    "id",
    "name",
    "description",
    "datastore",
    "version",
    "values",
    "instances",
    "created_at",
    "updated_at",
)
PARAMETER_COLUMNS = ("name", "type", "restart_required", "unit", "min", "max", "values", "default")
DB_COLUMNS = ("name", "status", "configuration", "restart_required")

SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="NAME=VALUE, e.g. max_connections=200 or work_mem=8MB (repeat)."),
]


def parse_sets(raw: list[str] | None) -> dict[str, str]:
    """``NAME=VALUE`` pairs as a mapping (the server checks names and values)."""
    values: dict[str, str] = {}
    for item in raw or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise fail(f"--set takes NAME=VALUE, got {item!r}")
        values[name.strip()] = value.strip()
    return values


@config_app.command("create")
def config_create(
    name: str,
    datastore: Annotated[str, typer.Option(help="Engine.")] = "postgresql",
    version: Annotated[
        str | None, typer.Option(help="Engine version (default: the newest).")
    ] = None,
    set_: SetOpt = None,
    description: Annotated[str, typer.Option(help="What the group is for.")] = "",
    output: Format = OutputOpt,
) -> None:
    """Create a configuration group; its values are checked against the engine's catalog."""
    with Client.from_home() as c, api_errors():
        group = c.configurations.create(
            name,
            parse_sets(set_),
            datastore=datastore,
            version=version,
            description=description,
        )
        emit(group, output, SHOW_COLUMNS)


@config_app.command("list")
def config_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    """The project's configuration groups."""
    with Client.from_home() as c, api_errors():
        emit(c.configurations.list(), output, LIST_COLUMNS, wide)


@config_app.command("show")
def config_show(name: str, output: Format = OutputOpt) -> None:
    """One configuration group: its values and the database instances using it."""
    with Client.from_home() as c, api_errors():
        emit(c.configurations.get(name), output, SHOW_COLUMNS)


@config_app.command("update")
def config_update(
    name: str,
    set_: SetOpt = None,
    unset: Annotated[
        list[str] | None, typer.Option(help="Take this parameter out of the group (repeat).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="A new description.")] = None,
    output: Format = OutputOpt,
) -> None:
    """Change a group's values; every database instance using it gets them at once."""
    with Client.from_home() as c, api_errors():
        group = c.configurations.update(
            name, values=parse_sets(set_), unset=unset or [], description=description
        )
        emit(group, output, SHOW_COLUMNS)
        _restart_hint(c, [i.name for i in group.instances if i.restart_required], output)


@config_app.command("delete")
def config_delete(name: str) -> None:
    """Delete a configuration group (refused while a database instance uses it)."""
    with Client.from_home() as c, api_errors():
        c.configurations.delete(name)
        console.print(f"deleted configuration group {name}")


@config_app.command("attach")
def config_attach(db: str, configuration: str, output: Format = OutputOpt) -> None:
    """Attach a configuration group to database instance DB and apply it at once."""
    with Client.from_home() as c, api_errors():
        out = c.configurations.attach(db, configuration)
        _emit_db(out, output)


@config_app.command("detach")
def config_detach(db: str, output: Format = OutputOpt) -> None:
    """Detach its configuration group from database instance DB (back to the platform's
    settings)."""
    with Client.from_home() as c, api_errors():
        _emit_db(c.configurations.detach(db), output)


@config_app.command("parameters")
def config_parameters(
    datastore: Annotated[str, typer.Option(help="Engine.")] = "postgresql",
    version: Annotated[
        str | None, typer.Option(help="Engine version (default: the newest).")
    ] = None,
    output: Format = OutputOpt,
    wide: bool = WideOpt,
) -> None:
    """What a configuration group of this engine version may set (from the engine's own
    catalog); restart_required: it takes effect at the engine's next restart."""
    with Client.from_home() as c, api_errors():
        if version is None:
            known = {d.name: d for d in c.db.datastores()}
            if datastore not in known:
                raise fail(f"no datastore {datastore!r} (known: {', '.join(sorted(known))})")
            version = next(v.version for v in known[datastore].versions if v.default)
        emit(c.configurations.parameters(datastore, version), output, PARAMETER_COLUMNS, wide)


def _emit_db(db: DbInstanceOut, output: Format) -> None:
    emit(db, output, DB_COLUMNS)
    if output is Format.table and db.restart_required:
        console.print(f"\nsome values take effect at the next restart: onep db restart {db.name}")


def _restart_hint(c: Client, names: list[str], output: Format) -> None:
    if output is Format.table and names:
        console.print(
            f"\nwaiting for a restart: {', '.join(names)} (onep db restart NAME)", highlight=False
        )

"""`onep warm`: warm capacity (admin)."""

from __future__ import annotations

from typing import Annotated

import typer

from oneplatform.cli.output import Format, OutputOpt, WideOpt, api_errors, emit
from oneplatform.schemas.warm import WarmSet
from oneplatform.sdk.client import Client

warm_app = typer.Typer(
    help="Warm capacity: database instances kept ready, claimed by matching creates (admin).",
    no_args_is_help=True,
)
WARM_COLUMNS = (
    "flavor",
    "datastore",
    "version",
    "size_gb",
    "target",
    "ready",
    "building",
    "claimed",
    "message",
)


@warm_app.command("set")
def warm_set(
    flavor: str,
    count: Annotated[int, typer.Option(help="How many to keep ready; 0 drains them.")],
    datastore: Annotated[str, typer.Option(help="Datastore")] = "postgresql",
    version: Annotated[
        str | None, typer.Option(help="Version (the default one if omitted)")
    ] = None,
    size_gb: Annotated[
        int, typer.Option(help="Their data volume; `db create --size-gb` of it claims them")
    ] = 1,
    output: Format = OutputOpt,
) -> None:
    """Keep COUNT database instances of FLAVOR ready; `onep db create` with that flavor,
    version and size takes one (fresh credentials, its own secrets) instead of building."""
    body = WarmSet(
        flavor=flavor, datastore=datastore, version=version, count=count, size_gb=size_gb
    )
    with Client.from_home() as c, api_errors():
        emit(c.warm.set(body), output, WARM_COLUMNS)


@warm_app.command("list")
def warm_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    """Warm capacity per flavor and version: target, ready, building, claimed so far."""
    with Client.from_home() as c, api_errors():
        emit(c.warm.list(), output, WARM_COLUMNS, wide)

"""`onep quota`: per-project limits and what each project uses."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import BaseModel

from oneplatform.cli.output import Format, OutputOpt, api_errors, emit, fail
from oneplatform.schemas.quotas import QuotaOut
from oneplatform.sdk.client import Client

quota_app = typer.Typer(
    help="Quotas: what a project may hold (set by an admin) and what it uses.",
    no_args_is_help=True,
)
UNLIMITED = "unlimited"
LimitOpt = Annotated[
    str | None,
    typer.Option(metavar="N|unlimited", show_default=False),
]


class QuotaRow(BaseModel):
    resource: str
    limit: str
    used: int


def _limit(option: str, text: str) -> int | None:
    if text == UNLIMITED:
        return None
    if not text.isdigit():
        raise fail(f"{option} takes a number or {UNLIMITED!r}, not {text!r}", code=2)
    return int(text)


def _show(quota: QuotaOut, output: Format) -> None:
    if output is Format.json:
        emit(quota, output, ())
        return
    rows = [
        QuotaRow(
            resource=name,
            limit=UNLIMITED if usage.limit is None else str(usage.limit),
            used=usage.used,
        )
        for name, usage in quota.quota.items()
    ]
    emit(rows, output, ("resource", "limit", "used"))


@quota_app.command("show")
def quota_show(
    project: Annotated[
        str | None, typer.Argument(help="A project's name (admin); default: your own.")
    ] = None,
    output: Format = OutputOpt,
) -> None:
    """A project's limits beside what it uses now."""
    with Client.from_home() as c, api_errors():
        _show(c.projects.quota(project), output)


@quota_app.command("set")
def quota_set(
    project: Annotated[str, typer.Argument(help="The project's name.")],
    databases: LimitOpt = None,
    vcpus: LimitOpt = None,
    ram_mb: LimitOpt = None,
    storage_gb: LimitOpt = None,
    backups: LimitOpt = None,
    output: Format = OutputOpt,
) -> None:
    """Set PROJECT's limits (admin): database instances, vCPUs and RAM (MiB) of all its
    instances (replicas too), storage in GB (flavor disks plus data volumes), kept backups.
    A limit not given keeps its value; `unlimited` lifts it. Creates, replicas, moves,
    restores, resizes, storage growth and backups over a limit are refused (403
    quota_exceeded)."""
    given = {
        "databases": databases,
        "vcpus": vcpus,
        "ram_mb": ram_mb,
        "storage_gb": storage_gb,
        "backups": backups,
    }
    limits = {
        name: _limit("--" + name.replace("_", "-"), text)
        for name, text in given.items()
        if text is not None
    }
    if not limits:
        raise fail("name at least one limit, e.g. --databases 5", code=2)
    with Client.from_home() as c, api_errors():
        _show(c.projects.set_quota(project, **limits), output)

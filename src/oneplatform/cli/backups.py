"""`onep db backup`: backups of database instances, their schedules and retention."""

from __future__ import annotations

import re
from typing import Annotated

import typer

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
from oneplatform.schemas.backups import BackupAccepted
from oneplatform.schemas.operations import Intent
from oneplatform.sdk.client import Client, OperationFailed

backup_app = typer.Typer(
    help="Backups of a database instance: take, list, show, delete; schedules and retention.",
    no_args_is_help=True,
)
BACKUP_COLUMNS = (
    "name",
    "database",
    "type",
    "status",
    "parent",
    "size_bytes",
    "finished_at",
)
SHOW_COLUMNS = (
    "id",
    "name",
    "database",
    "type",
    "status",
    "parent",
    "size_bytes",
    "repo_size_bytes",
    "started_at",
    "finished_at",
    "wal_start",
    "wal_stop",
    "scheduled",
    "status_message",
)
SCHEDULE_COLUMNS = (
    "database",
    "every_seconds",
    "full_every_seconds",
    "keep_days",
    "next_run_at",
    "message",
)
WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="Wait until the work is done.")]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(raw: str) -> int:
    """``90s``, ``30m``, ``1h``, ``1d`` (or a number of seconds) in seconds."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", raw)
    if match is None:
        raise fail(f"a duration is a number with s, m, h or d (e.g. 1h), got {raw!r}")
    return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def _finish(c: Client, accepted: BackupAccepted, wait: bool, fmt: Format) -> None:
    op, backup = accepted.operation, accepted.backup
    if wait:
        try:
            wait_with_progress(c, op, quiet=False, timeout=6 * 3600)
        except OperationFailed as failed:
            raise fail(
                f"{failed.operation.kind} failed: {failed.message} [{failed.code}] "
                f"(operation {op.id})"
            ) from None
        if op.intent is Intent.DELETE:  # gone: what is left to show is the operation
            if fmt is Format.json:
                emit(c.operations.get(op.id), fmt, ())
            else:
                console.print(f"deleted {backup.name}")
            return
        backup = c.db.get_backup(backup.id)
    elif fmt is Format.table:
        console.print(f"{op.kind} accepted: operation {op.id}  (onep operation show {op.id})")
    emit(backup, fmt, SHOW_COLUMNS)


@backup_app.command("create")
def backup_create(
    name: str,
    type: Annotated[str, typer.Option("--type", help="full, diff or incr.")] = "full",
    backup_name: Annotated[
        str | None, typer.Option("--name", help="The backup's name (generated if omitted).")
    ] = None,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Back up database instance NAME into its repository."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.db.create_backup(name, type, backup_name), wait, output)


@backup_app.command("list")
def backup_list(
    database: Annotated[
        str | None, typer.Option(help="Only this database instance's (deleted or not).")
    ] = None,
    output: Format = OutputOpt,
    wide: bool = WideOpt,
) -> None:
    """The project's backups; they outlive their database instance."""
    with Client.from_home() as c, api_errors():
        emit(c.db.list_backups(database), output, BACKUP_COLUMNS, wide)


@backup_app.command("show")
def backup_show(backup: str, output: Format = OutputOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.db.get_backup(backup), output, SHOW_COLUMNS)


@backup_app.command("delete")
def backup_delete(backup: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    """Expire BACKUP in its repository (refused while later backups depend on it)."""
    with Client.from_home() as c, api_errors():
        _finish(c, c.db.delete_backup(backup), wait, output)


@backup_app.command("schedule")
def backup_schedule(
    name: str,
    every: Annotated[str | None, typer.Option(help="How often: 30m, 1h, 1d ...")] = None,
    full_every: Annotated[
        str | None, typer.Option(help="A full backup this often; incremental ones between.")
    ] = None,
    keep_days: Annotated[
        float | None, typer.Option(help="Days of recovery window to keep (retention).")
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="Stop scheduled backups.")] = False,
    output: Format = OutputOpt,
) -> None:
    """Back NAME up on a schedule and keep --keep-days of recovery window; --off stops it;
    with no option, show the schedule and its next run."""
    with Client.from_home() as c, api_errors():
        if off:
            c.db.delete_schedule(name)
            console.print(f"scheduled backups of {name} stopped; its backups stay")
            return
        if every is None and keep_days is None and full_every is None:
            emit(c.db.get_schedule(name), output, SCHEDULE_COLUMNS)
            return
        if every is None or keep_days is None:
            raise fail("a schedule needs --every and --keep-days")
        schedule = c.db.set_schedule(
            name,
            every_seconds=seconds(every),
            keep_days=keep_days,
            full_every_seconds=seconds(full_every) if full_every else None,
        )
        emit(schedule, output, SCHEDULE_COLUMNS)

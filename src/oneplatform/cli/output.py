"""Printing: tables for people, JSON for scripts, progress bars for long work."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from oneplatform.schemas.operations import OperationOut
from oneplatform.sdk.client import ApiError, Client

console = Console()
errors = Console(stderr=True)


class Format(enum.StrEnum):
    table = "table"
    json = "json"


OutputOpt = typer.Option(Format.table, "--output", "-o", help="table or json")


WideOpt = typer.Option(
    False, "--wide", help="Show every column (long values wrap instead of columns being left out)."
)
CELL_PADDING = 3  # a cell's border and its padding on both sides


def emit(
    data: BaseModel | Sequence[BaseModel],
    fmt: Format,
    columns: Sequence[str],
    wide: bool = False,
) -> None:
    """Print one model or a list of them, as JSON or for people.

    One model is a list of its fields. A list is a table of ``columns``, most important
    first: the columns that do not fit the terminal are left out (``wide`` keeps them all),
    and a value is never cut short (it wraps).
    """
    if fmt is Format.json:
        if isinstance(data, BaseModel):
            payload: Any = data.model_dump(mode="json")
        else:
            payload = [d.model_dump(mode="json") for d in data]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    if isinstance(data, BaseModel):
        _record(data.model_dump(mode="json"), columns)
        return
    rows = [[_cell(row.model_dump(mode="json").get(c)) for c in columns] for row in data]
    shown = len(columns) if wide else fitting(columns, rows, console.width)
    table = Table(*(Column(c, overflow="fold") for c in columns[:shown]))
    for row in rows:
        table.add_row(*row[:shown])
    console.print(table)
    if shown < len(columns):
        hidden = ", ".join(columns[shown:])
        errors.print(f"[dim]not shown to fit {console.width} columns: {hidden} (--wide)[/dim]")


def fitting(columns: Sequence[str], rows: Sequence[Sequence[str]], width: int) -> int:
    """How many of ``columns`` (in order) fit ``width`` at their widest value; at least one."""
    used, count = 1, 0
    for i, name in enumerate(columns):
        need = max([len(name), *(len(r[i]) for r in rows)]) + CELL_PADDING
        if count and used + need > width:
            break
        used, count = used + need, count + 1
    return count


def _record(fields: dict[str, Any], columns: Sequence[str]) -> None:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for name in columns:
        table.add_row(name, _cell(fields.get(name)))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        if value and isinstance(value[0], dict) and "port" in value[0]:
            return ", ".join(f"{v['name']}={v['host']}:{v['port']}" for v in value)
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(code)


@contextmanager
def api_errors() -> Iterator[None]:
    try:
        yield
    except ApiError as err:
        raise fail(f"{err.message} [{err.code}]") from None


def wait_with_progress(
    client: Client, op: OperationOut, quiet: bool, timeout: float = 1800.0
) -> OperationOut:
    """Wait for an operation, drawing a bar from its steps (on stderr, so -o json stays clean)."""
    if quiet:
        return client.operations.wait(op.id, timeout=timeout)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.fields[step]}"),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    ) as progress:
        task = progress.add_task(op.kind, total=len(op.steps) or 1, step="")

        def update(current: OperationOut) -> None:
            done = sum(1 for s in current.steps if s.status == "done")
            running = next((s for s in current.steps if s.status == "running"), None)
            label = f"{running.name}: {running.message}"[:60] if running else ""
            progress.update(task, completed=done, step=label)

        return client.operations.wait(op.id, timeout=timeout, on_progress=update)

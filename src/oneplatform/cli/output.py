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
from rich.table import Table

from oneplatform.schemas.operations import OperationOut
from oneplatform.sdk.client import ApiError, Client

console = Console()
errors = Console(stderr=True)


class Format(enum.StrEnum):
    table = "table"
    json = "json"


OutputOpt = typer.Option(Format.table, "--output", "-o", help="table or json")


def emit(data: BaseModel | Sequence[BaseModel], fmt: Format, columns: Sequence[str]) -> None:
    """Print one model or a list of them, as JSON or as a table of ``columns``."""
    if fmt is Format.json:
        if isinstance(data, BaseModel):
            payload: Any = data.model_dump(mode="json")
        else:
            payload = [d.model_dump(mode="json") for d in data]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    rows = [data] if isinstance(data, BaseModel) else list(data)
    table = Table(*columns, show_lines=False)
    for row in rows:
        dumped = row.model_dump(mode="json")
        table.add_row(*(_cell(dumped.get(c)) for c in columns))
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

"""Tables fit the reader's terminal: columns are left out, values are never cut short."""

from __future__ import annotations

import pytest
from rich.console import Console

from oneplatform.cli import output
from oneplatform.cli.db import client_argv
from oneplatform.schemas.base import Response


class Row(Response):
    name: str
    status: str
    datastore: str
    flavor: str
    endpoint: str
    compute_type: str


ROWS = [
    Row(
        name="orders-reporting-replica-eu-west",
        status="ACTIVE",
        datastore="postgresql",
        flavor="baremetal.small",
        endpoint="127.0.0.1:23010",
        compute_type="baremetal",
    ),
    Row(
        name="pg1",
        status="BUILD",
        datastore="postgresql",
        flavor="container.small",
        endpoint="127.0.0.1:20001",
        compute_type="container",
    ),
]
COLUMNS = ("name", "status", "datastore", "flavor", "endpoint", "compute_type")


def _render(monkeypatch: pytest.MonkeyPatch, width: int, wide: bool = False) -> tuple[str, str]:
    out, err = Console(width=width, record=True), Console(width=width, record=True)
    monkeypatch.setattr(output, "console", out)
    monkeypatch.setattr(output, "errors", err)
    output.emit(ROWS, output.Format.table, COLUMNS, wide=wide)
    return out.export_text(), err.export_text()


def test_an_80_column_terminal_gets_whole_values_and_fewer_columns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text, note = _render(monkeypatch, 80)
    assert "…" not in text
    for value in ("orders-reporting-replica-eu-west", "postgresql", "baremetal.small"):
        assert value in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "compute_type" not in text and "compute_type" in note and "--wide" in note


def test_wide_shows_every_column_and_wraps(monkeypatch: pytest.MonkeyPatch) -> None:
    text, note = _render(monkeypatch, 80, wide=True)
    assert "…" not in text and note == ""
    assert "compute_t" in text  # the header is there, wrapped if need be
    assert all(len(line) <= 80 for line in text.splitlines())


def test_a_wide_terminal_shows_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    text, note = _render(monkeypatch, 200)
    assert note == "" and "compute_type" in text and "baremetal" in text


def test_fitting_keeps_at_least_the_first_column() -> None:
    assert output.fitting(("name", "status"), [["x" * 500, "ok"]], 80) == 1
    assert output.fitting(("name", "status"), [["a", "ok"]], 80) == 2


@pytest.mark.parametrize(
    ("uri", "argv"),
    [
        (
            "postgresql://alice@127.0.0.1:20001/appdb",
            ["psql", "postgresql://alice@127.0.0.1:20001/appdb"],
        ),
        (
            "mysql://alice@127.0.0.1:20003/appdb",
            ["mariadb", "-h", "127.0.0.1", "-P", "20003", "-u", "alice", "appdb"],
        ),
        ("mysql://admin@[::1]:20005/", ["mariadb", "-h", "::1", "-P", "20005", "-u", "admin"]),
        (
            "redis://admin@127.0.0.1:20007",
            ["redis-cli", "-h", "127.0.0.1", "-p", "20007", "--user", "admin"],
        ),
    ],
)
def test_db_connect_opens_each_engines_own_client(uri: str, argv: list[str]) -> None:
    assert client_argv(uri) == argv

"""Generate a datastore version's parameter catalog from the engine itself.

PostgreSQL: a throw-away cluster (initdb, a server on a Unix socket only) answers
``pg_settings``; MariaDB: a throw-away server (no network, no grant tables) answers
``information_schema.SYSTEM_VARIABLES``; Redis: a throw-away server (no TCP port) answers
``CONFIG GET *``, and ``CONFIG SET`` of each parameter to its own value says whether it can
change while the server runs. Nothing of the platform is started; the engines' own
binaries run as their own users in a temporary directory that is removed afterwards.

``python -m oneplatform.dbaas.catalog_gen postgresql 15 > catalogs/postgresql-15.json``
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PG_BIN = "/usr/lib/postgresql/{version}/bin"
# A setting's ``context`` in pg_settings: postmaster ones take effect at a restart only;
# internal ones cannot be set at all (left out).
PG_RESTART_CONTEXTS = frozenset({"postmaster"})
PG_QUERY = (
    "COPY (SELECT name, vartype, coalesce(unit, ''), coalesce(min_val, ''), "
    "coalesce(max_val, ''), coalesce(array_to_string(enumvals, ','), ''), context, "
    "coalesce(boot_val, '') FROM pg_catalog.pg_settings WHERE context <> 'internal' "
    "ORDER BY name) TO STDOUT WITH (FORMAT csv)"
)


def _run_as(user: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True, **kwargs)


@contextlib.contextmanager
def _scratch(user: str) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="onep-catalog-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, user, user)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _number(text: str) -> int | float | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def postgresql(version: str) -> list[dict[str, Any]]:
    """Every settable parameter of PostgreSQL ``version``, as pg_settings describes it."""
    import csv

    bin_dir = PG_BIN.format(version=version)
    with _scratch("postgres") as root:
        data = root / "data"
        _run_as("postgres", [f"{bin_dir}/initdb", "-D", str(data), "-A", "peer", "--no-sync"])
        server = subprocess.Popen(
            [
                *(["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []),
                f"{bin_dir}/postgres",
                "-D",
                str(data),
                "-c",
                "listen_addresses=",
                "-c",
                f"unix_socket_directories={root}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            out = _query_pg(bin_dir, root)
        finally:
            server.terminate()
            server.wait(30)
    rows = []
    for name, vartype, unit, lo, hi, enums, context, default in csv.reader(out.splitlines()):
        entry: dict[str, Any] = {"name": name, "type": vartype}
        if unit:
            entry["unit"] = unit
        if vartype in ("integer", "real"):
            entry["min"], entry["max"] = _number(lo), _number(hi)
        if vartype == "enum":
            entry["values"] = enums.split(",") if enums else []
        entry["restart"] = context in PG_RESTART_CONTEXTS
        entry["default"] = default
        rows.append(entry)
    return rows


def _query_pg(bin_dir: str, socket_dir: Path) -> str:
    for _ in range(300):
        try:
            return _run_as(
                "postgres",
                [f"{bin_dir}/psql", "-h", str(socket_dir), "-d", "postgres", "-XAtc", PG_QUERY],
            ).stdout
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    raise RuntimeError("the throw-away PostgreSQL server did not answer")


GENERATORS = {"postgresql": postgresql}


def generate(datastore: str, version: str) -> dict[str, Any]:
    """The catalog document of ``datastore`` ``version``, from its engine."""
    return {
        "datastore": datastore,
        "version": version,
        "generated_by": "python -m oneplatform.dbaas.catalog_gen",
        "parameters": GENERATORS[datastore](version),
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in GENERATORS:
        print(f"usage: catalog_gen {{{','.join(GENERATORS)}}} VERSION", file=sys.stderr)
        return 2
    json.dump(generate(argv[0], argv[1]), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

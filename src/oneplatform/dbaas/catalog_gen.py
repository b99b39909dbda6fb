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
import re
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


MARIADB_QUERY = (
    "SELECT LOWER(VARIABLE_NAME), VARIABLE_TYPE, IFNULL(NUMERIC_MIN_VALUE, ''), "
    "IFNULL(NUMERIC_MAX_VALUE, ''), IFNULL(NUMERIC_BLOCK_SIZE, ''), "
    "IFNULL(ENUM_VALUE_LIST, ''), READ_ONLY, IFNULL(DEFAULT_VALUE, '') "
    "FROM information_schema.SYSTEM_VARIABLES WHERE VARIABLE_SCOPE <> 'SESSION ONLY' "
    "ORDER BY 1"
)
# SYSTEM_VARIABLES.VARIABLE_TYPE -> the catalog's type
MARIADB_TYPES = {
    "BIGINT": "integer",
    "BIGINT UNSIGNED": "integer",
    "INT": "integer",
    "INT UNSIGNED": "integer",
    "DOUBLE": "real",
    "BOOLEAN": "bool",
    "ENUM": "enum",
    "SET": "set",
    "FLAGSET": "flagset",
    "VARCHAR": "string",
}


def mariadb(version: str) -> list[dict[str, Any]]:
    """Every variable of the MariaDB server on this machine (``version`` must be its own)
    that an option file can set (the server's ``--verbose --help`` lists it), as
    information_schema.SYSTEM_VARIABLES describes it; a READ_ONLY one changes only at a
    restart."""
    with _scratch("mysql") as root:
        (root / "data").mkdir()
        if os.geteuid() == 0:
            shutil.chown(root / "data", "mysql", "mysql")
        argv = [
            *(["runuser", "-u", "mysql", "--"] if os.geteuid() == 0 else []),
            "mariadbd", "--no-defaults", f"--datadir={root / 'data'}",
            f"--socket={root / 'sock'}", f"--pid-file={root / 'pid'}", "--skip-networking",
            "--skip-grant-tables", "--innodb-buffer-pool-size=16M",
        ]  # fmt: skip
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            out = _query_mariadb(root / "sock", version)
        finally:
            server.terminate()
            server.wait(60)
    options = _mariadb_options()
    rows = []
    for line in out.splitlines():
        name, vartype, lo, hi, block, enums, read_only, default = line.split("\t")
        if name not in options:
            continue  # an option file cannot set it
        kind = MARIADB_TYPES[vartype]
        if kind == "enum" and not enums:
            kind = "string"  # e.g. character sets: the server's own list
        entry: dict[str, Any] = {"name": name, "type": kind}
        if kind in ("integer", "real"):
            entry["min"], entry["max"] = _number(lo), _number(hi)
            if kind == "integer" and block and int(block) > 1:
                entry["block"] = int(block)
        if kind in ("enum", "set", "flagset"):
            entry["values"] = [v for v in enums.split(",") if v]
        entry["restart"] = read_only == "YES"
        entry["default"] = default
        rows.append(entry)
    return rows


def _mariadb_options() -> set[str]:
    """The variables an option file sets: the server's own ``--verbose --help`` list."""
    prefix = ["runuser", "-u", "mysql", "--"] if os.geteuid() == 0 else []
    text = subprocess.run(
        [*prefix, "mariadbd", "--no-defaults", "--verbose", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names: set[str] = set()
    listing = False
    for line in text.splitlines():
        if line.startswith("Variables (--variable-name=value)"):
            listing = True
        elif listing and line.strip() and not line.startswith("-"):
            names.add(line.split()[0].replace("-", "_"))
        elif listing and names and not line.strip():
            break
    return names


def _query_mariadb(socket: Path, version: str) -> str:
    argv = ["mariadb", "--no-defaults", f"--socket={socket}", "-N", "-B", "-e"]
    for _ in range(300):
        try:
            found = subprocess.run(
                [*argv, "SELECT VERSION()"], check=True, capture_output=True, text=True
            ).stdout.strip()
            break
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    else:
        raise RuntimeError("the throw-away MariaDB server did not answer")
    if not found.startswith(version + "."):
        raise RuntimeError(f"this machine's MariaDB is {found}, not {version}")
    return subprocess.run([*argv, MARIADB_QUERY], check=True, capture_output=True, text=True).stdout


# What CONFIG SET answers a probe with tells the parameter's type and range.
_REDIS_ENUM = re.compile(r"must be one of the following: (.*)$")
_REDIS_RANGE = re.compile(r"must be between (-?\d+) and (-?\d+) inclusive")


def redis(version: str) -> list[dict[str, Any]]:
    """Every parameter of the Redis server on this machine (``version`` must be its own):
    ``CONFIG GET *`` names them; ``CONFIG SET`` of probes says how each is typed (its error
    names the type, the range or the allowed words) and whether it changes at run time
    (an immutable one: only at a restart). Each is set back to its value after a probe."""
    with _scratch("redis") as root:
        argv = [
            *(["runuser", "-u", "redis", "--"] if os.geteuid() == 0 else []),
            "redis-server", "--port", "0", "--unixsocket", str(root / "sock"),
            "--dir", str(root), "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rows = _probe_redis(root / "sock", version)
        finally:
            server.terminate()
            server.wait(30)
    return rows


def _redis(socket: Path, *args: str) -> str:
    out = subprocess.run(
        ["redis-cli", "-s", str(socket), *args], capture_output=True, text=True, check=True
    )
    return out.stdout.rstrip("\n")


def _probe_redis(socket: Path, version: str) -> list[dict[str, Any]]:
    for _ in range(300):
        try:
            info = _redis(socket, "INFO", "server")
            break
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    else:
        raise RuntimeError("the throw-away Redis server did not answer")
    found = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("redis_version:"))  # fmt: skip
    if not found.startswith(version + "."):
        raise RuntimeError(f"this machine's Redis is {found}, not {version}")
    # --no-raw: each reply line is N) "quoted", so an empty value or a space survives
    lines = [json.loads(line.split(") ", 1)[1]) for line in
             _redis(socket, "--no-raw", "CONFIG", "GET", "*").splitlines()]  # fmt: skip
    current = dict(zip(lines[0::2], lines[1::2], strict=True))
    return [_redis_parameter(socket, name, current[name]) for name in sorted(current)]


# Never probed: a probe of the password would lock the prober out (and the platform owns
# them: the parameters module refuses them).
_REDIS_UNPROBED = frozenset({"requirepass", "masterauth", "masteruser"})


def _redis_parameter(socket: Path, name: str, value: str) -> dict[str, Any]:
    # the throw-away server's own directory is nothing to keep
    value_shown = "" if str(socket.parent) in value else value
    if name in _REDIS_UNPROBED:
        return {"name": name, "restart": False, "default": value_shown, "type": "string"}
    answers = [_redis(socket, "CONFIG", "SET", name, probe) for probe in
               ("onep-probe", "99999999999999999999999", "-99999999999999999")]  # fmt: skip
    _redis(socket, "CONFIG", "SET", name, value)  # back to its value (a mutable one)
    entry: dict[str, Any] = {"name": name, "restart": False, "default": value_shown}
    first = answers[0]
    if "immutable config" in first or "protected config" in first:
        entry["restart"] = True
        entry["type"] = "bool" if value in ("yes", "no") else "string"
        if re.fullmatch(r"-?\d+", value):
            entry["type"] = "integer"
    elif "'yes' or 'no'" in first:
        entry["type"] = "bool"
    elif (enum := _REDIS_ENUM.search(first)) is not None:
        entry["type"], entry["values"] = "enum", enum.group(1).split(", ")
    elif "memory value" in first:
        entry["type"], entry["unit"], entry["min"] = "integer", "B", 0
    elif "parsed into an integer" in first:
        entry["type"] = "integer"
        for answer in answers[1:]:
            bounds = _REDIS_RANGE.search(answer)
            if bounds is not None:
                entry["min"], entry["max"] = int(bounds.group(1)), int(bounds.group(2))
    else:
        entry["type"] = "string"  # the engine checks its syntax (CONFIG SET) when applied
    return entry


GENERATORS = {"postgresql": postgresql, "mariadb": mariadb, "redis": redis}


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

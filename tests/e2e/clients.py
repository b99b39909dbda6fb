"""The engines' own command-line clients on a database's endpoint, as the tests use them:
``mariadb`` and ``redis-cli`` from the host's Debian packages, the password in the
environment (never on the command line)."""

from __future__ import annotations

import subprocess
from typing import Any


def mariadb(db: dict[str, Any], user: str, password: str, sql: str, database: str = "") -> str:
    """``sql`` through the database's endpoint with the mariadb client, as ``user``."""
    endpoint = db["endpoint"]
    argv = ["mariadb", "--no-defaults", "-h", endpoint["host"], "-P", str(endpoint["port"]),
            "-u", user, "--batch", "--skip-column-names", "-e", sql]  # fmt: skip
    out = subprocess.run(
        [*argv, *([database] if database else [])],
        env={"MYSQL_PWD": password, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if out.returncode != 0:
        raise AssertionError(out.stderr.strip())
    return out.stdout.strip()


def redis(db: dict[str, Any], user: str, password: str, *command: str) -> str:
    """``command`` through the database's endpoint with redis-cli, as ``user``."""
    endpoint = db["endpoint"]
    out = subprocess.run(
        ["redis-cli", "-e", "-h", endpoint["host"], "-p", str(endpoint["port"]),
         "--user", user, *command],
        env={"REDISCLI_AUTH": password, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if out.returncode != 0:
        raise AssertionError((out.stderr or out.stdout).strip())
    return out.stdout.strip()

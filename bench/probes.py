"""Logging in to each engine with its own client library, as an application would: the
create benchmarks' "first query". psycopg for PostgreSQL, PyMySQL for MariaDB, redis-py for
Redis. Every connection goes to 127.0.0.1, without TLS."""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
import pymysql
import redis

from bench.common import LOOPBACK, BenchError, now

CONNECT_TIMEOUT_S = 2  # libpq's minimum; the same for the others
# What a failed attempt says about the server (see first_query).
ANSWERING = ("auth", "starting")  # the engine speaks its protocol


def first_query(
    datastore: str, port: int, user: str | None, password: str | None, database: str | None
) -> str | None:
    """Log in as ``user`` (to ``database`` where the engine has databases) and run the
    engine's simplest query: None when it worked, else the kind of failure: ``refused``
    (nothing listens), ``closed`` (accepted, then dropped), ``starting`` (the engine is not
    ready yet), ``auth`` (it answers, but the user or database is not there yet), ``other``."""
    if datastore == "postgresql":
        return _postgres(port, user, password, database or "postgres")
    if datastore == "mariadb":
        return _mariadb(port, user, password, database)
    if datastore == "redis":
        return _redis(port, user, password)
    raise ValueError(f"no probe for the datastore {datastore!r}")


def wait_first_query(
    datastore: str, port: int, user: str | None, password: str | None, database: str | None,
    deadline: float, poll: float, answered: bool = False, check: Callable[[], None] = lambda: None,
) -> tuple[float, dict[str, float]]:  # fmt: skip
    """Poll :func:`first_query` every ``poll`` s until it works (or, with ``answered``, until
    the engine answers at all); returns when (``now()``) and when each other kind of answer
    was first seen. ``check`` raises to give up early."""
    first_seen: dict[str, float] = {}
    while True:
        outcome = first_query(datastore, port, user, password, database)
        t = now()
        if outcome is None or (answered and outcome in ANSWERING):
            return t, first_seen
        first_seen.setdefault(outcome, t)
        check()
        if t > deadline:
            raise BenchError(
                f"{user or 'nobody'}@{database or datastore} on {LOOPBACK}:{port}: no query "
                f"in time (last: {outcome}; seen: {', '.join(first_seen)})"
            )
        time.sleep(poll)


def _postgres(port: int, user: str | None, password: str | None, database: str) -> str | None:
    try:
        with psycopg.connect(
            host=LOOPBACK,
            port=port,
            dbname=database,
            user=user or "onep_bench",
            password=password or "",
            connect_timeout=CONNECT_TIMEOUT_S,
            sslmode="disable",
            gssencmode="disable",
            application_name="onep-bench",
        ) as conn:
            row = conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        text = str(exc).lower()
        if "connection refused" in text:
            return "refused"
        if "starting up" in text or "shutting down" in text or "not yet accepting" in text:
            return "starting"
        if "closed the connection" in text or "connection reset" in text or "eof" in text:
            return "closed"
        if any(
            s in text
            for s in (
                "password authentication",
                "no password supplied",
                "does not exist",
                "permission denied",
                "pg_hba",
            )
        ):
            return "auth"
        return "other"
    return None if row == (1,) else "other"


# MariaDB's client and server error codes (errmsg.h, mysqld_error.h).
_REFUSED = {2002, 2003}  # can't connect (socket / TCP)
_CLOSED = {2006, 2013}  # server gone / lost connection during the query or handshake
_AUTH = {1044, 1045, 1049, 1130}  # db access denied, access denied, unknown db, host denied


def _mariadb(port: int, user: str | None, password: str | None, database: str | None) -> str | None:
    try:
        conn = pymysql.connect(
            host=LOOPBACK,
            port=port,
            user=user or "onep_bench",
            password=password or "",
            database=database,
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=10,
        )
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                row = cursor.fetchone()
        finally:
            conn.close()
    except pymysql.MySQLError as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
        if code in _REFUSED:
            return "refused"
        if code in _CLOSED:
            return "closed"
        if code in _AUTH:
            return "auth"
        return "other"
    return None if row == (1,) else "other"


def _redis(port: int, user: str | None, password: str | None) -> str | None:
    client = redis.Redis(
        host=LOOPBACK,
        port=port,
        username=user,
        password=password,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=10,
    )
    try:
        answer = client.ping()
    except redis.exceptions.BusyLoadingError:
        return "starting"
    except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError):
        return "auth"
    except redis.exceptions.ResponseError as exc:  # NOAUTH, WRONGPASS, NOPERM
        text = str(exc).upper()
        return (
            "auth"
            if any(s in text for s in ("NOAUTH", "WRONGPASS", "NOPERM", "DENIED"))
            else "other"
        )
    except redis.exceptions.ConnectionError as exc:
        return "refused" if "refused" in str(exc).lower() else "closed"
    except redis.exceptions.RedisError:
        return "other"
    finally:
        client.close()
    return None if answer is True else "other"

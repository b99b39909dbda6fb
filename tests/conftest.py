"""Fixtures shared by every test: a migrated store on each backend, and settings.

``store`` runs each test on SQLite (a file under tmp_path) and on PostgreSQL (a database
of its own, created on the server ONEP_TEST_DATABASE_URL names and dropped afterwards).
Without ONEP_TEST_DATABASE_URL the PostgreSQL half is skipped, except under CI=true, where
a missing database fails the test: CI never skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

import oneplatform.assembly  # noqa: F401  (compute types, drivers and operation kinds)
from oneplatform.config import Settings
from oneplatform.store.db import Store

PG_URL_ENV = "ONEP_TEST_DATABASE_URL"
BACKENDS = ("sqlite", "postgres")


pytest_plugins = ["pytester"]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def libpq_uri(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as a libpq URI for psycopg."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend of this test run: "sqlite" or "postgres"."""
    return str(request.param)


def _pg_server() -> str:
    """The test PostgreSQL server's URL; skipped without it (failed under CI=true)."""
    server = os.environ.get(PG_URL_ENV)
    if not server:
        reason = f"{PG_URL_ENV} is not set (scripts/test-postgres.sh start; make test sets it)"
        if in_ci():
            pytest.fail(f"CI=true and PostgreSQL is missing: {reason}")
        pytest.skip(reason)
    return server


@contextmanager
def fresh_pg_database(prefix: str = "onep_t", template: str | None = None) -> Iterator[str]:
    """The SQLAlchemy URL of a new database on the test PostgreSQL server (empty, or a copy
    of the database ``template``), dropped afterwards; skipped without the server (failed
    under CI=true)."""
    server = _pg_server()
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(libpq_uri(server), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq_uri(server), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def store_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database of ``backend``, just for this test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    with fresh_pg_database() as url:
        yield url


@pytest.fixture(scope="session")
def migrated_stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Per backend, a store this test process migrated to head once (``Store.migrate``), made
    when first wanted: each test's ``store`` is a copy of it (a file copy; a PostgreSQL
    ``CREATE DATABASE … TEMPLATE``), not a migration of its own (a third of a second each)."""
    made: dict[str, str] = {}
    yield made
    if "postgres" in made:
        with psycopg.connect(libpq_uri(_pg_server()), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{made["postgres"]}" WITH (FORCE)')


def _migrated(backend: str, made: dict[str, str], factory: pytest.TempPathFactory) -> str:
    """The migrated store of ``backend``: its file (SQLite) or database name (PostgreSQL)."""
    if backend in made:
        return made[backend]
    if backend == "sqlite":
        path = factory.mktemp("migrated-store") / "store.db"
        url, made[backend] = f"sqlite:///{path}", str(path)
    else:
        server = _pg_server()
        name = f"onep_tpl_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(libpq_uri(server), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = make_url(server).set(database=name).render_as_string(hide_password=False)
        made[backend] = name
    s = Store(url)
    try:
        s.migrate()
    finally:
        s.dispose()  # a template has no session open when it is copied
    return made[backend]


@pytest.fixture
def store(
    backend: str,
    tmp_path: Path,
    migrated_stores: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Store]:
    """A Store migrated to head with Alembic, on SQLite and PostgreSQL: a copy of the
    process's ``migrated_stores`` one, this test's own."""
    migrated = _migrated(backend, migrated_stores, tmp_path_factory)
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            target = tmp_path / "store.db"
            shutil.copyfile(migrated, target)  # closed cleanly: no WAL beside it
            url = f"sqlite:///{target}"
        else:
            url = stack.enter_context(fresh_pg_database(template=migrated))
        s = Store(url)
        try:
            yield s
        finally:
            s.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for tests: state under tmp_path, short leases, fast polling."""
    return Settings(
        home=tmp_path,
        database_url=None,
        lease_seconds=1.0,
        worker_poll_seconds=0.05,
        image_cache=tmp_path / "images",
        bmlab_file=tmp_path / "no-bmlab.json",  # never this machine's lab
        deploy_host="10.95.0.1",  # what the fake nodes' ISOs name; nothing listens
        backups=False,  # no backup store here: the backup tests start one of their own
    )


# Integration and end-to-end tests run on two workers (`make test`: -n 2 --dist loadgroup):
# what uses the emulated bare-metal lab's nodes (the lab module and the Redfish and deploy
# tests) in one group, everything else in the other, each group in order on one worker.
# The two never share a fixed port, a port range or a lab node (tests/e2e/conftest.py).
LAB_TESTS = (
    "tests/e2e/test_three_compute_types.py",
    "tests/e2e/test_cluster_baremetal.py",
    "tests/integration/test_baremetal_image.py",
    "tests/integration/test_redfish.py",
)

# A bare-metal cluster end to end (a deploy, an import over SSH and a clean under TCG, and the
# lab's newer forwards): collected only when asked for, ONEP_E2E_BM_CLUSTER=1.
collect_ignore = (
    [] if os.environ.get("ONEP_E2E_BM_CLUSTER") == "1" else ["e2e/test_cluster_baremetal.py"]
)

# Modules that run on the lab's worker without its nodes, on the lab platform's ports (that
# worker runs one module at a time): they balance the two workers (the clusters' TCG nodes,
# the backup faults' waits). The scale-out test runs five processes of its own on ports of
# its own: a group of its own.
OWN_GROUPS = {
    "tests/e2e/test_clusters.py": "lab",
    "tests/e2e/test_backup_faults.py": "lab",
    "tests/e2e/test_scale_out.py": "scale",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    for item in items:
        where = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        if where.startswith(("tests/integration/", "tests/e2e/")):
            group = "lab" if where in LAB_TESTS else OWN_GROUPS.get(where, "rest")
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session: pytest.Session) -> None:
    """A worker whose groups xdist ignores (pytest-dev/pytest-xdist#1386: it marks them in
    the test ids, which a pytest 9.2 no longer lets it change) stops at once: its tests
    would otherwise run beside the other group's, on the same ports and lab nodes."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [
        i.nodeid
        for i in session.items
        if i.get_closest_marker("xdist_group") and "@" not in i.nodeid
    ]
    if lost:
        raise pytest.UsageError(
            f"--dist loadgroup ignores the xdist groups ({len(lost)} tests, e.g. {lost[0]}): "
            "this pytest-xdist does not work with this pytest (pyproject.toml pins it)"
        )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true, a skipped test is a failed test: CI must run everything for real."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"CI=true forbids skipping: {reason}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Per xdist group, the seconds its tests took (setup, call and teardown): the groups run
    side by side, so the longest is the run's length; balance them by it."""
    spent: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            nodeid = getattr(report, "nodeid", "")
            group = nodeid.rpartition("@")[2] if "@" in nodeid else ""
            # xdist's suffix is a bare name ("…@lab"); an "@" inside parameters is not one
            if group.isidentifier() and isinstance(getattr(report, "duration", None), float):
                spent[group] = spent.get(group, 0.0) + report.duration
    if spent:
        line = ", ".join(f"{g} {s / 60:.1f} min" for g, s in sorted(spent.items()))
        terminalreporter.write_line(f"time per test group: {line}")

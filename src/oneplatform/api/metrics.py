"""``GET /metrics``: the platform in Prometheus's text format (prometheus-client), for an admin
token (Prometheus sends it as a bearer token: ``authorization: {credentials: ...}``).

Two kinds of figures. The API's own requests and their latency are counted as they are
served (in this process). Everything else is read from the store at each scrape, so every
process of the platform answers the same and nothing is lost at a restart: operations by kind
and status and the duration of finished ones, hosts' capacity and use, databases by
datastore, compute type, status and health, each database's last backup age and recovery
window, and the compute repairs done.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from oneplatform.api.gate import App, Message, Receive, Scope, Send
from oneplatform.compute.scheduler import host_states
from oneplatform.dbaas.backups import window
from oneplatform.dbaas.datastores import get_datastore
from oneplatform.store.db import Store
from oneplatform.store.models import (
    Backup,
    DbInstance,
    Event,
    Instance,
    Operation,
    utcnow,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_FINISHED = ("SUCCEEDED", "FAILED")


class ApiMetrics:
    """The API's requests, by route template (never the raw path: ids would make series
    without end), method and status; and their latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "onep_api_requests",
            "API requests served, by route, method and status code.",
            ("route", "method", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "onep_api_request_duration_seconds",
            "How long the API took to answer, by route and method.",
            ("route", "method"),
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)


class StoreCollector(Collector):
    """What the store says, read at each scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterator[Any]:
        """Nothing up front: registering must not read the store (it may not be up yet)."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        now = utcnow()
        with self.store.session() as session:
            yield from _operations(session)
            yield from _hosts(session)
            yield from _databases(session, now)
            repairs = GaugeMetricFamily(
                "onep_compute_repairs",
                "Compute instances the reconciler set out to repair (since the store began).",
            )
            repairs.add_metric(
                [],
                session.scalar(
                    select(func.count(Event.id)).where(
                        Event.resource_type == "instance", Event.to_status == "REPAIR"
                    )
                )
                or 0,
            )
            yield repairs


def _operations(session: Any) -> Iterator[Any]:
    by_status = GaugeMetricFamily(
        "onep_operations", "Operations in the store, by kind and status.", labels=("kind", "status")
    )
    for kind, status, count in session.execute(
        select(Operation.kind, Operation.status, func.count(Operation.id)).group_by(
            Operation.kind, Operation.status
        )
    ):
        by_status.add_metric([kind, status], count)
    yield by_status
    durations = SummaryMetricFamily(
        "onep_operation_duration_seconds",
        "How long finished operations took, from their creation to their end, by kind.",
        labels=("kind", "status"),
    )
    totals: dict[tuple[str, str], tuple[int, float]] = {}
    for kind, status, created, finished in session.execute(
        select(Operation.kind, Operation.status, Operation.created_at, Operation.finished_at).where(
            Operation.status.in_(_FINISHED), Operation.finished_at.is_not(None)
        )
    ):
        count, total = totals.get((kind, status), (0, 0.0))
        totals[(kind, status)] = (count + 1, total + max(0.0, (finished - created).total_seconds()))
    for (kind, status), (count, total) in sorted(totals.items()):
        durations.add_metric([kind, status], count, total)
    yield durations


def _hosts(session: Any) -> Iterator[Any]:
    labels = ("host", "pool", "compute_type", "resource")
    capacity = GaugeMetricFamily(
        "onep_host_capacity", "What a host offers (vCPUs after overcommit).", labels=labels
    )
    used = GaugeMetricFamily(
        "onep_host_used", "What the host's instances take of it.", labels=labels
    )
    for s in host_states(session, lock=False):
        h, p = s.host, s.pool
        offered = {
            "vcpus": h.vcpus * h.cpu_allocation_ratio,
            "ram_mb": h.ram_mb * h.ram_allocation_ratio,
            "disk_gb": h.disk_gb,
        }
        taken = {"vcpus": s.used_vcpus, "ram_mb": s.used_ram_mb, "disk_gb": s.used_disk_gb}
        for resource, value in offered.items():
            capacity.add_metric([h.name, p.name, p.compute_type, resource], float(value))
            used.add_metric([h.name, p.name, p.compute_type, resource], float(taken[resource]))
    yield capacity
    yield used


def _databases(session: Any, now: dt.datetime) -> Iterator[Any]:
    counts = GaugeMetricFamily(
        "onep_databases",
        "Live database instances by datastore, compute type, status and health.",
        labels=("datastore", "compute_type", "status", "health"),
    )
    age = GaugeMetricFamily(
        "onep_backup_age_seconds",
        "Seconds since the database's last completed backup ended.",
        labels=("project", "database"),
    )
    recovery = GaugeMetricFamily(
        "onep_recovery_window_seconds",
        "How far back the database can be restored to (its recovery window's length).",
        labels=("project", "database"),
    )
    grouped: dict[tuple[str, str, str, str], int] = {}
    engine = EngineFamilies()
    rows = session.execute(
        select(DbInstance, Instance.compute_type)
        .outerjoin(Instance, Instance.id == DbInstance.instance_id)
        .where(DbInstance.deleted_at.is_(None))
    )
    for db, compute_type in rows:
        key = (db.datastore, compute_type or "", db.status, db.health)
        grouped[key] = grouped.get(key, 0) + 1
        last = session.scalar(
            select(func.max(Backup.finished_at)).where(
                Backup.db_instance_id == db.id, Backup.status == "COMPLETED"
            )
        )
        if last is not None:
            age.add_metric([db.project_id, db.name], max(0.0, (now - last).total_seconds()))
        first, until = window(session, db)
        if first is not None and until is not None:
            recovery.add_metric([db.project_id, db.name], (until - first).total_seconds())
        if db.engine_stats:
            engine.add(db)
    for key, count in sorted(grouped.items()):
        counts.add_metric(list(key), count)
    yield counts
    yield age
    yield recovery
    yield from engine.families()


class EngineFamilies:
    """Each database's engine figures as the health checker last read them from its
    primary's agent, and each replica's lag behind it."""

    LABELS = ("project", "database", "datastore")

    def __init__(self) -> None:
        def gauge(name: str, text: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, labels=(*self.LABELS, *extra))

        self.connections = gauge("onep_db_connections", "Client connections to the engine.")
        self.transactions = CounterMetricFamily(
            "onep_db_transactions",
            "Transactions the engine counted (commits and rollbacks; Redis: commands).",
            labels=self.LABELS,
        )
        self.size = gauge("onep_db_size_bytes", "The engine's data (Redis: its dataset).")
        self.hit_ratio = gauge(
            "onep_db_cache_hit_ratio",
            "Reads served from the engine's memory, of all reads since it started.",
        )
        self.lags: dict[str, GaugeMetricFamily] = {}
        self.lag_seconds = gauge(
            "onep_db_replica_lag_seconds",
            "How long ago a replica's replayed position was the primary's (PostgreSQL).",
            ("replica",),
        )

    def add(self, db: DbInstance) -> None:
        stats = db.engine_stats or {}
        labels = [db.project_id, db.name, db.datastore]
        self.connections.add_metric(labels, stats.get("connections", 0))
        self.transactions.add_metric(labels, stats.get("transactions", 0))
        self.size.add_metric(labels, stats.get("size_bytes", 0))
        hits, misses = stats.get("cache_hits", 0), stats.get("cache_misses", 0)
        if hits + misses:
            self.hit_ratio.add_metric(labels, hits / (hits + misses))
        unit = get_datastore(db.datastore).position_unit
        for replica, lag in sorted((stats.get("replicas") or {}).items()):
            family = self.lags.get(unit)
            if family is None:
                family = self.lags[unit] = GaugeMetricFamily(
                    f"onep_db_replica_lag_{unit}",
                    f"How far a replica's replayed position is behind its primary's ({unit}).",
                    labels=(*self.LABELS, "replica"),
                )
            family.add_metric([*labels, replica], lag["behind"])
            if lag.get("seconds") is not None:
                self.lag_seconds.add_metric([*labels, replica], lag["seconds"])

    def families(self) -> Iterator[Any]:
        yield self.connections
        yield self.transactions
        yield self.size
        yield self.hit_ratio
        yield from self.lags.values()
        yield self.lag_seconds


class Metrics:
    """The registry a platform's API serves at ``/metrics``."""

    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.api = ApiMetrics(self.registry)
        self.registry.register(StoreCollector(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MeasureRequests:
    """ASGI middleware: each HTTP request's route template, status and time into ``metrics``."""

    def __init__(self, app: App, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.metrics.api.observe(
                _template(scope), str(scope.get("method", "")), status[0],
                time.perf_counter() - started,
            )  # fmt: skip


def _template(scope: Scope) -> str:
    """The matched route's path template, with the prefix its router was included under (a
    route's own path is the rest: found by its pattern against the request's path)."""
    route = scope.get("route")
    path_format, pattern = getattr(route, "path_format", None), getattr(route, "path_regex", None)
    if not path_format or pattern is None:
        return "unmatched"
    path = str(scope.get("path", ""))
    for i, char in enumerate(path):
        if char == "/" and pattern.match(path[i:]):
            return path[:i] + str(path_format)
    return str(path_format)

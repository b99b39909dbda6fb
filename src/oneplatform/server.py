"""`onep up` and `onep worker`: the control plane as processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import oneplatform.assembly  # noqa: F401  (registers compute types and operation kinds)
from oneplatform import iam
from oneplatform.api.app import create_app, create_deploy_app
from oneplatform.api.deps import Platform
from oneplatform.baremetal.ramdisk import deploy_listener
from oneplatform.bootstrap import enroll_lab_nodes, ensure_defaults, ensure_images
from oneplatform.compute.reconciler import run_reconciler
from oneplatform.config import Settings
from oneplatform.dbaas.backups import run_backup_scheduler
from oneplatform.dbaas.endpoints import ensure_endpoints, sync_proxy
from oneplatform.dbaas.failover import run_failover_watcher
from oneplatform.dbaas.health import run_health_checker
from oneplatform.dbaas.warm import run_warm_keeper
from oneplatform.hostsvc.objectstore import backup_store_service
from oneplatform.hostsvc.proxy import proxy_service
from oneplatform.ops.engine import Worker
from oneplatform.ops.leases import LoopFn, LoopLeases
from oneplatform.store.db import Store

log = logging.getLogger(__name__)


def prepare(settings: Settings, admin_token: bool = True) -> tuple[Store, str | None]:
    """Create home, migrate the store, make the admin token (``admin_token``) and the
    embedded defaults, one process at a time (processes that start at once on one store
    take turns). Returns the store and the admin token (None without ``admin_token``)."""
    settings.home.mkdir(parents=True, exist_ok=True)
    store = Store(settings.store_url)
    with store.startup_lock():
        store.migrate()
        token = _admin_token(store, settings) if admin_token else None
        for warning in ensure_defaults(store, settings):
            log.warning("%s", warning)
    return store, token


def _admin_token(store: Store, settings: Settings) -> str:
    token_file = settings.admin_token_file
    existing = token_file.read_text().strip() if token_file.exists() else None
    token = iam.ensure_admin(store, existing) or existing
    assert token is not None
    _write_private(token_file, token + "\n")
    return token


def write_cli_config(settings: Settings, url: str, token: str) -> None:
    _write_private(settings.cli_config_file, json.dumps({"url": url, "token": token}) + "\n")


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def start_workers(
    store: Store, settings: Settings, count: int, stop: threading.Event
) -> list[threading.Thread]:
    threads = []
    for i in range(count):
        worker = Worker(store, settings, name=f"{os.uname().nodename}-{os.getpid()}-{i}")
        thread = threading.Thread(
            target=worker.run_forever, args=(stop,), name=f"worker-{i}", daemon=True
        )
        thread.start()
        threads.append(thread)
    return threads


LOOPS: dict[str, LoopFn] = {
    "health": run_health_checker,
    "reconciler": run_reconciler,
    "warm-keeper": run_warm_keeper,
    "backup-scheduler": run_backup_scheduler,
    "failover-watcher": run_failover_watcher,
}


def start_loops(store: Store, settings: Settings, stop: threading.Event) -> threading.Thread:
    """The background loops, each run while this process holds its lease (ops/leases.py):
    once across every process on the store, never once per process. The thread returned
    ends, once ``stop`` is set, after it gave the leases back."""
    return LoopLeases(store, settings, LOOPS).start(stop)


def run_proxy_sync(store: Store, settings: Settings, stop: threading.Event) -> None:
    """Keep this machine's endpoint proxy in line with the store (changes made by processes
    elsewhere, which cannot reach it); a no-op when nothing changed."""
    while not stop.wait(settings.proxy_sync_seconds):
        try:
            sync_proxy(store, settings)
        except Exception:  # the loop must outlive a broken store connection
            log.exception("endpoint proxy sync failed")


def run_up(
    settings: Settings,
    announce: Callable[[str, str, list[str], list[str]], None],
    api_only: bool = False,
) -> None:
    """Run the API in this process until interrupted; with workers, the leased background
    loops and this machine's host services (backup store, endpoint proxy, deploy listener)
    unless ``api_only``."""
    import uvicorn

    store, token = prepare(settings)
    assert token is not None
    url = f"http://{settings.host}:{settings.port}"
    write_cli_config(settings, url, token)
    with store.startup_lock():  # processes starting at once ask for each build once
        enrolling = enroll_lab_nodes(store, settings)
        builds = ensure_images(store, settings)
    stop = threading.Event()
    platform = Platform(store, settings)
    app = create_app(platform)
    services: list[_Service] = []
    loops: threading.Thread | None = None
    # uvicorn re-raises a SIGTERM it caught once it has shut down, with the handler it found:
    # Python's default would end the process before the clean-up below (the backup store
    # would be left running); this one unwinds it.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:  # whatever fails from here on, the host services already started are stopped
        if not api_only:
            start_workers(store, settings, settings.workers, stop)
            loops = start_loops(store, settings, stop)
            _start_host_services(store, settings, platform, stop, services)
        announce(url, str(settings.home), builds, enrolling)
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    finally:
        stop.set()
        for service in services:
            service.stop()
        if loops is not None:  # the leases given back, so another process takes them at once
            loops.join(timeout=30)
        store.dispose()


class _Service(Protocol):
    def stop(self) -> None: ...


def _start_host_services(
    store: Store,
    settings: Settings,
    platform: Platform,
    stop: threading.Event,
    started: list[_Service],
) -> None:
    """This machine's host services: they bind fixed ports, so only the full `onep up` runs
    them (one per machine), never `onep up --api-only` or `onep worker`. Each is put in
    ``started`` (first the last stopped) as soon as it runs, for the caller to stop."""
    backup_store = backup_store_service(settings)
    started.insert(0, backup_store)
    backup_store.start()
    ensure_endpoints(store, settings)
    sync_proxy(store, settings)  # the proxy starts on the current configuration
    proxy = proxy_service(settings)
    started.insert(0, proxy)
    proxy.start()
    threading.Thread(
        target=run_proxy_sync, args=(store, settings, stop), name="proxy-sync", daemon=True
    ).start()
    start_deploy_listener(platform)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def start_deploy_listener(platform: Platform) -> threading.Thread | None:
    """Serve the deploy routes alone on the provisioning network (ONEP_DEPLOY_HOST, or the
    lab's gateway), in a thread; None when there is no provisioning network or its address
    cannot be bound (logged: bare-metal deploys then wait for their ramdisk in vain)."""
    import uvicorn

    listener = deploy_listener(platform.settings)
    if listener is None:
        return None
    host, port = listener
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        log.error("deploy listener: cannot bind %s:%d (%s): nodes cannot deploy", host, port, exc)
        return None
    config = uvicorn.Config(create_deploy_app(platform), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="deploy-listener", daemon=True
    )
    thread.start()
    log.info("deploy listener on %s:%d", host, port)
    return thread


def run_worker(settings: Settings, count: int) -> None:
    """Workers and the leased background loops against the store, until SIGTERM or SIGINT;
    no API and no host services. A worker's home needs no admin token (it makes none)."""
    store, _ = prepare(settings, admin_token=False)
    stop = threading.Event()
    threads = start_workers(store, settings, count, stop)
    leases = LoopLeases(store, settings, LOOPS)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        leases.run(stop)  # until interrupted; gives the leases back on the way out
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        stop.set()
        leases.close()
        for t in threads:
            t.join(timeout=10)
        store.dispose()

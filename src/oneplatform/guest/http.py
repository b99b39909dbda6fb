"""The agent's HTTP API: signed calls only, JSON answers.

``GET /v1/health`` (the engine's state and whether it takes connections),
``POST /v1/engine/restart`` (returns once the engine is ready again), ``GET|POST
/v1/backups`` (the repository's state and backup job; start a backup), ``POST
/v1/archive`` (``{"switch", "timeout"}``: archive the WAL written so far, or with ``switch``
false only the completed segments, and say up to when) and, on a warm
instance, ``POST /v1/claim`` (``{"sealed": ...}``: its owner's bundle, sealed and signed
with the warm bundle's secret; once applied, only the owner's secret is accepted).
``GET|POST /v1/configuration`` (the configuration group's values; ``{"values": {...}}``
makes them the group's: kept on the data disk, applied live where the engine can, the
answer names what waits for a restart).
``GET /v1/logs?tail=N&after=K`` (the engine's own output: its last N lines, or those after
line K). ``GET /v1/storage`` (the data filesystem's size, use and room, in bytes) and ``POST
/v1/storage/grow`` (``{"size_bytes"}``: grow the data filesystem into its grown disk once the
kernel sees the disk at that size; a bare-metal node's data partition is grown to that size
first; see :mod:`.storage`).
``GET /v1/stats`` (the engine's connections, transactions, size and cache reads, for the
platform's metrics). Replication: ``GET /v1/replication`` (role, WAL positions,
replicas), ``POST /v1/replication/role`` (``{"user", "password"}``: the replication role,
on a primary), ``POST /v1/replication/prepare`` (``{"seconds"}``: a standby's promotion
comes within them), ``POST /v1/replication/promote`` and ``POST /v1/replication/demote``
(``{"upstream": {...}, "rewind": bool}``: stop, become a standby of ``upstream``, start
again; answers once shut down, with the shutdown's checkpoint: without ``rewind``, as soon
as the control file says so, before the exit; an engine demoted while it runs, MariaDB and
Redis, answers with its last position without a restart).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .bundle import Bundle, BundleError, UpstreamSettings
from .contract import DEFAULT_DATASTORE, DEFAULT_VERSION
from .engines.base import EngineError, NotSupported
from .sealing import SealError, unseal
from .signing import AuthError, RequestVerifier
from .storage import DataStorage, StorageError
from .supervisor import ENGINE_RUNNING, Supervisor

AGENT_VERSION = "1"
MAX_BODY_BYTES = 1024 * 1024

log = logging.getLogger("onep-agent")


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class Agent:
    """The API's logic, apart from HTTP plumbing: authenticate, route, answer."""

    def __init__(
        self,
        bundle: Bundle | None,
        supervisor: Supervisor,
        *,
        problem: str = "",
        datastore: str = DEFAULT_DATASTORE,
        version: str = DEFAULT_VERSION,
        restart_timeout: float = 120.0,
        clock: Callable[[], float] = time.time,
        warm: Bundle | None = None,
        claimed_path: Path | None = None,
        adopted_path: Path | None = None,
        storage: DataStorage | None = None,
    ) -> None:
        self.bundle = bundle
        self.storage = storage
        self.supervisor = supervisor
        self.problem = problem or "no config bundle"
        self.datastore = bundle.datastore if bundle else datastore
        self.version = bundle.version if bundle else version
        self.restart_timeout = restart_timeout
        self._clock = clock
        self.verifier = (
            RequestVerifier(bundle.agent.secret, bundle.instance_id, clock=clock)
            if bundle
            else None
        )
        # A warm instance: the bundle it was made with (``bundle`` is that one until it is
        # claimed, its owner's after), and where the owner's bundle is kept.
        self.warm = warm
        self.warm_verifier = (
            RequestVerifier(warm.agent.secret, warm.instance_id, clock=clock) if warm else None
        )
        self.claimed_path = claimed_path
        self.adopted_path = adopted_path  # where a detached replica keeps its new bundle
        self._claim_lock = threading.Lock()
        self.claimed_digest: str | None = None
        if warm is not None and bundle is not warm and claimed_path and claimed_path.exists():
            self.claimed_digest = hashlib.sha256(claimed_path.read_bytes()).hexdigest()

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if self.bundle is None or self.verifier is None:
            return 401, error_body("no_bundle", f"{self.problem}; this agent accepts no calls")
        route = urlsplit(path).path
        if route == "/v1/claim":
            if self.warm_verifier is None:
                return 409, error_body("not_warm", "this instance was not made warm")
            try:
                self.warm_verifier.verify(method, path, headers, body)
            except AuthError as exc:
                return exc.status, error_body(exc.code, exc.message)
            if method != "POST":
                return 405, error_body("method_not_allowed", "use POST")
            return self.claim(body)
        try:
            self.verifier.verify(method, path, headers, body)
        except AuthError as exc:
            return exc.status, error_body(exc.code, exc.message)
        if self.bundle.warm and route != "/v1/health":
            return 409, error_body("warm", "this instance is warm: it has no owner yet")
        if route == "/v1/health":
            if method != "GET":
                return 405, error_body("method_not_allowed", "use GET")
            return 200, self.health()
        if route == "/v1/engine/restart":
            if method != "POST":
                return 405, error_body("method_not_allowed", "use POST")
            ok, detail = self.supervisor.restart(self.restart_timeout)
            if ok:
                return 200, self.health()
            if detail.startswith("the engine was not ready"):
                return 504, error_body("timeout", detail)
            return 503, error_body("engine_failed", detail)
        if route == "/v1/logs":
            if method != "GET":
                return 405, error_body("method_not_allowed", "use GET")
            query = parse_qs(urlsplit(path).query)
            try:
                tail = int(query.get("tail", ["100"])[0])
                after = int(query["after"][0]) if "after" in query else None
            except ValueError as exc:
                return 400, error_body("bad_request", f"tail and after are numbers: {exc}")
            return 200, self.supervisor.log.read(tail, after)
        if route == "/v1/stats":
            if method != "GET":
                return 405, error_body("method_not_allowed", "use GET")
            return self.stats()
        if route == "/v1/backups":
            return self.backups(method, body)
        if route == "/v1/configuration":
            return self.configuration(method, body)
        if route == "/v1/replication/detach":
            if method != "POST":
                return 405, error_body("method_not_allowed", "use POST")
            return self.detach(body)
        if route.startswith("/v1/replication"):
            return self.replication(method, route, body)
        if route.startswith("/v1/storage"):
            return self.data_storage(method, route, body)
        if route == "/v1/archive":
            if method != "POST":
                return 405, error_body("method_not_allowed", "use POST")
            engine = self.supervisor.engine
            if engine is None or self.supervisor.snapshot()[0] != ENGINE_RUNNING:
                return 503, error_body("engine_not_ready", "the engine is not running")
            try:
                data = json.loads(body or b"{}")
                if not isinstance(data, dict):
                    raise TypeError
                switch = bool(data.get("switch", True))
                timeout = min(max(float(data.get("timeout", 60.0)), 1.0), 120.0)
            except (ValueError, TypeError) as exc:
                return 400, error_body("bad_request", f"the body is not valid: {exc}")
            try:
                return 200, {"archived_until": engine.archive_now(timeout, switch)}
            except EngineError as exc:
                return 503, error_body("archive_failed", str(exc))
        return 404, error_body("not_found", f"no such endpoint: {route}")

    def stats(self) -> tuple[int, dict[str, Any]]:
        """The engine's figures for the platform's metrics (503 while it does not run)."""
        engine = self.supervisor.engine
        if engine is None or self.supervisor.snapshot()[0] != ENGINE_RUNNING:
            return 503, error_body("engine_not_ready", "the engine is not running")
        try:
            return 200, dict(engine.stats())
        except NotSupported as exc:
            return 501, error_body("not_supported", str(exc))
        except (EngineError, ValueError) as exc:
            return 503, error_body("stats_failed", str(exc))

    def data_storage(self, method: str, route: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """``GET /v1/storage``: usage; ``POST /v1/storage/grow``: grow the filesystem."""
        if self.storage is None:
            return 404, error_body("not_found", "this agent does not manage storage")
        if route == "/v1/storage" and method == "GET":
            return 200, self.storage.usage()
        if route != "/v1/storage/grow" or method != "POST":
            return 404, error_body("not_found", f"no such endpoint: {method} {route}")
        try:
            data = json.loads(body or b"{}")
            size = int(data["size_bytes"]) if isinstance(data, dict) else -1
        except (ValueError, TypeError, KeyError) as exc:
            return 400, error_body("bad_request", f"size_bytes is a number: {exc}")
        if size < 1:
            return 400, error_body("bad_request", "size_bytes is a positive number")
        try:
            return 200, self.storage.grow(size)
        except StorageError as exc:
            refused = exc.code in ("device_not_grown", "no_room_on_disk", "not_mbr")
            return 409 if refused else 500, error_body(exc.code, str(exc))

    def replication(self, method: str, route: str, body: bytes) -> tuple[int, dict[str, Any]]:
        engine = self.supervisor.engine
        if engine is None:
            return 503, error_body("engine_failed", self.supervisor.snapshot()[1])
        action = route.removeprefix("/v1/replication").strip("/")
        if (method, action) not in {
            ("GET", ""),
            ("POST", "role"),
            ("POST", "prepare"),
            ("POST", "promote"),
            ("POST", "demote"),
        }:
            return 404, error_body("not_found", f"no such endpoint: {method} {route}")
        try:
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise TypeError
            if action == "demote":
                upstream = UpstreamSettings.from_dict(data.get("upstream"), "upstream")
                rewind = bool(data.get("rewind", False))
        except (ValueError, TypeError, BundleError) as exc:
            return 400, error_body("bad_request", f"the body is not valid: {exc}")
        # A promotion waits for a start under way (a former primary promoted back right
        # after its demote); the rest answer at once.
        wait = float(data.get("timeout", 60)) if action == "promote" else 0.0
        running = self.supervisor.wait_running(wait)
        try:
            if action == "demote" and not rewind and running:
                live = engine.demote_live(upstream)
                if live is not None:
                    return 200, live
            if action == "demote":
                # Answers once the engine is stopped and made a standby (or found unclean);
                # it starts again meanwhile.
                result = self.supervisor.restart_with(
                    lambda: engine.demote_stopped(upstream, rewind),
                    self.restart_timeout,
                    # a switchover's pause lasts until this answer: no wait for the exit
                    early=None if rewind else lambda: engine.demoted_when_shut_down(upstream),
                )
                return 200, result
            if not running:
                return 503, error_body("engine_not_ready", "the engine is not running")
            if action == "role":
                engine.ensure_replication_role(str(data["user"]), str(data["password"]))
                return 200, engine.replication_status()
            if action == "prepare":
                return 200, engine.prepare_promotion(float(data.get("seconds", 60)))
            if action == "promote":
                return 200, engine.promote(float(data.get("timeout", 60)))
            return 200, engine.replication_status()
        except NotSupported as exc:
            return 501, error_body("not_supported", str(exc))
        except KeyError as exc:
            return 400, error_body("bad_request", f"missing {exc}")
        except (EngineError, OSError) as exc:
            return 409 if action == "role" else 503, error_body("replication_failed", str(exc))

    def detach(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Become an independent database (a replica detached from its group): its bundle
        (its own identity, agent secret and repository), sealed with the current secret, is
        kept on the data disk (it wins at every later start) and the engine is promoted,
        archiving into the new repository. From then on only the new secret is accepted."""
        assert self.bundle is not None
        engine = self.supervisor.engine
        if engine is None:
            return 503, error_body("engine_failed", self.supervisor.snapshot()[1])
        try:
            data = json.loads(body)
            bundle = Bundle.from_dict(json.loads(unseal(self.bundle.agent.secret, data["sealed"])))
            timeout = float(data.get("timeout", 60))
        except (ValueError, KeyError, TypeError, SealError, BundleError) as exc:
            detail = exc.args[0] if isinstance(exc, SealError | BundleError) else "bad body"
            return 400, error_body("bad_detach", f"the detach is not valid: {detail}")
        if (
            bundle.warm
            or bundle.standby is not None
            or bundle.restore is not None
            or (bundle.datastore, bundle.version) != (self.datastore, self.version)
            or bundle.instance_id == self.bundle.instance_id
        ):
            return 400, error_body(
                "bad_detach", "the bundle is not a new independent database's of this engine"
            )
        with self._claim_lock:
            if not self.supervisor.wait_running(0):
                return 503, error_body("engine_not_ready", "the engine is not running")
            replaced = self.bundle.instance_id
            if self.adopted_path is not None:
                kept = {"replaces": replaced, "bundle": bundle.to_dict()}
                _write_private(self.adopted_path, json.dumps(kept).encode("utf-8"))
            try:
                status = engine.detach(bundle, timeout)
            except NotSupported as exc:
                if self.adopted_path is not None:
                    self.adopted_path.unlink(missing_ok=True)
                return 501, error_body("not_supported", str(exc))
            except (EngineError, OSError) as exc:
                if self.adopted_path is not None and engine.upstream() is not None:
                    self.adopted_path.unlink(missing_ok=True)  # still the group's standby
                return 503, error_body("detach_failed", str(exc))
            self.bundle = bundle
            self.verifier = RequestVerifier(
                bundle.agent.secret, bundle.instance_id, clock=self._clock
            )
        log.info("detached from %s: the instance is now %s's", replaced, bundle.instance_id)
        return 200, status

    def backups(self, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """``GET``: the repository's state and the running or last backup job; ``POST``
        ``{"type": "full"|"diff"|"incr"}``: start a backup (409 while one runs)."""
        engine = self.supervisor.engine
        if engine is None:
            return 503, error_body("engine_failed", self.supervisor.snapshot()[1])
        if method == "GET":
            return 200, {"repository": engine.backup_status(), "job": engine.backup_job()}
        if method != "POST":
            return 405, error_body("method_not_allowed", "use GET or POST")
        try:
            kind = json.loads(body or b"{}").get("type", "full")
        except (ValueError, AttributeError):
            return 400, error_body("bad_request", "the body must be a JSON object")
        if self.supervisor.snapshot()[0] != ENGINE_RUNNING:
            return 503, error_body("engine_not_ready", "the engine is not running")
        status, answer = engine.start_backup(str(kind))
        if status != 200:
            return status, {"error": answer, **({"job": answer["job"]} if "job" in answer else {})}
        return 200, answer

    def configuration(self, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """``GET``: the configuration group's values this member runs with; ``POST``
        ``{"values": {name: value}}``: make them the group's (kept on the data disk for every
        later start; given to the running engine where it takes them live), answered with
        the ``changed`` settings and those waiting for a restart (``pending_restart``)."""
        engine = self.supervisor.engine
        if engine is None:
            return 503, error_body("engine_failed", self.supervisor.snapshot()[1])
        if method == "GET":
            return 200, {"values": engine.configuration()}
        if method != "POST":
            return 405, error_body("method_not_allowed", "use GET or POST")
        try:
            raw = json.loads(body or b"{}")["values"]
            if not isinstance(raw, dict):
                raise TypeError
            values = {str(k): str(v) for k, v in raw.items()}
            Bundle.check_setting_names(values)
        except (ValueError, KeyError, TypeError, BundleError) as exc:
            return 400, error_body("bad_request", f"the body is not valid: {exc}")
        with self._claim_lock:
            if not self.supervisor.wait_running(0):
                return 503, error_body("engine_not_ready", "the engine is not running")
            try:
                return 200, engine.apply_configuration(values)
            except (EngineError, OSError) as exc:
                return 503, error_body("configuration_failed", str(exc))

    def claim(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Take the owner's bundle: keep it on the data disk, make the engine's roles (and
        the owner's initial databases and users, when given), and from then on accept the
        owner's secret only. The same bundle again is a no-op (a retried call); another one
        is refused. The sealed payload is ``{"bundle": {...}, "initial": {"databases",
        "users": [{"name", "verifier", "databases"}]}}``."""
        assert self.warm is not None
        try:
            sealed = json.loads(body)["sealed"]
            payload = json.loads(unseal(self.warm.agent.secret, sealed))
            bundle = Bundle.from_dict(payload["bundle"])
            initial = payload.get("initial")
            if initial is not None and not isinstance(initial, dict):
                raise TypeError("initial")
        except (ValueError, KeyError, TypeError, SealError, BundleError) as exc:
            detail = exc.args[0] if isinstance(exc, SealError | BundleError) else "bad body"
            return 400, error_body("bad_claim", f"the claim is not valid: {detail}")
        if bundle.warm or (bundle.datastore, bundle.version) != (self.datastore, self.version):
            return 400, error_body(
                "bad_claim", f"the claim is not for a {self.datastore} {self.version} owner"
            )
        text = bundle.to_json().encode("utf-8")
        digest = hashlib.sha256(text).hexdigest()
        with self._claim_lock:
            if self.claimed_digest is not None:
                if digest == self.claimed_digest:
                    return 200, self.health()
                return 409, error_body("already_claimed", "this instance has an owner already")
            if self.claimed_path is not None:
                _write_private(self.claimed_path, text)
            ok, detail = self.supervisor.adopt(bundle, self.restart_timeout, initial)
            if not ok:
                if self.claimed_path is not None:
                    self.claimed_path.unlink(missing_ok=True)
                return 503, error_body("engine_not_ready", detail)
            self.bundle, self.claimed_digest = bundle, digest
            self.verifier = RequestVerifier(
                bundle.agent.secret, bundle.instance_id, clock=self._clock
            )
        log.info("claimed: the instance is now %s's", bundle.instance_id)
        engine = self.supervisor.engine
        # Ready: the engine ran and made the owner's roles just now (no probe needed).
        return 200, {
            **self.health(probe=False),
            "initialized": bool(engine and engine.initialized),
        }

    def health(self, probe: bool = True) -> dict[str, Any]:
        """The engine's state; ``ready`` asks the engine itself unless ``probe`` is False
        (then a running engine counts as ready)."""
        state, detail, restarts = self.supervisor.snapshot()
        ready = False
        if state == ENGINE_RUNNING and self.supervisor.engine is not None:
            ready, detail = self.supervisor.engine.health() if probe else (True, detail)
        return {
            "instance_id": self.bundle.instance_id if self.bundle else None,
            "datastore": self.datastore,
            "version": self.version,
            "engine": state,
            "ready": ready,
            "detail": detail,
            "restarts": restarts,
            "agent_version": AGENT_VERSION,
            "warm": bool(self.bundle and self.bundle.warm),
            "storage": self._usage(),
        }

    def _usage(self) -> dict[str, int] | None:
        """The data filesystem's usage, or None where it cannot be read."""
        if self.storage is None:
            return None
        try:
            return self.storage.usage()
        except OSError:
            return None


def _write_private(path: Path, data: bytes) -> None:
    """Write a root-only file atomically and durably (a first claim, or a detach's bundle)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AgentHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        super().__init__(address, AgentRequestHandler)


class AgentRequestHandler(http.server.BaseHTTPRequestHandler):
    server: AgentHTTPServer
    server_version = f"onep-agent/{AGENT_VERSION}"
    sys_version = ""
    timeout = 30  # seconds a client may take to send its request

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        started = time.monotonic()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            status, payload = 413, error_body("bad_request", "missing or too large Content-Length")
            self.close_connection = True
        else:
            body = self.rfile.read(length) if length else b""
            try:
                status, payload = self.server.agent.handle(
                    self.command, self.path, dict(self.headers.items()), body
                )
            except Exception:
                log.exception("error handling %s %s", self.command, self.path)
                status, payload = 500, error_body("internal_error", "the agent failed")
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)
        log.info(
            "%s %s %d %.3fs from %s",
            self.command,
            self.path[:200],
            status,
            time.monotonic() - started,
            self.client_address[0],
        )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _handle logs one line per request

    def log_message(self, format: str, *args: Any) -> None:
        log.warning("http: %s", format % args)

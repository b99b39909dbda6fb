"""The platform's client for an instance's guest agent: every call signed with its secret."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx

from oneplatform.errors import BackendError, BackendUnavailable
from oneplatform.guest.signing import sign_request

DEFAULT_TIMEOUT = 10.0
RESTART_TIMEOUT = 150.0  # the agent itself gives up after 120 s

STATS = ("connections", "transactions", "size_bytes", "cache_hits", "cache_misses")


@dataclass(frozen=True)
class AgentHealth:
    """What ``GET /v1/health`` says: the engine's state and whether it takes connections."""

    instance_id: str
    datastore: str
    version: str
    engine: str  # starting | running | stopped | failed
    ready: bool
    detail: str
    restarts: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AgentHealth:
        return cls(
            instance_id=str(data.get("instance_id") or ""),
            datastore=str(data.get("datastore") or ""),
            version=str(data.get("version") or ""),
            engine=str(data.get("engine") or ""),
            ready=bool(data.get("ready")),
            detail=str(data.get("detail") or ""),
            restarts=int(data.get("restarts") or 0),
            raw=data,
        )


class AgentClient:
    """Talks to one instance's agent at ``host:port`` (its published or forwarded port).

    Transport failures (nothing listening yet, connection reset, timeout) raise
    :class:`BackendUnavailable`; refusals and engine errors raise :class:`BackendError`
    with the agent's error code in ``details["agent_code"]``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        instance_id: str,
        secret: str,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self.instance_id = instance_id
        self._secret = secret
        self.timeout = timeout
        self.base_url = f"http://{host}:{port}"

    def __repr__(self) -> str:
        return f"AgentClient({self.base_url!r}, instance_id={self.instance_id!r})"

    def health(self) -> AgentHealth:
        return self._health(self._call("GET", "/v1/health"))

    def restart_engine(self, timeout: float = RESTART_TIMEOUT) -> AgentHealth:
        """Restart the engine; returns once it is ready again (the agent waits for it)."""
        return self._health(self._call("POST", "/v1/engine/restart", timeout=timeout))

    def claim(self, sealed_bundle: str) -> AgentHealth:
        """Hand a warm instance to its owner (this client holds the warm secret); the
        answer is the agent's health under its owner's bundle."""
        body = json.dumps({"sealed": sealed_bundle}).encode()
        return AgentHealth.from_dict(self._call("POST", "/v1/claim", body, timeout=RESTART_TIMEOUT))

    def backups(self) -> dict[str, Any]:
        """The repository's state and the running or last backup job."""
        return self._call("GET", "/v1/backups")

    def start_backup(self, kind: str) -> dict[str, Any]:
        """Start a ``kind`` backup; the answer's ``job`` is followed with :meth:`backups`."""
        return self._call("POST", "/v1/backups", json.dumps({"type": kind}).encode())

    def archive_now(self, timeout: float = 90.0, switch: bool = True) -> float:
        """Archive the WAL written so far (without ``switch``: what is completed, nothing
        pending is left); the epoch up to which commits are archived."""
        body = json.dumps({"switch": switch, "timeout": timeout}).encode()
        answer = self._call("POST", "/v1/archive", body, timeout=timeout + 10)
        return float(answer["archived_until"])

    def apply_configuration(self, values: dict[str, str]) -> dict[str, Any]:
        """Make ``values`` the configuration group's values of this member (kept for every
        later start, applied live where the engine can); the answer's ``pending_restart``
        names those that wait for a restart."""
        body = json.dumps({"values": values}).encode()
        return self._call("POST", "/v1/configuration", body)

    def configuration(self) -> dict[str, Any]:
        """The configuration group's values this member runs with."""
        return self._call("GET", "/v1/configuration")

    def logs(self, tail: int = 100, after: int | None = None) -> dict[str, Any]:
        """The engine's own output: its last ``tail`` lines, or those after line ``after``."""
        query = f"tail={int(tail)}" + (f"&after={int(after)}" if after is not None else "")
        return self._call("GET", f"/v1/logs?{query}")

    def stats(self) -> dict[str, int]:
        """The engine's figures: connections, transactions, size_bytes, cache hits/misses."""
        answer = self._call("GET", "/v1/stats")
        try:
            return {k: int(answer[k]) for k in STATS if k in answer}
        except (TypeError, ValueError) as exc:
            raise BackendError(
                f"the agent's statistics are not numbers: {exc}", code="agent_bad_answer"
            ) from None

    def replication(self) -> dict[str, Any]:
        """This member's role, WAL positions and (a primary's) streaming replicas."""
        return self._call("GET", "/v1/replication")

    def ensure_replication_role(self, user: str, password: str) -> dict[str, Any]:
        body = json.dumps({"user": user, "password": password}).encode()
        return self._call("POST", "/v1/replication/role", body)

    def prepare_promotion(self, seconds: float) -> dict[str, Any]:
        """Tell a standby its promotion comes within ``seconds`` (it streams only)."""
        body = json.dumps({"seconds": seconds}).encode()
        return self._call("POST", "/v1/replication/prepare", body)

    def promote(self, timeout: float = 60.0) -> dict[str, Any]:
        body = json.dumps({"timeout": timeout}).encode()
        return self._call("POST", "/v1/replication/promote", body, timeout=2 * timeout + 10)

    def detach(self, sealed_bundle: str, timeout: float = 60.0) -> dict[str, Any]:
        """Make this standby a database of its own, with the sealed bundle (its new identity
        and secret: this client's stop working once it answers)."""
        body = json.dumps({"sealed": sealed_bundle, "timeout": timeout}).encode()
        return self._call(
            "POST", "/v1/replication/detach", body, timeout=2 * timeout + RESTART_TIMEOUT
        )

    def demote(self, upstream: dict[str, Any], rewind: bool = False) -> dict[str, Any]:
        """Stop the engine, make it a standby of ``upstream`` and start it again; the
        answer (once stopped) says whether it had shut down cleanly and where."""
        body = json.dumps({"upstream": upstream, "rewind": rewind}).encode()
        return self._call("POST", "/v1/replication/demote", body, timeout=RESTART_TIMEOUT)

    def storage(self) -> dict[str, Any]:
        """The data filesystem's ``total_bytes``, ``used_bytes`` and ``free_bytes``."""
        return self._call("GET", "/v1/storage")

    def grow_storage(self, size_bytes: int, timeout: float = 660.0) -> dict[str, Any]:
        """Grow the data filesystem into its disk, grown to ``size_bytes`` underneath; the
        answer says whether there was one of its own to grow (``grown``) and its usage."""
        body = json.dumps({"size_bytes": int(size_bytes)}).encode()
        return self._call("POST", "/v1/storage/grow", body, timeout=timeout)

    def _health(self, data: dict[str, Any]) -> AgentHealth:
        health = AgentHealth.from_dict(data)
        if health.instance_id != self.instance_id:
            raise BackendError(
                f"the agent at {self.base_url} answers for another instance",
                instance_id=self.instance_id,
            )
        return health

    def _call(
        self, method: str, path: str, body: bytes = b"", timeout: float | None = None
    ) -> dict[str, Any]:
        headers = sign_request(self._secret, self.instance_id, method, path, body)
        if body:
            headers["Content-Type"] = "application/json"
        where = f"{method} {self.base_url}{path}"
        try:
            # trust_env=False: never send an instance's traffic through a configured proxy.
            with httpx.Client(timeout=timeout or self.timeout, trust_env=False) as http:
                response = http.request(method, self.base_url + path, headers=headers, content=body)
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"guest agent unreachable: {where}: {type(exc).__name__}: {exc}",
                instance_id=self.instance_id,
            ) from exc
        try:
            data = response.json()
        except json.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise BackendError(
                f"guest agent sent a non-JSON answer ({response.status_code}) to {where}",
                instance_id=self.instance_id,
                http_status=response.status_code,
            )
        if response.status_code == 200:
            return data
        raw_error = data.get("error")
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
        code = str(error.get("code") or "unknown")
        message = str(error.get("message") or "")
        cls = BackendUnavailable if response.status_code in (503, 504) else BackendError
        raise cls(
            f"guest agent refused {method} {path}: {response.status_code} {code}: {message}",
            instance_id=self.instance_id,
            http_status=response.status_code,
            agent_code=code,
        )

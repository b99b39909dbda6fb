"""What a relayed standby (MariaDB, Redis) keeps while it follows a primary.

Its upstream (the hub and the replication user) in a file on the data disk, so that every
later start follows the same primary until a promotion; the relay it reaches the hub
through (:mod:`..relay`); and a watcher, a thread that every few seconds does what keeps
the engine following (restart a stopped replication thread, copy the primary's users).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ..bundle import BundleError, UpstreamSettings
from ..relay import RELAY_PORT, Relay, preamble

log = logging.getLogger("onep-agent")

WATCH_INTERVAL_S = 2.0


def read_upstream(path: Path) -> UpstreamSettings | None:
    """The upstream a standby keeps in ``path``; None without one (or a broken one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return UpstreamSettings.from_dict(data, "upstream")
    except FileNotFoundError:
        return None
    except (ValueError, BundleError) as exc:
        log.error("the upstream file is not valid (%s): following no primary", exc)
        return None


class Following:
    def __init__(
        self, path: Path, write: Callable[[Path, str], None], port: int = RELAY_PORT
    ) -> None:
        self.path = path
        self._write = write
        self.port = port
        self._relay: Relay | None = None
        self._watcher: threading.Thread | None = None
        self._lock = threading.Lock()
        self._generation = 0  # a new one stops the former watcher

    def upstream(self) -> UpstreamSettings | None:
        return read_upstream(self.path)

    def follow(self, upstream: UpstreamSettings) -> None:
        """From now on (and at every later start) this member follows ``upstream``."""
        self._write(self.path, json.dumps(upstream.to_dict()))

    def stop_following(self) -> None:
        """A promotion: no upstream, no relay, no watcher."""
        self.path.unlink(missing_ok=True)
        with self._lock:
            self._generation += 1
            relay, self._relay = self._relay, None
        if relay is not None:
            relay.stop()

    def run(self, upstream: UpstreamSettings, watch: Callable[[UpstreamSettings], None]) -> None:
        """The relay to ``upstream``'s hub (listening before the engine connects) and the
        watcher calling ``watch`` while this member follows."""
        with self._lock:
            hub = (upstream.host, upstream.port)
            wanted = (hub, preamble(upstream.user, upstream.password))
            if self._relay is not None and (self._relay.hub, self._relay.preamble) != wanted:
                self._relay.stop()  # another primary's hub or user (a new group)
                self._relay = None
            if self._relay is None:
                self._relay = Relay(hub, upstream.user, upstream.password, self.port)
                self._relay.start()
            self._generation += 1
            generation = self._generation
        thread = threading.Thread(
            target=self._watch, args=(generation, watch), daemon=True, name="follow"
        )
        thread.start()

    def _watch(self, generation: int, watch: Callable[[UpstreamSettings], None]) -> None:
        stop = threading.Event()
        while not stop.wait(WATCH_INTERVAL_S):
            with self._lock:
                if generation != self._generation:
                    return
            upstream = self.upstream()
            if upstream is None:
                return
            try:
                watch(upstream)
            except Exception as exc:  # a watcher logs and tries again
                log.warning("following the primary: %s", exc)

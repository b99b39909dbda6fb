"""Supervised host processes: started by `onep up`, restarted with backoff when they die,
stopped when it stops cleanly.

A host service runs in a session of its own and outlives a crash of the platform (guests
keep archiving to the backup store while `onep up` is down); the next `onep up` finds it by
its pid file and adopts it instead of starting a second one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def _alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and its command line holds ``marker`` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return marker.encode() in cmdline


class HostService:
    """One supervised process. ``marker``: a string only its command line holds (its data
    directory), by which a running one is recognised after a platform restart."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        workdir: Path,
        marker: str,
        healthy: Callable[[], bool],
        backoff_max: float = 30.0,
        stop_timeout: float = 40.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.marker = marker
        self.healthy = healthy
        self.backoff_max = backoff_max
        self.stop_timeout = stop_timeout
        self.pid_file = workdir / f"{name}.pid"
        self.log_file = workdir / f"{name}.log"
        self.pid: int | None = None
        self.ready = threading.Event()
        self.detail = "not started"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"hostsvc-{self.name}", daemon=True)
        self._thread.start()

    def _running_pid(self) -> int | None:
        """The pid of the running process this service started (its pid file), if any;
        one started with another command line (the settings changed) is stopped first."""
        try:
            first, _, argv = self.pid_file.read_text().partition("\n")
            pid = int(first)
        except (OSError, ValueError):
            return None
        if not _alive(pid, self.marker):
            return None
        if argv.strip() != json.dumps(self.argv):
            log.info("host service %s runs with other settings: restarting it", self.name)
            self._terminate(pid)
            return None
        return pid

    def _spawn(self) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            proc = subprocess.Popen(
                self.argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives a crash of the platform
            )
        self.pid_file.write_text(f"{proc.pid}\n{json.dumps(self.argv)}\n")
        # Reap it when it exits while we run (else a zombie would look alive).
        threading.Thread(target=proc.wait, name=f"reap-{self.name}", daemon=True).start()
        return proc.pid

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            pid = self._running_pid()
            if pid is None:
                log.info("starting host service %s", self.name)
                try:
                    pid = self._spawn()
                except OSError as exc:
                    self.detail = f"cannot start {self.name}: {exc}"
                    log.error("%s", self.detail)
                    self._stop.wait(delay)
                    delay = min(self.backoff_max, delay * 2)
                    continue
            else:
                log.info("adopting the running host service %s (pid %d)", self.name, pid)
            self.pid = pid
            started = time.monotonic()
            while not self._stop.is_set() and _alive(pid, self.marker):
                ok = self._probe()
                if ok and not self.ready.is_set():
                    log.info(
                        "host service %s is ready (%.1f s)", self.name, time.monotonic() - started
                    )
                    delay = 1.0
                if ok:
                    self.ready.set()
                    self.detail = "ready"
                else:
                    self.ready.clear()
                    self.detail = "starting" if time.monotonic() - started < 120 else "unhealthy"
                self._stop.wait(1.0 if not ok else 5.0)
            if self._stop.is_set():
                return
            self.ready.clear()
            self.detail = f"{self.name} exited; restarting in {delay:.0f} s"
            log.error("host service %s", self.detail)
            self._stop.wait(delay)
            delay = min(self.backoff_max, delay * 2)

    def _probe(self) -> bool:
        try:
            return self.healthy()
        except Exception:  # a probe never stops the supervisor
            return False

    def wait_ready(self, timeout: float) -> bool:
        return self.ready.wait(timeout)

    def stop(self) -> None:
        """Stop supervising and stop the process (SIGTERM, then SIGKILL)."""
        self._stop.set()
        pid = self._running_pid()
        if pid is not None:
            self._terminate(pid)

    def _terminate(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and _alive(pid, self.marker):
            time.sleep(0.2)
        if _alive(pid, self.marker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)

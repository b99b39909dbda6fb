"""The supervisor: runs the engine as a child, restarts it with backoff, stops it fast."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .bundle import Bundle
from .enginelog import EngineLog
from .engines.base import Engine, EngineError

ENGINE_STARTING = "starting"
ENGINE_RUNNING = "running"
ENGINE_STOPPED = "stopped"
ENGINE_FAILED = "failed"
STABLE_AFTER = 60.0  # seconds an engine must run before its restart backoff resets
EARLY_POLL_S = 0.1  # how often a stop-and-start asks whether it may answer before the stop

log = logging.getLogger("onep-agent")


class Supervisor:
    """Runs the engine as a child in a thread of its own: starts it, restarts it with
    backoff when it dies, restarts it on request, and stops it fast on shutdown."""

    def __init__(
        self,
        engine: Engine | None,
        *,
        fatal: str = "",
        ready_timeout: float = 120.0,
        stop_timeout: float = 6.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        poll_interval: float = 0.2,
    ) -> None:
        self.engine = engine
        self.log = EngineLog()  # the engine's own output, as `onep db logs` reads it
        self._ready_timeout = ready_timeout
        self._stop_timeout = stop_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._poll = poll_interval
        self._cond = threading.Condition()
        self._state = ENGINE_FAILED if engine is None else ENGINE_STOPPED
        self._detail = fatal or "not started"
        self._stopping = False
        self._restart_requested = False
        self._generation = 0  # +1 each time the engine becomes ready
        self._failures = 0  # +1 each time a start fails or the engine dies
        self._restarts = 0  # unexpected deaths
        self._thread: threading.Thread | None = None
        # Work to do with the engine stopped, at the next restart (restart_with).
        self._hook: Callable[[], Any] | None = None
        self._hook_done: tuple[Any, BaseException | None] | None = None

    def snapshot(self) -> tuple[str, str, int]:
        with self._cond:
            return self._state, self._detail, self._restarts

    def start(self) -> None:
        if self.engine is None:
            log.error("engine not started: %s", self._detail)
            return
        self._thread = threading.Thread(target=self._run, name="engine-supervisor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout if timeout is not None else self._stop_timeout + 10)

    def restart(self, timeout: float) -> tuple[bool, str]:
        """Restart the engine and wait until it is ready again; (ok, detail)."""
        if self.engine is None:
            return False, self._detail
        deadline = time.monotonic() + timeout
        with self._cond:
            generation, failures = self._generation, self._failures
            self._restart_requested = True
            self._cond.notify_all()
            while True:
                if self._generation > generation:
                    return True, self._detail
                if self._failures > failures:
                    return False, self._detail
                if self._stopping:
                    return False, "the agent is shutting down"
                left = deadline - time.monotonic()
                if left <= 0:
                    return False, f"the engine was not ready {timeout:.0f} s after the restart"
                self._cond.wait(left)

    def wait_running(self, timeout: float) -> bool:
        """Whether the engine runs, waiting up to ``timeout`` for it (a start under way)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._state != ENGINE_RUNNING and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self._state == ENGINE_RUNNING

    def restart_with(
        self,
        hook: Callable[[], Any],
        timeout: float,
        early: Callable[[], Any | None] | None = None,
    ) -> Any:
        """Stop the engine, run ``hook`` (the engine stopped), start the engine again; the
        hook's result once it has run (not waiting for the engine to be ready again). A
        hook's exception is raised here; the engine starts again in any case. ``early``,
        polled while the engine stops, may answer first (not None): the engine is as good
        as stopped for the caller; the hook still runs once it has."""
        if self.engine is None:
            raise EngineError(self._detail)
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._hook is not None:
                raise EngineError("another stop-and-start is under way")
            self._hook, self._hook_done = hook, None
            self._restart_requested = True
            self._cond.notify_all()
            while self._hook_done is None:
                left = deadline - time.monotonic()
                if self._stopping or left <= 0:
                    self._hook = None
                    raise EngineError(f"the engine did not stop within {timeout:.0f} s")
                if early is None:
                    self._cond.wait(left)
                    continue
                self._cond.wait(min(left, EARLY_POLL_S))
                if self._hook_done is None and self._hook is hook:  # still stopping
                    self._cond.release()
                    try:
                        answer = early()
                    finally:
                        self._cond.acquire()
                    if answer is not None:
                        return answer
            result, error = self._hook_done
        if error is not None:
            raise error
        return result

    def _run_hook(self) -> None:
        with self._cond:
            hook, self._hook = self._hook, None
        if hook is None:
            return
        try:
            done: tuple[Any, BaseException | None] = (hook(), None)
        except Exception as exc:  # handed to the caller
            done = (None, exc)
        with self._cond:
            self._hook_done = done
            self._cond.notify_all()

    def adopt(
        self, bundle: Bundle, timeout: float, initial: Mapping[str, Any] | None = None
    ) -> tuple[bool, str]:
        """Run the engine for ``bundle`` from now on (a warm instance's owner's): write its
        settings and make its roles (and the ``initial`` databases and users), in place when
        the settings are unchanged (the same flavor: the usual case, no restart), else by a
        restart. (ok, detail); on failure the engine keeps its former bundle."""
        if self.engine is None:
            return False, self._detail
        engine = self.engine
        with self._cond:
            if self._state != ENGINE_RUNNING:
                return False, f"the engine is {self._state}: {self._detail}"
            former = engine.bundle
            engine.bundle, engine.initial, engine.initialized = bundle, initial, False
            try:
                if not engine.reconfigure():
                    engine.bootstrap()
                    return True, self._detail
            except (EngineError, OSError) as exc:
                engine.bundle, engine.initial = former, None
                return False, f"applying the bundle failed: {exc}"
        ok, detail = self.restart(timeout)  # the start after it bootstraps
        if not ok:
            engine.bundle, engine.initial = former, None
        return ok, detail

    # -- the supervisor thread

    def _set(self, state: str, detail: str, *, ready: bool = False, failed: bool = False) -> None:
        with self._cond:
            self._state, self._detail = state, detail
            if ready:
                self._generation += 1
            if failed:
                self._failures += 1
            self._cond.notify_all()

    def _sleep(self, seconds: float) -> None:
        """Back off, but wake at once for a stop or a restart request."""
        deadline = time.monotonic() + seconds
        with self._cond:
            while not (self._stopping or self._restart_requested):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def _interrupted(self) -> bool:
        with self._cond:
            return self._stopping or self._restart_requested

    def _interrupted_by_stop(self) -> bool:
        with self._cond:
            return self._stopping

    def _run(self) -> None:
        assert self.engine is not None
        engine = self.engine
        consecutive = 0
        while True:
            with self._cond:
                if self._stopping:
                    break
                requested = self._restart_requested
                self._restart_requested = False
            self._run_hook()  # the engine is stopped here
            self._set(ENGINE_STARTING, "restarting on request" if requested else "starting")
            try:
                engine.initialize()
                engine.configure()
                with self._cond:
                    if self._stopping:
                        break
                proc = engine.start()
                self.log.attach(proc.stdout)
            except Exception as exc:
                consecutive += 1
                delay = self._backoff(consecutive)
                if not isinstance(exc, EngineError | OSError):
                    log.exception("unexpected error starting the engine")
                log.error("engine failed to start: %s; retrying in %.0f s", exc, delay)
                self._set(ENGINE_FAILED, f"failed to start: {exc}", failed=True)
                self._sleep(delay)
                continue
            log.info("%s started (pid %d)", engine.datastore, proc.pid)
            outcome = self._wait_ready(engine, proc)
            if outcome == "ready":
                ready_since = time.monotonic()
                code = self._wait_exit(proc)
                if time.monotonic() - ready_since > STABLE_AFTER:
                    consecutive = 0  # it ran fine for a while: back off from the start again
            else:
                code = proc.poll()
            if proc.poll() is None:  # stop or restart requested, or never became ready
                if outcome == "ready" and not self._interrupted_by_stop():
                    # no longer serving: a caller answered early (a demote) must not find
                    # it "running" while it shuts down
                    self._set(ENGINE_STARTING, "stopping to start again")
                code = engine.stop(proc, self._stop_timeout)
                log.info("%s stopped (exit code %s)", engine.datastore, code)
            else:
                engine.children.forget(proc)
            with self._cond:
                if self._stopping:
                    break
                if self._restart_requested and outcome != "failed":
                    continue
            consecutive += 1
            delay = self._backoff(consecutive)
            if outcome == "failed":
                reason = self.snapshot()[1]
            else:
                with self._cond:
                    self._restarts += 1
                reason = f"{engine.datastore} exited unexpectedly with code {code}"
            log.error("%s; restarting in %.0f s", reason, delay)
            # A start that was never ready has already been counted as a failure.
            self._set(
                ENGINE_FAILED, f"{reason}; restarting in {delay:.0f} s", failed=outcome != "failed"
            )
            self._sleep(delay)
        self._set(ENGINE_STOPPED, "stopped")

    def _backoff(self, attempt: int) -> float:
        return float(min(self._backoff_max, self._backoff_initial * 2 ** max(0, attempt - 1)))

    def _wait_ready(self, engine: Engine, proc: subprocess.Popen[bytes]) -> str:
        """ "ready", "exited", "interrupted" or "failed" (not ready in time / bootstrap)."""
        timeout = engine.ready_timeout(self._ready_timeout)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                return "exited"
            if self._interrupted():
                return "interrupted"
            ready, detail = engine.health()
            if ready:
                break
            if time.monotonic() > deadline:
                self._set(
                    ENGINE_FAILED,
                    f"not ready {timeout:.0f} s after start: {detail}",
                    failed=True,
                )
                return "failed"
            time.sleep(self._poll)
        try:
            engine.bootstrap()
        except Exception as exc:
            if not isinstance(exc, EngineError | OSError):
                log.exception("unexpected error in bootstrap")
            self._set(ENGINE_FAILED, f"bootstrap failed: {exc}", failed=True)
            return "failed"
        log.info("%s is ready", engine.datastore)
        self._set(ENGINE_RUNNING, "accepting connections", ready=True)
        return "ready"

    def _wait_exit(self, proc: subprocess.Popen[bytes]) -> int | None:
        while True:
            try:
                return proc.wait(self._poll / 2)  # a stop or restart is seen within it
            except subprocess.TimeoutExpired:
                if self._interrupted():
                    return None

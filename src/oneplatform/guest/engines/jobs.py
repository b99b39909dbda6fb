"""Backups as jobs: one at a time, in a thread of its own, followed by the platform through
``GET /v1/backups`` (every engine's backup tool runs so)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..processes import EngineError

log = logging.getLogger("onep-agent")

# What a job's work does: take the backup the job names; the repository's entry for it.
Work = Callable[[dict[str, Any]], dict[str, Any]]


def no_repository(detail: str) -> dict[str, Any]:
    """The refusal of a backup before the engine's repository is ready, and why."""
    return {"code": "no_repository", "message": detail}


class BackupJobs:
    """The running or last backup job of an engine (``name``: its tool, for the log)."""

    def __init__(self, name: str, clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._job: dict[str, Any] | None = None

    def start(
        self, kind: str, work: Work, refusal: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Start ``work`` for a backup of ``kind`` in a thread; (HTTP status, body). A
        ``refusal`` (no repository yet) is a 409 with it; so is a job still running."""
        with self._lock:
            if refusal is not None:
                return 409, refusal
            if self._job is not None and self._job["state"] == "running":
                return 409, {"code": "busy", "message": "a backup is running", "job": self._job}
            job = {
                "id": uuid.uuid4().hex,
                "type": kind,
                "state": "running",
                "started_at": self._clock(),
                "finished_at": None,
                "label": None,
                "detail": "",
            }
            self._job = job
        threading.Thread(
            target=self._run, args=(dict(job), work), name=f"{self.name}-backup", daemon=True
        ).start()
        return 200, {"job": job}

    def job(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(self._job) if self._job else None

    def _run(self, job: dict[str, Any], work: Work) -> None:
        log.info("%s: %s backup started (job %s)", self.name, job["type"], job["id"])
        try:
            entry: dict[str, Any] | None = work(job)
            ok, detail = True, ""
        except (EngineError, OSError, ValueError, KeyError) as exc:
            entry, ok, detail = None, False, str(exc)
        label = str(entry["label"]) if entry else None
        with self._lock:
            assert self._job is not None
            self._job.update(
                state="succeeded" if ok else "failed",
                finished_at=self._clock(),
                label=label,
                backup=entry,
                detail=detail,
            )
        log.info(
            "%s: backup job %s %s %s", self.name, job["id"], "made" if ok else "failed:",
            label if ok else detail,
        )  # fmt: skip

"""Child processes: start them, and reap orphans when the agent is a container's PID 1."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path
from typing import IO, Any


class EngineError(RuntimeError):
    """The engine could not be prepared, started or bootstrapped.

    Defined here because :meth:`ChildProcesses.run` raises it too (for a child that does
    not finish in time); engines import it from :mod:`.engines.base`.
    """


class ChildProcesses:
    """Starts child processes, and reaps orphans when this process is a container's PID 1.

    Orphaned processes (e.g. server backends left behind by a crashed postmaster) are
    re-parented to PID 1, which must reap them. Only zombies that are not our own
    ``subprocess`` children are reaped, so ``Popen.wait`` keeps seeing its exit status.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ours: set[int] = set()

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        with self._lock:
            proc: subprocess.Popen[bytes] = subprocess.Popen(argv, **kwargs)
            self._ours.add(proc.pid)
            return proc

    def forget(self, proc: subprocess.Popen[bytes]) -> None:
        """Call once ``proc`` has been waited for."""
        with self._lock:
            self._ours.discard(proc.pid)

    def run(
        self,
        argv: list[str],
        *,
        stdin: bytes | None = None,
        timeout: float = 60.0,
        stdin_file: IO[bytes] | None = None,
        stdout: IO[bytes] | int = subprocess.PIPE,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run to its end; its output (``stdout``: a file to write it to instead)."""
        proc = self.popen(
            argv,
            stdin=stdin_file
            if stdin_file is not None
            else (subprocess.PIPE if stdin is not None else subprocess.DEVNULL),
            stdout=stdout,
            stderr=subprocess.PIPE,
            **kwargs,
        )
        try:
            try:
                out, err = proc.communicate(stdin, timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise EngineError(
                    f"{Path(argv[0]).name} did not finish in {timeout:.0f} s"
                ) from None
        finally:
            self.forget(proc)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def reap_orphans(self) -> None:
        if os.getpid() != 1:
            return
        with self._lock:
            for pid in _zombie_children():
                if pid not in self._ours:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)


def _zombie_children() -> list[int]:
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and fields[0] == b"Z" and int(fields[1]) == me:
            found.append(int(entry))
    return found

"""The engine's own log (its server's stdout and stderr), kept by the agent.

The server writes into a pipe the agent reads line by line: each line goes on to the
agent's own output (the container's log, the VM's console, as before) and into a ring of
the latest lines, numbered, that ``GET /v1/logs`` serves (``onep db logs``; a follower asks
for what came after the last number it saw). Reading never blocks the server: the reader
only copies.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import threading
from typing import IO, Any

CAPACITY = 5000  # lines kept
MAX_LINE = 8192  # bytes of one line kept (the rest is cut)

# What an engine passes to the server's Popen: its output into the agent's pipe.
SERVER_OUTPUT: dict[str, Any] = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}


class EngineLog:
    def __init__(self, capacity: int = CAPACITY, echo: IO[bytes] | None = None) -> None:
        self._lines: collections.deque[tuple[int, str]] = collections.deque(maxlen=capacity)
        self._next = 1
        self._lock = threading.Lock()
        self._echo = echo if echo is not None else sys.stdout.buffer

    def attach(self, stream: IO[bytes] | None) -> None:
        """Read ``stream`` (a server's output pipe) until it ends, in a thread of its own."""
        if stream is None:
            return
        threading.Thread(target=self._read, args=(stream,), daemon=True, name="engine-log").start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            try:
                self._echo.write(raw)
                self._echo.flush()
            except (OSError, ValueError):
                pass  # the agent's own output is gone: the ring still has it
            self.add(raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r\n"))
        stream.close()

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append((self._next, line))
            self._next += 1

    def read(self, tail: int = 100, after: int | None = None) -> dict[str, Any]:
        """The last ``tail`` lines, or (``after``) those numbered after it, at most ``tail``
        of the first; ``next``: the number to ask after next time."""
        tail = max(1, min(tail, CAPACITY))
        with self._lock:
            lines = list(self._lines)
            last = self._next - 1
        if after is None:
            chosen = lines[-tail:]
        else:
            chosen = [entry for entry in lines if entry[0] > after][:tail]
        return {
            "lines": [text for _, text in chosen],
            "first": chosen[0][0] if chosen else None,
            "next": chosen[-1][0] if chosen else (last if after is None else after),
        }

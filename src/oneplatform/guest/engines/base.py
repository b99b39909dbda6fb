"""The engine contract: what the agent needs from a datastore engine.

An engine module (``engines/<datastore>.py``) subclasses :class:`Engine`; the registry in
``engines/__init__.py`` maps the datastore's name to it. Everything an engine needs from
the rest of the agent is importable from here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..bundle import Bundle, UpstreamSettings
from ..processes import ChildProcesses, EngineError

__all__ = ["ChildProcesses", "Engine", "EngineError", "NotSupported", "tail"]

log = logging.getLogger("onep-agent")


def tail(data: bytes | str | None, lines: int = 5, limit: int = 500) -> str:
    """The last ``lines`` lines of a tool's output on one line, at most ``limit`` characters."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")
    return " | ".join(text.strip().splitlines()[-lines:])[:limit]


class NotSupported(EngineError):
    """What this engine does not do (the agent answers 501)."""


class Engine:
    """What the agent needs from a datastore engine; one subclass per engine.

    It is made with the bundle (None without one: then nobody may log in remotely), the
    agent's :class:`ChildProcesses` and the datastore version the image runs.

    The supervisor calls, on every start: :meth:`initialize` (first-start work such as
    creating the data directory; never touches existing data), :meth:`configure` (write
    the bundle's settings), :meth:`start` (spawn the server as a child), then polls
    :meth:`health` until ready and calls :meth:`bootstrap` (e.g. create the admin role once).
    """

    datastore: ClassVar[str] = ""
    OS_USER: ClassVar[str] = ""  # the server runs as this user; its files are its own
    # Settings the agent owns: the bundle's are ignored (lower-case; see :meth:`_owned`).
    RESERVED: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, bundle: Bundle | None, children: ChildProcesses, *, version: str = ""
    ) -> None:
        self.bundle = bundle
        self.children = children
        self.version = version
        # A claim's initial databases and users, for the next :meth:`bootstrap` to make
        # (then None again); ``initialized`` says that it did.
        self.initial: Mapping[str, Any] | None = None
        self.initialized = False

    def initialize(self) -> None:
        raise NotImplementedError

    def configure(self) -> None:
        raise NotImplementedError

    def start(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def health(self) -> tuple[bool, str]:
        """(ready, detail): whether the engine accepts connections right now."""
        raise NotImplementedError

    def bootstrap(self) -> None:
        """Make the roles the bundle names (once); nothing for a warm bundle."""
        raise NotImplementedError

    def reconfigure(self) -> bool:
        """Write the settings of a new :attr:`bundle` to a running engine; whether it must
        restart for them (the default: always)."""
        self.configure()
        return True

    def bundle_settings(self) -> list[tuple[str, str]]:
        """The bundle's engine settings with the configuration group's values over them,
        sorted, but those the agent owns (logged)."""
        kept = []
        base = dict(self.bundle.engine.settings) if self.bundle else {}
        for name, value in sorted({**base, **self.configuration()}.items()):
            if self._owned(name):
                log.warning("ignoring engine setting %s: the agent manages it", name)
                continue
            kept.append((name, value))
        return kept

    def _owned(self, name: str) -> bool:
        return name.lower() in self.RESERVED

    # -- the configuration group (kept beside the data, on the data disk)

    CONFIGURATION_NAME: ClassVar[str] = "configuration.json"
    data_dir: Path

    def configuration_path(self) -> Path:
        return self.data_dir.parent / self.CONFIGURATION_NAME

    def configuration(self) -> dict[str, str]:
        """The configuration group's values: the last the platform applied (kept on the data
        disk, so a restart or a repair keeps them), else the bundle's (a new member's)."""
        path = self.configuration_path()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {str(k): str(v) for k, v in dict(data["values"]).items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s: %s", path, exc)
        return dict(self.bundle.engine.configuration) if self.bundle else {}

    def apply_configuration(self, values: Mapping[str, str]) -> dict[str, Any]:
        """Make ``values`` the configuration group's: kept for every later start, and given
        to the running engine where it takes them live. The answer names the changed
        settings and those that wait for a restart (``pending_restart``)."""
        before = dict(self.bundle_settings())
        text = json.dumps({"values": dict(sorted(values.items()))}, sort_keys=True)
        self._write(self.configuration_path(), text + "\n")
        after = dict(self.bundle_settings())
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        pending = self.apply_live(changed, after) if changed else []
        return {"changed": changed, "pending_restart": sorted(pending)}

    def apply_live(self, changed: list[str], settings: Mapping[str, str]) -> list[str]:
        """Write the engine's configuration and give the running engine the ``changed``
        settings (now ``settings``; a name missing there goes back to its default); the
        names that wait for a restart. The default: written, all wait."""
        self.configure()
        return changed

    def ready_timeout(self, default: float) -> float:
        """How long the next start may take to be ready (longer while it recovers)."""
        return default

    # -- backups (an engine without them keeps these defaults: the agent answers 501)

    def backup_status(self) -> dict[str, Any] | None:
        """The repository's state (e.g. whether WAL is archived), or None without backups."""
        return None

    def start_backup(self, kind: str) -> tuple[int, dict[str, Any]]:
        """Start a backup of ``kind`` in the background: (HTTP status, body with the job)."""
        return 501, {"code": "no_backups", "message": f"{self.datastore} has no backups"}

    def backup_job(self) -> dict[str, Any] | None:
        """The running or last backup job."""
        return None

    def archive_now(self, timeout: float, switch: bool = True) -> float:
        """Close the current WAL segment and wait until it is archived; the moment (epoch)
        up to which everything committed is then in the repository."""
        raise EngineError(f"{self.datastore} does not archive")

    # -- statistics: what the platform's /metrics shows of the engine

    def stats(self) -> dict[str, int]:
        """The engine's own figures, in one shape for every engine: ``connections`` (client
        connections now), ``transactions`` (a counter: what the engine counts as such —
        commits and rollbacks, or a key-value store's commands), ``size_bytes`` (its data),
        ``cache_hits`` and ``cache_misses`` (counters: reads served from memory, and not)."""
        raise NotSupported(f"{self.datastore} reports no statistics")

    # -- replication (an engine without it keeps these defaults: the agent answers 501)

    def replication_status(self) -> dict[str, Any]:
        """This member's role, WAL positions and (on a primary) replicas."""
        raise NotSupported(f"{self.datastore} has no replication")

    def ensure_replication_role(self, user: str, password: str) -> None:
        raise NotSupported(f"{self.datastore} has no replication")

    def prepare_promotion(self, seconds: float) -> dict[str, Any]:
        """A switchover to this standby is coming (within ``seconds``): whatever makes
        its promotion quicker, taken back by itself if none comes."""
        raise NotSupported(f"{self.datastore} has no replication")

    def promote(self, timeout: float) -> dict[str, Any]:
        raise NotSupported(f"{self.datastore} has no replication")

    def demote_live(self, upstream: UpstreamSettings) -> dict[str, Any] | None:
        """Make the running primary a standby of ``upstream`` without stopping it, and
        answer as :meth:`demote_stopped` does; None: this engine is demoted stopped."""
        return None

    def demote_stopped(self, upstream: UpstreamSettings, rewind: bool) -> dict[str, Any]:
        raise NotSupported(f"{self.datastore} has no replication")

    def demoted_when_shut_down(self, upstream: UpstreamSettings) -> dict[str, Any] | None:
        """While the server stops: :meth:`demote_stopped`'s answer as soon as the server
        takes no more writes and its last record is written, before it has exited (None:
        not yet, or the engine cannot tell: the demote then answers after the exit)."""
        return None

    def upstream(self) -> UpstreamSettings | None:
        """The primary this member follows, when it is a standby."""
        return None

    def detach(self, bundle: Bundle, timeout: float) -> dict[str, Any]:
        """This standby becomes an independent primary running with ``bundle``."""
        raise NotSupported(f"{self.datastore} has no replication")

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        """Shut the server down (fast), escalating if it takes longer than ``timeout``."""
        raise NotImplementedError

    def _stop_by_signals(
        self, proc: subprocess.Popen[bytes], steps: tuple[tuple[signal.Signals, float], ...]
    ) -> int | None:
        """Send each signal in turn, waiting its seconds, until the server has exited."""
        for sig, wait in steps:
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0f s of %s", self.datastore, wait, sig.name)
        self.children.forget(proc)
        return proc.returncode

    # -- processes

    def _env(self) -> dict[str, str]:
        """The environment of the engine's processes: nothing of the agent's own."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": "/root",
        }

    def _run_root(
        self, argv: list[str], *, stdin: bytes | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[bytes]:
        """A tool as the agent's user (root: a backup tool reads the server's files)."""
        return self.children.run(argv, stdin=stdin, timeout=timeout, env=self._env())

    # -- the server's files (run as root, the agent hands them to OS_USER)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.OS_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    def _own_tree(self, root: Path, every_entry: bool = False) -> None:
        """Give the server back its files when they are not its own: a container recreated
        in a user namespace of its own sees its volume owned by its root, not the server's.
        The root's owner tells for a data directory; ``every_entry`` looks at each entry
        (a tree whose top the agent makes its own again at every start)."""
        if os.geteuid() != 0 or not root.exists():
            return
        user = pwd.getpwnam(self.OS_USER)
        if not every_entry and root.stat().st_uid == user.pw_uid:
            return
        given = 0
        for parent, dirs, files in os.walk(root):
            for name in [".", *dirs, *files]:
                path = os.path.join(parent, name)
                if os.lstat(path).st_uid != user.pw_uid:
                    os.lchown(path, user.pw_uid, user.pw_gid)
                    given += 1
        if given:
            log.info("gave %s back to %s (%d entries)", root, self.OS_USER, given)

    def _write(self, path: Path, text: str) -> None:
        """Write a file readable by the server only, atomically."""
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        self._chown(tmp)
        os.replace(tmp, path)

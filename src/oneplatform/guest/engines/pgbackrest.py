"""pgBackRest for the PostgreSQL engine: its configuration from the bundle, WAL archiving,
the stanza, backups (one at a time, in a thread of their own) and a first start's restore.

The repository is the instance's own bucket in an S3 store over TLS (pgBackRest 2.45 speaks
S3 only over TLS, path-style for a self-hosted store), encrypted with the bundle's cipher
passphrase. The store's host name is mapped to the guest's path to it in ``/etc/hosts``:
pgBackRest checks the certificate against that name (it ignores IP addresses in it).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bundle import RestoreSettings, StoreSettings
from ..processes import EngineError
from .jobs import BackupJobs, no_repository

log = logging.getLogger("onep-agent")

STANZA = "db"
BACKUP_TYPES = ("full", "diff", "incr")
EXE = "/usr/bin/pgbackrest"
CONF_DIR = Path("/etc/pgbackrest")
CA_PATH = CONF_DIR / "store-ca.pem"  # /etc/oneplatform is root's alone on a VM
HOSTS_PATH = Path("/etc/hosts")
HOSTS_MARK = "# OnePlatform backup store"
NO_ARCHIVE = "/bin/true"  # no repository: WAL is recycled, as without archiving
BACKUP_TIMEOUT = 6 * 3600.0
RESTORE_TIMEOUT = 6 * 3600.0

Runner = Callable[..., subprocess.CompletedProcess[bytes]]


def render_config(
    store: StoreSettings, pg_path: Path, socket_dir: Path, port: int, work: Path, processes: int
) -> str:
    """pgbackrest.conf for ``store``; every value is a word the bundle checked."""
    lines = [
        "# Written by the OnePlatform guest agent at every start; edits are lost.",
        "[global]",
        "repo1-type=s3",
        f"repo1-s3-endpoint={store.host}",
        f"repo1-storage-port={store.port}",
        f"repo1-s3-bucket={store.bucket}",
        f"repo1-s3-region={store.region}",
        "repo1-s3-uri-style=path",
        f"repo1-s3-key={store.access_key}",
        f"repo1-s3-key-secret={store.secret_key}",
        f"repo1-storage-ca-file={CA_PATH}",
        f"repo1-path={store.path}",
        "repo1-cipher-type=aes-256-cbc",
        f"repo1-cipher-pass={store.cipher_pass}",
        "repo1-bundle=y",  # small files in one object each: the store's per-object cost rules
        "compress-type=lz4",
        f"process-max={max(1, processes)}",
        "start-fast=y",
        # The store is on the platform's own network: 15 s without a byte is a failure, not
        # a slow link (the default 60 s, with pgBackRest's retries, made a backup to a store
        # that stopped answering take minutes to fail).
        "io-timeout=15",
        "archive-async=y",
        f"spool-path={work / 'spool'}",
        f"lock-path={work / 'lock'}",
        "log-level-console=warn",
        "log-level-stderr=off",
        "log-level-file=off",
        "",
        f"[{STANZA}]",
        f"pg1-path={pg_path}",
        f"pg1-port={port}",
        f"pg1-socket-path={socket_dir}",
        "",
    ]
    return "\n".join(lines)


def map_store_host(store: StoreSettings, hosts: Path = HOSTS_PATH) -> None:
    """Make ``store.host`` resolve to ``store.address`` (one line of /etc/hosts, ours)."""
    try:
        current = hosts.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = ""
    line = f"{store.address} {store.host} {HOSTS_MARK}"
    kept = [
        row
        for row in current.splitlines()
        if not row.endswith(HOSTS_MARK) and store.host not in row.split("#")[0].split()[1:]
    ]
    text = "\n".join([*kept, line]) + "\n"
    if text != current:
        hosts.write_text(text, encoding="utf-8")


def archive_command(store: StoreSettings | None, conf: Path) -> str:
    if store is None:
        return NO_ARCHIVE
    return f"{EXE} --config={conf} --stanza={STANZA} archive-push %p"


def _first_error(proc: subprocess.CompletedProcess[bytes]) -> str:
    text = (proc.stderr or b"").decode("utf-8", "replace") + (proc.stdout or b"").decode(
        "utf-8", "replace"
    )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line] or lines
    return (" | ".join(errors[:3]) or f"exit code {proc.returncode}")[:600]


class PgBackRest:
    """The instance's pgBackRest: runs it as the server's OS user through ``run``."""

    def __init__(
        self,
        run: Runner,
        pg_path: Path,
        socket_dir: Path,
        work: Path,
        conf_dir: Path = CONF_DIR,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._run = run
        self.pg_path = pg_path
        self.socket_dir = socket_dir
        self.work = work
        self.conf = conf_dir / "pgbackrest.conf"
        self.restore_conf = conf_dir / "restore.conf"
        self._lock = threading.Lock()
        self.jobs = BackupJobs("pgBackRest", clock)
        self._stanza_ok = False
        self._store_key: tuple[str, ...] | None = None
        self._stanza_detail = "no repository"
        self._stanza_thread: threading.Thread | None = None

    # -- configuration

    def configure(
        self,
        store: StoreSettings | None,
        restore: RestoreSettings | None,
        port: int,
        processes: int,
        write: Callable[[Path, str], None],
        own: Callable[[Path], None],
    ) -> None:
        """Write the repository's config (and the restore source's, for a first start
        that restores), the store's CA and its /etc/hosts line."""
        if store is None and restore is None:
            return
        for path in (self.work, self.work / "spool", self.work / "lock", self.conf.parent):
            path.mkdir(parents=True, exist_ok=True)
            own(path)  # pgBackRest runs as the server's user
        any_store = store or (restore.store if restore else None)
        assert any_store is not None
        write(CA_PATH, any_store.ca_pem)
        for each in (store, restore.store if restore else None):
            if each is not None:
                map_store_host(each)
        if store is not None:
            key = (store.host, store.bucket, store.path, store.access_key)
            if key != self._store_key:  # another repository (a detach): its stanza anew
                self._store_key, self._stanza_ok = key, False
            write(
                self.conf,
                render_config(store, self.pg_path, self.socket_dir, port, self.work, processes),
            )
            self._stanza_detail = "the stanza is not created yet"
        if restore is not None:
            write(
                self.restore_conf,
                render_config(
                    restore.store, self.pg_path, self.socket_dir, port, self.work, processes
                ),
            )

    def archive_command(self, store: StoreSettings | None) -> str:
        return archive_command(store, self.conf)

    def archive_get_command(self) -> str:
        """A standby's restore_command: segments from the instance's own repository."""
        return f'{EXE} --config={self.conf} --stanza={STANZA} archive-get %f "%p"'

    def _pgbackrest(
        self, conf: Path, *args: str, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[bytes]:
        return self._run([EXE, f"--config={conf}", f"--stanza={STANZA}", *args], timeout=timeout)

    # -- the stanza

    def ensure_stanza(
        self, store: StoreSettings | None, on_ready: Callable[[], object] | None = None
    ) -> None:
        """Create the stanza in the background (retrying until it exists): archiving works
        from then on; WAL written before waits in pg_wal until then (``on_ready`` then
        wakes the archiver, which sleeps a minute after three failed tries)."""
        if store is None or self._stanza_ok:
            return
        with self._lock:
            if self._stanza_thread is not None and self._stanza_thread.is_alive():
                return
            self._stanza_thread = threading.Thread(
                target=self._stanza_loop, args=(on_ready,), name="pgbackrest-stanza", daemon=True
            )
            self._stanza_thread.start()

    def _stanza_loop(self, on_ready: Callable[[], object] | None = None) -> None:
        delay = 1.0
        while True:
            try:
                proc = self._pgbackrest(self.conf, "stanza-create", timeout=120)
                ok, detail = proc.returncode == 0, _first_error(proc)
            except (EngineError, OSError) as exc:
                ok, detail = False, str(exc)
            with self._lock:
                self._stanza_ok = ok
                self._stanza_detail = "ready" if ok else f"stanza-create failed: {detail}"
            if ok:
                log.info("pgBackRest: the stanza exists; WAL is archived")
                if on_ready is not None:
                    try:
                        on_ready()
                    except (EngineError, OSError) as exc:
                        log.warning("pgBackRest: the archiver was not woken: %s", exc)
                return
            log.warning("pgBackRest: stanza-create failed (retrying in %.0f s): %s", delay, detail)
            time.sleep(delay)
            delay = min(30.0, delay * 2)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"stanza": self._stanza_ok, "detail": self._stanza_detail}

    # -- backups

    def start_backup(
        self, kind: str, prepare: Callable[[], object] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Start a backup of ``kind`` in a thread, after ``prepare`` (there); (HTTP status,
        body)."""
        if kind not in BACKUP_TYPES:
            return 400, {"code": "bad_type", "message": f"type must be one of {BACKUP_TYPES}"}
        with self._lock:
            refusal = None if self._stanza_ok else no_repository(self._stanza_detail)
        return self.jobs.start(kind, lambda job: self._backup(job, prepare), refusal)

    def job(self) -> dict[str, Any] | None:
        return self.jobs.job()

    def _backup(
        self, job: dict[str, Any], prepare: Callable[[], object] | None = None
    ) -> dict[str, Any]:
        if prepare is not None:
            prepare()
        proc = self._pgbackrest(
            self.conf, f"--type={job['type']}", "backup", timeout=BACKUP_TIMEOUT
        )
        if proc.returncode != 0:
            raise EngineError(_first_error(proc))
        entry = self._newest(job)
        if entry is None:
            raise EngineError("the backup finished but is not in the repository's info")
        return entry

    def _newest(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """The repository's entry for the backup ``job`` made (pgBackRest's info; its type
        may differ: an incremental with no full before it becomes a full)."""
        started = float(job["started_at"]) - 2.0
        found = [
            b for b in self.backups() if float(b.get("timestamp", {}).get("start", 0)) >= started
        ]
        return found[-1] if found else None

    def info(self) -> list[dict[str, Any]]:
        proc = self._pgbackrest(self.conf, "--output=json", "info", timeout=120)
        if proc.returncode != 0:
            raise EngineError(f"pgbackrest info failed: {_first_error(proc)}")
        data = json.loads(proc.stdout or b"[]")
        return data if isinstance(data, list) else []

    def backups(self) -> list[dict[str, Any]]:
        for stanza in self.info():
            if stanza.get("name") == STANZA:
                return list(stanza.get("backup") or [])
        return []

    # -- restore

    def restore(self, restore: RestoreSettings, target: Path) -> None:
        """Fill the empty ``target`` from the restore source; PostgreSQL then recovers (to
        the backup's end, or to the target time) and promotes itself at its first start."""
        args = [f"--pg1-path={target}", f"--set={restore.backup_set}"]
        if restore.target_time:
            args += ["--type=time", f"--target={restore.target_time}"]
        else:
            args += ["--type=immediate"]
        fetch = f'{EXE} --config={self.restore_conf} --stanza={STANZA} archive-get %f "%p"'
        args += [
            "--target-action=promote",
            f"--recovery-option=restore_command={fetch}",
            "--process-max=2",
            "restore",
        ]
        log.info(
            "pgBackRest: restoring backup %s%s",
            restore.backup_set,
            f" up to {restore.target_time}" if restore.target_time else "",
        )
        started = time.monotonic()
        proc = self._pgbackrest(self.restore_conf, *args, timeout=RESTORE_TIMEOUT)
        if proc.returncode != 0:
            raise EngineError(f"restore failed: {_first_error(proc)}")
        log.info(
            "pgBackRest: restore copied in %.1f s (%s)",
            time.monotonic() - started,
            shlex.join(args[:2]),
        )

    def restore_standby(self, target: Path) -> None:
        """Fill the empty ``target`` from this instance's own repository's latest backup,
        writing no recovery settings (``--type=preserve`` of nothing): the agent makes it a
        standby, whose restore_command and primary_conninfo it renders itself."""
        log.info("pgBackRest: seeding a standby from the latest backup")
        started = time.monotonic()
        proc = self._pgbackrest(
            self.conf,
            f"--pg1-path={target}",
            "--type=preserve",
            "--process-max=2",
            "restore",
            timeout=RESTORE_TIMEOUT,
        )
        if proc.returncode != 0:
            raise EngineError(f"restore failed: {_first_error(proc)}")
        log.info("pgBackRest: standby copied in %.1f s", time.monotonic() - started)


def restoring(pg_path: Path) -> bool:
    """Whether the data directory still has recovery to do (PostgreSQL removes the signal
    file when it promotes)."""
    return os.path.exists(pg_path / "recovery.signal")

"""MariaDB's backups: mariadb-backup streams, compressed and encrypted into the instance's
own repository in the object store; a first start's restore reads them back.

A backup is a folder of the repository named by its label (pgBackRest's form:
``20261127-010203F`` for a full, ``20261127-010203F_20261127-020304I`` for an incremental):
``data.xbs.zst`` (mariadb-backup's xbstream, zstd-compressed) and ``backup.json``, written
last, which makes it a backup: its type, the backup it builds on (``prior``), its InnoDB LSN
range, binary log position and GTID, times and sizes. An incremental reads the newest
manifest for its start LSN (``--incremental-lsn``): nothing of it is kept in the guest, so
a new primary goes on where the former one stopped.

The repository is reached through rclone, encrypted (:mod:`.filerepo`).
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bundle import RestoreSettings, StoreSettings
from ..processes import EngineError
from .filerepo import CONF_DIR, MANIFEST, Repository, map_store_host, tail
from .jobs import BackupJobs, no_repository

log = logging.getLogger("onep-agent")

BACKUP_TYPES = ("full", "incr")
DATA = "data.xbs.zst"
BACKUP_TIMEOUT = 6 * 3600.0
RESTORE_TIMEOUT = 6 * 3600.0

Runner = Callable[..., subprocess.CompletedProcess[bytes]]


class MariaBackup:
    """The instance's backups: one job at a time, in a thread of its own."""

    def __init__(
        self,
        run: Runner,
        socket: Path,
        work: Path,
        conf_dir: Path = CONF_DIR,
        clock: Callable[[], float] = time.time,
        map_host: Callable[[StoreSettings], None] = map_store_host,
    ) -> None:
        self._run = run
        # The lineage of the server's data files (a new data directory or a replica's dump
        # starts one; a restore continues its backup's): an incremental continues only a
        # chain of the same lineage (after a switchover the primary's files are another
        # member's, whose LSNs have nothing to do with the chain's).
        self.lineage = ""
        self.socket = socket
        self.work = work
        self.repo = Repository(run, conf_dir, "repository", map_host)
        self.source = Repository(run, conf_dir, "restore-source", map_host)
        self._clock = clock
        self._lock = threading.Lock()
        self.jobs = BackupJobs("mariadb-backup", clock)
        self._store: StoreSettings | None = None
        self._detail = "no repository"

    def configure(
        self,
        store: StoreSettings | None,
        restore: RestoreSettings | None,
        write: Callable[[Path, str], None],
    ) -> None:
        """Write rclone's configs for the repository and a first start's restore source."""
        try:
            if store is not None:
                self.repo.configure(store, write)
            if restore is not None:
                self.source.configure(restore.store, write)
        except (EngineError, OSError) as exc:
            self._detail = f"the repository is not configured: {exc}"
            raise
        with self._lock:
            self._store = store
            self._detail = "ready" if store is not None else "no repository"

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"stanza": self._store is not None, "detail": self._detail}

    # -- backups

    def start_backup(self, kind: str) -> tuple[int, dict[str, Any]]:
        if kind not in BACKUP_TYPES:
            return 400, {"code": "bad_type", "message": f"type must be one of {BACKUP_TYPES}"}
        with self._lock:
            refusal = None if self._store is not None else no_repository(self._detail)
        return self.jobs.start(kind, lambda job: self.backup(str(job["type"])), refusal)

    def job(self) -> dict[str, Any] | None:
        return self.jobs.job()

    def backup(self, kind: str) -> dict[str, Any]:
        """Take a backup of ``kind`` (an incremental with no backup of these data files'
        lineage before it is a full);
        its manifest, once it is in the repository."""
        prior = self.repo.manifests()[-1:] if kind == "incr" else []
        if prior and prior[0].get("lineage") != self.lineage:
            log.info("the last backup is of other data files: a full backup, not an incremental")
            prior = []
        kind = "incr" if prior else "full"
        started = self._clock()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started))
        # pgBackRest's label form: an incremental's starts with its full's
        label = f"{prior[0]['label'].split('_')[0]}_{stamp}I" if prior else f"{stamp}F"
        lsn_dir, scratch = self.work / f"lsn-{label}", self.work / f"tmp-{label}"
        logs = {name: self.work / f"{name}-{label}.log" for name in ("backup", "raw", "stored")}
        for path in (lsn_dir, scratch):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True, mode=0o700)
        try:
            argv = [
                "mariadb-backup", "--backup", "--stream=xbstream", f"--socket={self.socket}",
                "--user=root", f"--target-dir={scratch}", f"--extra-lsndir={lsn_dir}",
            ]  # fmt: skip
            if prior:
                argv.append(f"--incremental-lsn={prior[0]['lsn']['to']}")
            q = {name: shlex.quote(str(path)) for name, path in logs.items()}
            # dd counts what passes (its summary on stderr): the stream's size, and what is
            # stored once compressed
            pipeline = (
                f"set -o pipefail; {shlex.join(argv)} 2>{q['backup']}"
                f" | dd bs=1M 2>{q['raw']} | zstd -q -3 -T2 | dd bs=1M 2>{q['stored']}"
                f" | {self.repo.command('rcat', f'repo:{label}/{DATA}')}"
            )
            proc = self._run(["bash", "-c", pipeline], timeout=BACKUP_TIMEOUT)
            if proc.returncode != 0:
                said = tail(_read(logs["backup"])) or tail(proc.stderr)
                raise EngineError(f"the backup failed: {said}")
            checkpoints = _keyvalues(lsn_dir / "xtrabackup_checkpoints")
            info = _keyvalues(lsn_dir / "xtrabackup_info")
            entry = {
                "label": label,
                "type": kind,
                "prior": prior[0]["label"] if prior else None,
                "timestamp": {"start": int(started), "stop": int(self._clock())},
                "lsn": {  # to: the checkpoint the next incremental starts at; last: the end
                    "from": int(checkpoints["from_lsn"]),
                    "to": int(checkpoints["to_lsn"]),
                    "last": int(checkpoints.get("last_lsn", checkpoints["to_lsn"])),
                },
                "binlog": {
                    "position": info.get("binlog_pos", ""),
                    "gtid": _gtid(info.get("binlog_pos", "")),
                },
                "info": {
                    "size": _copied(_read(logs["raw"])),
                    "repository": {"delta": _copied(_read(logs["stored"]))},
                },
                "server_version": info.get("server_version", ""),
                "lineage": self.lineage,
            }
            self.repo.put(f"{label}/{MANIFEST}", json.dumps(entry).encode())
            return entry
        finally:
            for path in (lsn_dir, scratch):
                shutil.rmtree(path, ignore_errors=True)
            for path in logs.values():
                path.unlink(missing_ok=True)

    # -- restore

    def restore(self, restore: RestoreSettings, target: Path) -> str:
        """Fill the empty ``target`` from the source's backup ``backup_set`` and the chain it
        builds on: the full extracted there, each incremental applied in order, prepared
        (InnoDB's redo applied): a data directory the server starts on as it is. Returns
        the lineage the restored files continue."""
        if restore.target_time:
            raise EngineError("MariaDB restores a backup as it was taken: no target time")
        chain = _chain(self.source.manifests(), restore.backup_set)
        log.info("mariadb-backup: restoring %s", " + ".join(m["label"] for m in chain))
        started = time.monotonic()
        self._extract(chain[0]["label"], target)
        self._prepare(target)
        for manifest in chain[1:]:
            delta = target.with_name(f"{target.name}.incr-{manifest['label']}")
            shutil.rmtree(delta, ignore_errors=True)
            delta.mkdir(mode=0o700)
            try:
                self._extract(manifest["label"], delta)
                self._prepare(target, delta)
            finally:
                shutil.rmtree(delta, ignore_errors=True)
        log.info("mariadb-backup: restored in %.1f s", time.monotonic() - started)
        return str(chain[-1].get("lineage") or chain[0]["label"])

    def _extract(self, label: str, into: Path) -> None:
        pipeline = (
            f"set -o pipefail; {self.source.command('cat', f'repo:{label}/{DATA}')}"
            f" | zstd -q -d | mbstream -x -C {shlex.quote(str(into))}"
        )
        proc = self._run(["bash", "-c", pipeline], timeout=RESTORE_TIMEOUT)
        if proc.returncode != 0:
            raise EngineError(f"reading backup {label} failed: {tail(proc.stderr)}")

    def _prepare(self, target: Path, delta: Path | None = None) -> None:
        argv = ["mariadb-backup", "--prepare", f"--target-dir={target}"]
        if delta is not None:
            argv.append(f"--incremental-dir={delta}")
        proc = self._run(argv, timeout=RESTORE_TIMEOUT)
        if proc.returncode != 0:
            raise EngineError(f"mariadb-backup --prepare failed: {tail(proc.stderr, 6)}")


def _chain(manifests: list[dict[str, Any]], label: str) -> list[dict[str, Any]]:
    """The backups ``label`` needs, its full first."""
    by_label = {m["label"]: m for m in manifests}
    chain: list[dict[str, Any]] = []
    current: str | None = label
    while current is not None:
        manifest = by_label.get(current)
        if manifest is None:
            raise EngineError(f"backup {current} is not in the source's repository")
        chain.insert(0, manifest)
        current = manifest.get("prior")
    return chain


def _keyvalues(path: Path) -> dict[str, str]:
    """``key = value`` lines (mariadb-backup's checkpoints and info files)."""
    found: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            found[key.strip()] = value.strip()
    return found


def _gtid(binlog_pos: str) -> str:
    """The GTID of mariadb-backup's ``binlog_pos`` (``filename '…', position '…', GTID of
    the last change '0-1-42'``)."""
    marker = "GTID of the last change '"
    start = binlog_pos.find(marker)
    if start < 0:
        return ""
    rest = binlog_pos[start + len(marker) :]
    return rest.split("'", 1)[0]


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _copied(dd_summary: str) -> int | None:
    """The bytes dd says it copied (``123 bytes (123 B) copied, …``)."""
    match = re.search(r"^(\d+) bytes", dd_summary, re.MULTILINE)
    return int(match.group(1)) if match else None

"""Redis from Debian's packages: configuration, start, readiness, ACL users, RDB backups.

The data directory is ``/var/lib/oneplatform/redis`` on the data disk: the RDB snapshot,
the append-only file (``appendonly yes``: every write is logged, fsync'd each second) and
the ACL file (``users.acl``: users survive a restart and a recreated container). The server
reads one config file the agent writes at every start (``oneplatform-redis.conf`` beside
the data directory); nothing of Debian's /etc/redis applies.

Users are ACL users. ``default`` is off: nobody is let in without a user and password. The
platform's user may do everything; the tenant's admin and the users the platform makes reach
every key and channel with every command but the server's own (``-@admin``: CONFIG, ACL,
SHUTDOWN, REPLICAOF, DEBUG, SAVE …). The agent talks to the server over its Unix socket as
the platform's user (the password in ``REDISCLI_AUTH``, never in argv).

Backups are the RDB snapshot (``BGSAVE``) and the ACL file, compressed and encrypted into
the instance's repository with rclone, as MariaDB's are (:mod:`.filerepo`).
A restore puts them in an empty data directory and starts with ``appendonly no`` once:
Redis loads the snapshot, then ``CONFIG SET appendonly yes`` rewrites the append-only file
from memory (with ``appendonly yes`` and no such file, Redis would start empty).

Replicas follow their primary (``replicaof``) through the guest's replication relay
(:mod:`..relay`) as the database's replication user; a new one is seeded by Redis's own full
synchronisation. Positions are replication offsets (bytes). Redis keeps its ACL users per
server, not in the data: a replica copies its primary's users every few seconds (``ACL
LIST`` through the relay), so that a promoted replica lets in whoever its primary did. A
switchover demotes the running primary as Redis's ``FAILOVER`` does (writes paused, the
offset read, then ``REPLICAOF``); ``FAILOVER`` itself cannot be used: it has the primary
connect to the replica's own address, and members reach each other only through the hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..bundle import Bundle, RestoreSettings, StoreSettings, UpstreamSettings
from ..contract import DATA_ROOT
from ..enginelog import SERVER_OUTPUT
from ..relay import RELAY_PORT
from . import filerepo
from .base import ChildProcesses, Engine, EngineError, NotSupported, tail
from .filerepo import CONF_DIR, MANIFEST, Repository
from .following import Following
from .jobs import BackupJobs, no_repository

log = logging.getLogger("onep-agent")

DEFAULT_VERSION = "7.0"
SNAPSHOT = "dump.rdb.zst"
USERS = "users.acl"
BACKUP_TIMEOUT = 6 * 3600.0
# The tenant's admin and users: every key and channel, every command but the server's own.
TENANT_RULES = "~* &* +@all -@admin"
# The replication user: a replica's handshake, and reading the primary's users.
REPL_RULES = "+psync +sync +replconf +ping +acl|list"


def user_line(name: str, password: str, rules: str) -> str:
    """An ACL file line: the user, on, with this one password (its SHA-256, never the text)."""
    digest = hashlib.sha256(password.encode("utf-8")).hexdigest()
    return f"user {name} on #{digest} {rules}"


class RedisEngine(Engine):
    """Redis from Debian's packages, data under /var/lib/oneplatform/redis."""

    datastore = "redis"
    OS_USER = "redis"
    CONF_NAME = "oneplatform-redis.conf"
    RESTORED_NAME = "oneplatform-restored.pending"  # load the snapshot, then turn AOF on
    UPSTREAM_NAME = "redis-upstream.json"  # beside the data directory
    # Directives the agent owns; the bundle cannot override them.
    RESERVED = frozenset(
        {
            "bind", "port", "dir", "dbfilename", "appendonly", "appenddirname", "aclfile",
            "unixsocket", "unixsocketperm", "daemonize", "supervised", "logfile", "pidfile",
            "protected-mode", "include", "loadmodule", "rename-command", "enable-debug-command",
            "enable-module-command", "enable-protected-configs", "replicaof", "slaveof",
            "masterauth", "masteruser", "requirepass",
        }
    )  # fmt: skip

    def __init__(
        self,
        bundle: Bundle | None,
        children: ChildProcesses,
        *,
        version: str = DEFAULT_VERSION,
        data_dir: Path | None = None,
        socket_dir: Path = Path("/run/redis"),
        bind_address: str = "0.0.0.0",  # the guest's; a test on the host uses 127.0.0.1
        backup_conf_dir: Path = CONF_DIR,
        map_store_host: Callable[[StoreSettings], None] | None = None,  # a test's: none
        relay_port: int = RELAY_PORT,
    ) -> None:
        super().__init__(bundle, children, version=version)
        self.data_dir = data_dir or Path(DATA_ROOT) / "redis"
        self.following = Following(
            self.data_dir.parent / self.UPSTREAM_NAME, self._write, relay_port
        )
        self.socket_dir = socket_dir
        self.bind_address = bind_address
        self.port = bundle.engine.port if bundle else 6379
        mapper = map_store_host or filerepo.map_store_host
        self.repo = Repository(self._run_root, backup_conf_dir, "repository", mapper)
        self.source = Repository(self._run_root, backup_conf_dir, "restore-source", mapper)
        self._lock = threading.Lock()
        self.jobs = BackupJobs("redis")
        self._repo_detail = "no repository"
        self._repo_ready = False

    @property
    def socket(self) -> Path:
        return self.socket_dir / "redis.sock"

    @property
    def conf_path(self) -> Path:
        return self.data_dir.parent / self.CONF_NAME

    # -- lifecycle

    def initialize(self) -> None:
        if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
            raise EngineError(f"Redis {self.version} is not installed in this image")
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / USERS).exists():
            self._own_tree(self.data_dir)
            return
        if self.data_dir.exists() and any(p.name != "lost+found" for p in self.data_dir.iterdir()):
            raise EngineError(
                f"{self.data_dir} is not empty but holds no Redis data; refusing to touch it"
            )
        # Made in a scratch directory and renamed into place: a crash mid-way never leaves
        # a half-made data directory that a later start would trust.
        scratch = self.data_dir.with_name(self.data_dir.name + ".install")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o750)
        self._chown(scratch)
        kept = ""
        if self.bundle is not None and self.bundle.restore is not None:
            kept = self._restore(self.bundle.restore, scratch)
        elif self.bundle is not None and self.bundle.standby is not None:
            self.following.follow(self.bundle.standby)  # its data: a full synchronisation
        self._write(scratch / USERS, self._users_file(kept, with_admin=True))
        if self.data_dir.exists():  # an empty mount point: fill it in place
            for child in scratch.iterdir():
                os.rename(child, self.data_dir / child.name)
            scratch.rmdir()
            self._chown(self.data_dir)
        else:
            os.rename(scratch, self.data_dir)

    def configure(self) -> None:
        self._write(self.conf_path, self.render_conf())
        users = self.data_dir / USERS
        if users.exists():  # the platform's user as the bundle has it (the agent logs in so)
            current = users.read_text(encoding="utf-8")
            wanted = self._users_file(current, with_admin=False)
            if wanted != current:
                self._write(users, wanted)
        self._configure_backups()

    def _users_file(self, kept: str, with_admin: bool) -> str:
        """The ACL file: ``default`` off, the platform's user from the bundle, the users of
        ``kept`` as they are (a restore's: the source's) and, ``with_admin`` (a new or
        restored instance), the tenant's admin from the bundle."""
        bundle = self.bundle
        platform = bundle.platform if bundle is not None else None
        admin = bundle.admin if bundle is not None and not bundle.warm else None
        replaced = {"default"}
        lines = ["user default off"]
        if platform is not None:
            replaced.add(platform.username)
            lines.append(user_line(platform.username, platform.password, "~* &* +@all"))
        upstream = self.following.upstream()
        if upstream is not None:  # a promoted replica lets the others in as its primary did
            replaced.add(upstream.user)
            lines.append(user_line(upstream.user, upstream.password, REPL_RULES))
        if with_admin and admin is not None:
            replaced.add(admin.username)
            lines.append(user_line(admin.username, admin.password, TENANT_RULES))
        for line in kept.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "user" and words[1] not in replaced:
                lines.append(line)
        return "\n".join(lines) + "\n"

    def render_conf(self) -> str:
        """The config file: the bundle's settings, then the ones the agent owns."""
        lines = ["# Written by the OnePlatform guest agent at every start; edits are lost."]
        lines += [f"{name} {value}" for name, value in self.bundle_settings()]
        restored = (self.data_dir / self.RESTORED_NAME).exists()
        managed = {
            "bind": self.bind_address,
            "port": str(self.port),
            "protected-mode": "no",  # the default user is off: every client logs in
            "dir": str(self.data_dir),
            "dbfilename": "dump.rdb",
            # a restore's first start loads the snapshot; the bootstrap turns AOF on
            "appendonly": "no" if restored else "yes",
            "appenddirname": "appendonlydir",
            "appendfsync": "everysec",
            "aclfile": str(self.data_dir / USERS),
            "unixsocket": str(self.socket),
            "unixsocketperm": "700",
            "daemonize": "no",
            "logfile": '""',
            "save": '"3600 1 300 100 60 10000"',
        }
        upstream = self.following.upstream()
        if upstream is not None:
            managed |= {
                "replicaof": f"127.0.0.1 {self.following.port}",
                "masteruser": upstream.user,
                "masterauth": upstream.password,
                "replica-read-only": "yes",
            }
        lines.append("# Managed by the agent (these win over the settings above).")
        lines += [f"{name} {value}" for name, value in managed.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> subprocess.Popen[bytes]:
        return self.children.popen(
            ["redis-server", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **SERVER_OUTPUT,
            env=self._env(),
            user=self.OS_USER if os.geteuid() == 0 else None,
        )

    def health(self) -> tuple[bool, str]:
        try:
            proc = self._cli("INFO", "persistence", timeout=10)
        except (EngineError, OSError) as exc:
            return False, f"redis-cli failed: {exc}"
        text = (proc.stdout or b"").decode("utf-8", "replace")
        if proc.returncode != 0 or "loading:" not in text:
            return False, tail(proc.stderr or proc.stdout) or f"exit code {proc.returncode}"
        if "loading:1" in text:
            return False, "loading the dataset"
        return True, "accepting connections"

    def bootstrap(self) -> None:
        """After a restore, turn the append-only file on (Redis rewrites it from the loaded
        snapshot). The users are in the ACL file the server started with."""
        if self.bundle is not None and not self.bundle.warm:
            self._start_repository()
        upstream = self.following.upstream()
        if upstream is not None:
            self.following.run(upstream, self._copy_users)
            try:  # the primary's users now, not at the watcher's first round
                self._copy_users(upstream)
            except (EngineError, OSError) as exc:
                log.info("the primary's users are copied later: %s", exc)
        restored = self.data_dir / self.RESTORED_NAME
        if restored.exists():
            self._command("CONFIG", "SET", "appendonly", "yes")
            restored.unlink()
            log.info("the restored snapshot is loaded; the append-only file is on")

    def _start_repository(self) -> None:
        with self._lock:
            self._repo_ready = self.bundle is not None and self.bundle.backup is not None

    # -- replication

    def upstream(self) -> UpstreamSettings | None:
        return self.following.upstream()

    def stats(self) -> dict[str, int]:
        """From INFO: clients, commands processed, memory used by the data, keyspace hits
        and misses."""
        info = self._info("all")
        return {
            "connections": int(info.get("connected_clients", "0")),
            "transactions": int(info.get("total_commands_processed", "0")),
            "size_bytes": int(info.get("used_memory_dataset", info.get("used_memory", "0"))),
            "cache_hits": int(info.get("keyspace_hits", "0")),
            "cache_misses": int(info.get("keyspace_misses", "0")),
        }

    def replication_status(self) -> dict[str, Any]:
        """Role and replication offsets; a primary's replicas are not named (they connect
        through the hub, all from one address)."""
        info = self._info("replication")
        if info.get("role") == "master":
            return {
                "role": "primary",
                "lsn_bytes": int(info.get("master_repl_offset", "0")),
                "replicas": [],
            }
        link = info.get("master_link_status", "down")
        syncing = info.get("master_sync_in_progress") == "1"
        replayed = int(info.get("slave_repl_offset", "0") or 0)
        received = int(info.get("slave_read_repl_offset", "0") or 0)
        return {
            "role": "standby",
            "lsn_bytes": None,
            "receive_bytes": max(received, replayed),
            "replay_bytes": replayed,
            "receiver": "streaming" if link == "up" and not syncing else link,
            "seeded_from": "sync",
            "replicas": [],
        }

    def ensure_replication_role(self, user: str, password: str) -> None:
        """The replication user (on the primary), in its ACL file."""
        if self.following.upstream() is not None:
            raise EngineError("this member is a standby: users are made on the primary")
        digest = user_line(user, password, REPL_RULES).split()[3]
        self._command("ACL", "SETUSER", user, "reset", "on", digest, *REPL_RULES.split())
        self._command("ACL", "SAVE")

    def _copy_users(self, upstream: UpstreamSettings) -> None:
        """The primary's users (but this member's own platform and replication users) into
        this member's ACL file, loaded when they changed."""
        relay = ["-h", "127.0.0.1", "-p", str(self.following.port), "--user", upstream.user]
        proc = self.children.run(
            ["redis-cli", "-e", *relay, "ACL", "LIST"],
            timeout=10,
            env={**self._env(), "REDISCLI_AUTH": upstream.password},
        )
        if proc.returncode != 0:
            return  # the primary is not reachable now (its replication says why)
        listed = (proc.stdout or b"").decode("utf-8", "replace")
        users = self.data_dir / USERS
        current = users.read_text(encoding="utf-8")
        wanted = self._users_file(listed, with_admin=False)
        if wanted != current:
            self._write(users, wanted)
            self._command("ACL", "LOAD")
            log.info("users copied from the primary")

    def prepare_promotion(self, seconds: float) -> dict[str, Any]:
        """Nothing to prepare: a replica applies what it receives as it comes."""
        if self.following.upstream() is None:
            raise EngineError("this member is not a standby: there is nothing to prepare")
        return self.replication_status()

    def promote(self, timeout: float) -> dict[str, Any]:
        """``REPLICAOF NO ONE``: it takes writes, and keeps its replication history so that
        the others continue from where they are (PSYNC)."""
        self.following.stop_following()
        self._command("REPLICAOF", "NO", "ONE")
        log.info("promoted: this member is the primary")
        return {"role": "primary"}

    def demote_live(self, upstream: UpstreamSettings) -> dict[str, Any] | None:
        """As ``FAILOVER`` does: writes paused, the final offset read, then a replica of
        ``upstream`` (it continues from its own offset once the hub leads to the new
        primary; until then the hub leads to itself, which refuses: no master link)."""
        self._command("CLIENT", "PAUSE", "30000", "WRITE")
        try:
            last = int(self._info("replication").get("master_repl_offset", "0"))
            self._command("CONFIG", "SET", "masteruser", upstream.user)
            self._command("CONFIG", "SET", "masterauth", last=upstream.password)
            self.following.follow(upstream)
            self.following.run(upstream, self._copy_users)
            self._command("REPLICAOF", "127.0.0.1", str(self.following.port))
        except (EngineError, OSError):
            self.following.stop_following()  # it serves on as the primary
            self._command("REPLICAOF", "NO", "ONE")
            raise
        finally:
            self._command("CLIENT", "UNPAUSE")
        log.info("demoted at offset %d: following %s:%d", last, upstream.host, upstream.port)
        return {"clean": True, "checkpoint_bytes": last - 1, "timeline": None, "rewound": False}

    def demote_stopped(self, upstream: UpstreamSettings, rewind: bool) -> dict[str, Any]:
        raise NotSupported("Redis is demoted while it runs (there is no rewind)")

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        """SIGTERM is Redis's clean shutdown (it saves the snapshot and syncs the AOF)."""
        return self._stop_by_signals(proc, ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)))

    # -- the server, over its socket, as the platform's user

    def apply_live(self, changed: list[str], settings: Mapping[str, str]) -> list[str]:
        """Rewrite the config file (every later start) and ``CONFIG SET`` each changed
        parameter; one Redis sets only at start, or one no longer named (its default is
        the file's absence), waits for a restart."""
        self.configure()
        pending = []
        for name in changed:
            value = settings.get(name)
            if value is None:
                pending.append(name)
                continue
            try:
                self._command("CONFIG", "SET", name, value)
            except EngineError as exc:
                log.info("%s waits for a restart: %s", name, exc)
                pending.append(name)
        return pending

    def _cli(
        self, *args: str, timeout: float = 30.0, last: str | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """redis-cli over the socket; ``last``: the command's last argument, read from
        stdin (``-x``: a secret never in argv)."""
        creds = self.bundle.platform if self.bundle else None
        if creds is None:
            raise EngineError("no platform user in the bundle: the agent cannot log in")
        argv = ["redis-cli", "-e", "-s", str(self.socket), "--user", creds.username]
        if last is not None:
            argv.append("-x")
        env = {**self._env(), "REDISCLI_AUTH": creds.password}
        stdin = last.encode() if last is not None else None
        return self.children.run([*argv, *args], timeout=timeout, env=env, stdin=stdin)

    def _command(self, *args: str, timeout: float = 60.0, last: str | None = None) -> str:
        """Run one command; its reply, raising EngineError on an error reply."""
        proc = self._cli(*args, timeout=timeout, last=last)  # -e: an error reply exits 1
        if proc.returncode != 0:
            raise EngineError(f"redis {args[0]} failed: {tail(proc.stderr or proc.stdout)}")
        return (proc.stdout or b"").decode("utf-8", "replace").strip()

    def _info(self, section: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for line in self._command("INFO", section).splitlines():
            key, sep, value = line.strip().strip('"').partition(":")
            if sep:
                found[key] = value
        return found

    # -- backups: the snapshot and the users, into the repository

    def _configure_backups(self) -> None:
        if self.bundle is None or self.bundle.warm:
            return
        try:
            if self.bundle.backup is not None:
                self.repo.configure(self.bundle.backup, self._write)
                self._repo_detail = "ready"
            if self.bundle.restore is not None:
                self.source.configure(self.bundle.restore.store, self._write)
        except (EngineError, OSError) as exc:
            self._repo_detail = f"the repository is not configured: {exc}"
            raise

    def backup_status(self) -> dict[str, Any] | None:
        if self.bundle is None or self.bundle.backup is None:
            return None
        with self._lock:
            return {"stanza": self._repo_ready, "detail": self._repo_detail}

    def start_backup(self, kind: str) -> tuple[int, dict[str, Any]]:
        if kind != "full":
            return 400, {"code": "bad_type", "message": "Redis takes full backups only"}
        with self._lock:
            refusal = None if self._repo_ready else no_repository(self._repo_detail)
        return self.jobs.start(kind, lambda job: self.backup(), refusal)

    def backup_job(self) -> dict[str, Any] | None:
        return self.jobs.job()

    def backup(self) -> dict[str, Any]:
        """A snapshot now (BGSAVE, waited for), stored with the ACL file; its manifest."""
        started = time.time()
        before = int(self._info("persistence").get("rdb_saves", "0"))
        self._command("BGSAVE", "SCHEDULE")  # after an AOF rewrite, if one runs
        deadline = time.monotonic() + BACKUP_TIMEOUT
        while True:
            info = self._info("persistence")
            if info.get("rdb_bgsave_in_progress") == "0" and int(info["rdb_saves"]) > before:
                if info.get("rdb_last_bgsave_status") != "ok":
                    raise EngineError("the snapshot (BGSAVE) failed: see the server's log")
                break
            if time.monotonic() > deadline:
                raise EngineError("the snapshot (BGSAVE) did not end in time")
            time.sleep(0.2)
        label = time.strftime("%Y%m%d-%H%M%S", time.gmtime(started)) + "F"
        work = self.data_dir.parent / "backup-work"
        work.mkdir(mode=0o700, exist_ok=True)
        packed = work / f"{label}.rdb.zst"
        try:  # compressed beside the data (the next save replaces dump.rdb), then stored
            snapshot = str(self.data_dir / "dump.rdb")
            self._run_checked(
                ["zstd", "-q", "-3", "-T2", "-f", "-o", str(packed), snapshot],
                "compressing the snapshot",
            )
            self._run_checked(
                self.repo.argv("copyto", str(packed), f"repo:{label}/{SNAPSHOT}"),
                "storing the snapshot",
            )
            self.repo.put(f"{label}/{USERS}", (self.data_dir / USERS).read_bytes())
            entry = {
                "label": label,
                "type": "full",
                "prior": None,
                "timestamp": {"start": int(started), "stop": int(time.time())},
                "info": {
                    "size": (self.data_dir / "dump.rdb").stat().st_size,
                    "repository": {"delta": packed.stat().st_size},
                },
            }
            self.repo.put(f"{label}/{MANIFEST}", json.dumps(entry).encode())
            return entry
        finally:
            packed.unlink(missing_ok=True)

    def _run_checked(self, argv: list[str], what: str) -> None:
        proc = self._run_root(argv, timeout=BACKUP_TIMEOUT)
        if proc.returncode != 0:
            raise EngineError(f"{what} failed: {tail(proc.stderr or proc.stdout)}")

    def _restore(self, restore: RestoreSettings, target: Path) -> str:
        """The snapshot of the source's backup into ``target``; the source's ACL file."""
        if restore.target_time:
            raise EngineError("Redis restores a snapshot as it was taken: no target time")
        self._configure_backups()
        label = restore.backup_set
        if label not in {str(m["label"]) for m in self.source.manifests()}:
            raise EngineError(f"backup {label} is not in the source's repository")
        packed = target / "dump.rdb.zst"
        self._run_checked(
            self.source.argv("copyto", f"repo:{label}/{SNAPSHOT}", str(packed)),
            f"reading backup {label}",
        )
        self._run_checked(
            ["zstd", "-q", "-d", "-f", "--rm", "-o", str(target / "dump.rdb"), str(packed)],
            f"unpacking backup {label}",
        )
        self._write(target / self.RESTORED_NAME, "load the snapshot, then turn AOF on\n")
        self._own_tree(target)
        log.info("restored backup %s", label)
        return self.source.call("cat", f"repo:{label}/{USERS}").decode("utf-8")

    # -- helpers

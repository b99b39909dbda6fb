"""The OnePlatform guest agent: applies the config bundle, runs the engine, answers calls.

It runs inside every datastore image on the image's own Python (Debian bookworm's 3.11),
as the container's PID 1: ``/usr/bin/python3 /usr/local/lib/oneplatform/agent.py``. So it
uses the standard library only and stays one file.

The platform imports this module too, for the bundle format (:class:`Bundle`) and request
signing (:func:`sign_request`, :class:`RequestVerifier`), so importing it does no I/O;
everything that touches the machine starts in :func:`main`.

Every call to the agent is signed with the instance's own secret from the bundle::

    X-Onep-Signature = hex HMAC-SHA256(secret, "\\n".join([METHOD, path_with_query,
        instance_id, timestamp, nonce, sha256(body).hexdigest()]))

Without a bundle (the image run as a plain compute instance) the agent still listens but
refuses every call, and the engine starts with no password set, so nobody can log in
over the network.

In a virtual machine the agent is PID 1 too (``onep-vm-init`` execs it with
``ONEP_POWEROFF_ON_EXIT=1``): Ctrl-Alt-Del and the ACPI power button then stop it like
SIGTERM, and however it ends it leaves the disks clean and powers the machine off, since
PID 1 exiting would panic the kernel (see :func:`run`).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import glob
import hashlib
import hmac
import http.server
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import stringprep
import struct
import subprocess
import sys
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

AGENT_VERSION = "1"
BUNDLE_FORMAT = 1
DEFAULT_BUNDLE_PATH = "/etc/oneplatform/bundle.json"
BUNDLE_ENV = "ONEP_BUNDLE"
DEFAULT_AGENT_PORT = 8471
DEFAULT_DATASTORE = "postgresql"
DEFAULT_VERSION = "15"
DATA_ROOT = "/var/lib/oneplatform"
MAX_CLOCK_SKEW = 300  # seconds a signed request's timestamp may be off
MIN_SECRET_LENGTH = 32
MAX_BODY_BYTES = 1024 * 1024
STABLE_AFTER = 60.0  # seconds an engine must run before its restart backoff resets

HEADER_INSTANCE = "X-Onep-Instance"
HEADER_TIMESTAMP = "X-Onep-Timestamp"
HEADER_NONCE = "X-Onep-Nonce"
HEADER_SIGNATURE = "X-Onep-Signature"
SIGNED_HEADERS = (HEADER_INSTANCE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

ENGINE_STARTING = "starting"
ENGINE_RUNNING = "running"
ENGINE_STOPPED = "stopped"
ENGINE_FAILED = "failed"

log = logging.getLogger("onep-agent")

_NONCE_RE = re.compile(r"^[0-9a-fA-F]{16,128}$")
_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_ROLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


# --- config bundle --------------------------------------------------------------------


class BundleError(ValueError):
    """The bundle is not valid. Messages name fields, never their (secret) values."""


@dataclass(frozen=True)
class AgentSettings:
    secret: str = field(repr=False)
    port: int = DEFAULT_AGENT_PORT


@dataclass(frozen=True)
class EngineSettings:
    port: int
    # Values may be given as numbers or booleans; they are kept as strings.
    settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        normal = {str(k): _setting_value(k, v) for k, v in self.settings.items()}
        object.__setattr__(self, "settings", normal)


@dataclass(frozen=True)
class AdminCredentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Bundle:
    """Everything an instance needs to configure itself. JSON on the wire, format 1."""

    instance_id: str
    datastore: str
    version: str
    agent: AgentSettings
    engine: EngineSettings
    admin: AdminCredentials
    format: int = BUNDLE_FORMAT

    def __post_init__(self) -> None:
        _validate_bundle(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "instance_id": self.instance_id,
            "datastore": self.datastore,
            "version": self.version,
            "agent": {"port": self.agent.port, "secret": self.agent.secret},
            "engine": {
                "port": self.engine.port,
                "settings": dict(sorted(self.engine.settings.items())),
            },
            "admin": {"username": self.admin.username, "password": self.admin.password},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Any) -> Bundle:
        """Read a decoded bundle; unknown keys are ignored, a format other than 1 is not."""
        obj = _object(data, "bundle")
        fmt = obj.get("format")
        if type(fmt) is not int:
            raise BundleError("bundle: 'format' must be an integer")
        if fmt != BUNDLE_FORMAT:
            raise BundleError(
                f"bundle: unsupported format {fmt} (this agent reads {BUNDLE_FORMAT})"
            )
        agent = _object(obj.get("agent"), "agent")
        engine = _object(obj.get("engine"), "engine")
        admin = _object(obj.get("admin"), "admin")
        raw_settings = _object(engine.get("settings", {}), "engine.settings")
        return cls(
            format=fmt,
            instance_id=_string(obj, "instance_id", "bundle"),
            datastore=_string(obj, "datastore", "bundle"),
            version=_string(obj, "version", "bundle"),
            agent=AgentSettings(
                port=_port(agent.get("port", DEFAULT_AGENT_PORT), "agent.port"),
                secret=_string(agent, "secret", "agent"),
            ),
            engine=EngineSettings(
                port=_port(engine.get("port"), "engine.port"),
                settings=raw_settings,
            ),
            admin=AdminCredentials(
                username=_string(admin, "username", "admin"),
                password=_string(admin, "password", "admin"),
            ),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Bundle:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            # Say where, not what: the text holds the secret and the password.
            raise BundleError(f"bundle: not valid JSON (line {_json_line(exc)})") from None
        return cls.from_dict(data)


def generate_secret() -> str:
    """A new agent secret: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def generate_password() -> str:
    """A new engine password: 24 random bytes, URL-safe base64 (32 characters)."""
    return secrets.token_urlsafe(24)


def _json_line(exc: Exception) -> int:
    return int(getattr(exc, "lineno", 0) or 0)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"bundle: '{where}' must be an object")
    return value


def _string(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BundleError(f"bundle: '{where}.{key}' must be a non-empty string")
    return value


def _port(value: Any, where: str) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise BundleError(f"bundle: '{where}' must be a port number (1-65535)")
    return value


def _setting_value(name: Any, value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float | str):
        return str(value)
    raise BundleError(f"bundle: engine setting {name!r} must be a string, number or boolean")


def _validate_bundle(bundle: Bundle) -> None:
    if bundle.format != BUNDLE_FORMAT:
        raise BundleError(f"bundle: unsupported format {bundle.format}")
    for where, value in (
        ("instance_id", bundle.instance_id),
        ("datastore", bundle.datastore),
        ("version", bundle.version),
    ):
        if not value or _CONTROL_RE.search(value) or len(value) > 200:
            raise BundleError(f"bundle: '{where}' must be a short printable string")
    if len(bundle.agent.secret) < MIN_SECRET_LENGTH:
        raise BundleError(f"bundle: 'agent.secret' must be at least {MIN_SECRET_LENGTH} characters")
    _port(bundle.agent.port, "agent.port")
    _port(bundle.engine.port, "engine.port")
    if bundle.agent.port == bundle.engine.port:
        raise BundleError("bundle: 'agent.port' and 'engine.port' must differ")
    for name, value in bundle.engine.settings.items():
        if not _SETTING_NAME_RE.match(name):
            raise BundleError(f"bundle: engine setting name {name!r} is not valid")
        if not isinstance(value, str) or _CONTROL_RE.search(value):
            raise BundleError(f"bundle: engine setting {name!r} must be a single-line string")
    if not _ROLE_NAME_RE.match(bundle.admin.username) or bundle.admin.username.startswith("pg_"):
        raise BundleError(
            "bundle: 'admin.username' must be 1-63 letters, digits or _ (not starting pg_)"
        )
    if not bundle.admin.password or "\x00" in bundle.admin.password:
        raise BundleError("bundle: 'admin.password' must be a non-empty string without NUL")


def load_bundle(path: Path) -> tuple[Bundle | None, str]:
    """The bundle at ``path``, or None and why not. Never logs or returns its contents."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, f"no config bundle at {path}"
    except OSError as exc:
        return None, f"cannot read the config bundle at {path}: {exc.strerror}"
    try:
        return Bundle.from_json(data), ""
    except BundleError as exc:
        return None, f"the config bundle at {path} is invalid: {exc}"


# --- request signing ------------------------------------------------------------------


def canonical_request(
    method: str, path: str, instance_id: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    """The exact bytes that are signed."""
    parts = [method.upper(), path, instance_id, timestamp, nonce, hashlib.sha256(body).hexdigest()]
    return "\n".join(parts).encode("utf-8")


def compute_signature(secret: str, canonical: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), canonical, hashlib.sha256).hexdigest()


def sign_request(
    secret: str,
    instance_id: str,
    method: str,
    path: str,
    body: bytes = b"",
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers that authenticate one call; ``path`` includes the query string."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    canonical = canonical_request(method, path, instance_id, timestamp, nonce, body)
    return {
        HEADER_INSTANCE: instance_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: compute_signature(secret, canonical),
    }


class AuthError(Exception):
    """A call was refused; ``status`` and ``code`` go into the HTTP response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class RequestVerifier:
    """Checks signed calls for one instance and remembers nonces to refuse replays.

    A nonce is remembered until its request's timestamp leaves the skew window, after which
    the timestamp check refuses a replay anyway. Thread-safe.
    """

    def __init__(
        self,
        secret: str,
        instance_id: str,
        *,
        max_skew: int = MAX_CLOCK_SKEW,
        clock: Callable[[], float] = time.time,
        max_nonces: int = 100_000,
    ) -> None:
        self._secret = secret
        self._instance_id = instance_id
        self._max_skew = max_skew
        self._clock = clock
        self._max_nonces = max_nonces
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce -> forget after
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RequestVerifier(instance_id={self._instance_id!r})"

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> None:
        """Return if the call is authentic and fresh; raise :class:`AuthError` otherwise."""
        lowered = {k.lower(): v for k, v in headers.items()}
        values = [lowered.get(h.lower(), "").strip() for h in SIGNED_HEADERS]
        missing = [h for h, v in zip(SIGNED_HEADERS, values, strict=True) if not v]
        if missing:
            raise AuthError(401, "unsigned", f"missing headers: {', '.join(missing)}")
        instance_id, timestamp, nonce, signature = values
        if not hmac.compare_digest(instance_id.encode(), self._instance_id.encode()):
            raise AuthError(403, "wrong_instance", "this agent serves another instance")
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise AuthError(401, "unsigned", f"{HEADER_TIMESTAMP} must be unix seconds")
        if not _NONCE_RE.match(nonce):
            raise AuthError(401, "unsigned", f"{HEADER_NONCE} must be 16-128 hex characters")
        now = self._clock()
        if abs(now - int(timestamp)) > self._max_skew:
            raise AuthError(
                401, "stale", f"timestamp is more than {self._max_skew} s off the agent's clock"
            )
        canonical = canonical_request(method, path, instance_id, timestamp, nonce, body)
        expected = compute_signature(self._secret, canonical)
        if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
            raise AuthError(401, "bad_signature", "the signature does not match")
        with self._lock:
            self._forget_expired(now)
            if nonce.lower() in self._nonces:
                raise AuthError(401, "replayed", "this nonce was already used")
            self._nonces[nonce.lower()] = int(timestamp) + self._max_skew + 1
            while len(self._nonces) > self._max_nonces:
                self._nonces.popitem(last=False)

    def _forget_expired(self, now: float) -> None:
        expired = [n for n, until in self._nonces.items() if until < now]
        for nonce in expired:
            del self._nonces[nonce]


# --- child processes ------------------------------------------------------------------


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
        self, argv: list[str], *, stdin: bytes | None = None, timeout: float = 60.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[bytes]:
        proc = self.popen(
            argv,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
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


# --- engines --------------------------------------------------------------------------


class EngineError(RuntimeError):
    """The engine could not be prepared, started or bootstrapped."""


class Engine:
    """What the agent needs from a datastore engine; one subclass per engine.

    The supervisor calls, on every start: :meth:`initialize` (first-start work such as
    creating the data directory; never touches existing data), :meth:`configure` (write
    the bundle's settings), :meth:`start` (spawn the server as a child), then polls
    :meth:`health` until ready and calls :meth:`bootstrap` (e.g. create the admin role once).
    """

    datastore: ClassVar[str] = ""

    def __init__(self, bundle: Bundle | None, children: ChildProcesses) -> None:
        self.bundle = bundle
        self.children = children

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
        raise NotImplementedError

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        """Shut the server down (fast), escalating if it takes longer than ``timeout``."""
        raise NotImplementedError


class PostgresEngine(Engine):
    """PostgreSQL from Debian's packages, data under /var/lib/oneplatform/pgdata."""

    datastore = "postgresql"
    OS_USER = "postgres"
    CONF_NAME = "oneplatform.conf"
    PENDING_NAME = "oneplatform-bootstrap.pending"
    INCLUDE_LINE = f"include_if_exists = '{CONF_NAME}'  # written by the OnePlatform agent"
    # Settings the agent owns; the bundle cannot override them.
    RESERVED = frozenset(
        {
            "listen_addresses",
            "port",
            "unix_socket_directories",
            "data_directory",
            "hba_file",
            "ident_file",
            "config_file",
            "external_pid_file",
            "logging_collector",
            "log_destination",
            "jit",
            "password_encryption",
            "include",
            "include_if_exists",
            "include_dir",
        }
    )
    HBA = (
        "# Written by the OnePlatform guest agent at initialisation.\n"
        "# TYPE  DATABASE     USER  ADDRESS     METHOD\n"
        "local   all          all               peer\n"
        "local   replication  all               peer\n"
        "host    all          all   0.0.0.0/0   scram-sha-256\n"
        "host    all          all   ::/0        scram-sha-256\n"
        "host    replication  all   0.0.0.0/0   scram-sha-256\n"
        "host    replication  all   ::/0        scram-sha-256\n"
    )

    def __init__(
        self,
        bundle: Bundle | None,
        children: ChildProcesses,
        *,
        version: str = DEFAULT_VERSION,
        data_dir: Path | None = None,
        socket_dir: Path = Path("/var/run/postgresql"),
    ) -> None:
        super().__init__(bundle, children)
        self.version = version
        self.bin_dir = Path(f"/usr/lib/postgresql/{version}/bin")
        self.data_dir = data_dir or Path(DATA_ROOT) / "pgdata"
        self.socket_dir = socket_dir
        self.port = bundle.engine.port if bundle else 5432
        self._first_start = True

    # -- lifecycle

    def initialize(self) -> None:
        if not (self.bin_dir / "postgres").is_file():
            raise EngineError(f"PostgreSQL {self.version} is not installed in this image")
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._chown(self.socket_dir)
        self.socket_dir.chmod(0o2775)
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / "PG_VERSION").is_file():
            self._chown(self.data_dir)
            self.data_dir.chmod(0o700)
            return
        if self.data_dir.exists():
            if any(self.data_dir.iterdir()):
                raise EngineError(
                    f"{self.data_dir} is not empty but holds no PostgreSQL cluster; "
                    "refusing to touch it"
                )
            if os.path.ismount(self.data_dir):
                self._initdb(self.data_dir)
                return
            self.data_dir.rmdir()
        # initdb into a temporary directory and rename it into place, so a crash mid-way
        # never leaves a half-made cluster that a later start would trust.
        scratch = self.data_dir.with_name(self.data_dir.name + ".initdb")
        if scratch.exists():
            shutil.rmtree(scratch)
        scratch.mkdir(mode=0o700)
        self._initdb(scratch)
        os.rename(scratch, self.data_dir)
        _fsync_dir(self.data_dir.parent)

    def _initdb(self, target: Path) -> None:
        self._chown(target)
        target.chmod(0o700)
        log.info("initialising a new PostgreSQL %s cluster in %s", self.version, self.data_dir)
        started = time.monotonic()
        proc = self.children.run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(target),
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--no-instructions",
            ],
            timeout=300,
            **self._as_postgres(),
        )
        if proc.returncode != 0:
            raise EngineError(
                f"initdb failed with exit code {proc.returncode}: {_tail(proc.stderr)}"
            )
        self._write(target / "pg_hba.conf", self.HBA)
        conf = target / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as handle:
            handle.write(f"\n{self.INCLUDE_LINE}\n")
        self._write(target / self.PENDING_NAME, "create the admin role from the bundle\n")
        log.info("initdb finished in %.1f s", time.monotonic() - started)

    def configure(self) -> None:
        conf = self.data_dir / "postgresql.conf"
        text = conf.read_text(encoding="utf-8") if conf.exists() else ""
        if self.INCLUDE_LINE not in text:
            with conf.open("a", encoding="utf-8") as handle:
                handle.write(f"\n{self.INCLUDE_LINE}\n")
        self._write(self.data_dir / self.CONF_NAME, self.render_conf())

    def render_conf(self) -> str:
        """The include file: the bundle's settings, then the ones the agent owns."""
        lines = ["# Written by the OnePlatform guest agent at every start; edits are lost."]
        settings = self.bundle.engine.settings if self.bundle else {}
        for name, value in sorted(settings.items()):
            if name.lower() in self.RESERVED:
                log.warning("ignoring engine setting %s: the agent manages it", name)
                continue
            lines.append(f"{name} = {pg_quote(value)}")
        lines.append("# Managed by the agent (these win over the settings above).")
        managed = {
            "listen_addresses": "*",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "jit": "off",  # the image leaves out the LLVM JIT provider
            "logging_collector": "off",
            "log_destination": "stderr",
            "password_encryption": "scram-sha-256",
        }
        lines += [f"{name} = {pg_quote(value)}" for name, value in managed.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> subprocess.Popen[bytes]:
        pid_file = self.data_dir / "postmaster.pid"
        if self._first_start and os.getpid() == 1 and pid_file.exists():
            # A fresh container (we are its PID 1 and have started no server yet): the file
            # is left from a server that died with the previous container, and its PID may
            # now belong to another process, which would keep the server from starting.
            log.info("removing a stale postmaster.pid left by the previous container")
            pid_file.unlink()
        self._first_start = False
        return self.children.popen(
            [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **self._as_postgres(),
        )

    def health(self) -> tuple[bool, str]:
        try:
            proc = self.children.run(
                [
                    str(self.bin_dir / "pg_isready"),
                    "-q",
                    "-h",
                    str(self.socket_dir),
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-t",
                    "3",
                ],
                timeout=10,
                **self._as_postgres(),
            )
        except (EngineError, OSError) as exc:
            return False, f"pg_isready failed: {exc}"
        return proc.returncode == 0, {
            0: "accepting connections",
            1: "rejecting connections (starting up or shutting down)",
            2: "no response",
        }.get(proc.returncode, f"pg_isready exit code {proc.returncode}")

    def bootstrap(self) -> None:
        pending = self.data_dir / self.PENDING_NAME
        if not pending.exists():
            return
        if self.bundle is None:
            log.info("no bundle: no admin role is created, so nobody can log in remotely")
            return
        admin = self.bundle.admin
        proc = self.children.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-f",
                "-",
            ],
            stdin=admin_role_sql(admin.username, admin.password).encode("utf-8"),
            timeout=60,
            **self._as_postgres(),
        )
        if proc.returncode != 0:
            # psql may echo the failing statement, which holds the password verifier.
            errors = [
                line
                for line in proc.stderr.decode("utf-8", "replace").splitlines()
                if "ERROR" in line and "SCRAM-SHA-256$" not in line
            ]
            raise EngineError(
                f"creating the admin role failed (psql exit code {proc.returncode}): "
                + ("; ".join(errors)[:300] or "no error message")
            )
        pending.unlink()
        log.info("created the admin role %s", admin.username)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int | None:
        """SIGINT is PostgreSQL's fast shutdown; SIGQUIT (immediate) if it hangs."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 2.0), (signal.SIGKILL, 1.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                log.warning("postgres did not stop within %.0f s of %s", wait, sig.name)
        self.children.forget(proc)
        return proc.returncode

    # -- helpers

    def _env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": "/var/lib/postgresql",
            "PGDATA": str(self.data_dir),
        }

    def _as_postgres(self) -> dict[str, Any]:
        """Popen arguments that run a child as the postgres user (setuid before exec)."""
        kwargs: dict[str, Any] = {"env": self._env()}
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.OS_USER)
            kwargs.update(
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=os.getgrouplist(self.OS_USER, user.pw_gid),
            )
        return kwargs

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(self.OS_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

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


ENGINES: dict[str, type[Engine]] = {"postgresql": PostgresEngine}


def pg_quote(value: str) -> str:
    """A postgresql.conf string value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def sql_literal(value: str) -> str:
    """A SQL string literal (standard_conforming_strings is on in every supported version)."""
    if "\x00" in value:
        raise ValueError("NUL cannot appear in a SQL literal")
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def admin_role_sql(username: str, password: str) -> str:
    """psql script that creates (or updates) the admin role.

    The password goes in as a SCRAM-SHA-256 verifier computed here, so the server never
    sees the plain text; logging of the statements is switched off for the session.
    """
    verifier = scram_sha256_verifier(password)
    ident = sql_identifier(username)
    return "\n".join(
        [
            "SET log_statement = 'none';",
            "SET log_min_error_statement = 'panic';",
            "SET log_min_duration_statement = -1;",
            "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = "
            f"{sql_literal(username)}) AS onep_missing \\gset",
            "\\if :onep_missing",
            f"CREATE ROLE {ident};",
            "\\endif",
            f"ALTER ROLE {ident} WITH LOGIN SUPERUSER CREATEDB CREATEROLE "
            f"PASSWORD {sql_literal(verifier)};",
            "",
        ]
    )


def scram_sha256_verifier(
    password: str, *, salt: bytes | None = None, iterations: int = 4096
) -> str:
    """The verifier PostgreSQL stores for ``password`` (as ``pg_authid.rolpassword``)."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", saslprep(password), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


_PROHIBITED = (
    stringprep.in_table_c12,
    stringprep.in_table_c21,
    stringprep.in_table_c22,
    stringprep.in_table_c3,
    stringprep.in_table_c4,
    stringprep.in_table_c5,
    stringprep.in_table_c6,
    stringprep.in_table_c7,
    stringprep.in_table_c8,
    stringprep.in_table_c9,
    stringprep.in_table_a1,
)


def saslprep(password: str) -> bytes:
    """SASLprep (RFC 4013) as PostgreSQL applies it: on failure the raw bytes are used."""
    raw = password.encode("utf-8")
    if password.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    prepared = unicodedata.normalize("NFKC", mapped)
    if not prepared or any(check(ch) for ch in prepared for check in _PROHIBITED):
        return raw
    rand_al = [stringprep.in_table_d1(ch) for ch in prepared]
    if any(rand_al) and (
        any(stringprep.in_table_d2(ch) for ch in prepared) or not (rand_al[0] and rand_al[-1])
    ):
        return raw
    return prepared.encode("utf-8")


def _tail(data: bytes, lines: int = 5) -> str:
    return " | ".join(data.decode("utf-8", "replace").strip().splitlines()[-lines:])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- supervisor -----------------------------------------------------------------------


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
            self._set(ENGINE_STARTING, "restarting on request" if requested else "starting")
            try:
                engine.initialize()
                engine.configure()
                with self._cond:
                    if self._stopping:
                        break
                proc = engine.start()
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
        deadline = time.monotonic() + self._ready_timeout
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
                    f"not ready {self._ready_timeout:.0f} s after start: {detail}",
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
                return proc.wait(self._poll * 2.5)
            except subprocess.TimeoutExpired:
                if self._interrupted():
                    return None


# --- HTTP API -------------------------------------------------------------------------


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


class Agent:
    """The API's logic, apart from HTTP plumbing: authenticate, route, answer."""

    def __init__(
        self,
        bundle: Bundle | None,
        supervisor: Supervisor,
        *,
        problem: str = "",
        datastore: str = DEFAULT_DATASTORE,
        version: str = DEFAULT_VERSION,
        restart_timeout: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bundle = bundle
        self.supervisor = supervisor
        self.problem = problem or "no config bundle"
        self.datastore = bundle.datastore if bundle else datastore
        self.version = bundle.version if bundle else version
        self.restart_timeout = restart_timeout
        self.verifier = (
            RequestVerifier(bundle.agent.secret, bundle.instance_id, clock=clock)
            if bundle
            else None
        )

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        if self.bundle is None or self.verifier is None:
            return 401, error_body("no_bundle", f"{self.problem}; this agent accepts no calls")
        try:
            self.verifier.verify(method, path, headers, body)
        except AuthError as exc:
            return exc.status, error_body(exc.code, exc.message)
        route = urlsplit(path).path
        if route == "/v1/health":
            if method != "GET":
                return 405, error_body("method_not_allowed", "use GET")
            return 200, self.health()
        if route == "/v1/engine/restart":
            if method != "POST":
                return 405, error_body("method_not_allowed", "use POST")
            ok, detail = self.supervisor.restart(self.restart_timeout)
            if ok:
                return 200, self.health()
            if detail.startswith("the engine was not ready"):
                return 504, error_body("timeout", detail)
            return 503, error_body("engine_failed", detail)
        return 404, error_body("not_found", f"no such endpoint: {route}")

    def health(self) -> dict[str, Any]:
        state, detail, restarts = self.supervisor.snapshot()
        ready = False
        if state == ENGINE_RUNNING and self.supervisor.engine is not None:
            ready, detail = self.supervisor.engine.health()
        return {
            "instance_id": self.bundle.instance_id if self.bundle else None,
            "datastore": self.datastore,
            "version": self.version,
            "engine": state,
            "ready": ready,
            "detail": detail,
            "restarts": restarts,
            "agent_version": AGENT_VERSION,
        }


class AgentHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], agent: Agent) -> None:
        self.agent = agent
        super().__init__(address, AgentRequestHandler)


class AgentRequestHandler(http.server.BaseHTTPRequestHandler):
    server: AgentHTTPServer
    server_version = f"onep-agent/{AGENT_VERSION}"
    sys_version = ""
    timeout = 30  # seconds a client may take to send its request

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def _handle(self) -> None:
        started = time.monotonic()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            status, payload = 413, error_body("bad_request", "missing or too large Content-Length")
            self.close_connection = True
        else:
            body = self.rfile.read(length) if length else b""
            try:
                status, payload = self.server.agent.handle(
                    self.command, self.path, dict(self.headers.items()), body
                )
            except Exception:
                log.exception("error handling %s %s", self.command, self.path)
                status, payload = 500, error_body("internal_error", "the agent failed")
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)
        log.info(
            "%s %s %d %.3fs from %s",
            self.command,
            self.path[:200],
            status,
            time.monotonic() - started,
            self.client_address[0],
        )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # _handle logs one line per request

    def log_message(self, format: str, *args: Any) -> None:
        log.warning("http: %s", format % args)


# --- VM mode: the agent as a virtual machine's PID 1 ---------------------------------

POWEROFF_ENV = "ONEP_POWEROFF_ON_EXIT"
# reboot(2) through glibc's wrapper (<sys/reboot.h>).
RB_DISABLE_CAD = 0  # Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once
RB_POWER_OFF = 0x4321FEDC
RB_HALT_SYSTEM = 0xCDEF0123
MS_RDONLY = 1
MS_REMOUNT = 32
# struct input_event on 64-bit Linux: struct timeval, __u16 type, __u16 code, __s32 value.
INPUT_EVENT = struct.Struct("llHHi")
EV_KEY = 1
KEY_POWER = 116


def poweroff_on_exit(environ: Mapping[str, str] | None = None, pid: int | None = None) -> bool:
    """VM mode: asked for by the VM init, and only ever as PID 1."""
    env = os.environ if environ is None else environ
    return env.get(POWEROFF_ENV) == "1" and (os.getpid() if pid is None else pid) == 1


class Machine:
    """The system calls VM mode makes, through libc; tests replace it with a fake."""

    def __init__(self) -> None:
        self._libc: Any = None

    def _call(self, name: str, *args: Any) -> None:
        if self._libc is None:
            self._libc = ctypes.CDLL(None, use_errno=True)  # the C library Python runs on
        if getattr(self._libc, name)(*args) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{name}: {os.strerror(code)}")

    def disable_cad(self) -> None:
        self._call("reboot", ctypes.c_int(RB_DISABLE_CAD))

    def power_off(self) -> None:
        self._call("reboot", ctypes.c_int(RB_POWER_OFF))

    def halt(self) -> None:
        self._call("reboot", ctypes.c_int(RB_HALT_SYSTEM))  # c_int wraps it, as C would

    def sync(self) -> None:
        os.sync()

    def is_mount(self, path: str) -> bool:
        return os.path.ismount(path)

    def unmount(self, path: str) -> None:
        self._call("umount2", ctypes.c_char_p(path.encode()), ctypes.c_int(0))

    def remount_read_only(self, path: str) -> None:
        flags = ctypes.c_ulong(MS_REMOUNT | MS_RDONLY)
        self._call("mount", None, ctypes.c_char_p(path.encode()), None, flags, None)

    def kill_all(self, sig: int) -> None:
        """Signal every process but this one (PID 1) and kernel threads."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, sig)

    def wait_children(self, timeout: float) -> bool:
        """Reap children until none is left (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def idle_forever(self) -> None:
        while True:  # PID 1 must never exit: that panics the kernel
            time.sleep(3600)


def shut_down_machine(
    machine: Machine, mounts: tuple[str, ...] = (DATA_ROOT,), grace: float = 10.0
) -> None:
    """Leave the disks clean and power off. Returns only if ``machine`` lets it."""
    log.info("powering off")
    machine.sync()
    machine.kill_all(signal.SIGTERM)
    if not machine.wait_children(grace):
        log.warning("processes left %.0f s after SIGTERM: killing them", grace)
        machine.kill_all(signal.SIGKILL)
        machine.wait_children(grace)
    for path in mounts:
        if not machine.is_mount(path):
            continue
        try:
            machine.unmount(path)
            log.info("unmounted %s", path)
        except OSError as exc:
            log.warning("cannot unmount %s (%s): remounting it read-only", path, exc.strerror)
            try:
                machine.remount_read_only(path)
            except OSError as again:
                log.error("cannot remount %s read-only: %s", path, again.strerror)
    try:
        machine.remount_read_only("/")
    except OSError as exc:
        log.warning("cannot remount / read-only: %s", exc.strerror)
    machine.sync()
    for name, action in (("power off", machine.power_off), ("halt", machine.halt)):
        try:
            action()
        except OSError as exc:
            log.error("cannot %s: %s", name, exc.strerror)
    machine.idle_forever()


def power_button_devices(sys_root: str = "/sys/class/input") -> list[str]:
    """The /dev/input/event* devices of the ACPI power button(s)."""
    found = []
    for name_file in sorted(glob.glob(f"{sys_root}/event*/device/name")):
        try:
            with open(name_file, encoding="utf-8", errors="replace") as handle:
                name = handle.read().strip()
        except OSError:
            continue
        if name == "Power Button":
            found.append("/dev/input/" + name_file.split("/")[-3])
    return found


def is_power_key_press(event: bytes) -> bool:
    if len(event) != INPUT_EVENT.size:
        return False
    _sec, _usec, kind, code, value = INPUT_EVENT.unpack(event)
    return kind == EV_KEY and code == KEY_POWER and value == 1


def watch_power_button(on_press: Callable[[], None], devices: list[str] | None = None) -> int:
    """Call ``on_press`` when the ACPI power button is pressed (the host's ACPI shutdown);
    one daemon thread per device. Returns how many devices are watched."""

    def watch(path: str) -> None:
        try:
            with open(path, "rb", buffering=0) as handle:
                while True:
                    event = handle.read(INPUT_EVENT.size)
                    if not event:
                        return
                    if is_power_key_press(event):
                        on_press()
        except OSError as exc:
            log.warning("stopped watching the power button %s: %s", path, exc.strerror)

    paths = power_button_devices() if devices is None else devices
    for path in paths:
        threading.Thread(target=watch, args=(path,), name="power-button", daemon=True).start()
    return len(paths)


# --- main -----------------------------------------------------------------------------


def build(bundle: Bundle | None, problem: str = "") -> tuple[Agent, ChildProcesses]:
    """The agent and its supervisor for a bundle (or none), without starting anything."""
    datastore = os.environ.get("ONEP_DATASTORE", DEFAULT_DATASTORE)
    version = os.environ.get("ONEP_DATASTORE_VERSION", DEFAULT_VERSION)
    children = ChildProcesses()
    fatal = ""
    engine: Engine | None = None
    if bundle is not None and (bundle.datastore, bundle.version) != (datastore, version):
        fatal = (
            f"the bundle is for {bundle.datastore} {bundle.version} but this image runs "
            f"{datastore} {version}"
        )
    elif datastore not in ENGINES:
        fatal = f"this agent has no engine for {datastore!r}"
    elif datastore == "postgresql":
        engine = PostgresEngine(bundle, children, version=version)
    else:  # pragma: no cover - more engines later
        engine = ENGINES[datastore](bundle, children)
    supervisor = Supervisor(engine, fatal=fatal)
    agent = Agent(bundle, supervisor, problem=problem, datastore=datastore, version=version)
    return agent, children


def _setup_logging() -> None:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="onep-agent: %(levelname)s %(message)s"
    )


def main(machine: Machine | None = None) -> int:
    """Serve until SIGTERM or SIGINT; with ``machine`` (VM mode) also until Ctrl-Alt-Del or
    the power button. Returns the exit code; :func:`run` powers a VM off afterwards."""
    _setup_logging()
    bundle_path = Path(os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE_PATH)
    bundle, problem = load_bundle(bundle_path)
    if bundle is None:
        log.warning("%s: refusing every call; the engine starts with no passwords set", problem)
    else:
        log.info(
            "config bundle for instance %s (%s %s)",
            bundle.instance_id,
            bundle.datastore,
            bundle.version,
        )
    agent, children = build(bundle, problem)
    port = bundle.agent.port if bundle else DEFAULT_AGENT_PORT

    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)  # no logging: it may interrupt a log call
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if machine is not None:
        try:
            machine.disable_cad()  # Ctrl-Alt-Del now sends us SIGINT
        except OSError as exc:
            log.warning("cannot route Ctrl-Alt-Del to the agent: %s", exc.strerror)

        def on_power_button() -> None:
            received.append("the power button")
            stop.set()

        buttons = watch_power_button(on_power_button)
        log.info(
            "VM mode: SIGTERM, Ctrl-Alt-Del%s stop the engine and power off",
            " or the power button" if buttons else "",
        )

    try:
        server = AgentHTTPServer(("0.0.0.0", port), agent)
    except OSError as exc:
        log.error("cannot listen on port %d: %s", port, exc)
        return 1
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("listening on port %d (agent version %s)", port, AGENT_VERSION)
    agent.supervisor.start()
    while not stop.wait(0.5):
        children.reap_orphans()
    log.info("received %s: shutting down", received[0] if received else "a stop request")
    agent.supervisor.stop()
    server.shutdown()
    server.server_close()
    log.info("stopped")
    return 0


def run(
    environ: Mapping[str, str] | None = None,
    pid: int | None = None,
    machine_factory: Callable[[], Machine] = Machine,
    main_fn: Callable[[Machine | None], int] = main,
) -> int:
    """The program. In VM mode (:func:`poweroff_on_exit`) it never returns: however
    ``main_fn`` ends, the engine has stopped (main stops it) and the machine powers off."""
    if not poweroff_on_exit(environ, pid):
        return main_fn(None)
    machine = machine_factory()
    try:
        code = main_fn(machine)
        log.info("the agent stopped (exit code %s)", code)
    except Exception:
        _setup_logging()
        log.exception("the agent failed")
    except BaseException as exc:  # SystemExit, KeyboardInterrupt: PID 1 must not just exit
        _setup_logging()
        log.error("the agent stopped: %r", exc)
    shut_down_machine(machine)
    return 1  # only if the machine did not power off (a fake one)


if __name__ == "__main__":
    sys.exit(run())

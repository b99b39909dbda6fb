"""The endpoint proxy: HAProxy (Debian's 2.6), run by `onep up` as a host service.

Every database instance gets two stable endpoints on ONEP_BIND_ADDRESS, whatever member is
its primary: read-write (to the primary) and read-only (balanced over its ready replicas,
the primary standing in when there is none). Its replicas, whatever their compute type,
reach the primary through one *replication hub* on the service address: a replica's
startup packet names the database's replication role (``onep_repl_<id>``), and the hub
routes on it (``req.payload`` and a map) to the database's replication backend. An engine
whose protocol does not name a user first (MariaDB, Redis) reaches the hub through its
guest's relay (:mod:`oneplatform.guest.relay`): a preamble with the user and a key derived
from the replication password, which the hub routes on and then strips (a Lua action).

The platform writes the whole configuration from its store (:func:`render`), so a proxy
started afresh is right at once. A change of frontends (a database created or deleted) is
a seamless reload through the master socket (open connections stay on the old worker until
they close); a change of servers only (a switchover, a replica) goes through the runtime
API at once, with no reload. Why HAProxy and not PgBouncer: docs/replication.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from oneplatform.config import Settings
from oneplatform.guest.relay import KEY_LEN, MARKER, PREAMBLE_LEN
from oneplatform.hostsvc.supervisor import HostService

log = logging.getLogger(__name__)

REPLICA_SLOTS = 8  # read-only servers per database (its replicas)
REPL_USER_PREFIX = "onep_repl_"
REPL_USER_LEN = len(REPL_USER_PREFIX) + 32  # the prefix and a 32-hex-digit id
# A PostgreSQL 3.0 startup packet: length (4), protocol (4), then "user\0" and its name.
_USER_OFFSET = 13
assert len(MARKER) == _USER_OFFSET  # a relayed connection's key is where the user is
# The hub's Lua action: a relayed connection's preamble goes before it reaches the engine.
_STRIP_LUA = f"""-- Written by OnePlatform: the replication hub strips a relay's preamble.
core.register_action("onep_strip_preamble", {{"tcp-req"}}, function(txn)
  txn.req:remove(0, {PREAMBLE_LEN})
end, 0)
"""


def repl_user(db_id: str) -> str:
    return REPL_USER_PREFIX + db_id


@dataclass(frozen=True)
class Server:
    host: str
    port: int


@dataclass(frozen=True)
class Route:
    """One database instance's endpoints and where they lead."""

    db_id: str
    rw_port: int
    ro_port: int
    primary: Server | None  # None: no primary (failing over): the endpoint refuses
    replicas: tuple[Server, ...] = field(default=())
    relay_key: str | None = None  # what the database's relayed replicas send (see relay)


def proxy_dir(settings: Settings) -> Path:
    return settings.home / "proxy"


@dataclass(frozen=True)
class Rendered:
    config: str
    map: str
    servers: dict[str, tuple[str, int, bool]]  # "backend/server" -> (host, port, enabled)

    def structure(self) -> str:
        """The configuration but for its servers' addresses and states: what a reload
        must apply (the rest goes through the runtime API)."""
        return "\n".join(ln for ln in self.config.splitlines() if not ln.startswith("  server "))


_UNUSED = Server("127.0.0.1", 1)


def render(settings: Settings, routes: Sequence[Route], hub: bool = True) -> Rendered:
    """HAProxy's configuration, the hub's map and the desired servers, from ``routes``."""
    directory = proxy_dir(settings)
    servers: dict[str, tuple[str, int, bool]] = {}

    def server(backend: str, name: str, target: Server | None, extra: str = "") -> str:
        where = target or _UNUSED
        servers[f"{backend}/{name}"] = (where.host, where.port, target is not None)
        state = "" if target is not None else " disabled"
        return f"  server {name} {where.host}:{where.port}{state}{extra}"

    lines = [
        "# Written by OnePlatform from its store; edits are lost.",
        "global",
        f"  lua-load {directory / 'relay.lua'}",
        f"  stats socket {directory / 'admin.sock'} mode 600 level admin expose-fd listeners",
        "  maxconn 4096",
        "defaults",
        "  mode tcp",
        "  timeout connect 3s",
        "  timeout client 24h",
        "  timeout server 24h",
        "  timeout client-fin 10s",
        "  timeout server-fin 10s",
        "  option clitcpka",
        "  option srvtcpka",
        # Something to listen on when there is no database yet (HAProxy needs a listener).
        "frontend health",
        f"  bind 127.0.0.1:{health_port(settings)}",
        "  tcp-request connection reject",
    ]
    if hub:
        lines += [
            "frontend replication_hub",
            f"  bind {settings.service_address}:{settings.replication_port}",
            "  tcp-request inspect-delay 5s",
            # A relay's preamble: its key, then the preamble goes.
            f"  tcp-request content set-var(sess.key) req.payload({_USER_OFFSET},{KEY_LEN}) "
            f"if {{ req.payload(0,{len(MARKER)}) -m str {MARKER.decode()} }}",
            "  tcp-request content lua.onep_strip_preamble if { var(sess.key) -m found }",
            # Else PostgreSQL's startup packet: the user.
            f"  tcp-request content set-var(sess.key) req.payload({_USER_OFFSET},{REPL_USER_LEN}) "
            f"if !{{ var(sess.key) -m found }} {{ req.len ge {_USER_OFFSET + REPL_USER_LEN} }}",
            "  tcp-request content accept if { var(sess.key) -m found }",
            f"  use_backend %[var(sess.key),map({directory / 'replication.map'})]",
        ]
    entries = []
    for route in sorted(routes, key=lambda r: r.db_id):
        rw, ro, repl = f"rw_{route.db_id}", f"ro_{route.db_id}", f"repl_{route.db_id}"
        entries.append(f"{repl_user(route.db_id)} {repl}")
        if route.relay_key:
            entries.append(f"{route.relay_key} {repl}")
        lines += [
            f"frontend {rw}",
            f"  bind {settings.bind_address}:{route.rw_port}",
            f"  default_backend {rw}",
            f"backend {rw}",
            server(rw, "primary", route.primary),
            # Replication has a backend of its own: a switchover pauses the read-write one
            # while the replicas still stream the primary's last WAL through this one.
            f"backend {repl}",
            server(repl, "primary", route.primary),
            f"frontend {ro}",
            f"  bind {settings.bind_address}:{route.ro_port}",
            f"  default_backend {ro}",
            f"backend {ro}",
            "  balance roundrobin",
            "  default-server inter 2s fall 2 rise 1",
        ]
        replicas = list(route.replicas[:REPLICA_SLOTS])
        for slot in range(REPLICA_SLOTS):
            target = replicas[slot] if slot < len(replicas) else None
            lines.append(server(ro, f"m{slot + 1}", target, " check"))
        lines.append(server(ro, "primary", route.primary, " backup"))
    return Rendered("\n".join(lines) + "\n", "\n".join(entries) + "\n", servers)


def health_port(settings: Settings) -> int:
    """A port of the proxy's own, refusing every connection: 18100 + the store's offset."""
    return 18100 + (settings.store_port - 8330)


class ProxyError(Exception):
    pass


class EndpointProxy:
    """Writes the proxy's configuration and applies it (reload or runtime API)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.dir = proxy_dir(settings)
        self.config_file = self.dir / "haproxy.cfg"
        self.map_file = self.dir / "replication.map"
        self.servers_file = self.dir / "servers.json"
        self.admin = self.dir / "admin.sock"
        self.master = self.dir / "master.sock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time across the platform's workers and processes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def apply(self, rendered: Rendered, force: Sequence[str] = ()) -> None:
        """Make the proxy serve ``rendered`` (call it under :meth:`locked`): files first
        (a proxy started later reads them), then a reload when frontends changed, else the
        runtime API for the servers that changed (and those of the databases in
        ``force``: their runtime state may differ from the file's, after a pause)."""
        old_config = _read(self.config_file)
        old_map = _read(self.map_file)
        try:
            old_servers = json.loads(_read(self.servers_file) or "{}")
        except ValueError:
            old_servers = {}
        _write(self.dir / "relay.lua", _STRIP_LUA)
        _write(self.map_file, rendered.map)
        _write(self.config_file, rendered.config)
        _write(self.servers_file, json.dumps(rendered.servers, sort_keys=True))
        if not self.admin.exists():
            return  # not running yet: it starts with these files
        old = Rendered(old_config, "", {})
        if old.structure() != rendered.structure() or old_map != rendered.map:
            self.reload()  # the hub's map is read at a (re)load
            return
        commands = []
        for key, (host, port, enabled) in sorted(rendered.servers.items()):
            previous = old_servers.get(key)
            forced = any(f"_{db_id}/" in key for db_id in force)
            if not forced and previous == [host, port, enabled]:
                continue
            if enabled:
                if previous is not None and previous[:2] != [host, port]:
                    # Connections to the former address go (a former primary, now a standby).
                    commands.append(f"set server {key} state maint")
                    commands.append(f"shutdown sessions server {key}")
                commands.append(f"set server {key} addr {host} port {port}")
                commands.append(f"set server {key} state ready")
            else:
                commands.append(f"set server {key} state maint")
                commands.append(f"shutdown sessions server {key}")
        for command in commands:
            self.command(command)

    def pause(self, db_id: str) -> None:
        """Refuse new connections to the database's read-write endpoint and close the
        open ones (until the next :meth:`apply` that forces it)."""
        key = f"rw_{db_id}/primary"
        self.command(f"set server {key} state maint")
        self.command(f"shutdown sessions server {key}")

    def command(self, line: str) -> str:
        answer = _ask(self.admin, line)
        # HAProxy answers nothing on success for most commands.
        if any(word in answer for word in ("Unknown", "No such", "Require", "failed")):
            raise ProxyError(f"proxy refused {line!r}: {answer.strip()}")
        return answer

    def pid(self) -> int | None:
        try:
            info = _ask(self.admin, "show info")
        except ProxyError:
            return None
        for line in info.splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return None

    def reload(self, timeout: float = 15.0) -> None:
        """A seamless reload through the master socket; waits for the new worker."""
        before = self.pid()
        _ask(self.master, "reload")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.pid()
            if now is not None and now != before:
                return
            time.sleep(0.05)
        raise ProxyError(f"the proxy did not reload within {timeout:.0f} s (see proxy.log)")


def _ask(path: Path, line: str, timeout: float = 5.0) -> str:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
    except OSError as exc:
        raise ProxyError(f"the proxy's socket {path} does not answer: {exc}") from exc
    return b"".join(chunks).decode("utf-8", "replace")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def hub_bindable(settings: Settings) -> bool:
    """Whether the service address is on this machine (scripts/setup.sh puts it there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((settings.service_address, 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
    return True


def proxy_service(settings: Settings) -> HostService:
    """HAProxy in master-worker mode, in the foreground, on the files :func:`render` wrote."""
    proxy = EndpointProxy(settings)
    argv = [
        "/usr/sbin/haproxy",
        "-W",
        "-db",
        "-f",
        str(proxy.config_file),
        "-S",
        f"{proxy.master},mode,600",
    ]
    return HostService(
        "proxy",
        argv,
        proxy.dir,
        marker=str(proxy.config_file),
        healthy=lambda: proxy.pid() is not None,
        stop_timeout=10.0,
    )

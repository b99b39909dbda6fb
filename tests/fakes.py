"""Fakes for unit tests: a compute backend, a BMC, a guest agent and a datastore.

They are registered through the same registries as the real ones (``register_driver``,
``register_bmc``, the datastore catalog), so every operation kind runs its real steps against
them in milliseconds. A fake never stands in for a real backend in a test that claims the
real one works: the integration and end-to-end tests use Podman, libvirt and Redfish.

The fakes are honest about the network where the steps look at it: a running fake instance
listens on its host ports (the readiness step connects to them), and a database instance's
fake agent answers signed HTTP calls with the secret of the instance's config bundle.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from oneplatform.baremetal.bmc import (
    Bmc,
    BmcFactory,
    BootDevice,
    BootMode,
    BootSetting,
    Disk,
    MediaStatus,
    MediaType,
    NodeInventory,
    PowerAction,
    power_request,
)
from oneplatform.compute.capabilities import Capability
from oneplatform.compute.drivers.base import (
    BackendInstance,
    ComputeDriver,
    ExecResult,
    HostInventory,
    InstanceSpec,
    SupportsBootDevice,
    SupportsExec,
    SupportsForcedReboot,
    SupportsGrowStorage,
    SupportsLiveMigrate,
    SupportsResize,
    SupportsSnapshot,
    SupportsVirtualMedia,
    VolumeSpec,
)
from oneplatform.compute.ports import FORWARD_ONLY_PREFIX
from oneplatform.dbaas.datastores.base import ConnInfo, Datastore, UserInfo
from oneplatform.dbaas.datastores.postgresql import PostgreSQL
from oneplatform.errors import AlreadyExists, BackendError, NotFound
from oneplatform.guest.sealing import unseal
from oneplatform.guest.signing import RequestVerifier
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.schemas.compute import ComputeType, PowerState


class SimulatedCrash(BaseException):
    """Raised by a fake after it did its work: escapes the worker like a kill -9 would, so
    the step is left unrecorded and the next worker runs it again."""


# -- the compute backend -----------------------------------------------------------------------
@dataclass
class FakeObject:
    """One backend object (a container or a domain) of an instance."""

    instance_id: str
    host_id: str
    spec: InstanceSpec
    power: PowerState = PowerState.RUNNING
    vcpus: int = 0
    ram_mb: int = 0
    snapshots: list[str] = field(default_factory=list)
    listeners: list[socket.socket] = field(default_factory=list)
    agent: FakeAgent | None = None


class FakeCloud:
    """Everything the fake drivers and BMCs hold, shared by every driver instance (drivers
    are stateless and built per call, so their backend has to live somewhere else)."""

    def __init__(self) -> None:
        self.objects: dict[str, FakeObject] = {}
        self.images: dict[str, set[str]] = {}  # host id -> image refs loaded
        self.volumes: set[tuple[str, str]] = set()  # (instance id, volume name)
        self.volume_gb: dict[tuple[str, str], int] = {}  # grown volumes: their size
        self.calls: list[tuple[str, str]] = []  # (method, instance or host id)
        self.failures: dict[str, list[BaseException]] = {}  # method -> raised, once each
        self.boot_polls = 0  # get() calls that report "starting" after a start
        self.nodes: dict[str, FakeNode] = {}  # system id -> node
        self.published: set[int] = set()  # host ports published by objects not the platform's
        self.lock = threading.RLock()

    # test controls
    def fail_next(self, method: str, error: BaseException) -> None:
        """The next call of ``method`` raises ``error`` (queued: call again for more)."""
        self.failures.setdefault(method, []).append(error)

    def count(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)

    def _enter(self, method: str, ident: str) -> None:
        with self.lock:
            self.calls.append((method, ident))
            queued = self.failures.get(method)
            error = queued.pop(0) if queued else None
        if error is not None:
            raise error

    def crash_after(self, method: str) -> None:
        """The next ``method`` does its work, then the worker "dies" before recording it."""
        self.fail_next(f"{method}:after", SimulatedCrash(method))

    def _leave(self, method: str) -> None:
        queued = self.failures.get(f"{method}:after")
        if queued:
            raise queued.pop(0)

    def vanish(self, instance_id: str) -> None:
        """The backend object disappears behind the platform's back (``podman rm -f``); its
        volumes stay."""
        obj = self.objects.pop(instance_id)
        _stop_listening(obj)

    def kill(self, instance_id: str) -> None:
        """The backend object stops behind the platform's back (``podman kill``)."""
        obj = self.objects[instance_id]
        obj.power = PowerState.STOPPED
        _stop_listening(obj)

    def close(self) -> None:
        for obj in list(self.objects.values()):
            _stop_listening(obj)


CLOUD = FakeCloud()


def _listen(obj: FakeObject) -> None:
    """Hold the instance's host ports, as a running container or forwarded VM would."""
    if obj.listeners or obj.agent:
        return
    bundle = json.loads(obj.spec.config_bundle) if obj.spec.config_bundle else None
    for port in obj.spec.ports:
        if port.name.startswith(FORWARD_ONLY_PREFIX):
            continue  # a forward into the guest (a cluster node's): what runs there listens
        if bundle is not None and port.name == "agent":
            obj.agent = FakeAgent(port.host_port, bundle)
            continue
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port.host_port))
        sock.listen(16)
        obj.listeners.append(sock)


def _stop_listening(obj: FakeObject) -> None:
    for sock in obj.listeners:
        sock.close()
    obj.listeners.clear()
    if obj.agent is not None:
        obj.agent.close()
        obj.agent = None


class FakeDriver(
    ComputeDriver,
    SupportsExec,
    SupportsSnapshot,
    SupportsResize,
    SupportsLiveMigrate,
    SupportsForcedReboot,
    SupportsBootDevice,
    SupportsVirtualMedia,
    SupportsGrowStorage,
    VolumeSpec,
):
    """A driver that keeps its backend in :data:`CLOUD`; idempotent like a real one."""

    compute_type: ClassVar[ComputeType] = ComputeType.CONTAINER
    UNSUPPORTED: ClassVar[dict[Capability, str]] = {}

    def inventory(self) -> HostInventory:
        return HostInventory(vcpus=64, ram_mb=256 * 1024, disk_gb=10_000)

    def ensure_image(self, image: ImageArtifact) -> None:
        CLOUD._enter("ensure_image", self.host.id)
        CLOUD.images.setdefault(self.host.id, set()).add(image.ref)

    def create(self, spec: InstanceSpec) -> BackendInstance:
        CLOUD._enter("create", spec.instance_id)
        if spec.image.ref not in CLOUD.images.get(self.host.id, set()):
            raise BackendError(f"image {spec.image.ref} is not loaded on {self.host.name}")
        with CLOUD.lock:
            obj = CLOUD.objects.get(spec.instance_id)
            if obj is None:
                obj = FakeObject(spec.instance_id, self.host.id, spec, vcpus=spec.vcpus)
                obj.ram_mb = spec.ram_mb
                CLOUD.objects[spec.instance_id] = obj
            CLOUD.volumes |= {(spec.instance_id, v.name) for v in spec.volumes}
            obj.power = PowerState.RUNNING
            _listen(obj)
        CLOUD._leave("create")
        return self._record(obj)

    def _record(self, obj: FakeObject) -> BackendInstance:
        power = obj.power
        if power is PowerState.RUNNING and CLOUD.boot_polls > 0:
            CLOUD.boot_polls -= 1
            power = PowerState.STARTING
        return BackendInstance(
            instance_id=obj.instance_id,
            backend_id=f"fake-{obj.instance_id}",
            power_state=power,
            backend_state=power.value,
            ports=tuple(obj.spec.ports),
        )

    def _object(self, instance_id: str) -> FakeObject:
        obj = CLOUD.objects.get(instance_id)
        if obj is None:
            raise NotFound(f"no fake object for {instance_id}", code="backend_not_found")
        return obj

    def get(self, instance_id: str) -> BackendInstance | None:
        CLOUD._enter("get", instance_id)
        obj = CLOUD.objects.get(instance_id)
        return None if obj is None else self._record(obj)

    def start(self, instance_id: str) -> None:
        CLOUD._enter("start", instance_id)
        obj = self._object(instance_id)
        obj.power = PowerState.RUNNING
        _listen(obj)

    def stop(self, instance_id: str) -> None:
        CLOUD._enter("stop", instance_id)
        obj = self._object(instance_id)
        obj.power = PowerState.STOPPED
        _stop_listening(obj)

    def reboot(self, instance_id: str) -> None:
        CLOUD._enter("reboot", instance_id)
        self._object(instance_id).power = PowerState.RUNNING

    def force_reboot(self, instance_id: str) -> None:
        CLOUD._enter("force_reboot", instance_id)
        obj = self._object(instance_id)
        obj.power = PowerState.RUNNING
        _listen(obj)

    def delete(self, instance_id: str) -> None:
        CLOUD._enter("delete", instance_id)
        with CLOUD.lock:
            obj = CLOUD.objects.pop(instance_id, None)
            CLOUD.volumes = {v for v in CLOUD.volumes if v[0] != instance_id}
        if obj is not None:
            _stop_listening(obj)

    def missing_volumes(self, instance_id: str, volumes: Sequence[VolumeSpec]) -> list[str]:
        return [v.name for v in volumes if (instance_id, v.name) not in CLOUD.volumes]

    def console_log(self, instance_id: str, tail: int = 200) -> str:
        return f"fake console of {instance_id}\n"

    def published_ports(self) -> set[int]:
        with CLOUD.lock:
            ports = {
                p.host_port
                for o in CLOUD.objects.values()
                if o.host_id == self.host.id
                for p in o.spec.ports
            }
            return ports | CLOUD.published

    def list_instances(self) -> list[BackendInstance]:
        return [self._record(o) for o in CLOUD.objects.values() if o.host_id == self.host.id]

    def exec(self, instance_id: str, argv: Sequence[str], timeout: float = 60.0) -> ExecResult:
        CLOUD._enter("exec", instance_id)
        self._object(instance_id)
        return ExecResult(exit_code=0, output=" ".join(argv) + "\n")

    def snapshot(self, instance_id: str, name: str) -> str:
        CLOUD._enter("snapshot", instance_id)
        obj = self._object(instance_id)
        if name not in obj.snapshots:
            obj.snapshots.append(name)
        return name

    def resize(self, instance_id: str, vcpus: int, ram_mb: int) -> None:
        CLOUD._enter("resize", instance_id)
        obj = self._object(instance_id)
        obj.vcpus, obj.ram_mb, obj.power = vcpus, ram_mb, PowerState.RUNNING
        _listen(obj)

    def grow_volume(
        self, instance_id: str, volumes: Sequence[VolumeSpec], name: str, size_gb: int
    ) -> None:
        CLOUD._enter("grow_volume", instance_id)
        if (instance_id, name) not in CLOUD.volumes or name not in {v.name for v in volumes}:
            raise BackendError(f"no volume {name} of {instance_id}")
        key = (instance_id, name)
        CLOUD.volume_gb[key] = max(CLOUD.volume_gb.get(key, 0), size_gb)

    def live_migrate(self, instance_id: str, target: Any) -> None:
        raise BackendError("the fake cloud has one host per object")

    def set_boot_device(self, instance_id: str, device: str, persistent: bool) -> None:
        CLOUD._enter("set_boot_device", instance_id)

    def insert_media(self, instance_id: str, url: str) -> None:
        CLOUD._enter("insert_media", instance_id)

    def eject_media(self, instance_id: str) -> None:
        CLOUD._enter("eject_media", instance_id)


class FakeVmDriver(FakeDriver):
    compute_type: ClassVar[ComputeType] = ComputeType.VM


# -- the guest agent -------------------------------------------------------------------------
WAL_SEGMENT = "000000010000000000000002"


class FakeAgent:
    """Answers the agent's signed calls for one instance, with the secret of its bundle;
    unsigned or badly signed calls are refused as the real agent refuses them."""

    RESTART_SETTINGS = frozenset({"max_connections", "shared_buffers"})

    def __init__(self, port: int, bundle: dict[str, Any]) -> None:
        self.bundle = bundle
        self.restarts = 0
        self.engine = "running"
        self.job: dict[str, Any] | None = None
        self.labels: list[str] = []
        # Replication, as a member of its group: a replica (made with an upstream in its
        # bundle) has replayed ``FakeAgent.replayed`` bytes; a demote stops at 5000.
        self.role = "standby" if bundle.get("standby") else "primary"
        self.calls: list[str] = []
        self.starting = 0  # replication calls answered "the engine is not running" first
        # The configuration group's values it runs with (its bundle's until one is applied);
        # those of RESTART_SETTINGS changed since its last restart wait for one.
        self.configuration: dict[str, str] = dict(bundle["engine"].get("configuration", {}))
        self.waiting: set[str] = set()
        self.verifier = RequestVerifier(bundle["agent"]["secret"], bundle["instance_id"])
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    agent.verifier.verify(self.command, self.path, dict(self.headers), body)
                except Exception as exc:
                    self._send(401, {"error": {"code": "unsigned", "message": str(exc)}})
                    return
                if self.path == "/v1/claim":  # a warm one takes its owner's bundle
                    if not agent.bundle.get("warm"):
                        self._send(409, {"error": {"code": "not_warm", "message": "owned"}})
                        return
                    sealed = json.loads(body)["sealed"]
                    claim = json.loads(unseal(agent.bundle["agent"]["secret"], sealed))
                    owner = claim["bundle"]  # its "initial" is left to the platform's SQL
                    agent.bundle = owner
                    agent.verifier = RequestVerifier(owner["agent"]["secret"], owner["instance_id"])
                if self.path == "/v1/replication/detach":  # a database of its own now
                    sealed = json.loads(body)["sealed"]
                    own = json.loads(unseal(agent.bundle["agent"]["secret"], sealed))
                    if own.get("standby") or own["instance_id"] == agent.bundle["instance_id"]:
                        self._send(400, {"error": {"code": "bad_detach", "message": "no"}})
                        return
                    agent.bundle, agent.role = own, "primary"
                    agent.verifier = RequestVerifier(own["agent"]["secret"], own["instance_id"])
                    self._send(200, agent.replication("/v1/replication", b""))
                    return
                if self.command == "POST" and self.path == "/v1/engine/restart":
                    agent.restarts += 1
                    agent.waiting.clear()
                if self.path == "/v1/configuration":
                    self._send(200, agent.configure(self.command, body))
                    return
                if self.path == "/v1/backups":  # a backup runs and ends by the next look
                    if self.command == "POST":
                        kind = json.loads(body)["type"]
                        agent.job = agent.backup_job(kind)
                        self._send(200, {"job": {**agent.job, "state": "running"}})
                    else:
                        self._send(200, {"repository": {"stanza": True}, "job": agent.job})
                    return
                if self.path == "/v1/storage/grow":
                    agent.calls.append("grow storage")
                    agent.size_bytes = json.loads(body)["size_bytes"]
                    self._send(200, {"grown": True, **agent.usage()})
                    return
                if self.path == "/v1/archive":
                    switch = json.loads(body or b"{}").get("switch", True)
                    agent.calls.append("archive" if switch else "archive completed")
                    self._send(200, {"archived_until": time.time()})
                    return
                if self.path.startswith("/v1/replication"):
                    if agent.starting > 0:
                        agent.starting -= 1
                        agent.calls.append("not running")
                        error = {"code": "engine_not_ready", "message": "not running"}
                        self._send(503, {"error": error})
                        return
                    self._send(200, agent.replication(self.path, body))
                    return
                self._send(200, agent.health())

            def _send(self, status: int, data: dict[str, Any]) -> None:
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = _answer
            do_POST = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def backup_job(self, kind: str) -> dict[str, Any]:
        """A finished pgBackRest job, with the repository's entry for its backup."""
        self.labels.append(
            f"20261126-0400{len(self.labels):02d}F"
            + ("" if kind == "full" else f"_20261126-0400{len(self.labels):02d}I")
        )
        now = time.time()
        return {
            "id": f"job-{len(self.labels)}",
            "type": kind,
            "state": "succeeded",
            "started_at": now - 1,
            "finished_at": now,
            "label": self.labels[-1],
            "detail": "",
            "backup": {
                "label": self.labels[-1],
                "type": kind,
                "prior": self.labels[-2] if kind != "full" and len(self.labels) > 1 else None,
                "timestamp": {"start": now - 1, "stop": now},
                "info": {"size": 4096, "repository": {"delta": 512}},
                "archive": {
                    "start": "000000010000000000000002",
                    "stop": "000000010000000000000002",
                },
            },
        }

    replayed = 6000  # what every replica has replayed (a test may hold it back)
    received = 6000  # what every replica's receiver has received (the primary is at 5000)
    demote_clean = True

    def replication(self, path: str, body: bytes) -> dict[str, Any]:
        action = path.removeprefix("/v1/replication").strip("/")
        self.calls.append(action or "status")
        if action == "demote":
            self.role = "standby"
            if not FakeAgent.demote_clean:
                self.role = "primary"
            return {"clean": FakeAgent.demote_clean, "checkpoint_bytes": 5000}
        if action == "promote":
            self.role = "primary"
        primary = self.role == "primary"
        return {
            "role": self.role,
            "lsn_bytes": 5000 if primary else None,
            "replay_bytes": None if primary else FakeAgent.replayed,
            "receive_bytes": None if primary else FakeAgent.received,
            "receiver": None if primary else "streaming",
            "seeded_from": None if primary else self._seeded_from(),
            "replicas": [],
        }

    def _seeded_from(self) -> str:
        """What the real agent does with its bundle: the latest backup when told to and it
        has the repository, else the primary."""
        standby = self.bundle.get("standby") or {}
        return "backup" if standby.get("from_backup") and self.bundle.get("backup") else "primary"

    def configure(self, method: str, body: bytes) -> dict[str, Any]:
        """``GET|POST /v1/configuration`` as the real agent answers it."""
        if method == "GET":
            return {"values": self.configuration}
        values = json.loads(body)["values"]
        changed = sorted(
            k for k in values.keys() | self.configuration.keys()
            if values.get(k) != self.configuration.get(k)
        )  # fmt: skip
        self.configuration = dict(values)
        self.waiting |= set(changed) & self.RESTART_SETTINGS
        self.calls.append("configuration")
        return {"changed": changed, "pending_restart": sorted(self.waiting & set(changed))}

    def health(self) -> dict[str, Any]:
        return {
            "instance_id": self.bundle["instance_id"],
            "datastore": self.bundle["datastore"],
            "version": self.bundle["version"],
            "engine": self.engine,
            "ready": self.engine == "running",
            "detail": "",
            "restarts": self.restarts,
            "warm": bool(self.bundle.get("warm")),
            "storage": self.usage(),
        }

    size_bytes = 1024**3  # the data filesystem's size (grown by /v1/storage/grow)
    used_bytes = 4096  # what is used of it

    def usage(self) -> dict[str, int]:
        used = self.used_bytes
        return {
            "total_bytes": self.size_bytes,
            "used_bytes": used,
            "free_bytes": self.size_bytes - used,
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- the datastore -----------------------------------------------------------------------------
class FakePostgreSQL(PostgreSQL):
    """PostgreSQL's catalog entry, name rules and sizing, with the SQL kept in memory."""

    initialize = Datastore.initialize  # through the calls below

    def checkpoint(self, conn: ConnInfo) -> None:
        return

    def wait_replayed(self, conn: ConnInfo, past: int, timeout: float) -> int | None:
        return FakeAgent.replayed if FakeAgent.replayed > past else None

    def __init__(self) -> None:
        self.databases: set[str] = set()
        self.users: dict[str, tuple[str, set[str]]] = {}  # name -> (password, databases)

    def ping(self, conn: ConnInfo, timeout: float = 10.0) -> None:
        return

    def list_databases(self, conn: ConnInfo) -> list[str]:
        return sorted(self.databases)

    def create_database(self, conn: ConnInfo, name: str) -> None:
        if name in self.databases:
            raise AlreadyExists(f"database {name!r} exists", code="database_exists")
        self.databases.add(name)

    def delete_database(self, conn: ConnInfo, name: str) -> None:
        self.databases.discard(name)

    def list_users(self, conn: ConnInfo) -> list[UserInfo]:
        return [UserInfo(n, tuple(sorted(d))) for n, (_p, d) in sorted(self.users.items())]

    def create_user(self, conn: ConnInfo, name: str, password: str) -> None:
        if name in self.users:
            raise AlreadyExists(f"user {name!r} exists", code="user_exists")
        self.users[name] = (password, set())

    def delete_user(self, conn: ConnInfo, name: str) -> None:
        self.users.pop(name, None)

    def set_password(self, conn: ConnInfo, name: str, password: str) -> None:
        self.users[name] = (password, self.users[name][1])

    def set_admin_password(self, conn: ConnInfo, password: str) -> None:
        return

    def grant(self, conn: ConnInfo, user: str, database: str) -> None:
        self.users[user][1].add(database)

    def revoke(self, conn: ConnInfo, user: str, database: str) -> None:
        self.users[user][1].discard(database)


# -- the BMC -----------------------------------------------------------------------------------
@dataclass
class FakeNode:
    """A machine behind a fake BMC. ``on_media_boot`` plays the deploy ramdisk: it is called
    with the inserted ISO's URL when the node powers on from the CD."""

    system_id: str
    power: PowerState = PowerState.STOPPED
    boot: BootDevice = BootDevice.HDD
    boot_persistent: bool = True
    media_url: str | None = None
    boots: list[str] = field(default_factory=list)
    on_media_boot: Callable[[FakeNode, str], None] | None = None
    on_disk_boot: Callable[[FakeNode], None] | None = None
    bundle: str | None = None  # what the ramdisk wrote to the config partition
    manifest: str | None = None  # what the ramdisk was told to deploy
    data_max_mib: int = 7 * 1024 + 300  # the room for data on its disk after the image
    services: list[Any] = field(default_factory=list)  # what the booted disk serves

    def shut_down(self) -> None:
        for service in self.services:
            service.close()
        self.services.clear()


class FakeBmc(Bmc):
    """A BMC whose node lives in :data:`CLOUD`; it refuses what real BMCs refuse."""

    def __init__(
        self,
        address: str,
        username: str,
        password: str,
        system_id: str,
        verify_tls: bool | str = True,
    ) -> None:
        self.verify_tls = verify_tls  # what the platform asked of the BMC's certificate
        self.address = address
        self.system_id = system_id
        self.password = password

    def _node(self) -> FakeNode:
        CLOUD._enter("bmc", self.system_id)
        if self.password == "wrong":
            raise BackendError(f"BMC at {self.address} refused the credentials")
        node = CLOUD.nodes.get(self.system_id)
        if node is None:
            raise NotFound(f"no system {self.system_id}", code="backend_not_found")
        return node

    def inspect(self) -> NodeInventory:
        node = self._node()
        return NodeInventory(
            cpus=2,
            cpu_arch="x86_64",
            memory_mb=2048,
            disks=(Disk("sda", 8),),
            nics=("52:54:00:00:00:01",),
            boot_modes=(BootMode.BIOS,),
            virtual_media_types=(MediaType.CD,),
            power_state=node.power,
        )

    def power_state(self) -> PowerState:
        return self._node().power

    def allowed_power_actions(self) -> frozenset[PowerAction]:
        return frozenset(PowerAction)

    def set_power(self, action: PowerAction | str) -> None:
        node = self._node()
        wanted = power_request(PowerAction(action), node.power)
        if wanted is None:
            return
        if wanted in (PowerAction.OFF, PowerAction.FORCE_OFF):
            node.power = PowerState.STOPPED
            return
        node.power = PowerState.RUNNING
        self._boot(node)

    def _boot(self, node: FakeNode) -> None:
        from_cd = node.boot is BootDevice.CD and node.media_url is not None
        node.boots.append("cd" if from_cd else "hdd")
        if not node.boot_persistent:
            node.boot, node.boot_persistent = BootDevice.HDD, True
        if from_cd and node.on_media_boot is not None:
            assert node.media_url is not None
            node.on_media_boot(node, node.media_url)
        if not from_cd and node.on_disk_boot is not None:
            node.on_disk_boot(node)

    def allowed_boot_devices(self) -> frozenset[BootDevice]:
        return frozenset({BootDevice.HDD, BootDevice.CD, BootDevice.PXE})

    def boot_setting(self) -> BootSetting:
        node = self._node()
        return BootSetting(node.boot, node.boot_persistent, BootMode.BIOS, node.boot.value)

    def set_boot_device(self, device: BootDevice | str, persistent: bool = False) -> None:
        node = self._node()
        node.boot, node.boot_persistent = BootDevice(device), persistent

    def media_status(self) -> MediaStatus:
        node = self._node()
        return MediaStatus("cd0", (MediaType.CD,), node.media_url is not None, node.media_url)

    def insert_media(self, url: str) -> None:
        self._node().media_url = url

    def eject_media(self) -> None:
        self._node().media_url = None


def fake_bmc_factory() -> BmcFactory:
    return FakeBmc

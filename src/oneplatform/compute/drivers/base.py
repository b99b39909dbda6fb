"""The driver contract: a small common core plus capability mixins.

Every driver is synchronous, stateless and idempotent. It tags each backend object with our
instance id and looks before it creates, so a retried step never makes a second object.
Drivers never import the store: they get typed specs in and give typed records back.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from oneplatform.compute.capabilities import Capability
from oneplatform.guest import contract
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.schemas.compute import ComputeType, PowerState


@dataclass(frozen=True)
class HostRef:
    """How to reach one host: everything a driver needs, nothing from the store."""

    id: str
    name: str
    compute_type: ComputeType
    uri: str
    bind_address: str = "127.0.0.1"
    settings: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PortMapping:
    name: str
    guest_port: int
    host_port: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class HostRoute:
    """A host service a guest may reach (the backup store): where it listens on the host.
    Each compute type gives its guests a path to it (see the drivers)."""

    name: str
    address: str
    port: int


@dataclass(frozen=True)
class FileMount:
    """A file the instance must see at ``guest_path`` (for containers: a bind mount)."""

    source: Path
    guest_path: str
    read_only: bool = True


@dataclass(frozen=True)
class VolumeSpec:
    """Persistent storage owned by the instance: it outlives restarts, not deletion."""

    name: str
    size_gb: int
    guest_path: str
    # The most it can grow to where its device bounds it (a node's data partition: the end
    # of the node's disk, recorded at deploy); None: bounded by its host's free disk only.
    max_size_gb: int | None = None

    def as_record(self) -> dict[str, Any]:
        """As the instance row keeps it (``max_size_gb`` only once known)."""
        record = dataclasses.asdict(self)
        if self.max_size_gb is None:
            del record["max_size_gb"]
        return record


@dataclass(frozen=True)
class InstanceSpec:
    instance_id: str
    name: str
    image: ImageArtifact
    vcpus: int
    ram_mb: int
    disk_gb: int
    ports: Sequence[PortMapping] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    files: Sequence[FileMount] = ()
    volumes: Sequence[VolumeSpec] = ()
    # The instance's config bundle (guest/bundle format). Each driver delivers it the way
    # its compute type allows; the guest agent finds it at BUNDLE_GUEST_PATH either way.
    config_bundle: bytes | None = None
    # The isolation group the instance's network belongs to (its project): instances of
    # one group may reach each other, nothing else; None: the driver's own isolation only.
    network: str | None = None
    # The host services the guest may reach, and nothing else of the host.
    host_services: Sequence[HostRoute] = ()


BUNDLE_GUEST_PATH = contract.BUNDLE_GUEST_PATH


@dataclass(frozen=True)
class BackendInstance:
    """What the backend says about one of our instances."""

    instance_id: str
    backend_id: str
    power_state: PowerState
    backend_state: str
    ports: Sequence[PortMapping] = ()


@dataclass(frozen=True)
class HostInventory:
    vcpus: int
    ram_mb: int
    disk_gb: int


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


class ComputeDriver(abc.ABC):
    """The common core every compute type really has."""

    compute_type: ClassVar[ComputeType]
    # Why this compute type cannot do what its mixins do not provide.
    UNSUPPORTED: ClassVar[Mapping[Capability, str]] = {}
    # How far a capability it has goes, where something bounds it.
    LIMITS: ClassVar[Mapping[Capability, str]] = {}

    def __init__(self, host: HostRef) -> None:
        self.host = host  # no I/O here

    @abc.abstractmethod
    def inventory(self) -> HostInventory:
        """The host's total capacity. Calls the backend."""

    @abc.abstractmethod
    def ensure_image(self, image: ImageArtifact) -> None:
        """Make the image available on the host; returns at once if it already is."""

    @abc.abstractmethod
    def create(self, spec: InstanceSpec) -> BackendInstance:
        """Create and start the instance; returns when the backend has started it.

        Idempotent: an existing backend object tagged with ``spec.instance_id`` is returned
        (and started if stopped) instead of a second one being made.
        """

    @abc.abstractmethod
    def get(self, instance_id: str) -> BackendInstance | None:
        """The backend's view of the instance, or None if it has no such object."""

    @abc.abstractmethod
    def start(self, instance_id: str) -> None:
        """Start a stopped instance; silent if already running."""

    @abc.abstractmethod
    def stop(self, instance_id: str) -> None:
        """Stop gracefully (forcing after a grace period); silent if already stopped."""

    def published_ports(self) -> set[int]:
        """Host ports the backend's objects publish — the platform's or anyone's, running or
        not — that nothing may be listening on (a rule forwards them): a new port skips
        them. The default: none beyond what a bind on the host finds held."""
        return set()

    def fence(self, instance_id: str) -> None:
        """Cut the power at once, asking the guest nothing (fencing: it must not run on);
        returns once it is off; silent if already off. The default stops it."""
        self.stop(instance_id)

    @abc.abstractmethod
    def reboot(self, instance_id: str) -> None:
        """Restart the instance; returns when the backend has restarted it."""

    @abc.abstractmethod
    def delete(self, instance_id: str) -> None:
        """Remove the instance and the backend objects it owns; silent if already gone."""

    @abc.abstractmethod
    def console_log(self, instance_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines the instance wrote to its console."""

    @abc.abstractmethod
    def list_instances(self) -> list[BackendInstance]:
        """Every backend object on this host that carries one of our instance ids."""

    @abc.abstractmethod
    def missing_volumes(self, instance_id: str, volumes: Sequence[VolumeSpec]) -> list[str]:
        """The names of ``volumes`` whose storage the host no longer has. A repair recreates
        an instance only when this is empty: a new, empty volume is never mistaken for
        the one that held the data."""

    @classmethod
    def capabilities(cls) -> dict[Capability, bool]:
        return {cap: issubclass(cls, mixin) for cap, mixin in CAPABILITY_MIXINS.items()}

    @classmethod
    def unsupported_reason(cls, capability: Capability) -> str | None:
        """None when supported; otherwise the reason, which every driver must state."""
        if issubclass(cls, CAPABILITY_MIXINS[capability]):
            return None
        return cls.UNSUPPORTED.get(
            capability, f"{cls.compute_type.value} instances do not support {capability.value}"
        )


class SupportsExec(abc.ABC):
    @abc.abstractmethod
    def exec(self, instance_id: str, argv: Sequence[str], timeout: float = 60.0) -> ExecResult:
        """Run ``argv`` inside the running instance and return its exit code and output."""


class SupportsSnapshot(abc.ABC):
    @abc.abstractmethod
    def snapshot(self, instance_id: str, name: str) -> str:
        """Take a snapshot; returns its backend id."""


class SupportsResize(abc.ABC):
    @abc.abstractmethod
    def resize(self, instance_id: str, vcpus: int, ram_mb: int) -> None:
        """Change the instance's size, restarting it if the backend needs that."""


class SupportsLiveMigrate(abc.ABC):
    @abc.abstractmethod
    def live_migrate(self, instance_id: str, target: HostRef) -> None:
        """Move the running instance to ``target``."""


class SupportsForcedReboot(abc.ABC):
    @abc.abstractmethod
    def force_reboot(self, instance_id: str) -> None:
        """Reset without asking the guest."""


class SupportsBootDevice(abc.ABC):
    @abc.abstractmethod
    def set_boot_device(self, instance_id: str, device: str, persistent: bool) -> None:
        """Choose what the machine boots from."""


class SupportsVirtualMedia(abc.ABC):
    @abc.abstractmethod
    def insert_media(self, instance_id: str, url: str) -> None:
        """Attach an ISO by URL (the machine's controller downloads it)."""

    @abc.abstractmethod
    def eject_media(self, instance_id: str) -> None:
        """Detach what is attached; silent when nothing is."""


class SupportsGrowStorage(abc.ABC):
    # Whether a volume's size is what the guest gets (False: a record, the guest may use
    # more); auto-growth acts only where it is.
    VOLUME_SIZE_ENFORCED: ClassVar[bool] = True

    @abc.abstractmethod
    def grow_volume(
        self, instance_id: str, volumes: Sequence[VolumeSpec], name: str, size_gb: int
    ) -> None:
        """Grow the storage of volume ``name`` (one of the instance's ``volumes``) to
        ``size_gb`` while the instance runs (or is stopped). Idempotent: storage at that size
        or larger is left as it is; never shrinks. What the guest must do to use the new
        room (grow its filesystem) is the guest agent's part."""


CAPABILITY_MIXINS: dict[Capability, type[abc.ABC]] = {
    Capability.EXEC: SupportsExec,
    Capability.SNAPSHOT: SupportsSnapshot,
    Capability.RESIZE: SupportsResize,
    Capability.LIVE_MIGRATE: SupportsLiveMigrate,
    Capability.FORCED_REBOOT: SupportsForcedReboot,
    Capability.BOOT_DEVICE: SupportsBootDevice,
    Capability.VIRTUAL_MEDIA: SupportsVirtualMedia,
    Capability.GROW_STORAGE: SupportsGrowStorage,
}

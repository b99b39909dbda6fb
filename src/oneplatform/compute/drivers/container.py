"""The container driver: Podman through its CLI.

Every call goes through :meth:`PodmanDriver._podman`, which runs ``podman`` (with
``--url URI`` for a remote host) under a timeout and translates failures into
:class:`~oneplatform.errors.BackendError` subclasses carrying podman's stderr. Machine-readable
output comes from ``--format json`` / ``inspect``, which is stable across Podman 4.x and 5.x.

Backend objects carry the labels ``oneplatform.instance=<instance_id>`` and
``oneplatform.managed=1``; the container is named ``onep-<instance_id>``. Lookups always go
through the label, so a retried step finds what an earlier attempt made.

An instance owns up to three kinds of Podman objects, all removed by :meth:`PodmanDriver.delete`:

* the container ``onep-<instance_id>``;
* one named volume ``onep-<instance_id>-<volume name>`` per :class:`VolumeSpec` (labelled like
  the container, plus ``oneplatform.size_gb``), which survives stop, start and reboot;
* the secret ``onep-<instance_id>-bundle`` holding the config bundle, mounted read-only (0400)
  at :data:`BUNDLE_GUEST_PATH`. A secret rather than a bind-mounted file because it also works
  through ``podman --url`` on a remote host, where there is no local file to mount. The
  bundle's bytes go to podman on stdin only: never in argv, an exception or a log.

Its container joins its project's network ``onep-net-<group>`` (made on first use, removed
with the group's last container; see :data:`GUEST_SUBNETS`) and runs confined
(:data:`CONFINEMENT`). The design is in docs/security.md.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from oneplatform.compute.capabilities import Capability
from oneplatform.compute.drivers.base import (
    BUNDLE_GUEST_PATH,
    BackendInstance,
    ComputeDriver,
    ExecResult,
    HostInventory,
    HostRef,
    ImageArtifact,
    InstanceSpec,
    PortMapping,
    SupportsExec,
    SupportsGrowStorage,
    VolumeSpec,
)
from oneplatform.compute.drivers.cni import drop_stale_forwards
from oneplatform.compute.drivers.ssh import identity_file, ssh_target, trust_home
from oneplatform.errors import BackendError, BackendNotFound, BackendUnavailable
from oneplatform.schemas.compute import ComputeType, PowerState

LABEL_INSTANCE = "oneplatform.instance"
LABEL_MANAGED = "oneplatform.managed"
LABEL_PORTS = "oneplatform.ports"  # JSON list of [name, guest_port, host_port, protocol]
LABEL_SIZE_GB = "oneplatform.size_gb"  # on volumes: the requested size, recorded not enforced
NAME_PREFIX = "onep-"
BUNDLE_SECRET_SUFFIX = "-bundle"

# Podman's secret size limit (4.x): "secret data must be larger than 0 and less than 512000 bytes".
MAX_SECRET_BYTES = 512000 - 1
# What a volume name may be (podman's own rule for names), and so part of ours.
_VOLUME_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

LOCAL_URIS = frozenset({"", "local://"})

# Seconds a container gets to stop on SIGTERM before podman kills it.
STOP_GRACE_S = 10
# Timeouts (seconds) of the podman calls themselves.
DEFAULT_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = STOP_GRACE_S + 50.0
RM_ATTEMPTS = 4  # podman rm, when Podman reports a mount busy (see _remove_containers)
IMPORT_TIMEOUT_S = 900.0

# (host URI, network name) this process made or saw: a create skips `podman network exists`
# for them. A network removed behind our back shows as "network not found" at `podman run`,
# which drops it from here and makes it again.
_KNOWN_NETWORKS: set[tuple[str, str]] = set()

# Podman container states -> PowerState. Anything not listed maps to UNKNOWN.
PODMAN_STATES: dict[str, PowerState] = {
    "configured": PowerState.STOPPED,  # defined in podman's database, never started
    "created": PowerState.STOPPED,  # created in the runtime, never started
    "initialized": PowerState.STARTING,  # runtime set up, process not started yet
    "running": PowerState.RUNNING,
    "paused": PowerState.PAUSED,
    "stopping": PowerState.STOPPING,
    "removing": PowerState.STOPPING,
    "exited": PowerState.STOPPED,
    "stopped": PowerState.STOPPED,
    "dead": PowerState.CRASHED,
}

# States in which ``podman start`` is needed / ``podman stop`` is pointless.
_NOT_RUNNING = frozenset({"configured", "created", "exited", "stopped"})


def map_state(state: str) -> PowerState:
    """Map a Podman container state (case-insensitive) to a PowerState; UNKNOWN if unlisted."""
    return PODMAN_STATES.get(state.strip().lower(), PowerState.UNKNOWN)


def container_name(instance_id: str) -> str:
    return f"{NAME_PREFIX}{instance_id}"


def volume_name(instance_id: str, name: str) -> str:
    """The Podman volume backing ``VolumeSpec(name=name)`` of the instance."""
    return f"{NAME_PREFIX}{instance_id}-{name}"


def bundle_secret_name(instance_id: str) -> str:
    """The Podman secret holding the instance's config bundle."""
    return f"{NAME_PREFIX}{instance_id}{BUNDLE_SECRET_SUFFIX}"


# What a guest may do: root in the container is an unprivileged range of host uids (a user
# namespace of its own), with only the capabilities the guest agent needs to run the engine
# as its own user (file ownership, switching user, signalling it), no privilege gained by
# exec, and a bounded number of processes.
CONFINEMENT = (
    "--userns=auto:size=65536",
    "--cap-drop=all",
    "--cap-add=CHOWN,DAC_OVERRIDE,FOWNER,SETUID,SETGID,KILL",
    "--security-opt=no-new-privileges",
    "--pids-limit=1024",
)


def network_name(group: str) -> str:
    """The Podman network of an isolation group (a project)."""
    return f"{NAME_PREFIX}net-{group}"


# Every group's network is one /24 of GUEST_SUBNETS. The host's firewall (scripts/setup.sh,
# chain GUARD_CHAIN) lets a guest from there open no connection to anything but the guests
# on its own bridge: not the host, not another group, not the outside. Answers to the
# connections that come in through published ports are let back.
GUEST_SUBNETS = ipaddress.IPv4Network("10.96.0.0/12")
GUARD_CHAIN = "ONEP-GUESTS"
GUARD_RULE = ("INPUT", "-s", str(GUEST_SUBNETS), "-j", GUARD_CHAIN)


def run_argv(
    spec: InstanceSpec,
    runtime: str | None,
    bind_address: str,
    labels: Mapping[str, str],
    name: str | None = None,
) -> list[str]:
    """The ``podman run`` arguments of ``spec``: the one definition the driver and the
    benchmark's raw baseline share (runc and explicit ulimits: the traps of these hosts)."""
    args = ["run", "--detach", "--pull=never", "--name", name or container_name(spec.instance_id)]
    for key, value in labels.items():
        args += ["--label", f"{key}={value}"]
    if runtime:  # a remote client has no --runtime: the host's containers.conf chooses
        args += ["--runtime", runtime]
    args += ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
    args += ["--cpus", str(spec.vcpus), "--memory", f"{spec.ram_mb}m", *CONFINEMENT]
    if spec.network is not None:
        args += ["--network", network_name(spec.network)]
    for port in spec.ports:
        args += ["-p", f"{bind_address}:{port.host_port}:{port.guest_port}/tcp"]
    for mount in spec.files:
        mode = "ro" if mount.read_only else "rw"
        args += ["-v", f"{mount.source}:{mount.guest_path}:{mode}"]
    for volume in spec.volumes:  # U: owned by the container's own (mapped) root
        args += ["-v", f"{volume_name(spec.instance_id, volume.name)}:{volume.guest_path}:U"]
    if spec.config_bundle is not None:
        secret = bundle_secret_name(spec.instance_id)
        args += ["--secret", f"{secret},type=mount,target={BUNDLE_GUEST_PATH},mode=0400"]
    for key, value in spec.env.items():
        args += ["-e", f"{key}={value}"]
    return [*args, spec.image.ref, *spec.image.command]


class PodmanDriver(ComputeDriver, SupportsExec, SupportsGrowStorage):
    """Containers on a Podman host (local, or remote through ``podman --url``).

    Stateless: every method asks podman. Settings read from ``host.settings``: ``runtime``
    (OCI runtime, default ``runc``; a remote host runs its containers.conf's); for an
    ``ssh://`` host ``identity_file`` and ``host_key`` (see
    :mod:`~oneplatform.compute.drivers.ssh`); ``publish_address`` (where ports are published
    on the host, when the platform reaches them at another address: ``bind_address``).
    """

    compute_type: ClassVar[ComputeType] = ComputeType.CONTAINER
    VOLUME_SIZE_ENFORCED: ClassVar[bool] = False  # see create(): the size is a record
    UNSUPPORTED: ClassVar[Mapping[Capability, str]] = {
        Capability.SNAPSHOT: (
            "a container has no disks of its own to snapshot: its state is the image plus "
            "its volumes, which are backed up at the database level"
        ),
        Capability.RESIZE: (
            "the container driver does not change the limits of a running container; "
            "recreate the instance with the new size instead"
        ),
        Capability.LIVE_MIGRATE: (
            "a container's processes live in the host kernel: they cannot be moved to another "
            "host while running (no checkpoint/restore is set up)"
        ),
        Capability.FORCED_REBOOT: (
            "a container has no machine to reset: reboot already restarts its processes, "
            "killing them after the grace period"
        ),
        Capability.BOOT_DEVICE: (
            "containers share the host kernel: there is no firmware or boot device to choose"
        ),
        Capability.VIRTUAL_MEDIA: (
            "containers share the host kernel and boot nothing, so there is no virtual CD "
            "drive to attach an ISO to"
        ),
    }

    def __init__(self, host: HostRef) -> None:
        super().__init__(host)
        self._ssh_home: Path | None = None  # looked up on the first podman call
        self._ssh_checked = False

    # ------------------------------------------------------------------ podman calls

    def _base_cmd(self) -> list[str]:
        uri = (self.host.uri or "").strip()
        if uri in LOCAL_URIS:
            return ["podman"]
        cmd = ["podman", "--url", uri]
        key = identity_file(self.host.settings)
        if key and ssh_target(uri) is not None:
            cmd += ["--identity", key]
        return cmd

    def _env(self) -> dict[str, str] | None:
        """Podman's environment: for an SSH host, HOME is the directory whose
        ``.ssh/known_hosts`` holds only this host's trusted key (see
        :mod:`~oneplatform.compute.drivers.ssh`); Podman's client reads no other."""
        if not self._ssh_checked:
            self._ssh_home = trust_home(self.host)
            self._ssh_checked = True
        if self._ssh_home is None:
            return None
        return {**os.environ, "HOME": str(self._ssh_home)}

    def _podman(
        self,
        args: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        check: bool = True,
        merge_output: bool = False,
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run one podman command; the only place the driver starts podman.

        With ``check`` a non-zero exit raises: BackendUnavailable when podman is missing or
        unreachable, BackendNotFound for a missing container, BackendError otherwise. With
        ``merge_output`` stderr is merged into stdout (and is then what an error reports).
        ``stdin`` is fed to podman as is (the way secret data travels: never through argv);
        without it podman's stdin is /dev/null. Output is decoded as UTF-8.
        """
        cmd = [*self._base_cmd(), *args]
        what = f"podman {' '.join(args[:2])}"
        env = self._env()
        try:
            raw = subprocess.run(
                cmd,
                env=env,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise BackendUnavailable(
                f"podman is not installed on this machine ({exc})", host=self.host.name
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise BackendError(
                f"{what} timed out after {timeout:g}s", host=self.host.name, command=list(args)
            ) from exc
        except OSError as exc:
            raise BackendUnavailable(f"cannot run podman: {exc}", host=self.host.name) from exc
        proc = subprocess.CompletedProcess(
            args=list(args),
            returncode=raw.returncode,
            stdout=_decode(raw.stdout),
            stderr=None if merge_output else _decode(raw.stderr),
        )
        if check and proc.returncode != 0:
            raise self._translate(what, args, proc)
        return proc

    def _translate(
        self, what: str, args: Sequence[str], proc: subprocess.CompletedProcess[str]
    ) -> BackendError:
        err = ((proc.stderr if proc.stderr is not None else proc.stdout) or "").strip()
        low = err.lower()
        message = f"{what} failed (exit {proc.returncode}): {err or 'no output'}"
        details: dict[str, Any] = {
            "host": self.host.name,
            "command": list(args),
            "exit_code": proc.returncode,
        }
        if any(
            sign in low
            for sign in (
                "unable to connect to podman",
                "cannot connect to podman",
                "failed to connect",  # over SSH: refused, no route, handshake, key mismatch
            )
        ):
            return BackendUnavailable(message, **details)
        if "no such container" in low:
            return BackendNotFound(message, **details)
        return BackendError(message, **details)

    def _podman_json(self, args: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S) -> Any:
        out = self._podman(args, timeout=timeout).stdout
        try:
            return json.loads(out) if out.strip() else None
        except json.JSONDecodeError as exc:
            raise BackendError(
                f"podman {' '.join(args[:2])} returned invalid JSON: {out[:200]!r}",
                host=self.host.name,
            ) from exc

    def _find(self, instance_id: str) -> list[dict[str, Any]]:
        """Every container (running or not) labelled with ``instance_id``."""
        rows = self._podman_json(
            ["ps", "-a", "--filter", f"label={LABEL_INSTANCE}={instance_id}", "--format", "json"]
        )
        return list(rows or [])

    def _one(self, instance_id: str) -> dict[str, Any] | None:
        rows = self._find(instance_id)
        if not rows:
            return None
        # Only one can exist (the name is unique); prefer a running one if somehow not.
        rows.sort(key=lambda r: str(r.get("State", "")).lower() != "running")
        return rows[0]

    def _require(self, instance_id: str) -> dict[str, Any]:
        row = self._one(instance_id)
        if row is None:
            raise BackendNotFound(
                f"no container for instance {instance_id} on host {self.host.name}",
                host=self.host.name,
                instance_id=instance_id,
            )
        return row

    def _to_instance(self, row: Mapping[str, Any]) -> BackendInstance:
        labels: Mapping[str, str] = row.get("Labels") or {}
        state = str(row.get("State", ""))
        return BackendInstance(
            instance_id=labels.get(LABEL_INSTANCE, ""),
            backend_id=str(row.get("Id", "")),
            power_state=map_state(state),
            backend_state=state,
            ports=_ports_of(row),
        )

    # ------------------------------------------------------------------ the contract

    def inventory(self) -> HostInventory:
        """Total CPUs, RAM and image-store disk of the host. One ``podman info`` call."""
        info = self._podman_json(["info", "--format", "json"]) or {}
        host = info.get("host", {})
        store = info.get("store", {})
        ram_mb = int(host.get("memTotal", 0)) // (1024 * 1024)
        if (self.host.uri or "").strip() in LOCAL_URIS and store.get("graphRoot"):
            disk_bytes = shutil.disk_usage(store["graphRoot"]).total
        else:  # remote: the store is not on this machine; podman reports its size
            disk_bytes = int(store.get("graphRootAllocated", 0))
        return HostInventory(
            vcpus=int(host.get("cpus", 0)), ram_mb=ram_mb, disk_gb=disk_bytes // 1024**3
        )

    def ensure_image(self, image: ImageArtifact) -> None:
        """Make ``image.ref`` exist on the host; returns at once if it already does.

        Otherwise imports ``image.rootfs`` (a root filesystem tarball) with the image's
        command and environment as config; that takes seconds to minutes with the size.
        """
        exists = self._podman(["image", "exists", image.ref], check=False)
        if exists.returncode == 0:
            return
        if exists.returncode != 1:
            raise self._translate("podman image exists", ["image", "exists", image.ref], exists)
        if image.rootfs is None:
            raise BackendError(
                f"image {image.ref} is not on host {self.host.name} and has no rootfs tarball "
                "to import (there is no registry to pull from)",
                host=self.host.name,
                image=image.ref,
            )
        if not image.rootfs.is_file():
            raise BackendError(
                f"rootfs tarball {image.rootfs} of image {image.ref} does not exist",
                host=self.host.name,
                image=image.ref,
            )
        args = ["import", *image.import_changes(), str(image.rootfs), image.ref]
        self._podman(args, timeout=IMPORT_TIMEOUT_S)

    def create(self, spec: InstanceSpec) -> BackendInstance:
        """Create and start the container; returns once podman has started its process.

        Idempotent: an existing container labelled with ``spec.instance_id`` is returned
        (started first if it is not running), and its volumes and bundle secret are left as
        they are. Otherwise, before ``podman run``: each volume is created unless it already
        exists (an existing one, with its data, is reused), and the bundle secret is made
        afresh from ``spec.config_bundle`` (a stale one from an earlier attempt is replaced;
        without a bundle, a stale one is removed). The image must already be on the host
        (see :meth:`ensure_image`); nothing is ever pulled.

        Volume sizes are not enforced: Podman's ``local`` volume driver has no quota on a
        plain directory store, so ``size_gb`` is only recorded as the ``oneplatform.size_gb``
        label (the size at creation; a later growth is recorded by the platform only) and a
        volume can grow until the host's disk is full.
        """
        existing = self._one(spec.instance_id)
        if existing is not None:
            try:
                return self._start_row(spec.instance_id, existing)
            except BackendError as exc:
                # A podman killed (with the worker that ran it) between the runtime's create
                # and its own record leaves runc's state behind: that container never starts
                # again ("container with given ID already exists"). It is an unfinished
                # create's: remove it (its named volumes stay) and run it anew below.
                if "container with given ID already exists" not in exc.message:
                    raise
                self._podman(["rm", "--force", "--time", "0", str(existing["Id"])], check=False)
        self._check_spec(spec)
        for volume in spec.volumes:
            self._ensure_volume(spec.instance_id, volume)
        self._replace_bundle_secret(spec.instance_id, spec.config_bundle)
        args = self._run_args(spec)
        for attempt in (1, 2):
            if spec.network is not None:
                self._ensure_network(spec.network)
            try:
                started = self._podman(args, timeout=RUN_TIMEOUT_S)
                break
            except BackendError as exc:
                if "already in use" in exc.message:
                    # A concurrent create made it first (the name is unique): use that one.
                    found = self._one(spec.instance_id)
                    if found is not None:
                        return self._start_row(spec.instance_id, found)
                    # Else a podman killed half-way (with the worker that ran it) left the
                    # name to a container only in the storage, which `ps` does not list:
                    # remove it and run once more.
                    if attempt == 1:
                        self._podman(
                            ["rm", "--force", "--time", "0", container_name(spec.instance_id)],
                            check=False,
                        )
                        continue
                    raise
                # The group's last other instance was deleted in between, with its network.
                if attempt == 1 and "network not found" in exc.message.lower():
                    _KNOWN_NETWORKS.discard((self.host.uri, network_name(spec.network or "")))
                    continue
                raise
        # `podman run -d` returns once the container's process started, printing its id: no
        # need to ask podman again (each call costs the engine's start some CPU).
        self._drop_stale_forwards(started.stdout.strip(), spec.ports)
        return BackendInstance(
            instance_id=spec.instance_id,
            backend_id=started.stdout.strip(),
            power_state=PowerState.RUNNING,
            backend_state="running",
            ports=spec.ports,
        )

    def _run_args(self, spec: InstanceSpec) -> list[str]:
        ports_label = json.dumps(
            [[p.name, p.guest_port, p.host_port, p.protocol] for p in spec.ports]
        )
        labels = {
            LABEL_INSTANCE: spec.instance_id,
            LABEL_MANAGED: "1",
            LABEL_PORTS: ports_label,
        }
        local = (self.host.uri or "").strip() in LOCAL_URIS
        runtime = str(self.host.settings.get("runtime", "runc")) if local else None
        # A host whose ports are reached through a forward (a cluster's node VM: QEMU's
        # hostfwd to the guest's own address) publishes on that address, not on the one the
        # platform reaches them at.
        publish = str(self.host.settings.get("publish_address") or self.host.bind_address)
        return run_argv(spec, runtime, publish, labels)

    def _check_spec(self, spec: InstanceSpec) -> None:
        """Refuse, before anything is made, what podman would refuse or misparse."""
        seen: set[str] = set()
        for volume in spec.volumes:
            if not _VOLUME_NAME_RE.fullmatch(volume.name) or volume.name in seen:
                raise BackendError(
                    f"volume name {volume.name!r} is invalid or repeated: names are unique and "
                    "made of letters, digits, '_', '.' and '-', starting with a letter or digit",
                    host=self.host.name,
                    instance_id=spec.instance_id,
                )
            seen.add(volume.name)
            path = volume.guest_path
            if not path.startswith("/") or ":" in path or "," in path:
                raise BackendError(
                    f"volume {volume.name!r} has guest path {path!r}: it must be absolute "
                    "and contain no ':' or ','",
                    host=self.host.name,
                    instance_id=spec.instance_id,
                )
        bundle = spec.config_bundle
        if bundle is not None and not 0 < len(bundle) <= MAX_SECRET_BYTES:
            raise BackendError(
                f"the config bundle is {len(bundle)} bytes; a Podman secret holds 1 to "
                f"{MAX_SECRET_BYTES} bytes",
                host=self.host.name,
                instance_id=spec.instance_id,
            )

    def missing_volumes(self, instance_id: str, volumes: Sequence[VolumeSpec]) -> list[str]:
        missing = []
        for volume in volumes:
            look = ["volume", "inspect", volume_name(instance_id, volume.name)]
            if self._podman(look, check=False).returncode != 0:
                missing.append(volume.name)
        return missing

    def _ensure_network(self, group: str) -> None:
        """The group's network, made unless it exists, on a free /24 of GUEST_SUBNETS."""
        name = network_name(group)
        if (self.host.uri, name) in _KNOWN_NETWORKS:
            return
        if self._podman(["network", "exists", name], check=False).returncode == 0:
            _KNOWN_NETWORKS.add((self.host.uri, name))
            return
        self._check_guard()
        for _attempt in range(5):  # another group's network may take the same subnet first
            subnet = self._free_subnet()
            create = ["network", "create", "--subnet", str(subnet), "--disable-dns"]
            create += ["--opt", "isolate=true", "--label", f"{LABEL_MANAGED}=1", name]
            proc = self._podman(create, check=False)
            output = proc.stdout + proc.stderr
            if proc.returncode == 0 or "already exists" in output:
                _KNOWN_NETWORKS.add((self.host.uri, name))
                return
            if "already used" not in output:
                raise self._translate("podman network create", create, proc)
        raise BackendError(f"no free subnet for network {name}: try again")

    def _free_subnet(self) -> ipaddress.IPv4Network:
        taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for network in self._podman_json(["network", "ls", "--format", "json"]) or []:
            for subnet in network.get("subnets") or ():
                taken.append(ipaddress.ip_network(subnet["subnet"], strict=False))
        for candidate in GUEST_SUBNETS.subnets(new_prefix=24):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
        raise BackendError(f"every /24 of {GUEST_SUBNETS} is in use on this host")

    def _check_guard(self) -> None:
        """Refuse to put guests on a network the host's firewall does not confine (a local
        host only: a remote host's firewall is its own set-up's to check)."""
        if (self.host.uri or "").strip() not in LOCAL_URIS:
            return
        try:
            proc = subprocess.run(
                ["iptables", "-C", *GUARD_RULE], capture_output=True, text=True, timeout=30
            )
        except FileNotFoundError:
            proc = None
        if proc is None or proc.returncode != 0:
            raise BackendUnavailable(
                f"this host's firewall does not confine guest networks ({GUEST_SUBNETS}, "
                f"chain {GUARD_CHAIN}): run scripts/setup.sh"
            )

    def _ensure_volume(self, instance_id: str, volume: VolumeSpec) -> None:
        """Create the named volume unless it exists; an existing one must be this instance's.
        (Created first and inspected only when it exists: a new instance costs one call.)"""
        name = volume_name(instance_id, volume.name)
        create = [
            "volume",
            "create",
            "--label",
            f"{LABEL_INSTANCE}={instance_id}",
            "--label",
            f"{LABEL_MANAGED}=1",
            "--label",
            f"{LABEL_SIZE_GB}={volume.size_gb}",
            name,
        ]
        made = self._podman(create, check=False)
        if made.returncode == 0:
            return
        if "already exists" not in (made.stderr or ""):
            raise self._translate("podman volume create", create, made)
        look = ["volume", "inspect", name, "--format", "json"]
        proc = self._podman(look, check=False)
        if proc.returncode != 0:
            raise self._translate("podman volume inspect", look, proc)
        try:
            found = json.loads(proc.stdout or "[]") or [{}]
            owner = (found[0].get("Labels") or {}).get(LABEL_INSTANCE)
        except (ValueError, AttributeError, IndexError) as exc:
            raise BackendError(
                f"podman volume inspect returned unexpected output: {proc.stdout[:200]!r}",
                host=self.host.name,
            ) from exc
        if owner != instance_id:
            raise BackendError(
                f"volume {name} exists on host {self.host.name} but is not labelled "
                f"{LABEL_INSTANCE}={instance_id}; remove it or rename it",
                host=self.host.name,
                instance_id=instance_id,
            )

    def grow_volume(
        self, instance_id: str, volumes: Sequence[VolumeSpec], name: str, size_gb: int
    ) -> None:
        """A volume's size is a record, not a limit (see :meth:`create`): the volume is a
        directory of the host's storage and the container may already use all of that
        storage's free room. Growing it only checks that the volume is still there and the
        instance's; the platform records the new size. Returns at once, online."""
        if name not in {v.name for v in volumes}:
            raise BackendError(f"instance has no volume {name!r}", host=self.host.name)
        volume = volume_name(instance_id, name)
        look = ["volume", "inspect", volume, "--format", "json"]
        proc = self._podman(look, check=False)
        if proc.returncode != 0:
            if "no such volume" in (proc.stderr or "").lower():
                raise BackendNotFound(
                    f"volume {volume} is gone from host {self.host.name}", host=self.host.name
                )
            raise self._translate("podman volume inspect", look, proc)
        found = json.loads(proc.stdout or "[]") or [{}]
        if (found[0].get("Labels") or {}).get(LABEL_INSTANCE) != instance_id:
            raise BackendError(
                f"volume {volume} is not labelled {LABEL_INSTANCE}={instance_id}",
                host=self.host.name,
            )

    def _secret_exists(self, name: str) -> bool:
        args = ["secret", "inspect", name]
        proc = self._podman(args, check=False)
        if proc.returncode == 0:
            return True
        if "no such secret" in (proc.stderr or "").lower():
            return False
        raise self._translate("podman secret inspect", args, proc)

    def _remove_secret(self, name: str) -> None:
        """``podman secret rm``; silent if there is no such secret (4.3 has no --ignore)."""
        args = ["secret", "rm", name]
        proc = self._podman(args, check=False)
        if proc.returncode != 0 and "no such secret" not in (proc.stderr or "").lower():
            raise self._translate("podman secret rm", args, proc)

    def _replace_bundle_secret(self, instance_id: str, bundle: bytes | None) -> None:
        """Make the bundle secret hold exactly ``bundle`` (or not exist, for None).

        Podman 4.3 cannot filter ``secret ls`` by label, so the secret is found by name:
        created first, and replaced only when one of that name exists (a stale one from an
        earlier attempt). The bytes travel on stdin only.
        """
        name = bundle_secret_name(instance_id)
        if bundle is None:
            if self._secret_exists(name):
                self._remove_secret(name)
            return
        args = ["secret", "create", "--label", f"{LABEL_INSTANCE}={instance_id}", name, "-"]
        proc = self._podman(args, check=False, stdin=bundle)
        if proc.returncode == 0:
            return
        if "name in use" not in (proc.stderr or ""):
            raise self._translate("podman secret create", args, proc)
        self._remove_secret(name)  # a stale one
        proc = self._podman(args, check=False, stdin=bundle)
        # "secret name in use" again: a concurrent create of the same spec made it in between.
        if proc.returncode != 0 and "name in use" not in (proc.stderr or ""):
            raise self._translate("podman secret create", args, proc)

    def get(self, instance_id: str) -> BackendInstance | None:
        """Podman's view of the instance, or None if it has no such container. Returns at once."""
        row = self._one(instance_id)
        return None if row is None else self._to_instance(row)

    def start(self, instance_id: str) -> None:
        """Start (or unpause) the container; returns once it runs. Silent if already running."""
        self._start_row(instance_id, self._require(instance_id))

    def _start_row(self, instance_id: str, row: Mapping[str, Any]) -> BackendInstance:
        state = str(row.get("State", "")).lower()
        cid = str(row["Id"])
        if state == "paused":
            self._podman(["unpause", cid])
        elif state != "running":
            # Podman 4.3 with CNI: a container that died is cleaned up (its address released,
            # its port forwarding rules removed) by a process of its own, which a start right
            # after the death can overtake: the old rules then stay in front of the new ones
            # and the published ports lead nowhere. So the clean-up is done first, here (a
            # no-op when it was done); an address still held is released and the start tried
            # again.
            self._podman(["container", "cleanup", cid], check=False)
            args = ["start", cid]
            proc = self._podman(args, timeout=RUN_TIMEOUT_S, check=False)
            if proc.returncode != 0 and "duplicate allocation" in (proc.stderr or ""):
                self._podman(["container", "cleanup", cid], check=False)
                proc = self._podman(args, timeout=RUN_TIMEOUT_S, check=False)
            if proc.returncode != 0:
                raise self._translate(f"podman start {cid}", args, proc)
        else:
            return self._to_instance(row)
        started = self._to_instance(self._require(instance_id))
        self._drop_stale_forwards(cid, started.ports)
        return started

    def _drop_stale_forwards(self, cid: str, ports: Iterable[PortMapping]) -> None:
        """See :mod:`oneplatform.compute.drivers.cni` (this host's firewall only)."""
        if (self.host.uri or "").strip() in LOCAL_URIS:
            drop_stale_forwards(cid, [p.host_port for p in ports])

    def stop(self, instance_id: str) -> None:
        """SIGTERM, then SIGKILL after 10 s; returns once stopped. Silent if already stopped.

        Raises BackendNotFound if there is no such container.
        """
        row = self._require(instance_id)
        if str(row.get("State", "")).lower() in _NOT_RUNNING:
            return
        self._podman(["stop", "-t", str(STOP_GRACE_S), str(row["Id"])], timeout=STOP_TIMEOUT_S)

    def fence(self, instance_id: str) -> None:
        """SIGKILL at once, a paused (frozen) container too: Podman refuses to stop or kill
        one, and a cgroup-v1 freezer holds even SIGKILL until the thaw; so every process of
        it gets SIGKILL queued first (on this machine), then it is thawed: they die before
        they run again. Returns once it is no longer running."""
        row = self._require(instance_id)
        cid = str(row["Id"])
        state = str(row.get("State", "")).lower()
        if state in _NOT_RUNNING:
            return
        if state == "paused":
            if (self.host.uri or "").strip() in LOCAL_URIS:
                for pid in self._processes(cid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self._podman(["unpause", cid], check=False)
        self._podman(["kill", "--signal", "KILL", cid], check=False)
        self._podman(["wait", "--condition", "stopped", cid], timeout=STOP_TIMEOUT_S, check=False)
        if str(self._require(instance_id).get("State", "")).lower() not in _NOT_RUNNING:
            raise BackendError(f"container {cid[:12]} still runs after SIGKILL")

    def _processes(self, cid: str) -> list[int]:
        """The host pids of every process in the container (its cgroup's)."""
        pid = self._podman(["inspect", "--format", "{{.State.Pid}}", cid]).stdout.strip()
        pids = {int(pid)} if pid.isdigit() and int(pid) > 0 else set()
        for pid_ in list(pids):
            try:
                lines = Path(f"/proc/{pid_}/cgroup").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                _, controllers, path = line.split(":", 2)
                if "freezer" in controllers.split(","):  # cgroup v1: the freezer's group
                    procs = Path("/sys/fs/cgroup/freezer", path.lstrip("/"), "cgroup.procs")
                elif controllers == "":  # cgroup v2: the one hierarchy
                    procs = Path("/sys/fs/cgroup", path.lstrip("/"), "cgroup.procs")
                else:
                    continue
                with contextlib.suppress(OSError, ValueError):
                    pids |= {int(p) for p in procs.read_text().split()}
        return sorted(pids)

    def reboot(self, instance_id: str) -> None:
        """``podman restart`` (10 s grace); returns once the process runs again.

        Starts a stopped container too.
        """
        row = self._require(instance_id)
        self._podman(["restart", "-t", str(STOP_GRACE_S), str(row["Id"])], timeout=STOP_TIMEOUT_S)

    def delete(self, instance_id: str) -> None:
        """Remove the container, its volumes (data included) and its bundle secret.

        A running container is stopped as by ``podman rm --force``: SIGTERM, SIGKILL after
        10 s. Returns when all are gone (about a second for a container that exits on
        SIGTERM). Silent for whatever is already gone, so it can be retried; it also removes
        volumes and a secret left behind without a container.
        """
        rows = self._find(instance_id)
        if rows:
            ids = [str(r["Id"]) for r in rows]
            self._remove_containers(ids)
        for network in {n for r in rows for n in r.get("Networks") or ()}:
            if network.startswith(network_name("")):
                # Refused while another of the group's containers uses it: that is fine.
                _KNOWN_NETWORKS.discard((self.host.uri, network))
                self._podman(["network", "rm", network], check=False)
        volumes = self._podman(
            ["volume", "ls", "--filter", f"label={LABEL_INSTANCE}={instance_id}", "--quiet"]
        ).stdout.split()
        for name in volumes:
            args = ["volume", "rm", name]
            proc = self._podman(args, check=False)
            if proc.returncode != 0 and "no such volume" not in (proc.stderr or "").lower():
                raise self._translate("podman volume rm", args, proc)
        self._remove_secret(bundle_secret_name(instance_id))

    def _remove_containers(self, ids: Sequence[str]) -> None:
        """``podman rm --force``, retried while Podman 4.3 reports the container's shm mount
        busy: a race with its own clean-up process (containers/podman#11594), seen here with
        user namespaces and mounts in about one removal of eight; a second try succeeds."""
        args = ["rm", "--force", "--volumes", "--ignore", *ids]
        for attempt in range(1, RM_ATTEMPTS + 1):
            proc = self._podman(args, timeout=STOP_TIMEOUT_S, check=False)
            if proc.returncode == 0:
                return
            if attempt == RM_ATTEMPTS or "device or resource busy" not in proc.stderr:
                raise self._translate("podman rm", args, proc)
            time.sleep(0.5 * attempt)

    def console_log(self, instance_id: str, tail: int = 200) -> str:
        """The last ``tail`` lines of the container's stdout and stderr, merged."""
        row = self._require(instance_id)
        proc = self._podman(
            ["logs", "--tail", str(max(0, int(tail))), str(row["Id"])], merge_output=True
        )
        return proc.stdout

    def list_instances(self) -> list[BackendInstance]:
        """Every container on the host labelled ``oneplatform.managed=1``. Returns at once."""
        rows = self._podman_json(
            ["ps", "-a", "--filter", f"label={LABEL_MANAGED}=1", "--format", "json"]
        )
        return [self._to_instance(r) for r in rows or []]

    def published_ports(self) -> set[int]:
        """Every container's published host ports, whoever made it: a stopped container
        claims its ports again when it starts, and one whose conmon died (the host's
        processes killed, its state not) leaves a forwarding rule and no listener."""
        ports: set[int] = set()
        for row in self._podman_json(["ps", "-a", "--format", "json"]) or []:
            for port in row.get("Ports") or []:
                first = int(port.get("host_port", 0) or 0)
                ports.update(range(first, first + int(port.get("range", 1) or 1)))
        ports.discard(0)
        return ports

    def exec(self, instance_id: str, argv: Sequence[str], timeout: float = 60.0) -> ExecResult:
        """Run ``argv`` in the running container; returns its exit code and merged output.

        Raises BackendError if the container is not running, if podman itself fails (exit
        125) or after ``timeout`` seconds (the process may then go on running inside).
        Exit codes 126/127 (cannot run / not found) are returned as the command's result.
        """
        if not argv:
            raise BackendError("exec needs a command", host=self.host.name)
        row = self._require(instance_id)
        state = str(row.get("State", ""))
        if state.lower() != "running":
            raise BackendError(
                f"cannot exec in instance {instance_id}: its container is {state}, not running",
                host=self.host.name,
                instance_id=instance_id,
            )
        args = ["exec", str(row["Id"]), *argv]
        proc = self._podman(args, timeout=timeout, check=False, merge_output=True)
        # Podman 4.3 exits 255 (not 125) when the container stopped in between.
        if proc.returncode == 125 or (
            proc.returncode == 255 and "container state improper" in proc.stdout
        ):
            raise self._translate("podman exec", args, proc)
        return ExecResult(exit_code=proc.returncode, output=bounded(proc.stdout))


EXEC_OUTPUT_LIMIT = 256 * 1024  # characters of an exec's output kept (its tail)


def bounded(output: str, limit: int = EXEC_OUTPUT_LIMIT) -> str:
    """An exec's output, its last ``limit`` characters when it is longer."""
    if len(output) <= limit:
        return output
    return f"[{len(output) - limit} characters cut]\n" + output[-limit:]


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")


def _ports_of(row: Mapping[str, Any]) -> tuple[PortMapping, ...]:
    """Published ports, named from our label (podman does not keep names)."""
    labels: Mapping[str, str] = row.get("Labels") or {}
    names: dict[tuple[int, int], str] = {}
    try:
        for name, guest, host_port, _proto in json.loads(labels.get(LABEL_PORTS, "[]")):
            names[(int(guest), int(host_port))] = str(name)
    except (ValueError, TypeError):
        names = {}
    found: list[PortMapping] = []
    for port in row.get("Ports") or []:
        guest = int(port.get("container_port", 0))
        first_host = int(port.get("host_port", 0))
        proto = str(port.get("protocol", "tcp"))
        for i in range(int(port.get("range", 1) or 1)):
            key = (guest + i, first_host + i)
            found.append(
                PortMapping(
                    name=names.get(key, f"{proto}/{guest + i}"),
                    guest_port=guest + i,
                    host_port=first_host + i,
                    protocol=proto,
                )
            )
    return tuple(found)

"""The container driver: Podman through its CLI.

Every call goes through :meth:`PodmanDriver._podman`, which runs ``podman`` (with
``--url URI`` for a remote host) under a timeout and translates failures into
:class:`~oneplatform.errors.BackendError` subclasses carrying podman's stderr. Machine-readable
output comes from ``--format json`` / ``inspect``, which is stable across Podman 4.x and 5.x.

Backend objects carry the labels ``oneplatform.instance=<instance_id>`` and
``oneplatform.managed=1``; the container is named ``onep-<instance_id>``. Lookups always go
through the label, so a retried step finds what an earlier attempt made.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from oneplatform.compute.capabilities import Capability
from oneplatform.compute.drivers.base import (
    BackendInstance,
    ComputeDriver,
    ExecResult,
    HostInventory,
    ImageArtifact,
    InstanceSpec,
    PortMapping,
    SupportsExec,
)
from oneplatform.compute.states import ComputeType, PowerState
from oneplatform.errors import BackendError, BackendNotFound, BackendUnavailable

LABEL_INSTANCE = "oneplatform.instance"
LABEL_MANAGED = "oneplatform.managed"
LABEL_PORTS = "oneplatform.ports"  # JSON list of [name, guest_port, host_port, protocol]
NAME_PREFIX = "onep-"

LOCAL_URIS = frozenset({"", "local://"})

# Seconds a container gets to stop on SIGTERM before podman kills it.
STOP_GRACE_S = 10
# Timeouts (seconds) of the podman calls themselves.
DEFAULT_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = STOP_GRACE_S + 50.0
IMPORT_TIMEOUT_S = 900.0

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


class PodmanDriver(ComputeDriver, SupportsExec):
    """Containers on a Podman host (local, or remote through ``podman --url``).

    Stateless: every method asks podman. Settings read from ``host.settings``: ``runtime``
    (OCI runtime, default ``runc``).
    """

    compute_type: ClassVar[ComputeType] = ComputeType.CONTAINER
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
        Capability.SERIAL_CONSOLE: (
            "containers share the host kernel and have no virtual machine or serial port; "
            "their output is read with console_log"
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
        Capability.POWER_CYCLE: "a container has no power supply: stop and start it instead",
    }

    # ------------------------------------------------------------------ podman calls

    def _base_cmd(self) -> list[str]:
        uri = (self.host.uri or "").strip()
        if uri in LOCAL_URIS:
            return ["podman"]
        return ["podman", "--url", uri]

    def _podman(
        self,
        args: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        check: bool = True,
        merge_output: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run one podman command; the only place the driver starts a process.

        With ``check`` a non-zero exit raises: BackendUnavailable when podman is missing or
        unreachable, BackendNotFound for a missing container, BackendError otherwise. With
        ``merge_output`` stderr is merged into stdout (and is then what an error reports).
        """
        cmd = [*self._base_cmd(), *args]
        what = f"podman {' '.join(args[:2])}"
        try:
            proc = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
                text=True,
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
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
        if "unable to connect to podman" in low or "cannot connect to podman" in low:
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
        args = ["import"]
        if image.command:
            args += ["--change", f"CMD {json.dumps(list(image.command))}"]
        for key, value in image.env.items():
            args += ["--change", f"ENV {key}={value}"]
        args += [str(image.rootfs), image.ref]
        self._podman(args, timeout=IMPORT_TIMEOUT_S)

    def create(self, spec: InstanceSpec) -> BackendInstance:
        """Create and start the container; returns once podman has started its process.

        Idempotent: an existing container labelled with ``spec.instance_id`` is returned
        (started first if it is not running). The image must already be on the host
        (see :meth:`ensure_image`); nothing is ever pulled.
        """
        existing = self._one(spec.instance_id)
        if existing is not None:
            return self._start_row(spec.instance_id, existing)
        args = self._run_args(spec)
        try:
            self._podman(args, timeout=RUN_TIMEOUT_S)
        except BackendError as exc:
            # A concurrent create made it first (the name is unique): use that one.
            if "already in use" not in exc.message:
                raise
            return self._start_row(spec.instance_id, self._require(spec.instance_id))
        return self._to_instance(self._require(spec.instance_id))

    def _run_args(self, spec: InstanceSpec) -> list[str]:
        runtime = str(self.host.settings.get("runtime", "runc"))
        ports_label = json.dumps(
            [[p.name, p.guest_port, p.host_port, p.protocol] for p in spec.ports]
        )
        args = [
            "run",
            "--detach",
            "--pull=never",
            "--name",
            container_name(spec.instance_id),
            "--label",
            f"{LABEL_INSTANCE}={spec.instance_id}",
            "--label",
            f"{LABEL_MANAGED}=1",
            "--label",
            f"{LABEL_PORTS}={ports_label}",
            "--runtime",
            runtime,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--cpus",
            str(spec.vcpus),
            "--memory",
            f"{spec.ram_mb}m",
        ]
        for port in spec.ports:
            args += ["-p", f"{self.host.bind_address}:{port.host_port}:{port.guest_port}/tcp"]
        for mount in spec.files:
            mode = "ro" if mount.read_only else "rw"
            args += ["-v", f"{mount.source}:{mount.guest_path}:{mode}"]
        for key, value in spec.env.items():
            args += ["-e", f"{key}={value}"]
        args.append(spec.image.ref)
        args += list(spec.image.command)
        return args

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
            self._podman(["start", cid], timeout=RUN_TIMEOUT_S)
        else:
            return self._to_instance(row)
        return self._to_instance(self._require(instance_id))

    def stop(self, instance_id: str) -> None:
        """SIGTERM, then SIGKILL after 10 s; returns once stopped. Silent if already stopped.

        Raises BackendNotFound if there is no such container.
        """
        row = self._require(instance_id)
        if str(row.get("State", "")).lower() in _NOT_RUNNING:
            return
        self._podman(["stop", "-t", str(STOP_GRACE_S), str(row["Id"])], timeout=STOP_TIMEOUT_S)

    def reboot(self, instance_id: str) -> None:
        """``podman restart`` (10 s grace); returns once the process runs again.

        Starts a stopped container too.
        """
        row = self._require(instance_id)
        self._podman(["restart", "-t", str(STOP_GRACE_S), str(row["Id"])], timeout=STOP_TIMEOUT_S)

    def delete(self, instance_id: str) -> None:
        """Force-remove the container and its anonymous volumes; silent if already gone."""
        rows = self._find(instance_id)
        if not rows:
            return
        ids = [str(r["Id"]) for r in rows]
        self._podman(["rm", "--force", "--volumes", "--ignore", *ids], timeout=STOP_TIMEOUT_S)

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
        return ExecResult(exit_code=proc.returncode, output=proc.stdout)


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

"""The raw baseline of a bare-metal create: what a person with QEMU, the same deploy ISO and
the same image would do by hand, timed the same way as the platform (until PostgreSQL
accepts a login; another engine's image the same way, until its admin logs in).

1. Boot the deploy ISO the platform uses in a plain QEMU (TCG, 1 vCPU, 1024 MB, a blank
   3 GiB raw disk, user networking with the engine's and the agent's ports forwarded to
   127.0.0.1), served by a small HTTP server on 127.0.0.1 here. Its manifest maps the
   **whole** image as one run, so the ramdisk writes every byte of it with one ``dd`` (no
   block map), then checks its sha256 from the page cache and powers off.
2. Boot that disk and wait until the admin logs in to the engine with its own client and
   runs its simplest query (:func:`bench.probes.first_query`).

Timed from just before the first QEMU starts (the ISO is built before, as the platform's is
cached) to the login; ``deploy`` (until the first QEMU exits) and ``disk_boot`` (the rest)
are its phases.
"""

from __future__ import annotations

import hashlib
import http.server
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from bench.common import BenchError, Sample, free_port
from bench.probes import first_query
from oneplatform.baremetal.deploy_agent import DeployManifest, DeployStatus
from oneplatform.baremetal.deploy_iso import build_deploy_iso
from oneplatform.config import Settings
from oneplatform.dbaas.datastores import get_datastore, get_version
from oneplatform.guest.bundle import (
    AdminCredentials,
    AgentSettings,
    Bundle,
    EngineSettings,
    generate_password,
    generate_secret,
)
from oneplatform.images.builder import rootfs_path
from oneplatform.images.recipes import load_recipe
from oneplatform.images.wholedisk import MAP_BLOCK, DiskImage, MiB, disk_image_if_built

DATASTORE = "postgresql"
QEMU = "qemu-system-x86_64"
DISK_BYTES = 3 * 1024 * MiB
DEPLOY_TIMEOUT_S = 600.0
READY_TIMEOUT_S = 300.0


class _Server:
    """Manifest, whole image, bundle and status for one raw deploy, on 127.0.0.1."""

    def __init__(self, image: DiskImage, bundle: bytes) -> None:
        self.token = secrets.token_urlsafe(16)
        self.image = image
        self.bundle = bundle
        self.final: DeployStatus | None = None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = int(self.httpd.server_address[1])

    @property
    def guest_url(self) -> str:
        return f"http://10.0.2.2:{self.port}/raw/{self.token}"

    def manifest(self) -> str:
        return DeployManifest(
            image_url=f"{self.guest_url}/image",
            image_sha256=self.image.sha256,
            image_size=self.image.size,
            image_map=f"0:{self.image.size // MAP_BLOCK}",  # every block: a plain dd
            stream_sha256=self.image.sha256,  # the whole image is the stream
            config_url=f"{self.guest_url}/config",
            config_sha256=hashlib.sha256(self.bundle).hexdigest(),
        ).render()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                name = self.path.removeprefix(f"/raw/{server.token}/")
                if name == "manifest":
                    self._send(server.manifest().encode())
                elif name == "config":
                    self._send(server.bundle)
                elif name == "image":
                    self.send_response(200)
                    self.send_header("Content-Length", str(server.image.size))
                    self.end_headers()
                    with server.image.path.open("rb") as handle:
                        shutil.copyfileobj(handle, self.wfile, 4 * MiB)
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with suppress(ValueError):
                    status = DeployStatus.parse(body)
                    if status.final:
                        server.final = status
                self._send(b"ok\n")

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    @contextmanager
    def serving(self) -> Iterator[_Server]:
        thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()


def _qemu(
    work: Path,
    disk: Path,
    name: str,
    ports: tuple[int, int],
    iso: Path | None,
    guest_ports: tuple[int, int] = (5432, 8471),
) -> subprocess.Popen[bytes]:
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise BenchError(f"{QEMU} is not installed (run scripts/setup.sh)")
    forwards = ",".join(
        f"hostfwd=tcp:127.0.0.1:{host}-:{guest}"
        for host, guest in zip(ports, guest_ports, strict=True)
    )
    argv = [
        qemu, "-accel", "tcg", "-m", "1024", "-smp", "1", "-nographic", "-no-reboot",
        "-drive", f"file={disk},format=raw,if=virtio,discard=unmap,detect-zeroes=unmap",
        "-netdev", f"user,id=n0,{forwards}", "-device", "virtio-net-pci,netdev=n0,addr=0x10",
        "-device", "virtio-rng-pci", "-serial", f"file:{work / f'console-{name}.log'}",
    ]  # fmt: skip
    argv += ["-cdrom", str(iso), "-boot", "d"] if iso else ["-boot", "c"]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def raw_round(settings: Settings, index: int, datastore_name: str = DATASTORE) -> Sample:
    """One raw deploy and disk boot of the datastore's default version; a Sample labelled
    ``raw``."""
    datastore = get_datastore(datastore_name)
    version = get_version(datastore, None)
    recipe = load_recipe(version.image)
    image = disk_image_if_built(recipe, settings.images_dir)
    if image is None:
        raise BenchError(f"the {version.image} whole-disk image is not built yet")
    guest_ports = (int(recipe.ports[datastore.engine_endpoint]), int(recipe.ports["agent"]))
    bundle = Bundle(
        instance_id=f"bench-raw-{uuid.uuid4().hex[:12]}",
        datastore=datastore_name,
        version=version.version,
        agent=AgentSettings(secret=generate_secret(), port=guest_ports[1]),
        engine=EngineSettings(port=guest_ports[0], settings={}),
        admin=AdminCredentials(username="onep_admin", password=generate_password()),
    )
    work = Path(tempfile.mkdtemp(prefix="onep-bench-raw-"))
    try:
        disk = work / "disk.raw"
        with disk.open("wb") as handle:
            handle.truncate(DISK_BYTES)  # blank, as cleaning leaves a node's disk
        ports = (free_port(), free_port())
        server = _Server(image, bundle.to_json().encode())
        iso = build_deploy_iso(
            settings.images_dir,
            server.guest_url,
            work / "deploy.iso",
            kernel_source=rootfs_path(recipe, settings.images_dir),
        )
        with server.serving():
            started = time.monotonic()
            deploy = _qemu(work, disk, "deploy", ports, iso, guest_ports)
            try:
                deploy.wait(DEPLOY_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _stop(deploy)
                raise BenchError(f"raw round {index}: the deploy did not end") from None
            deployed = time.monotonic() - started
        if server.final is None or server.final.status != "ok":
            raise BenchError(f"raw round {index}: the deploy reported {server.final}")
        boot = _qemu(work, disk, "disk", ports, None, guest_ports)
        try:
            login = _wait_login(ports[0], bundle, started + DEPLOY_TIMEOUT_S + READY_TIMEOUT_S)
        finally:
            _stop(boot)
        total = login - started
        return Sample(
            "raw",
            index,
            total,
            {
                "deploy": deployed,
                "disk_boot": total - deployed,
                "agent.write_s": float(server.final.extra.get("write_s", "nan")),
                "agent.verify_s": float(server.final.extra.get("verify_s", "nan")),
            },
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _wait_login(port: int, bundle: Bundle, deadline: float) -> float:
    last: str | None = "nothing yet"
    while time.monotonic() < deadline:
        admin = bundle.admin
        last = first_query(bundle.datastore, port, admin.username, admin.password, None)
        if last is None:
            return time.monotonic()
        time.sleep(0.2)
    raise BenchError(f"raw disk boot: no {bundle.datastore} login (last: {last})")

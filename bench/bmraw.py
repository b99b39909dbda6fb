"""The raw baseline of a bare-metal create: what a person with QEMU, the same deploy ISO and
the same image would do by hand, timed the same way as the platform (until PostgreSQL
accepts a login).

1. Boot the deploy ISO the platform uses in a plain QEMU (TCG, 1 vCPU, 1024 MB, a blank
   3 GiB raw disk, user networking with the engine's and the agent's ports forwarded to
   127.0.0.1), served by a small HTTP server on 127.0.0.1 here. Its manifest maps the
   **whole** image as one run, so the ramdisk writes every byte of it with one ``dd`` (no
   block map), then checks its sha256 from the page cache and powers off.
2. Boot that disk and wait until the admin logs in to PostgreSQL (psycopg, ``SELECT 1``).

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

import psycopg

from bench.common import BenchError, Sample, free_port
from oneplatform.baremetal.deploy_agent import DeployManifest, DeployStatus
from oneplatform.baremetal.deploy_iso import build_deploy_iso
from oneplatform.config import Settings
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

IMAGE = "postgresql-15"
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
    work: Path, disk: Path, name: str, ports: tuple[int, int], iso: Path | None
) -> subprocess.Popen[bytes]:
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise BenchError(f"{QEMU} is not installed (run scripts/setup.sh)")
    forwards = f"hostfwd=tcp:127.0.0.1:{ports[0]}-:5432,hostfwd=tcp:127.0.0.1:{ports[1]}-:8471"
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


def raw_round(settings: Settings, index: int) -> Sample:
    """One raw deploy and disk boot; a Sample labelled ``raw``."""
    recipe = load_recipe(IMAGE)
    image = disk_image_if_built(recipe, settings.images_dir)
    if image is None:
        raise BenchError(f"the {IMAGE} whole-disk image is not built yet")
    bundle = Bundle(
        instance_id=f"bench-raw-{uuid.uuid4().hex[:12]}",
        datastore="postgresql",
        version="15",
        agent=AgentSettings(secret=generate_secret(), port=8471),
        engine=EngineSettings(port=5432, settings={}),
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
            deploy = _qemu(work, disk, "deploy", ports, iso)
            try:
                deploy.wait(DEPLOY_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _stop(deploy)
                raise BenchError(f"raw round {index}: the deploy did not end") from None
            deployed = time.monotonic() - started
        if server.final is None or server.final.status != "ok":
            raise BenchError(f"raw round {index}: the deploy reported {server.final}")
        boot = _qemu(work, disk, "disk", ports, None)
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
    last = "nothing yet"
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(
                host="127.0.0.1",
                port=port,
                user=bundle.admin.username,
                password=bundle.admin.password,
                dbname="postgres",
                connect_timeout=3,
            ) as conn:
                conn.execute("SELECT 1")
            return time.monotonic()
        except psycopg.OperationalError as exc:
            last = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        time.sleep(0.2)
    raise BenchError(f"raw disk boot: no PostgreSQL login ({last})")

"""A platform in a test: a store, settings, callers and the fakes, with helpers that drive
operations to their end in milliseconds (time passes between polls, never in real time).

``world`` (tests/unit/conftest.py) builds one per test: pools of fake containers and VMs,
a bare-metal pool for fake nodes, the default flavors, the image READY with its formats
planted in the cache, and the fake datastore in the catalog.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from oneplatform.baremetal import media
from oneplatform.baremetal import nodes as node_service
from oneplatform.baremetal.deploy_agent import DeployStatus, parse_key_values
from oneplatform.compute import instances
from oneplatform.config import Settings
from oneplatform.dbaas import service as dbaas
from oneplatform.iam import Caller
from oneplatform.images import wholedisk
from oneplatform.images.builder import rootfs_path, vm_image_path
from oneplatform.images.recipes import load_recipe
from oneplatform.ops.engine import Worker
from oneplatform.ops.kinds import OPEN
from oneplatform.schemas.compute import PowerState
from oneplatform.schemas.databases import DbInstanceCreate, DbUserSpec
from oneplatform.schemas.instances import InstanceCreate
from oneplatform.schemas.nodes import NodeEnroll, PortTarget, ProvisioningNic
from oneplatform.store.db import Store
from oneplatform.store.models import Event, Instance, Node, Operation, utcnow
from tests.fakes import CLOUD, FakeAgent, FakeNode, FakePostgreSQL

IMAGE = "postgresql-15"
LATER = dt.timedelta(seconds=5)


@dataclass
class World:
    store: Store
    settings: Settings
    admin: Caller
    member: Caller
    pg: FakePostgreSQL
    disk_sha: str
    port_base: int

    # -- driving operations ----------------------------------------------------------------
    def drive(self, op_id: str, rounds: int = 400) -> Operation:
        """Run workers until ``op_id`` ends, letting time pass between polls."""
        worker = Worker(self.store, self.settings, "test-worker")
        for _ in range(rounds):
            worker.run_once()
            with self.store.session() as session:
                op = session.get_one(Operation, op_id)
                if op.status not in OPEN:
                    session.expunge(op)
                    return op
                # time passes: every wait shortens, and the longest waiting goes first
                for waiting in session.scalars(select(Operation).where(Operation.status.in_(OPEN))):
                    waiting.not_before -= LATER
        with self.store.session() as session:
            op = session.get_one(Operation, op_id)
            where = [(s["name"], s["status"], s["message"]) for s in op.steps]
            where += [
                (o.kind, o.error_message)
                for o in session.scalars(select(Operation).where(Operation.status == "FAILED"))
            ][:3]
            where += [
                (o.kind, [(s["name"], s["status"], s["message"]) for s in o.steps])
                for o in session.scalars(select(Operation).where(Operation.status.in_(OPEN)))
            ]
        raise AssertionError(f"operation {op.kind} did not end in {rounds} rounds: {where}")

    def drive_all(self) -> None:
        with self.store.session() as session:
            ids = list(session.scalars(select(Operation.id).where(Operation.status.in_(OPEN))))
        for op_id in ids:
            self.drive(op_id)

    def crash_over(self) -> None:
        """A worker died: its leases expire and its waits are over."""
        with self.store.session() as session:
            session.execute(
                update(Operation)
                .where(Operation.status.in_(OPEN))
                .values(lease_expires_at=utcnow() - dt.timedelta(seconds=1), not_before=utcnow())
            )

    # -- reading ---------------------------------------------------------------------------
    def instance(self, ident: str) -> Instance:
        with self.store.session() as session:
            row = session.scalars(
                select(Instance).where((Instance.id == ident) | (Instance.name == ident))
            ).one()
            session.expunge(row)
            return row

    def node(self, name: str) -> Node:
        with self.store.session() as session:
            row = session.scalars(select(Node).where(Node.name == name)).one()
            session.expunge(row)
            return row

    def events(self, resource_id: str) -> list[tuple[str | None, str]]:
        with self.store.session() as session:
            rows = session.scalars(
                select(Event).where(Event.resource_id == resource_id).order_by(Event.id)
            )
            return [(e.from_status, e.to_status) for e in rows]

    def create(self, name: str, flavor: str) -> tuple[str, str]:
        accepted = instances.create_instance(
            self.store, self.member, InstanceCreate(name=name, flavor=flavor, image=IMAGE)
        )
        return accepted.instance.id, accepted.operation.id

    # -- bare metal and databases ------------------------------------------------------------
    def enroll(
        self,
        name: str,
        password: str = "secret",
        provide: bool = True,
        provisioning: ProvisioningNic | None = None,
    ) -> str:
        guest = {"5432": self.port_base + 90, "8471": self.port_base + 91}
        CLOUD.nodes[name] = FakeNode(system_id=name)
        req = NodeEnroll(
            provide=provide,
            name=name,
            bmc_protocol="fake",
            bmc_address="fake://bmc",
            bmc_system_id=name,
            bmc_username="admin",
            bmc_password=password,
            port_map={g: PortTarget(host="127.0.0.1", port=p) for g, p in guest.items()},
            provisioning=provisioning,
        )
        return node_service.enroll(self.store, self.settings, self.admin, req).operation.id

    def play_the_ramdisk(self, node: FakeNode, fail_at: str | None = None) -> None:
        """What the deploy ramdisk does once booted: fetch, write, report, power off."""

        def on_media_boot(fake: FakeNode, url: str) -> None:
            token = url.split("/v1/deploy/")[1].split("/")[0]
            manifest = media.render_manifest(self.store, self.settings, token)
            assert manifest is not None
            fake.manifest = manifest
            if "mode=clean" in manifest:
                report = DeployStatus(status="ok", stage="done", extra={"mode": "clean"})
            elif fail_at:
                report = DeployStatus(status="error", stage=fail_at, message="disk vanished")
            else:
                fake.bundle = media.bundle_text(self.store, self.settings, token)
                asked = parse_key_values(manifest).get("data_mib")
                sizes = {"data_mib": asked or str(fake.data_max_mib)}
                sizes["data_max_mib"] = str(fake.data_max_mib)
                report = DeployStatus(status="ok", stage="done", sha256=self.disk_sha, extra=sizes)
            assert media.record_status(self.store, self.settings, token, report.render().encode())
            fake.power = PowerState.STOPPED

        node.on_media_boot = on_media_boot

    def serve_on_disk_boot(self, node: FakeNode) -> None:
        """What the deployed disk does when it boots: the engine and the agent listen where the
        node's port map says."""

        def on_disk_boot(fake: FakeNode) -> None:
            assert fake.bundle is not None
            bundle = json.loads(fake.bundle)
            fake.services = [_listen(self.port_base + 90)]
            if "agent" in bundle:  # a database's image: its agent answers
                fake.services.append(FakeAgent(self.port_base + 91, bundle))
            else:
                fake.services.append(_listen(self.port_base + 91))

        node.on_disk_boot = on_disk_boot

    def create_db(self, name: str = "pg1", flavor: str = "container.small") -> str:
        accepted = dbaas.create_db(
            self.store,
            self.settings,
            self.member,
            DbInstanceCreate(
                name=name,
                flavor=flavor,
                databases=["app"],
                users=[DbUserSpec(name="alice", password="S3cret-pass", databases=["app"])],
            ),
        )
        return accepted.instance.id


def _listen(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4)
    return sock


def plant_image_formats(settings: Settings) -> str:
    """The cached artifacts a build would have made: the rootfs, the VM files, the whole
    disk with its sha256. Returns the sha256 of its deploy stream (what a node reports)."""
    recipe = load_recipe(IMAGE)
    cache = settings.images_dir
    cache.mkdir(parents=True, exist_ok=True)
    rootfs_path(recipe, cache).write_bytes(b"rootfs")
    vm = vm_image_path(recipe, cache)
    for path in (vm.disk, vm.kernel, vm.initrd):
        path.write_bytes(b"vm")
    disk = wholedisk.disk_image_path(recipe, cache)
    content = b"whole disk".ljust(2 * wholedisk.MiB, b"\0")  # one mapped MiB, one of zeros
    disk.write_bytes(content)
    digest = hashlib.sha256(content).hexdigest()
    disk.with_name(f"{disk.name}.sha256").write_text(f"{digest}  {disk.name}\n")
    return wholedisk.block_map(wholedisk.DiskImage(disk, digest, len(content))).stream_sha256


def fake_iso(
    cache_dir: Path, url: str, iso: Path, network: str = "", progress: object = None
) -> Path:
    """The ISO's kernel command line, instead of the ISO."""
    iso.parent.mkdir(parents=True, exist_ok=True)
    iso.write_text(f"{url} {network}".strip())
    return iso

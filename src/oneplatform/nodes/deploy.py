"""Deploying onto a node, and cleaning it, through a deploy ramdisk on virtual media.

Deploy (the ``instance.create`` of a bare-metal flavor), each an operation step:
``image`` (the whole-disk format of the image) → ``prepare`` (node ``deploying``, a
per-deploy token and ISO) → ``boot_ramdisk`` (insert the ISO, boot once from CD, power on)
→ ``write`` (the deploy agent fetches the manifest, writes and verifies the image, writes the
config partition and reports) → ``boot_disk`` (node off, eject, boot from disk persistently,
power on) → ``wait_ports`` → ``finish`` (node ``active``, instance ``ACTIVE``).

A crash anywhere resumes at the unfinished step: every step checks where the node is
before acting (the token is reused, power calls are guarded by the BMC's state).

Clean (``provide``, and after an instance is deleted): the same ramdisk in ``clean`` mode
wipes the partition tables and filesystem signatures, then the node is ``available``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from oneplatform.baremetal.bmc import PowerState
from oneplatform.config import Settings
from oneplatform.errors import NotYet, PlatformError
from oneplatform.iam import hash_token
from oneplatform.nodes.common import bmc_for, node_of_host
from oneplatform.nodes.states import NodeState, set_node_state
from oneplatform.ops.engine import StepContext
from oneplatform.secrets import box_for, generate_token
from oneplatform.store.db import Store
from oneplatform.store.models import DeployToken, Host, Instance, Node, PortAllocation, utcnow

TOKEN_TTL = dt.timedelta(hours=2)


def deploy_dir(settings: Settings) -> Path:
    return settings.home / "deploy"


def iso_path(settings: Settings, token_row: DeployToken) -> Path:
    return deploy_dir(settings) / f"{token_row.id}.iso"


def node_base_url(settings: Settings) -> str:
    """How a node's ramdisk reaches the API (QEMU user networking: the host is 10.0.2.2)."""
    return f"http://{settings.node_callback_host}:{settings.port}"


def bmc_base_url(settings: Settings) -> str:
    """How the BMC reaches the API to download the ISO."""
    return f"http://{settings.bmc_media_host}:{settings.port}"


def open_token(
    session: Session, settings: Settings, node: Node, purpose: str, instance: Instance | None
) -> tuple[DeployToken, str]:
    """The node's open token for ``purpose``, or a new one. Returns (row, plaintext)."""
    box = box_for(settings)
    row = session.scalars(
        select(DeployToken).where(
            DeployToken.node_id == node.id,
            DeployToken.purpose == purpose,
            DeployToken.status.in_(["waiting", "running"]),
            DeployToken.expires_at > utcnow(),
        )
    ).first()
    if row is not None:
        return row, box.decrypt(row.token_enc)
    token = generate_token(24)
    row = DeployToken(
        token_hash=hash_token(token),
        token_enc=box.encrypt(token),
        node_id=node.id,
        instance_id=instance.id if instance else None,
        purpose=purpose,
        image_name=None,
        bundle_enc=instance.bundle_enc if instance else None,
        status="waiting",
        expires_at=utcnow() + TOKEN_TTL,
    )
    session.add(row)
    session.flush()
    return row, token


def current_token(
    session: Session, settings: Settings, node: Node, purpose: str
) -> tuple[DeployToken, str]:
    """The token ``prepare`` made for this run (whatever the agent has reported since)."""
    row = session.scalars(
        select(DeployToken)
        .where(
            DeployToken.node_id == node.id,
            DeployToken.purpose == purpose,
            DeployToken.status != "done",
        )
        .order_by(DeployToken.created_at.desc())
    ).first()
    if row is None:
        raise PlatformError(f"no {purpose} token for node {node.name!r}: prepare did not run")
    return row, box_for(settings).decrypt(row.token_enc)


def _node(session: Session, ctx: StepContext) -> Node:
    """The node of the operation: bare-metal instance operations run on instances."""
    if ctx.kind.startswith("node."):
        return session.get_one(Node, ctx.resource_id)
    instance = session.get_one(Instance, ctx.resource_id)
    assert instance.host_id is not None
    return node_of_host(session, instance.host_id)


# -- the ramdisk, for deploy and clean ---------------------------------------------------------
def prepare_ramdisk(ctx: StepContext, purpose: str) -> None:
    """A token and the per-deploy ISO carrying it (reused after a crash)."""
    from oneplatform.images.baremetal import build_deploy_iso

    with ctx.transaction() as session:
        node = _node(session, ctx)
        instance = None if ctx.kind.startswith("node.") else session.get(Instance, ctx.resource_id)
        row, token = open_token(session, ctx.settings, node, purpose, instance)
        iso = iso_path(ctx.settings, row)
    if not iso.exists():
        url = f"{node_base_url(ctx.settings)}/v1/deploy/{token}"
        build_deploy_iso(ctx.settings.images_dir, url, iso, progress=ctx.progress)


def boot_ramdisk(ctx: StepContext, purpose: str) -> None:
    """Insert the ISO, boot once from CD, power on; each call guarded by the BMC's state."""
    with ctx.store.session() as session:
        node = _node(session, ctx)
        row, token = current_token(session, ctx.settings, node, purpose)
        bmc = bmc_for(node, ctx.settings)
    if str(bmc.power_state()) != "off":
        bmc.set_power("force_off")
        bmc.wait_for_power(PowerState.OFF, timeout_s=60)
    media = bmc.media_status()
    if media.inserted:
        bmc.eject_media()
    bmc.insert_media(f"{bmc_base_url(ctx.settings)}/v1/deploy/{token}/deploy.iso")
    bmc.set_boot_device("cd", persistent=False)
    bmc.set_power("on")
    ctx.progress(f"ramdisk booting for {purpose} (token {row.id[:8]})")


def wait_ramdisk(ctx: StepContext, purpose: str, timeout: float) -> None:
    """Poll what the deploy agent reported; NotYet until it says ok, fail on error."""
    with ctx.store.session() as session:
        node = _node(session, ctx)
        row, _ = current_token(session, ctx.settings, node, purpose)
        status, report = row.status, dict(row.report or {})
    if status == "ok":
        return
    if status == "error":
        raise PlatformError(
            f"the deploy agent reported an error at {report.get('stage', '?')}: "
            f"{report.get('message', '')}",
            code=f"{purpose}_failed",
        )
    if ctx.elapsed() > timeout:
        raise PlatformError(
            f"the node's ramdisk did not report within {timeout:.0f}s", code="timeout"
        )
    stage = report.get("stage", "booting")
    raise NotYet(f"{purpose}: {stage}", retry_after=2.0)


def finish_ramdisk(ctx: StepContext, purpose: str, boot_disk: bool) -> None:
    """The agent powers the node off when done: wait for that, eject, set the disk as the
    boot device (persistently: some BMCs report one-time overrides as continuous)."""
    with ctx.store.session() as session:
        node = _node(session, ctx)
        bmc = bmc_for(node, ctx.settings)
    if str(bmc.power_state()) != "off":
        if ctx.elapsed() > 120:
            bmc.set_power("force_off")
        else:
            raise NotYet("waiting for the ramdisk to power the node off", retry_after=1.0)
    if bmc.media_status().inserted:
        bmc.eject_media()
    bmc.set_boot_device("hdd", persistent=True)
    if boot_disk:
        bmc.set_power("on")
    with ctx.transaction() as session:
        node = _node(session, ctx)
        node.power_state = "on" if boot_disk else "off"
        for row in session.scalars(
            select(DeployToken).where(
                DeployToken.node_id == node.id, DeployToken.purpose == purpose
            )
        ):
            row.status = "done" if row.status == "ok" else row.status
            iso_path(ctx.settings, row).unlink(missing_ok=True)


# -- the HTTP side the ramdisk and the BMC talk to ---------------------------------------------
def token_row(session: Session, token: str) -> DeployToken | None:
    row = session.scalars(
        select(DeployToken).where(DeployToken.token_hash == hash_token(token))
    ).first()
    if row is None or row.expires_at < utcnow() or row.status == "done":
        return None
    return row


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def mark_node(session: Session, node: Node, new: NodeState, message: str = "") -> None:
    set_node_state(session, node, new, message)
    session.get_one(Host, node.host_id).enabled = new is NodeState.AVAILABLE


def release_ports(session: Session, instance_id: str) -> None:
    session.execute(delete(PortAllocation).where(PortAllocation.instance_id == instance_id))


def _image_of(session: Session, row: DeployToken) -> str | None:
    if row.instance_id is None:
        return None
    from oneplatform.store.models import Image

    instance = session.get_one(Instance, row.instance_id)
    return session.get_one(Image, instance.image_id).name


def render_manifest(store: Store, settings: Settings, token: str) -> str | None:
    from oneplatform.images import deploy_agent as agent
    from oneplatform.images.baremetal import disk_image_if_built
    from oneplatform.images.recipes import load_recipe

    with store.session() as session:
        row = token_row(session, token)
        if row is None:
            return None
        base = f"{node_base_url(settings)}/v1/deploy/{token}"
        if row.purpose == "clean":
            return agent.render_clean_manifest()
        image_name = _image_of(session, row)
        bundle = box_for(settings).decrypt(row.bundle_enc) if row.bundle_enc else "{}"
    assert image_name is not None
    disk = disk_image_if_built(load_recipe(image_name), settings.images_dir)
    if disk is None:
        return None
    return agent.DeployManifest(
        image_url=f"{base}/image",
        image_sha256=disk.sha256,
        image_size=disk.size,
        config_url=f"{base}/config",
        config_sha256=sha256_text(bundle),
    ).render()


def image_file(store: Store, settings: Settings, token: str) -> Path | None:
    from oneplatform.images.baremetal import disk_image_if_built
    from oneplatform.images.recipes import load_recipe

    with store.session() as session:
        row = token_row(session, token)
        name = _image_of(session, row) if row else None
    if name is None:
        return None
    disk = disk_image_if_built(load_recipe(name), settings.images_dir)
    return disk.path if disk else None


def bundle_text(store: Store, settings: Settings, token: str) -> str | None:
    with store.session() as session:
        row = token_row(session, token)
        if row is None or row.purpose != "deploy":
            return None
        return box_for(settings).decrypt(row.bundle_enc) if row.bundle_enc else "{}"


def _expected_sha256(session: Session, settings: Settings, row: DeployToken) -> str | None:
    from oneplatform.images.baremetal import disk_image_if_built
    from oneplatform.images.recipes import load_recipe

    name = _image_of(session, row) if row.purpose == "deploy" else None
    disk = disk_image_if_built(load_recipe(name), settings.images_dir) if name else None
    return disk.sha256 if disk else None


def record_status(store: Store, settings: Settings, token: str, body: bytes) -> bool:
    from oneplatform.images.deploy_agent import DeployStatus, ProtocolError

    try:
        report = DeployStatus.parse(body)
    except ProtocolError:
        return False
    with store.session() as session:
        row = token_row(session, token)
        if row is None:
            return False
        status = report.status if report.status in ("ok", "error") else "running"
        expected = _expected_sha256(session, settings, row) if status == "ok" else None
        if expected is not None and report.sha256 != expected:
            status = "error"
            report = dataclasses.replace(
                report, message=f"the disk reads back as {report.sha256}, not {expected}"
            )
        row.status = status
        row.report = {
            "stage": report.stage,
            "message": report.message[:500],
            "sha256": report.sha256 or "",
            **report.extra,
        }
    return True

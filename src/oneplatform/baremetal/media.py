"""What a node's deploy ramdisk and its BMC fetch and report, keyed by a per-run token.

No bearer token here: a node has nothing but the token in its URL, which is random, stored
hashed, bound to one node and one purpose, and expires.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.baremetal import deploy_agent as agent
from oneplatform.baremetal.deploy_agent import DeployStatus, ProtocolError
from oneplatform.baremetal.ramdisk import OPEN, iso_path, node_base_url
from oneplatform.config import Settings
from oneplatform.iam import hash_token
from oneplatform.images.recipes import load_recipe
from oneplatform.images.wholedisk import block_map, disk_image_if_built, stream_blocks
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import DeployToken, Image, Instance, utcnow


def token_row(session: Session, token: str) -> DeployToken | None:
    row = session.scalars(
        select(DeployToken).where(DeployToken.token_hash == hash_token(token))
    ).first()
    if row is None or row.expires_at < utcnow() or row.status not in OPEN:
        return None
    return row


def token_is_open(store: Store, token: str) -> bool:
    with store.session() as session:
        return token_row(session, token) is not None


def iso_file(store: Store, settings: Settings, token: str) -> Path | None:
    with store.session() as session:
        row = token_row(session, token)
        return iso_path(settings, row) if row else None


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _image_of(session: Session, row: DeployToken) -> str | None:
    if row.instance_id is None:
        return None
    instance = session.get_one(Instance, row.instance_id)
    return session.get_one(Image, instance.image_id).name


def data_mib(session: Session, row: DeployToken) -> int | None:
    """The data partition's size: the instance's first volume (a database's data volume);
    None (the rest of the disk) for an instance without volumes."""
    if row.instance_id is None:
        return None
    volumes = session.get_one(Instance, row.instance_id).volumes or ()
    return int(volumes[0]["size_gb"]) * 1024 if volumes else None


def render_manifest(store: Store, settings: Settings, token: str) -> str | None:
    with store.session() as session:
        row = token_row(session, token)
        if row is None:
            return None
        base = f"{node_base_url(settings)}/v1/deploy/{token}"
        if row.purpose == "clean":
            return agent.render_clean_manifest()
        image_name = _image_of(session, row)
        bundle = box_for(settings).decrypt(row.bundle_enc) if row.bundle_enc else "{}"
        data = data_mib(session, row)
    assert image_name is not None
    disk = disk_image_if_built(load_recipe(image_name), settings.images_dir)
    if disk is None:
        return None
    bmap = block_map(disk)
    return agent.DeployManifest(
        image_url=f"{base}/image",
        image_sha256=disk.sha256,
        image_size=disk.size,
        image_map=bmap.render_runs(),
        stream_sha256=bmap.stream_sha256,
        config_url=f"{base}/config",
        config_sha256=sha256_text(bundle),
        data_mib=data,
    ).render()


def image_stream(
    store: Store, settings: Settings, token: str
) -> tuple[int, Iterator[bytes]] | None:
    """(length, blocks): the image's mapped blocks, what the manifest's image_map names."""
    with store.session() as session:
        row = token_row(session, token)
        name = _image_of(session, row) if row else None
    if name is None:
        return None
    disk = disk_image_if_built(load_recipe(name), settings.images_dir)
    if disk is None:
        return None
    bmap = block_map(disk)
    return bmap.stream_bytes, stream_blocks(disk, bmap)


def bundle_text(store: Store, settings: Settings, token: str) -> str | None:
    """The instance's config bundle, served once per deploy: a second fetch gets nothing."""
    with store.session() as session:
        row = token_row(session, token)
        if row is None or row.purpose != "deploy" or row.bundle_served_at is not None:
            return None
        row.bundle_served_at = utcnow()
        return box_for(settings).decrypt(row.bundle_enc) if row.bundle_enc else "{}"


def _expected_sha256(session: Session, settings: Settings, row: DeployToken) -> str | None:
    """The sha256 of the image stream the node should have written."""
    name = _image_of(session, row) if row.purpose == "deploy" else None
    disk = disk_image_if_built(load_recipe(name), settings.images_dir) if name else None
    return block_map(disk).stream_sha256 if disk else None


def record_status(store: Store, settings: Settings, token: str, body: bytes) -> bool:
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
                report, message=f"the node wrote a stream of sha256 {report.sha256}, not {expected}"
            )
        row.status = status
        row.report = {
            "stage": report.stage,
            "message": report.message[:500],
            "sha256": report.sha256 or "",
            **report.extra,
        }
    return True

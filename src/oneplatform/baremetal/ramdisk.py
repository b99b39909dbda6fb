"""The deploy ramdisk on virtual media, for deploying onto a node and for cleaning it.

A run of the ramdisk is four operation steps, each idempotent and each calling the node only
through its driver: ``prepare`` (a per-run token and the ISO that carries it), ``boot`` (power
off, insert the ISO, boot once from CD, power on), ``wait`` (what the deploy agent reported
over HTTP, :mod:`oneplatform.baremetal.media`) and ``finish`` (the agent powered the node off:
eject, boot from disk from now on, power on for a deploy). A crash anywhere resumes at the
unfinished step: the token is reused, and every power call is guarded by the BMC's state.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.baremetal.deploy_iso import build_deploy_iso, network_args
from oneplatform.baremetal.driver import BaremetalDriver
from oneplatform.baremetal.reach import node_driver, node_of_host
from oneplatform.config import Settings
from oneplatform.errors import NotYet, PlatformError
from oneplatform.iam import hash_token
from oneplatform.ops.engine import StepContext
from oneplatform.ops.steps import deadline
from oneplatform.schemas.compute import PowerState
from oneplatform.secrets import box_for, generate_token
from oneplatform.store.models import DeployToken, Instance, Node, utcnow

TOKEN_TTL = dt.timedelta(hours=2)
POWER_OFF_GRACE_S = 120.0  # how long the agent has to power the node off when it is done


def deploy_dir(settings: Settings) -> Path:
    return settings.home / "deploy"


def iso_path(settings: Settings, token_row: DeployToken) -> Path:
    return deploy_dir(settings) / f"{token_row.id}.iso"


def deploy_listener(settings: Settings) -> tuple[str, int] | None:
    """Where the deploy listener serves nodes: ONEP_DEPLOY_HOST, else the bare-metal lab's
    provisioning gateway (its nodes.json), else nowhere (None)."""
    host = settings.deploy_host
    if host is None and settings.bmlab_file.exists():
        lab = json.loads(settings.bmlab_file.read_text())
        host = (lab.get("provisioning") or {}).get("gateway")
    if host is None:
        return None
    return str(ipaddress.ip_address(host)), settings.deploy_port


def node_base_url(settings: Settings) -> str:
    """How a node's ramdisk reaches the deploy listener, on the provisioning network."""
    listener = deploy_listener(settings)
    if listener is None:
        raise PlatformError(
            "no provisioning network: set ONEP_DEPLOY_HOST to the deploy listener's address "
            "on the network the nodes' provisioning NICs are on",
            code="no_deploy_network",
        )
    host, port = listener
    return f"http://{host}:{port}"


def node_network(node: Node) -> str:
    """The kernel arguments for the node's provisioning NIC (empty: the agent's defaults)."""
    nic = node.provisioning or {}
    if not nic:
        return ""
    try:
        return network_args(str(nic.get("mac", "")), str(nic.get("address", "")))
    except ValueError as exc:
        raise PlatformError(f"node {node.name}: {exc}", code="bad_provisioning_nic") from None


def bmc_base_url(settings: Settings) -> str:
    """How the BMC reaches the API to download the ISO."""
    return f"http://{settings.bmc_media_host}:{settings.port}"


def operation_node(session: Session, ctx: StepContext) -> Node:
    """The node an operation drives: itself, or the node under its instance."""
    if ctx.kind.resource_type == "node":
        return session.get_one(Node, ctx.resource_id)
    instance = session.get_one(Instance, ctx.resource_id)
    if instance.host_id is None:
        raise PlatformError(f"instance {instance.name!r} was never placed on a node")
    return node_of_host(session, instance.host_id)


def _driver(ctx: StepContext) -> tuple[BaremetalDriver, str]:
    with ctx.store.session() as session:
        node = operation_node(session, ctx)
        return node_driver(session, ctx.settings, node), node.id


# -- tokens ------------------------------------------------------------------------------------
OPEN = ("waiting", "running", "ok", "error")  # a run's token before its run is over


def open_token(
    ctx: StepContext, session: Session, node: Node, purpose: str, instance: Instance | None
) -> tuple[DeployToken, str]:
    """This operation's token for ``purpose`` on the node, or a new one (row, plaintext).

    A token serves one run of one operation: a later deploy on the same node gets its own.
    """
    box = box_for(ctx.settings)
    row = session.scalars(
        select(DeployToken).where(
            DeployToken.node_id == node.id,
            DeployToken.purpose == purpose,
            DeployToken.operation_id == ctx.operation_id,
            DeployToken.status.in_(OPEN),
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
        operation_id=ctx.operation_id,
        purpose=purpose,
        image_name=None,
        bundle_enc=instance.bundle_enc if instance else None,
        status="waiting",
        expires_at=utcnow() + TOKEN_TTL,
    )
    session.add(row)
    session.flush()
    return row, token


def current_token(ctx: StepContext, session: Session, purpose: str) -> tuple[DeployToken, str]:
    """The token ``prepare`` made for this operation's run (whatever was reported since)."""
    row = session.scalars(
        select(DeployToken)
        .where(
            DeployToken.operation_id == ctx.operation_id,
            DeployToken.purpose == purpose,
            DeployToken.status.in_(OPEN),
        )
        .order_by(DeployToken.created_at.desc())
    ).first()
    if row is None:
        raise PlatformError(f"no open {purpose} token for this operation: prepare did not run")
    return row, box_for(ctx.settings).decrypt(row.token_enc)


def close_tokens(session: Session, settings: Settings, operation_id: str, status: str) -> None:
    """End an operation's runs: its tokens stop working (``done`` after success, ``closed``
    after a failure or a delete) and their ISOs are removed."""
    for row in session.scalars(
        select(DeployToken).where(
            DeployToken.operation_id == operation_id, DeployToken.status.in_(OPEN)
        )
    ):
        row.status = status
        row.bundle_enc = None  # the secrets in it are needed no more
        iso_path(settings, row).unlink(missing_ok=True)


# -- the four steps of a ramdisk run -------------------------------------------------------------
def prepare(ctx: StepContext, purpose: str) -> None:
    """A token and the per-run ISO carrying it (both reused after a crash)."""
    with ctx.transaction() as session:
        node = operation_node(session, ctx)
        instance = (
            None if ctx.kind.resource_type == "node" else session.get(Instance, ctx.resource_id)
        )
        row, token = open_token(ctx, session, node, purpose, instance)
        iso = iso_path(ctx.settings, row)
        network = node_network(node)
    if not iso.exists():
        url = f"{node_base_url(ctx.settings)}/v1/deploy/{token}"
        build_deploy_iso(ctx.settings.images_dir, url, iso, network=network, progress=ctx.progress)


def boot(ctx: StepContext, purpose: str) -> None:
    """Power off, insert the ISO, boot once from CD, power on: each call guarded by the BMC."""
    driver, node_id = _driver(ctx)
    with ctx.store.session() as session:
        row, token = current_token(ctx, session, purpose)
    if driver.power_state() is not PowerState.STOPPED:
        driver.power_off()
        driver.wait_for_power(PowerState.STOPPED, timeout_s=60)
    driver.insert_media(node_id, f"{bmc_base_url(ctx.settings)}/v1/deploy/{token}/deploy.iso")
    driver.set_boot_device(node_id, "cd", persistent=False)
    driver.power_on()
    ctx.progress(f"ramdisk booting for {purpose} (token {row.id[:8]})")


def wait(ctx: StepContext, purpose: str, timeout: float) -> None:
    """Poll what the deploy agent reported; NotYet until it says ok, fail on error."""
    with ctx.store.session() as session:
        row, _ = current_token(ctx, session, purpose)
        status, report = row.status, dict(row.report or {})
    if status == "ok":
        return
    if status == "error":
        raise PlatformError(
            f"the deploy agent reported an error at {report.get('stage', '?')}: "
            f"{report.get('message', '')}",
            code=f"{purpose}_failed",
        )
    deadline(ctx, "a report from the node's ramdisk", timeout)
    stage = str(report.get("stage", "booting"))
    if "erased_mib" in report:  # a clean's progress over the whole disk
        stage += f" {report['erased_mib']}/{report.get('disk_mib', '?')} MiB"
    raise NotYet(f"{purpose}: {stage}", retry_after=2.0)


def finish(ctx: StepContext, purpose: str, boot_disk: bool) -> None:
    """The agent powers the node off when done: wait for that (forcing it after a grace
    period), eject, set the disk as the boot device (persistently: some BMCs report one-time
    overrides as continuous), and power on to boot the disk when deploying."""
    driver, node_id = _driver(ctx)
    if driver.power_state() is not PowerState.STOPPED:
        if ctx.elapsed() <= POWER_OFF_GRACE_S:
            raise NotYet("waiting for the ramdisk to power the node off", retry_after=1.0)
        driver.power_off()
    driver.eject_media(node_id)
    driver.set_boot_device(node_id, "hdd", persistent=True)
    if boot_disk:
        driver.power_on()
    with ctx.transaction() as session:
        node = operation_node(session, ctx)
        node.power_state = (PowerState.RUNNING if boot_disk else PowerState.STOPPED).value
        close_tokens(session, ctx.settings, ctx.operation_id, "done")

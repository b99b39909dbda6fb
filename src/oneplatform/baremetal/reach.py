"""How the rest of bare metal finds a node and reaches it: through the driver of its host,
with the BMC settings only the node row knows (decrypted for the call at hand)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.baremetal.driver import BaremetalDriver
from oneplatform.compute.hosts import driver_of
from oneplatform.config import Settings
from oneplatform.errors import NotFound
from oneplatform.secrets import box_for
from oneplatform.store.models import Host, Node


def find_node(session: Session, ident: str) -> Node:
    node = session.scalars(select(Node).where((Node.id == ident) | (Node.name == ident))).first()
    if node is None:
        raise NotFound(f"node {ident!r} not found", code="node_not_found")
    return node


def node_of_host(session: Session, host_id: str) -> Node:
    node = session.scalars(select(Node).where(Node.host_id == host_id)).first()
    if node is None:
        raise NotFound(f"host {host_id!r} is not a bare-metal node", code="node_not_found")
    return node


def node_host_settings(session: Session, settings: Settings, host: Host) -> dict[str, Any]:
    """What the bare-metal driver needs about a node: its BMC (the password decrypted for
    the call at hand) and how its service ports are reached."""
    node = node_of_host(session, host.id)
    password = box_for(settings).decrypt(node.bmc_password_enc) if node.bmc_password_enc else ""
    return {
        "bmc": {
            "protocol": node.bmc_protocol,
            "address": node.bmc_address,
            "username": node.bmc_username,
            "password": password,
            "system_id": node.bmc_system_id,
            # an https:// BMC's certificate is verified: against this CA, else the system's
            "verify": str(settings.bmc_ca_file) if settings.bmc_ca_file else True,
        },
        "port_map": dict(node.port_map or {}),
    }


def node_driver(session: Session, settings: Settings, node: Node) -> BaremetalDriver:
    """The driver of the node's host: every call to a node goes through it."""
    return cast(BaremetalDriver, driver_of(session, settings, session.get_one(Host, node.host_id)))

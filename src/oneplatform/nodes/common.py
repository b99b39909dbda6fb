"""Reaching a node's BMC from its row (the one place BMC credentials are decrypted)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.baremetal.bmc import Bmc
from oneplatform.config import Settings
from oneplatform.errors import InvalidInput, NotFound
from oneplatform.secrets import box_for
from oneplatform.store.models import Node


def bmc_for(node: Node, settings: Settings) -> Bmc:
    if node.bmc_protocol != "redfish":
        raise InvalidInput(f"BMC protocol {node.bmc_protocol!r} is not supported")
    from oneplatform.baremetal.redfish import RedfishBmc

    password = box_for(settings).decrypt(node.bmc_password_enc) if node.bmc_password_enc else ""
    return RedfishBmc(node.bmc_address, node.bmc_username, password, node.bmc_system_id)


def node_settings(node: Node, settings: Settings) -> dict[str, object]:
    """What the bare-metal driver needs about a node, decrypted for the call at hand."""
    password = box_for(settings).decrypt(node.bmc_password_enc) if node.bmc_password_enc else ""
    return {
        "bmc": {
            "address": node.bmc_address,
            "username": node.bmc_username,
            "password": password,
            "system_id": node.bmc_system_id,
        },
        "port_map": dict(node.port_map or {}),
    }


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

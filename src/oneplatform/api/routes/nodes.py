from __future__ import annotations

from fastapi import APIRouter, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.baremetal import nodes as service
from oneplatform.schemas.nodes import NodeAccepted, NodeEnroll, NodeOut, NodePower

router = APIRouter(
    prefix="/nodes", tags=["nodes"], responses=declared(401, 403, 404, 409, 413, 422, 502, 503)
)
ACCEPTED = status.HTTP_202_ACCEPTED


@router.get("", response_model=list[NodeOut])
def list_nodes(platform: PlatformDep, caller: CallerDep) -> list[NodeOut]:
    """Bare-metal nodes (admin only)."""
    return service.list_nodes(platform.store, caller)


@router.post("", response_model=NodeAccepted, status_code=ACCEPTED)
def enroll_node(body: NodeEnroll, platform: PlatformDep, caller: CallerDep) -> NodeAccepted:
    """Enroll a node by its BMC; it is verified, inspected and (by default) cleaned."""
    return service.enroll(platform.store, platform.settings, caller, body)


@router.get("/{ident}", response_model=NodeOut)
def show_node(ident: str, platform: PlatformDep, caller: CallerDep) -> NodeOut:
    return service.get_node(platform.store, caller, ident)


@router.post("/{ident}/manage", response_model=NodeAccepted, status_code=ACCEPTED)
def manage_node(ident: str, platform: PlatformDep, caller: CallerDep) -> NodeAccepted:
    """Verify the BMC again and make the node manageable."""
    return service.act(platform.store, caller, ident, "manage")


@router.post("/{ident}/inspect", response_model=NodeAccepted, status_code=ACCEPTED)
def inspect_node(ident: str, platform: PlatformDep, caller: CallerDep) -> NodeAccepted:
    return service.act(platform.store, caller, ident, "inspect")


@router.post("/{ident}/provide", response_model=NodeAccepted, status_code=ACCEPTED)
def provide_node(ident: str, platform: PlatformDep, caller: CallerDep) -> NodeAccepted:
    """Clean the node and make it available for deployments."""
    return service.act(platform.store, caller, ident, "provide")


@router.post("/{ident}/power", response_model=NodeOut)
def power_node(ident: str, body: NodePower, platform: PlatformDep, caller: CallerDep) -> NodeOut:
    return service.power(platform.store, platform.settings, caller, ident, body.action)

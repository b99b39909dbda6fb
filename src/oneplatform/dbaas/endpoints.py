"""A database instance's stable endpoints (the endpoint proxy's routes) and its members'.

The read-write endpoint leads to whatever member is the primary, the read-only one to its
ready replicas; both keep their address for the database's life (switchover, failover,
move, resize). Each member's own engine endpoint stays reachable for diagnosis.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.compute.instances import endpoints
from oneplatform.compute.ports import LOCAL, bindable, held_ports, taken
from oneplatform.config import Settings
from oneplatform.dbaas.datastores import get_datastore
from oneplatform.dbaas.states import MEMBERS, MemberStatus
from oneplatform.errors import NoValidHost
from oneplatform.guest.relay import relay_key
from oneplatform.hostsvc.proxy import (
    EndpointProxy,
    ProxyError,
    Route,
    Server,
    hub_bindable,
    render,
    repl_user,
)
from oneplatform.schemas.databases import DbEndpoint, DbMemberOut
from oneplatform.secrets import SecretBox, box_for
from oneplatform.store.db import Store
from oneplatform.store.models import DbInstance, DbMember, Flavor, Instance

log = logging.getLogger(__name__)

PRIMARY, REPLICA = "primary", "replica"


def member_server(session: Session, datastore: str, instance_id: str) -> Server | None:
    """Where a member's engine is reached from this machine (None until it is placed)."""
    instance = session.get(Instance, instance_id)
    if instance is None:
        return None
    name = get_datastore(datastore).engine_endpoint
    for e in endpoints(session, instance):
        if e.name == name:
            return Server(e.host, e.port)
    return None


def member_out(
    session: Session, db: DbInstance, m: DbMember, status: dict[str, Any] | None = None
) -> DbMemberOut:
    instance = session.get_one(Instance, m.instance_id)
    flavor = session.get_one(Flavor, instance.flavor_id)
    server = member_server(session, db.datastore, m.instance_id)
    lag_bytes = lag_seconds = None
    if status is not None and m.role == REPLICA:
        primary_lsn = status.get("lsn_bytes")
        for r in status.get("replicas", []):
            if r["name"] == m.name:
                if primary_lsn is not None and r.get("replay_bytes") is not None:
                    lag_bytes = max(0, primary_lsn - r["replay_bytes"])
                lag_seconds = r.get("lag_seconds")
    elif m.role == PRIMARY:
        lag_bytes, lag_seconds = 0, 0.0
    return DbMemberOut(
        name=m.name,
        role=m.role,
        flavor=flavor.name,
        compute_type=instance.compute_type,
        state=m.status,
        status_message=m.status_message,
        lag_bytes=lag_bytes,
        lag_seconds=lag_seconds,
        endpoint=DbEndpoint(host=server.host, port=server.port) if server else None,
    )


def live_members(session: Session, db_id: str) -> list[DbMember]:
    return list(
        session.scalars(
            select(DbMember)
            .where(DbMember.db_id == db_id, DbMember.deleted_at.is_(None))
            .order_by(DbMember.created_at)
        )
    )


def drop_member(session: Session, member: DbMember, message: str) -> None:
    """Record a member as gone (its compute instance deleted or being deleted)."""
    if member.status != MemberStatus.DELETING.value:
        MEMBERS.move(session, member, MemberStatus.DELETING, message)
    MEMBERS.move(session, member, MemberStatus.DELETED, message)


def route_of(
    session: Session, db: DbInstance, box: SecretBox, fenced: bool = False
) -> Route | None:
    if db.rw_port is None or db.ro_port is None:
        return None
    primary = (
        None
        if fenced or not db.instance_id
        else member_server(session, db.datastore, db.instance_id)
    )
    replicas = []
    for m in live_members(session, db.id):
        if m.role == REPLICA and m.status == "ACTIVE":
            server = member_server(session, db.datastore, m.instance_id)
            if server is not None:
                replicas.append(server)
    relay = (
        relay_key(repl_user(db.id), box.decrypt(db.repl_password_enc))
        if db.repl_password_enc
        else None
    )
    return Route(db.id, db.rw_port, db.ro_port, primary, tuple(replicas), relay)


def allocate_ports(session: Session, settings: Settings, db: DbInstance) -> None:
    """Give the database its two endpoint ports from ONEP_ENDPOINT_PORT_START..END, skipping
    any port another database, an instance or something else on this machine holds."""
    if db.rw_port is not None and db.ro_port is not None:
        return
    address = settings.bind_address
    used = {
        p for pair in session.execute(select(DbInstance.rw_port, DbInstance.ro_port)) for p in pair
    }
    used |= taken(session, LOCAL, address) | held_ports(session, LOCAL, address)
    free = (
        p
        for p in range(settings.endpoint_port_start, settings.endpoint_port_end + 1)
        if p not in used and bindable(address, p)
    )
    rw, ro = next(free, None), next(free, None)
    if rw is None or ro is None:
        raise NoValidHost(
            f"no free endpoint port left in {settings.endpoint_port_start}-"
            f"{settings.endpoint_port_end} on {address}",
            code="no_free_port",
        )
    db.endpoint_address, db.rw_port, db.ro_port = address, rw, ro


def sync_proxy(
    store: Store, settings: Settings, force: Sequence[str] = (), fenced: Sequence[str] = ()
) -> None:
    """Make the endpoint proxy serve what the store says (every live database's routes).
    ``force``: databases whose servers are set again whatever the last file said;
    ``fenced``: databases whose read-write endpoint refuses (no primary)."""
    proxy = EndpointProxy(settings)
    with proxy.locked():
        with store.session() as session:
            rows = session.scalars(
                select(DbInstance).where(
                    DbInstance.deleted_at.is_(None), DbInstance.rw_port.is_not(None)
                )
            )
            box = box_for(settings)
            routes = [r for db in rows if (r := route_of(session, db, box, db.id in fenced))]
        try:
            proxy.apply(render(settings, routes, hub=hub_bindable(settings)), force=force)
        except ProxyError as exc:
            log.warning("endpoint proxy: %s", exc)


def ensure_endpoints(store: Store, settings: Settings) -> None:
    """Ports for live database instances made before stable endpoints (at `onep up`)."""
    with store.session() as session:
        for db in session.scalars(
            select(DbInstance).where(DbInstance.deleted_at.is_(None), DbInstance.rw_port.is_(None))
        ):
            allocate_ports(session, settings, db)
            session.flush()

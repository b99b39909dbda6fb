"""Trove's instances: list, detail, show (by id or name), create, update, delete and the
actions, each mapped onto the platform's database service. A database instance's replicas
are Trove instances too (``replica_of`` names their source)."""

from __future__ import annotations

from typing import Any

from fastapi import Body, Request, Response

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.trove import views
from oneplatform.api.trove.lookup import Found, build, find, members, replicas_of, trove_id
from oneplatform.api.trove.routing import ACCEPTED, Json, accepted, trove_router
from oneplatform.api.trove.schemas import InstanceCreate, InstanceSpec, InstanceUpdate
from oneplatform.compute import catalog
from oneplatform.config import Settings
from oneplatform.dbaas import backups, configurations, failover, replicas, service, storage
from oneplatform.errors import Conflict, InvalidInput
from oneplatform.iam import Caller
from oneplatform.schemas.compute import FlavorOut
from oneplatform.schemas.databases import (
    DbInstanceCreate,
    DbInstanceOut,
    DbMemberOut,
    DbUserSpec,
    MoveRequest,
    ReplicaCreate,
    ReplicaDetach,
    StorageResize,
    SwitchoverRequest,
)
from oneplatform.store.db import Store

router = trove_router()
BUSY_BACKUP = frozenset({"NEW", "BUILDING"})
GROUP_CHANGES = frozenset({"SWITCHOVER", "FAILOVER", "RESIZE"})


def _backing_up(store: Store, caller: Caller) -> set[str]:
    """The ids of the caller's database instances with a backup under way."""
    return {b.database_id for b in backups.list_backups(store, caller) if b.status in BUSY_BACKUP}


def _member_view(
    request: Request, db: DbInstanceOut, m: DbMemberOut, flavors: list[FlavorOut], detail: bool
) -> Json:
    """A replica as Trove shows one: an instance of its own whose ``replica_of`` is its source.
    While its group switches over, fails over or resizes (a move, storage growth), it reads
    PROMOTE, EJECT or RESIZE as its source does (the member itself stays ACTIVE): a client
    waiting for the promoted replica to be ACTIVE waits for the switchover."""
    state = db.status if db.status in GROUP_CHANGES and m.state == "ACTIVE" else m.state
    as_db = db.model_copy(
        update={
            "id": views.member_id(db, m),
            "name": views.member_name(db, m),
            "status": state,
            "status_message": m.status_message,
            "flavor": m.flavor,
            "compute_type": m.compute_type,
            "endpoint": m.endpoint,
            "members": [],
            "configuration": db.configuration,
        }
    )
    body = views.instance(request, as_db, flavors, detail=detail)
    primary = views.primary_of(db)
    source = views.member_id(db, primary) if primary is not None else db.id
    body["replica_of"] = {
        "id": source,
        "name": views.member_name(db, primary) if primary is not None else db.name,
        "links": views.links(request, "instances", source),
    }
    return body


def _view(
    request: Request, found: Found, flavors: list[FlavorOut], busy: set[str], detail: bool
) -> Json:
    if found.replica is not None:
        return _member_view(request, found.db, found.replica, flavors, detail)
    return views.instance(request, found.db, flavors, detail=detail, backing_up=found.db.id in busy)


def _listing(request: Request, platform: PlatformDep, caller: Caller, detail: bool) -> Json:
    dbs = service.list_dbs(platform.store, caller)
    flavors = catalog.list_flavors(platform.store, caller)
    busy = _backing_up(platform.store, caller)
    found = [f for db in dbs for f in members(db)]
    chosen, more = views.page(request, found, trove_id, "instances")
    return views.listing(
        "instances", [_view(request, f, flavors, busy, detail) for f in chosen], more
    )


@router.get("/instances")
def list_instances(request: Request, platform: PlatformDep, caller: CallerDep) -> Json:
    """The project's instances (database instances and their replicas), ``?limit=&marker=``."""
    return _listing(request, platform, caller, detail=False)


@router.get("/instances/detail")
def list_instances_detail(request: Request, platform: PlatformDep, caller: CallerDep) -> Json:
    return _listing(request, platform, caller, detail=True)


def _found(platform: PlatformDep, caller: Caller, ident: str) -> Found:
    return find(ident, service.list_dbs(platform.store, caller))


@router.get("/instances/{instance_id}")
def show_instance(
    instance_id: str, request: Request, platform: PlatformDep, caller: CallerDep
) -> Json:
    """An instance by id or name."""
    found = _found(platform, caller, instance_id)
    flavors = catalog.list_flavors(platform.store, caller)
    busy = _backing_up(platform.store, caller)
    return {"instance": _view(request, found, flavors, busy, detail=True)}


# -- create ------------------------------------------------------------------------------------
def _flavor_name(flavors: list[FlavorOut], spec: InstanceSpec) -> str | None:
    ref = spec.flavorRef if spec.flavorRef is not None else spec.flavor
    if isinstance(ref, dict):
        ref = ref.get("id") or ref.get("name")
    return views.find_flavor(flavors, str(ref)).name if ref is not None else None


def _users(spec: InstanceSpec) -> list[DbUserSpec]:
    users = []
    for u in spec.users:
        if u.host not in (None, "", "%"):
            raise InvalidInput(
                f"user {u.name!r}: only host '%' (any) is supported", code="invalid_input"
            )
        if not u.password:
            raise InvalidInput(f"user {u.name!r} needs a password", code="invalid_input")
        users.append(
            build(
                DbUserSpec,
                name=u.name,
                password=u.password,
                databases=[d.name for d in u.databases],
            )
        )
    return users


def _new_db(platform: PlatformDep, caller: Caller, spec: InstanceSpec) -> DbInstanceOut:
    flavors = catalog.list_flavors(platform.store, caller)
    flavor = _flavor_name(flavors, spec)
    if flavor is None:
        raise InvalidInput("a flavor is needed (flavorRef)", code="invalid_input")
    ref = spec.datastore
    datastore, version = views.named_datastore(
        service.list_datastores, ref.type if ref else None, ref.version if ref else None
    )
    fields: Json = {
        "name": spec.name,
        "datastore": datastore,
        "version": version,
        "flavor": flavor,
        "databases": [d.name for d in spec.databases],
        "users": _users(spec),
        "restore": spec.restorePoint.backupRef if spec.restorePoint else None,
        "replicas": spec.replica_count or 0,
        "configuration": spec.configuration,
    }
    if spec.volume is not None and spec.volume.size is not None:
        fields["size_gb"] = spec.volume.size
    req = build(DbInstanceCreate, **fields)
    return service.create_db(platform.store, platform.settings, caller, req).instance


def _new_replicas(platform: PlatformDep, caller: Caller, spec: InstanceSpec) -> Found:
    """``replica_of``: replicas of the source (Trove refuses a flavor, volume, users and
    databases for one; so does the facade); the first is named as asked, the others -2, -3 …"""
    if spec.databases or spec.users or spec.volume is not None or spec.restorePoint:
        raise InvalidInput(
            "a replica takes its source's volume, databases and users", code="invalid_input"
        )
    assert spec.replica_of is not None
    source = _found(platform, caller, spec.replica_of)
    if source.replica is not None:
        raise InvalidInput("the source of a replica must be a primary", code="invalid_input")
    made = []
    for n in range(spec.replica_count or 1):
        name = spec.name if n == 0 else f"{spec.name}-{n + 1}"
        req = build(ReplicaCreate, name=name)
        made.append(
            replicas.create_replica(
                platform.store, platform.settings, caller, source.db.id, req
            ).replica
        )
    return Found(service.get_db(platform.store, caller, source.db.id), made[0])


@router.post("/instances")
def create_instance(
    body: InstanceCreate, request: Request, platform: PlatformDep, caller: CallerDep
) -> Json:
    """Create (200, status BUILD, readable at once): a database instance, or with
    ``replica_of`` replicas of one. ``restorePoint.backupRef`` restores a backup."""
    spec = body.instance
    flavors = catalog.list_flavors(platform.store, caller)
    if spec.replica_of:
        found = _new_replicas(platform, caller, spec)
        return {"instance": _view(request, found, flavors, set(), detail=True)}
    db = _new_db(platform, caller, spec)
    return {"instance": views.instance(request, db, flavors, detail=True)}


# -- update, delete ----------------------------------------------------------------------------
def _configure(
    settings: Settings, store: Store, caller: Caller, db_id: str, group: str | None
) -> None:
    if group:
        service.attach_configuration(store, settings, caller, db_id, group)
    else:
        service.detach_configuration(store, settings, caller, db_id)


@router.put("/instances/{instance_id}", status_code=ACCEPTED)
def put_instance(
    instance_id: str, body: InstanceUpdate, platform: PlatformDep, caller: CallerDep
) -> Response:
    """Attach ``configuration``; without one, detach the instance's. ``replica_of`` null or
    ``""`` (trove-tempest-plugin's detach) on a replica makes it an instance of its own, and
    leaves the configuration as it is."""
    found = _found(platform, caller, instance_id)
    change = body.instance
    if "replica_of" in change.model_fields_set and not change.replica_of:
        _detach(platform, caller, found)
        if "configuration" not in change.model_fields_set:
            return accepted()
    _require_primary(found)
    _configure(platform.settings, platform.store, caller, found.db.id, change.configuration)
    return accepted()


def _detach(platform: PlatformDep, caller: Caller, found: Found) -> None:
    """A replica becomes a database instance of its own, named as it is. The former primary
    that bears the database instance's name and id (a replica after a switchover) cannot:
    the group keeps that name and id, and Trove's detach would keep them on the detached
    server (trove-tempest-plugin's last replication step)."""
    if found.replica is None:
        current = views.member_name(found.db, found.member) if found.member else found.db.name
        raise Conflict(f"{current!r} is not a replica", code="not_a_replica")
    if found.replica.name == found.db.name:
        raise Conflict(
            f"{found.db.name!r} is the database instance's own first server, a replica since "
            "a switchover: the database instance keeps its name and id, so it cannot be "
            "detached; promote it back (promote_to_replica_source) and detach the other "
            "replica instead",
            code="detach_of_named_server",
        )
    service.detach_replica(
        platform.store, platform.settings, caller, found.replica.name, ReplicaDetach()
    )


@router.patch("/instances/{instance_id}", status_code=ACCEPTED)
def patch_instance(
    instance_id: str, body: InstanceUpdate, platform: PlatformDep, caller: CallerDep
) -> Response:
    """``configuration`` (null: detach); ``replica_of: null`` on a replica makes it an
    instance of its own. A new ``name`` is refused: the platform's names are fixed."""
    found = _found(platform, caller, instance_id)
    change = body.instance
    given = change.model_fields_set
    current = views.member_name(found.db, found.member) if found.member else found.db.name
    if change.name is not None and change.name != current:
        raise InvalidInput("an instance cannot be renamed here", code="rename_not_supported")
    if "replica_of" in given and not change.replica_of:
        _detach(platform, caller, found)
    if "configuration" in given:
        _require_primary(found)
        _configure(platform.settings, platform.store, caller, found.db.id, change.configuration)
    return accepted()


@router.delete("/instances/{instance_id}", status_code=ACCEPTED)
def delete_instance(instance_id: str, platform: PlatformDep, caller: CallerDep) -> Response:
    """Delete (it reads SHUTDOWN until it is gone, then 404)."""
    found = _found(platform, caller, instance_id)
    if found.replica is not None:
        replicas.delete_replica(platform.store, caller, found.replica.name)
    else:
        service.delete_db(platform.store, caller, found.db.id)
    return accepted()


def _require_primary(found: Found) -> None:
    if found.replica is not None:
        raise Conflict(
            f"{found.replica.name!r} is a replica: act on its source {found.db.name!r}",
            code="is_replica",
        )


# -- actions -----------------------------------------------------------------------------------
@router.post("/instances/{instance_id}/action", status_code=ACCEPTED)
def instance_action(
    instance_id: str,
    platform: PlatformDep,
    caller: CallerDep,
    body: dict[str, Any] = Body(...),
) -> Response:
    """One of ``restart``, ``resize`` (``flavorRef``: a move to that flavor, of any compute
    type; ``volume``: storage growth), ``promote_to_replica_source`` (on a replica: a
    switchover to it), ``eject_replica_source`` (on a source: a failover to its most advanced
    replica)."""
    if len(body) != 1:
        raise InvalidInput("an action body names exactly one action", code="invalid_input")
    [(action, args)] = body.items()
    found = _found(platform, caller, instance_id)
    store, settings = platform.store, platform.settings
    if action == "restart":
        _require_primary(found)
        service.restart_db(store, settings, caller, found.db.id)
    elif action == "resize":
        _require_primary(found)
        _resize(platform, caller, found.db.id, args)
    elif action == "promote_to_replica_source":
        if found.replica is None:
            raise Conflict(f"{instance_id!r} is the replica source already", code="is_primary")
        req = SwitchoverRequest(to=found.replica.name)
        replicas.switchover(store, settings, caller, found.db.id, req)
    elif action == "eject_replica_source":
        _require_primary(found)
        if not replicas_of(found.db):
            raise Conflict(f"{found.db.name!r} has no replica", code="no_replica")
        if failover.start_failover(store, found.db.id, "ejected by its owner") is None:
            raise Conflict(
                f"{found.db.name!r} is {found.db.status}, not ACTIVE", code="invalid_state"
            )
    else:
        raise InvalidInput(f"action {action!r} is not supported", code="action_not_supported")
    return accepted()


def _resize(platform: PlatformDep, caller: Caller, db_id: str, args: Any) -> None:
    if not isinstance(args, dict):
        raise InvalidInput("resize takes flavorRef or volume", code="invalid_input")
    if "flavorRef" in args:
        flavor = views.find_flavor(
            catalog.list_flavors(platform.store, caller), str(args["flavorRef"])
        )
        req = build(MoveRequest, flavor=flavor.name)
        replicas.move(platform.store, platform.settings, caller, db_id, req)
    elif "volume" in args:
        volume = args["volume"]
        size = volume.get("size") if isinstance(volume, dict) else volume
        resize = build(StorageResize, size_gb=size)
        storage.resize_storage(platform.store, platform.settings, caller, db_id, resize)
    else:
        raise InvalidInput("resize takes flavorRef or volume", code="invalid_input")


@router.get("/instances/{instance_id}/configuration")
def instance_configuration(instance_id: str, platform: PlatformDep, caller: CallerDep) -> Json:
    """The values the instance's engine runs with from its configuration group."""
    found = _found(platform, caller, instance_id)
    values: dict[str, Any] = {}
    if found.db.configuration:
        group = configurations.get_group(platform.store, caller, found.db.configuration)
        values = {k: views.typed(v) for k, v in group.values.items()}
    return {"instance": {"configuration": values}}

"""Database instances, their databases, users and grants.

Creating, restarting and deleting a database instance are operations (202). SQL-level work
(databases, users, grants, passwords) is done at once over the engine's port with the admin
credentials and answered directly: it takes milliseconds, and a password never has to be
stored in an operation to be applied later.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform import quotas
from oneplatform.compute.catalog import flavor_by_name
from oneplatform.compute.drivers.base import VolumeSpec
from oneplatform.compute.instances import endpoints, missing_volumes, place_instance
from oneplatform.config import Settings
from oneplatform.dbaas import backups, configurations, replicas, warm
from oneplatform.dbaas import operations as ops
from oneplatform.dbaas.datastores import DATASTORES, get_datastore, get_version
from oneplatform.dbaas.datastores.features import FEATURE_HELP, Feature
from oneplatform.dbaas.endpoints import (
    PRIMARY,
    allocate_ports,
    live_members,
    member_out,
    sync_proxy,
)
from oneplatform.dbaas.lookup import find_db, find_db_any, require_active
from oneplatform.dbaas.reach import DATA_PATH, DATA_VOLUME, Reach, make_bundle, reach
from oneplatform.dbaas.states import DATABASES, MEMBERS, DbStatus, Health, MemberStatus
from oneplatform.errors import AlreadyExists, BackendError, Conflict, InvalidInput, NotFound
from oneplatform.guest.bundle import AdminCredentials
from oneplatform.hostsvc.objectstore import store_config
from oneplatform.iam import Caller
from oneplatform.images.recipes import load_recipe
from oneplatform.ops.engine import enqueue
from oneplatform.ops.service import to_out
from oneplatform.schemas.compute import CapabilityOut
from oneplatform.schemas.databases import (
    Credentials,
    DatabaseOut,
    DatastoreOut,
    DatastoreVersionOut,
    DbEndpoint,
    DbInstanceAccepted,
    DbInstanceCreate,
    DbInstanceOut,
    DbMemberOut,
    DbStorageOut,
    DbUserCreate,
    DbUserCreated,
    DbUserOut,
    ReplicaDetach,
)
from oneplatform.secrets import SecretBox, box_for, generate_password, generate_token
from oneplatform.store.db import Store
from oneplatform.store.models import DbInstance, DbMember, Event, Flavor, Instance, new_id

MANAGED_BY = "dbaas"


# -- catalog -------------------------------------------------------------------------------------
def list_datastores() -> list[DatastoreOut]:
    return [
        DatastoreOut(
            name=ds.name,
            versions=[
                DatastoreVersionOut(
                    version=v.version,
                    image=v.image,
                    default=v.version == ds.default_version,
                    capabilities=[
                        CapabilityOut(
                            name=feature.value,
                            supported=feature not in lacking,
                            description=FEATURE_HELP[feature],
                            reason=lacking.get(feature),
                        )
                        for feature in Feature
                    ],
                    backup_types=[] if Feature.BACKUPS in lacking else list(ds.backup_types),
                )
                for v in ds.versions
                for lacking in [ds.lacks(v.version)]
            ],
        )
        for ds in DATASTORES.values()
    ]


# -- reading ------------------------------------------------------------------------------------
def to_out_db(session: Session, db: DbInstance) -> DbInstanceOut:
    flavor = session.get_one(Flavor, db.flavor_id)
    instance = session.get(Instance, db.instance_id) if db.instance_id else None
    datastore = get_datastore(db.datastore)
    endpoint = read_only = None
    members: list[DbMemberOut] = []
    max_size_gb = None
    if db.status != DbStatus.DELETED.value:
        if db.endpoint_address and db.rw_port is not None and db.ro_port is not None:
            endpoint = DbEndpoint(host=db.endpoint_address, port=db.rw_port)
            read_only = DbEndpoint(host=db.endpoint_address, port=db.ro_port)
        elif instance is not None:
            for e in endpoints(session, instance):
                if e.name == datastore.engine_endpoint:
                    endpoint = DbEndpoint(host=e.host, port=e.port)
        group = sorted(
            live_members(session, db.id), key=lambda m: (m.role != PRIMARY, m.created_at)
        )
        members = [member_out(session, db, m) for m in group]
        ids = [m.instance_id for m in group] or ([db.instance_id] if db.instance_id else [])
        max_size_gb = storage_ceiling(session, ids)
    uri = (
        datastore.connection_uri(endpoint.host, endpoint.port, db.admin_username)
        if endpoint
        else None
    )
    restorable_from, restorable_until = backups.window(session, db)
    return DbInstanceOut(
        id=db.id,
        name=db.name,
        project_id=db.project_id,
        status=db.status,
        status_message=db.status_message,
        health=db.health,
        health_message=db.health_message,
        health_checked_at=db.health_checked_at,
        datastore=db.datastore,
        version=db.version,
        flavor=flavor.name,
        compute_type=flavor.compute_type,
        size_gb=db.size_gb,
        storage=_storage_out(db),
        autogrow_max_gb=db.autogrow_max_gb,
        max_size_gb=max_size_gb,
        endpoint=endpoint,
        read_only_endpoint=read_only,
        members=members,
        connection_uri=uri,
        restorable_from=restorable_from,
        restorable_until=restorable_until,
        configuration=configurations.group_name(session, db),
        restart_required=db.restart_required,
        created_at=db.created_at,
        updated_at=db.updated_at,
    )


def storage_ceiling(session: Session, instance_ids: list[str]) -> int | None:
    """The most the data volumes of these instances can grow to: the smallest bound their
    devices record (a node's disk); None when none records one."""
    bounds = []
    for instance_id in instance_ids:
        row = session.get(Instance, instance_id)
        for volume in (row.volumes or ()) if row is not None else ():
            if volume["name"] == DATA_VOLUME and volume.get("max_size_gb") is not None:
                bounds.append(int(volume["max_size_gb"]))
    return min(bounds) if bounds else None


def _storage_out(db: DbInstance) -> DbStorageOut | None:
    """The data filesystem's usage its guest agent last reported, if it did."""
    if db.storage_checked_at is None or db.storage_total_bytes is None:
        return None
    return DbStorageOut(
        total_bytes=db.storage_total_bytes,
        used_bytes=db.storage_used_bytes or 0,
        free_bytes=db.storage_free_bytes or 0,
        checked_at=db.storage_checked_at,
    )


def get_db(store: Store, caller: Caller, ident: str) -> DbInstanceOut:
    with store.session() as session:
        return to_out_db(session, find_db(session, caller, ident))


def list_dbs(store: Store, caller: Caller) -> list[DbInstanceOut]:
    with store.session() as session:
        rows = session.scalars(
            select(DbInstance)
            .where(DbInstance.project_id == caller.project_id, DbInstance.deleted_at.is_(None))
            .order_by(DbInstance.created_at)
        )
        return [to_out_db(session, db) for db in rows]


# -- lifecycle ----------------------------------------------------------------------------------
def _with_engine(store: Store, caller: Caller, req: DbInstanceCreate) -> DbInstanceCreate:
    """``req`` with its engine named: a restore's source's when it names none (a backup of
    MariaDB restores as MariaDB), else PostgreSQL; an unknown source is reported later."""
    if req.datastore is not None:
        return req
    engine: dict[str, str | None] = {"datastore": "postgresql"}
    with store.session() as session, contextlib.suppress(NotFound):
        source = None
        if req.restore:
            backup = backups.find_backup(session, caller, req.restore)
            source = session.get_one(DbInstance, backup.db_instance_id)
        elif req.restore_from:
            source = find_db_any(session, caller, req.restore_from)
        if source is not None:
            engine = {"datastore": source.datastore, "version": req.version or source.version}
    return req.model_copy(update=engine)


def _validate_create(req: DbInstanceCreate) -> None:
    assert req.datastore is not None
    datastore = get_datastore(req.datastore)
    get_version(datastore, req.version)
    for name in req.databases:
        datastore.validate_database_name(name)
    if len(set(req.databases)) != len(req.databases):
        raise InvalidInput("a database is listed twice", code="invalid_input")
    names = [u.name for u in req.users]
    if len(set(names)) != len(names):
        raise InvalidInput("a user is listed twice", code="invalid_input")
    for user in req.users:
        datastore.validate_user_name(user.name)
        unknown = set(user.databases) - set(req.databases)
        if unknown:
            raise InvalidInput(
                f"user {user.name!r} is given databases that are not created: "
                f"{', '.join(sorted(unknown))}",
                code="invalid_input",
            )


def _create_needs(req: DbInstanceCreate) -> list[Feature]:
    """The features a create asks of its datastore."""
    needs = []
    if req.databases:
        needs.append(Feature.DATABASES)
    if req.users:
        needs.append(Feature.USERS)
    if any(u.databases for u in req.users):
        needs.append(Feature.GRANTS)
    if req.restore or req.restore_from:
        needs.append(Feature.BACKUPS)
    if req.to_time is not None:
        needs.append(Feature.PITR)
    if req.replicas:
        needs.append(Feature.REPLICAS)
    return needs


def _require_quota(session: Session, caller: Caller, req: DbInstanceCreate, flavor: Flavor) -> None:
    """The whole create against the project's quota up front: one database, its primary and
    the replicas it asks for (each placement checks its own part again as it is made)."""

    def member(f: Flavor) -> quotas.Need:
        return quotas.compute_need(f.vcpus, f.ram_mb, f.disk_gb + req.size_gb)

    need = quotas.Need(databases=1).plus(member(flavor))
    if req.replicas:
        replica_flavor = flavor_by_name(
            session, req.replica_flavor or flavor.name, caller.project_id
        )
        need = need.plus(member(replica_flavor).times(req.replicas))
    quotas.require(session, caller.project_id, need)


def create_db(
    store: Store, settings: Settings, caller: Caller, req: DbInstanceCreate
) -> DbInstanceAccepted:
    """Place the compute instance (or claim a warm one) and write the database instance, in
    one transaction."""
    req = _with_engine(store, caller, req)
    assert req.datastore is not None
    datastore = get_datastore(req.datastore)
    version = get_version(datastore, req.version)
    datastore.require(version.version, *_create_needs(req))
    _validate_create(req)
    box = box_for(settings)
    admin_password, agent_secret = generate_password(), generate_token()
    platform_password = generate_password()
    ports = load_recipe(version.image).ports
    if (req.restore or req.restore_from) and not settings.backups:
        raise Conflict("backups are off on this platform (ONEP_BACKUPS)", code="no_backups")
    backups.advance_window(store, settings, caller, req.restore, req.restore_from, req.to_time)
    try:
        with store.session() as session:
            _check_db_name_free(session, caller, req.name)
            flavor = flavor_by_name(session, req.flavor, caller.project_id)
            _require_quota(session, caller, req, flavor)
            db = DbInstance(
                id=new_id(),
                project_id=caller.project_id,
                name=req.name,
                datastore=datastore.name,
                version=version.version,
                flavor_id=flavor.id,
                size_gb=req.size_gb,
                health=Health.UNKNOWN.value,
                admin_username=datastore.admin_username,
                admin_password_enc=box.encrypt(admin_password),
                platform_password_enc=box.encrypt(platform_password),
                agent_secret_enc=box.encrypt(agent_secret),
                pending_enc=box.encrypt(
                    json.dumps(
                        {
                            "databases": req.databases,
                            "users": [u.model_dump() for u in req.users],
                        }
                    )
                ),
            )
            if settings.backups:
                backups.new_repository(db, box)
            restore, source = None, None
            if req.restore or req.restore_from:
                restore, source = backups.restore_plan(
                    session,
                    settings,
                    caller,
                    db,
                    datastore.name,
                    version.version,
                    flavor.compute_type,
                    req.restore,
                    req.restore_from,
                    req.to_time,
                )
            if req.configuration:
                db.configuration_id = configurations.check_for_create(
                    session, caller, req.configuration, datastore.name, version.version
                ).id
            elif source is not None:  # a restore runs with its source's group, if any
                db.configuration_id = configurations.inherited(session, source, db)
            config = store_config(settings) if settings.backups else None
            bundle = make_bundle(
                db.id,
                datastore,
                version.version,
                flavor.vcpus,
                flavor.ram_mb,
                AdminCredentials(db.admin_username, admin_password),
                AdminCredentials(datastore.platform_username, platform_password),
                agent_secret,
                ports,
                backup=backups.guest_store(config, db, box, flavor.compute_type)
                if config is not None and db.repo_bucket
                else None,
                restore=restore,
                configuration=configurations.values_for(session, db),
            )
            bundle_enc = box.encrypt(bundle)
            # A restore's data comes from the first start's restore: never a warm instance.
            claimed = (
                None
                if restore is not None
                else warm.claim(
                    session, flavor, datastore.name, version.version, req.size_gb, db.id
                )
            )
            if claimed is None:
                instance, _ = place_instance(
                    session,
                    caller.project_id,
                    f"db-{db.id[:12]}",
                    flavor,
                    version.image,
                    managed_by=MANAGED_BY,
                    bundle_enc=bundle_enc,
                    volumes=[VolumeSpec(DATA_VOLUME, req.size_gb, DATA_PATH)],
                )
                params: dict[str, Any] | None = (
                    {"restore_source": source.id} if source is not None else None
                )
            else:
                warm_instance, instance = claimed
                instance.project_id, instance.name = caller.project_id, f"db-{db.id[:12]}"
                instance.managed_by, instance.bundle_enc = MANAGED_BY, bundle_enc
                params = {"warm": warm_instance.id}
                session.add(
                    Event(
                        resource_type="instance",
                        resource_id=instance.id,
                        from_status=instance.status,
                        to_status=instance.status,
                        message=f"warm instance claimed by database instance {db.id}",
                    )
                )
            if req.replicas:
                # 404 now, not later
                flavor_by_name(session, req.replica_flavor or flavor.name, caller.project_id)
                params = {
                    **(params or {}),
                    "replicas": req.replicas,
                    "replica_flavor": req.replica_flavor,
                }
            db.instance_id = instance.id
            allocate_ports(session, settings, db)
            DATABASES.created(session, db, "create requested")
            session.add(db)
            session.flush()
            primary = DbMember(
                id=new_id(),
                db_id=db.id,
                project_id=db.project_id,
                name=req.name,
                instance_id=instance.id,
                role=PRIMARY,
            )
            MEMBERS.created(session, primary, "the primary")
            session.add(primary)
            session.flush()
            op = enqueue(session, ops.DB_CREATE, db.id, caller.project_id, params)
            return DbInstanceAccepted(operation=to_out(op), instance=to_out_db(session, db))
    except IntegrityError:
        raise AlreadyExists(
            f"a database instance named {req.name!r} already exists", code="db_instance_exists"
        ) from None


def detach_replica(
    store: Store, settings: Settings, caller: Caller, name: str, req: ReplicaDetach
) -> DbInstanceAccepted:
    """Make a streaming replica a database instance of its own (default name: the
    replica's): its data as of the detach, the group's users and passwords, its own
    identity, endpoints and backup repository; the group has one replica less."""
    box = box_for(settings)
    try:
        with store.session() as session:
            member = replicas.find_member(session, caller, name)
            group = session.get_one(DbInstance, member.db_id)
            get_datastore(group.datastore).require(group.version, Feature.DETACH)
            if member.role == PRIMARY:
                raise Conflict(
                    f"{member.name!r} is the primary of {group.name!r}: only a replica can be "
                    "detached",
                    code="is_primary",
                )
            if member.status != MemberStatus.ACTIVE or group.status != DbStatus.ACTIVE:
                raise Conflict(
                    f"replica {member.name!r} is {member.status} and {group.name!r} is "
                    f"{group.status}: both must be ACTIVE",
                    code="invalid_state",
                )
            new_name = req.name or member.name
            _check_db_name_free(session, caller, new_name)
            quotas.require(session, caller.project_id, quotas.Need(databases=1))
            if replicas.member_name_taken(session, caller.project_id, new_name, member.id):
                raise AlreadyExists(
                    f"a database member named {new_name!r} already exists",
                    code="db_instance_exists",
                )
            instance = session.get_one(Instance, member.instance_id)
            new = DbInstance(
                id=new_id(),
                project_id=caller.project_id,
                name=new_name,
                datastore=group.datastore,
                version=group.version,
                flavor_id=instance.flavor_id,
                size_gb=group.size_gb,
                health=Health.UNKNOWN.value,
                admin_username=group.admin_username,
                admin_password_enc=group.admin_password_enc,
                platform_password_enc=group.platform_password_enc,
                agent_secret_enc=box.encrypt(generate_token()),
                # its data disk keeps the group's values: it keeps the group too
                configuration_id=group.configuration_id,
                restart_required=group.restart_required,
            )
            if group.repo_bucket and settings.backups:
                backups.new_repository(new, box)
            allocate_ports(session, settings, new)
            DATABASES.created(
                session, new, f"detach of replica {member.name} of {group.name} requested"
            )
            session.add(new)
            session.flush()
            MEMBERS.move(session, member, MemberStatus.DETACHING, f"being detached into {new_name}")
            op = enqueue(session, ops.DB_DETACH, new.id, caller.project_id, {"member": member.id})
            accepted = DbInstanceAccepted(operation=to_out(op), instance=to_out_db(session, new))
    except IntegrityError:
        raise AlreadyExists(
            f"a database instance named {req.name!r} already exists", code="db_instance_exists"
        ) from None
    sync_proxy(store, settings)  # out of its group's read-only endpoint now
    return accepted


def _check_db_name_free(session: Session, caller: Caller, name: str) -> None:
    taken = session.scalars(
        select(DbInstance.id).where(
            DbInstance.project_id == caller.project_id,
            DbInstance.name == name,
            DbInstance.deleted_at.is_(None),
        )
    ).first()
    if taken:
        raise AlreadyExists(
            f"a database instance named {name!r} already exists", code="db_instance_exists"
        )


def delete_db(store: Store, caller: Caller, ident: str) -> DbInstanceAccepted:
    """Delete the database instance: its compute instance and its data volume."""
    with store.session() as session:
        db = find_db(session, caller, ident)
        detaching = [
            m.name for m in live_members(session, db.id) if m.status == MemberStatus.DETACHING
        ]
        if detaching:
            raise Conflict(
                f"replica {detaching[0]!r} of {db.name!r} is being detached: delete the "
                "database instance once it is done",
                code="invalid_state",
                status=db.status,
            )
        if db.status == DbStatus.DELETING.value:
            raise Conflict(
                f"database instance {db.name!r} is already being deleted",
                code="invalid_state",
                status=db.status,
            )
        DATABASES.move(session, db, DbStatus.DELETING, "delete requested")
        op = enqueue(session, ops.DB_DELETE, db.id, caller.project_id)
        return DbInstanceAccepted(operation=to_out(op), instance=to_out_db(session, db))


def restart_db(store: Store, settings: Settings, caller: Caller, ident: str) -> DbInstanceAccepted:
    """Restart the engine; when its compute is down or failed, repair the compute first.

    Works from ERROR too, as long as the data volume exists: a database whose data is gone
    is not brought back on empty storage (409 ``data_volume_gone``).
    """
    with store.session() as session:
        db = find_db(session, caller, ident)
        if db.status not in (DbStatus.ACTIVE.value, DbStatus.ERROR.value):
            raise Conflict(
                f"cannot restart database instance {db.name!r} while it is {db.status}",
                code="invalid_state",
                status=db.status,
            )
        instance_id = db.instance_id
    missing = missing_volumes(store, settings, instance_id) if instance_id else []
    if missing:
        raise Conflict(
            f"the data volume of database instance {ident!r} is gone ({', '.join(missing)}): "
            "it cannot be restarted; delete it",
            code="data_volume_gone",
        )
    with store.session() as session:
        db = find_db(session, caller, ident)
        DATABASES.move(session, db, DbStatus.RESTARTING, "restart requested")
        op = enqueue(session, ops.DB_RESTART, db.id, caller.project_id)
        return DbInstanceAccepted(operation=to_out(op), instance=to_out_db(session, db))


# -- configuration groups ----------------------------------------------------------------------
def attach_configuration(
    store: Store, settings: Settings, caller: Caller, ident: str, group: str
) -> DbInstanceOut:
    """Attach a configuration group and apply it to every member at once."""
    configurations.attach(store, settings, caller, ident, group)
    return get_db(store, caller, ident)


def detach_configuration(
    store: Store, settings: Settings, caller: Caller, ident: str
) -> DbInstanceOut:
    configurations.detach(store, settings, caller, ident)
    return get_db(store, caller, ident)


# -- credentials --------------------------------------------------------------------------------
def credentials(store: Store, settings: Settings, caller: Caller, ident: str) -> Credentials:
    caller.require_writer("see a database's credentials")
    box = box_for(settings)
    with store.session() as session:
        db = find_db(session, caller, ident)
        return Credentials(username=db.admin_username, password=box.decrypt(db.admin_password_enc))


def reset_admin_password(
    store: Store, settings: Settings, caller: Caller, ident: str, password: str | None = None
) -> Credentials:
    """New admin password (``password``, a checked ``Password``, or a generated one), applied
    in two phases so that a crash never loses it: the new one is stored as pending, applied
    to the engine, then made current."""
    box = box_for(settings)
    new = password or generate_password()
    with store.session() as session:
        db = find_db(session, caller, ident)
        require_active(db)
        db.admin_password_pending_enc = box.encrypt(new)
        r = reach(session, db, box)
    r.datastore.set_admin_password(r.engine, new)
    with store.session() as session:
        db = find_db(session, caller, ident)
        db.admin_password_enc, db.admin_password_pending_enc = box.encrypt(new), None
        return Credentials(username=db.admin_username, password=new)


# -- databases, users, grants ---------------------------------------------------------------------
def _reach_active(
    store: Store, settings: Settings, caller: Caller, ident: str, *needs: Feature
) -> Reach:
    """The engine of an ACTIVE database whose datastore supports ``needs``."""
    box = box_for(settings)
    with store.session() as session:
        db = find_db(session, caller, ident)
        get_datastore(db.datastore).require(db.version, *needs)
        require_active(db)
        return _reach_reconciled(session, db, box)


def _reach_reconciled(session: Session, db: DbInstance, box: SecretBox) -> Reach:
    """Reach the engine; if a password reset was cut off half-way, finish it first: the
    admin's current password is whichever of the two logs in."""
    r = reach(session, db, box)
    pending_enc = db.admin_password_pending_enc
    if pending_enc is None:
        return r
    try:
        r.datastore.ping(r.admin)
        db.admin_password_pending_enc = None
        return r
    except BackendError:
        r = reach(session, db, box, password=box.decrypt(pending_enc))
        r.datastore.ping(r.admin)
        db.admin_password_enc, db.admin_password_pending_enc = pending_enc, None
        return r


def list_databases(
    store: Store, settings: Settings, caller: Caller, ident: str
) -> list[DatabaseOut]:
    r = _reach_active(store, settings, caller, ident, Feature.DATABASES)
    return [DatabaseOut(name=n) for n in r.datastore.list_databases(r.engine)]


def create_database(
    store: Store, settings: Settings, caller: Caller, ident: str, name: str
) -> DatabaseOut:
    r = _reach_active(store, settings, caller, ident, Feature.DATABASES)
    r.datastore.create_database(r.engine, name)
    return DatabaseOut(name=name)


def delete_database(
    store: Store, settings: Settings, caller: Caller, ident: str, name: str
) -> None:
    r = _reach_active(store, settings, caller, ident, Feature.DATABASES)
    r.datastore.delete_database(r.engine, name)


def list_users(store: Store, settings: Settings, caller: Caller, ident: str) -> list[DbUserOut]:
    r = _reach_active(store, settings, caller, ident, Feature.USERS)
    return [
        DbUserOut(name=u.name, databases=list(u.databases))
        for u in r.datastore.list_users(r.engine)
    ]


def create_user(
    store: Store, settings: Settings, caller: Caller, ident: str, req: DbUserCreate
) -> DbUserCreated:
    needs = (Feature.USERS, Feature.GRANTS) if req.databases else (Feature.USERS,)
    r = _reach_active(store, settings, caller, ident, *needs)
    ds = r.datastore
    ds.validate_user_name(req.name)
    for database in req.databases:
        ds.validate_database_name(database)
    missing = set(req.databases) - set(ds.list_databases(r.engine))
    if missing:
        raise NotFound(
            f"database(s) not found: {', '.join(sorted(missing))}", code="database_not_found"
        )
    password = req.password or generate_password()
    ds.create_user(r.engine, req.name, password)
    for database in req.databases:
        ds.grant(r.engine, req.name, database)
    return DbUserCreated(
        user=DbUserOut(name=req.name, databases=sorted(req.databases)), password=password
    )


def delete_user(store: Store, settings: Settings, caller: Caller, ident: str, name: str) -> None:
    r = _reach_active(store, settings, caller, ident, Feature.USERS)
    r.datastore.delete_user(r.engine, name)


def set_user_password(
    store: Store, settings: Settings, caller: Caller, ident: str, name: str, password: str | None
) -> Credentials:
    r = _reach_active(store, settings, caller, ident, Feature.USERS)
    r.datastore.validate_user_name(name)
    new = password or generate_password()
    r.datastore.set_password(r.engine, name, new)
    return Credentials(username=name, password=new)


def grant(
    store: Store, settings: Settings, caller: Caller, ident: str, user: str, database: str
) -> DbUserOut:
    r = _reach_active(store, settings, caller, ident, Feature.GRANTS)
    r.datastore.grant(r.engine, user, database)
    return _user(r, user)


def revoke(
    store: Store, settings: Settings, caller: Caller, ident: str, user: str, database: str
) -> DbUserOut:
    r = _reach_active(store, settings, caller, ident, Feature.GRANTS)
    r.datastore.revoke(r.engine, user, database)
    return _user(r, user)


def _user(r: Reach, name: str) -> DbUserOut:
    for u in r.datastore.list_users(r.engine):
        if u.name == name:
            return DbUserOut(name=u.name, databases=list(u.databases))
    raise NotFound(f"user {name!r} not found", code="user_not_found")

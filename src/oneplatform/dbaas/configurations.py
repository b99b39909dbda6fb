"""Configuration groups: engine parameters of one datastore version, named in a project and
attached to its database instances.

Values are validated against the version's catalog (``parameters``) before anything is
written. Attaching, detaching and updating apply the values at once to every member of the
attached databases through their guest agents (the agent keeps them on the data disk, so a
restart or a repair keeps them, and gives the engine what it takes live); a value the
engine takes only at start marks the database ``restart_required`` until ``onep db
restart``. New members (replicas, moves) start with the group's values in their bundle.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform.config import Settings
from oneplatform.dbaas.datastores import get_datastore, get_version
from oneplatform.dbaas.endpoints import live_members
from oneplatform.dbaas.lookup import find_db, require_active
from oneplatform.dbaas.parameters import Catalog, catalog, validate
from oneplatform.dbaas.reach import agent_client, reach
from oneplatform.dbaas.states import MemberStatus
from oneplatform.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from oneplatform.iam import Caller
from oneplatform.schemas.configurations import (
    ConfigurationCreate,
    ConfigurationInstance,
    ConfigurationOut,
    ConfigurationUpdate,
    ParameterOut,
)
from oneplatform.secrets import box_for
from oneplatform.store.db import Store
from oneplatform.store.models import ConfigurationGroup, DbInstance, Event, new_id

APPLY_TIMEOUT = 60.0


# -- reading ------------------------------------------------------------------------------
def parameters(datastore: str, version: str) -> list[ParameterOut]:
    """What a configuration group of ``datastore`` ``version`` may set (the platform's own
    parameters left out)."""
    ds = get_datastore(datastore)
    cat = catalog(ds.name, get_version(ds, version).version)
    return [
        ParameterOut(
            name=p.name,
            type=p.type,
            restart_required=p.restart,
            unit=p.unit,
            min=p.min,
            max=p.max,
            values=list(p.values),
            default=p.default,
        )
        for p in cat.parameters.values()
        if cat.owned_reason(p.name) is None
    ]


def find_group(session: Session, caller: Caller, ident: str) -> ConfigurationGroup:
    group = session.scalars(
        select(ConfigurationGroup).where(
            ConfigurationGroup.project_id == caller.project_id,
            (ConfigurationGroup.id == ident) | (ConfigurationGroup.name == ident),
        )
    ).first()
    if group is None:
        raise NotFound(f"configuration group {ident!r} not found", code="configuration_not_found")
    return group


def _attached(session: Session, group_id: str) -> list[DbInstance]:
    return list(
        session.scalars(
            select(DbInstance)
            .where(DbInstance.configuration_id == group_id, DbInstance.deleted_at.is_(None))
            .order_by(DbInstance.created_at)
        )
    )


def to_out(session: Session, group: ConfigurationGroup) -> ConfigurationOut:
    return ConfigurationOut(
        id=group.id,
        name=group.name,
        description=group.description,
        datastore=group.datastore,
        version=group.version,
        values=dict(group.values),
        instances=[
            ConfigurationInstance(id=db.id, name=db.name, restart_required=db.restart_required)
            for db in _attached(session, group.id)
        ],
        created_at=group.created_at,
        updated_at=group.updated_at,
    )


def list_groups(store: Store, caller: Caller) -> list[ConfigurationOut]:
    with store.session() as session:
        rows = session.scalars(
            select(ConfigurationGroup)
            .where(ConfigurationGroup.project_id == caller.project_id)
            .order_by(ConfigurationGroup.created_at)
        )
        return [to_out(session, g) for g in rows]


def get_group(store: Store, caller: Caller, ident: str) -> ConfigurationOut:
    with store.session() as session:
        return to_out(session, find_group(session, caller, ident))


def values_for(session: Session, db: DbInstance) -> dict[str, str]:
    """The values of ``db``'s configuration group (none without one): what a new member's
    bundle carries."""
    if db.configuration_id is None:
        return {}
    group = session.get(ConfigurationGroup, db.configuration_id)
    return dict(group.values) if group is not None else {}


def group_name(session: Session, db: DbInstance) -> str | None:
    if db.configuration_id is None:
        return None
    group = session.get(ConfigurationGroup, db.configuration_id)
    return group.name if group is not None else None


def check_for_create(
    session: Session, caller: Caller, ident: str, datastore: str, version: str
) -> ConfigurationGroup:
    """The group a new database instance of ``datastore`` ``version`` is created with."""
    group = find_group(session, caller, ident)
    _check_match(group, datastore, version, ident)
    return group


def inherited(session: Session, source: DbInstance, new: DbInstance) -> str | None:
    """The group a restore of ``source`` into ``new`` starts with: the source's, while it
    exists and fits ``new``'s datastore version."""
    if source.configuration_id is None:
        return None
    group = session.get(ConfigurationGroup, source.configuration_id)
    if group is None or (group.datastore, group.version) != (new.datastore, new.version):
        return None
    return group.id


def _check_match(group: ConfigurationGroup, datastore: str, version: str, what: str) -> None:
    if (group.datastore, group.version) != (datastore, version):
        raise Conflict(
            f"configuration group {group.name!r} is for {group.datastore} {group.version}, "
            f"not {datastore} {version} ({what})",
            code="configuration_mismatch",
        )


# -- groups -------------------------------------------------------------------------------
def _catalog_of(datastore: str, version: str | None) -> Catalog:
    ds = get_datastore(datastore)
    return catalog(ds.name, get_version(ds, version).version)


def create_group(store: Store, caller: Caller, req: ConfigurationCreate) -> ConfigurationOut:
    cat = _catalog_of(req.datastore, req.version)
    values = validate(cat, req.values)
    try:
        with store.session() as session:
            group = ConfigurationGroup(
                id=new_id(),
                project_id=caller.project_id,
                name=req.name,
                description=req.description,
                datastore=cat.datastore,
                version=cat.version,
                values=values,
            )
            session.add(group)
            session.flush()
            return to_out(session, group)
    except IntegrityError:
        raise AlreadyExists(
            f"a configuration group named {req.name!r} already exists",
            code="configuration_exists",
        ) from None


def update_group(
    store: Store, settings: Settings, caller: Caller, ident: str, req: ConfigurationUpdate
) -> ConfigurationOut:
    """Merge ``values`` in and take ``unset`` out, then apply the result to every database
    attached to the group (all must be ACTIVE: nothing is changed otherwise)."""
    with store.session() as session:
        group = find_group(session, caller, ident)
        cat = catalog(group.datastore, group.version)
        merged = {**group.values, **validate(cat, req.values)}
        for name in req.unset:
            key = name.strip().lower()
            if key not in merged:
                raise InvalidInput(
                    f"configuration group {group.name!r} does not set {key!r}",
                    code="config_parameter_not_set",
                    parameter=key,
                )
            del merged[key]
        targets = [db.id for db in _attached(session, group.id)]
        for db_id in targets:
            require_active(session.get_one(DbInstance, db_id))
        group_id, message = group.id, f"configuration group {group.name} updated"
    for db_id in targets:
        _apply(store, settings, db_id, merged, group_id, message)
    with store.session() as session:
        group = session.get_one(ConfigurationGroup, group_id)
        group.values = dict(sorted(merged.items()))
        if req.description is not None:
            group.description = req.description
        session.flush()
        return to_out(session, group)


def delete_group(store: Store, caller: Caller, ident: str) -> None:
    with store.session() as session:
        group = find_group(session, caller, ident)
        users = _attached(session, group.id)
        if users:
            raise Conflict(
                f"configuration group {group.name!r} is attached to "
                f"{', '.join(db.name for db in users)}: detach it first",
                code="configuration_in_use",
                instances=[db.name for db in users],
            )
        # deleted database instances keep their rows, not their group
        session.execute(
            update(DbInstance)
            .where(DbInstance.configuration_id == group.id)
            .values(configuration_id=None)
        )
        session.delete(group)


# -- attaching ----------------------------------------------------------------------------
def attach(
    store: Store, settings: Settings, caller: Caller, db_ident: str, group_ident: str
) -> None:
    """Attach the group to the database instance (in place of the one it had) and apply
    its values to every member at once."""
    with store.session() as session:
        db = find_db(session, caller, db_ident)
        group = find_group(session, caller, group_ident)
        _check_match(group, db.datastore, db.version, f"database instance {db.name!r}")
        require_active(db)
        db_id, group_id, values = db.id, group.id, dict(group.values)
    _apply(store, settings, db_id, values, group_id, f"configuration group {group_ident} attached")


def detach(store: Store, settings: Settings, caller: Caller, db_ident: str) -> None:
    """Take the database instance's group away: its engines go back to the platform's
    settings (what only a restart resets marks it ``restart_required``)."""
    with store.session() as session:
        db = find_db(session, caller, db_ident)
        if db.configuration_id is None:
            raise Conflict(
                f"database instance {db.name!r} has no configuration group",
                code="configuration_not_attached",
            )
        require_active(db)
        db_id = db.id
    _apply(store, settings, db_id, {}, None, "configuration group detached")


def _apply(
    store: Store,
    settings: Settings,
    db_id: str,
    values: Mapping[str, str],
    group_id: str | None,
    message: str = "",
) -> None:
    """Give ``values`` to every live member's agent (the primary first), then record the
    group and whether a restart is required. An agent that fails stops it before anything
    is recorded: the same request again applies it (applying is idempotent)."""
    box = box_for(settings)
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        members = sorted(
            (m for m in live_members(session, db.id) if m.status == MemberStatus.ACTIVE),
            key=lambda m: m.instance_id != db.instance_id,
        )
        targets = [reach(session, db, box, instance_id=m.instance_id) for m in members]
    pending: set[str] = set()
    for r in targets:
        answer = agent_client(r, timeout=APPLY_TIMEOUT).apply_configuration(dict(values))
        pending.update(str(name) for name in answer.get("pending_restart", []))
    with store.session() as session:
        db = session.get_one(DbInstance, db_id)
        db.configuration_id = group_id
        db.restart_required = db.restart_required or bool(pending)
        if message:
            session.add(
                Event(
                    resource_type="db_instance",
                    resource_id=db.id,
                    from_status=db.status,
                    to_status=db.status,
                    message=message
                    + (f"; waiting for a restart: {', '.join(sorted(pending))}" if pending else ""),
                )
            )

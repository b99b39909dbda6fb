"""The platform's answers in Trove's shapes: ids, status words, timestamps, links, pages.

What the platform has and Trove lacks (a flavor's compute type, a database's endpoint and
health, a backup's type) rides along as extra fields; Trove's own fields keep their types.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import Request

from oneplatform.errors import InvalidInput, NotFound
from oneplatform.schemas.backups import BackupOut
from oneplatform.schemas.compute import FlavorOut
from oneplatform.schemas.configurations import ConfigurationOut, ParameterOut
from oneplatform.schemas.databases import (
    DatastoreOut,
    DatastoreVersionOut,
    DbInstanceOut,
    DbMemberOut,
)

T = TypeVar("T")
MAX_PAGE = 1000
REGION = "RegionOne"
# One stable id per datastore and version, as Trove's are UUIDs (and the same on every run).
ID_SPACE = uuid.UUID("5c6f7a0e-3e0a-4c8e-9b0e-6f6e65706c74")

# The platform's database statuses in Trove's words. ACTIVE reads RESTART_REQUIRED or BACKUP
# when that is what is going on (see ``status_word``); anything unmapped is UNKNOWN.
STATUS = {
    "BUILD": "BUILD",
    "ACTIVE": "ACTIVE",
    "RESTARTING": "REBOOT",
    "RESIZE": "RESIZE",
    "SWITCHOVER": "PROMOTE",
    "FAILOVER": "EJECT",
    "DELETING": "SHUTDOWN",
    "DELETED": "SHUTDOWN",
    "ERROR": "ERROR",
    "DETACHING": "DETACH",  # a replica's: becoming an instance of its own
}
IDLE = frozenset({"ACTIVE", "RESTART_REQUIRED", "BACKUP"})


def timestamp(moment: dt.datetime | None) -> str | None:
    """``YYYY-MM-DDTHH:MM:SS`` in UTC, as gophercloud parses it (no zone, no fraction)."""
    if moment is None:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def base(request: Request) -> str:
    """``http://host:port/v1.0/{project_id}`` of this request."""
    root = str(request.base_url).rstrip("/")
    return f"{root}/v1.0/{request.path_params['project_id']}"


def links(request: Request, kind: str, ident: str) -> list[dict[str, str]]:
    href = f"{base(request)}/{kind}/{ident}"
    bookmark = f"{str(request.base_url).rstrip('/')}/{kind}/{ident}"
    return [{"rel": "self", "href": href}, {"rel": "bookmark", "href": bookmark}]


def page(
    request: Request, items: Sequence[T], key: Callable[[T], str], kind: str
) -> tuple[list[T], list[dict[str, str]]]:
    """One page of ``items`` after ``?marker=`` (a key), at most ``?limit=``; a ``next`` link
    only when more remain."""
    limit_arg = request.query_params.get("limit")
    marker = request.query_params.get("marker")
    try:
        limit = min(int(limit_arg), MAX_PAGE) if limit_arg is not None else MAX_PAGE
    except ValueError:
        raise InvalidInput(f"limit {limit_arg!r} is not a number", code="invalid_input") from None
    if limit < 1:
        raise InvalidInput("limit must be 1 or more", code="invalid_input")
    start = 0
    if marker:
        keys = [key(i) for i in items]
        start = keys.index(marker) + 1 if marker in keys else len(items)
    chosen = list(items[start : start + limit])
    more: list[dict[str, str]] = []
    if start + limit < len(items) and chosen:
        query = urlencode({"limit": limit, "marker": key(chosen[-1])})
        more = [{"rel": "next", "href": f"{base(request)}/{kind}?{query}"}]
    return chosen, more


def listing(name: str, items: list[dict[str, Any]], more: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {name: items}
    if more:
        body["links"] = more
    return body


# -- flavors -----------------------------------------------------------------------------------
def flavor(request: Request, f: FlavorOut) -> dict[str, Any]:
    return {
        "id": int(f.id) if f.id.isdigit() else None,
        "str_id": f.id,
        "name": f.name,
        "ram": f.ram_mb,
        "vcpus": f.vcpus,
        "disk": f.disk_gb,
        "ephemeral": 0,
        "links": links(request, "flavors", f.id),
        "compute_type": f.compute_type,  # the platform's: container, vm or baremetal
    }


def find_flavor(flavors: list[FlavorOut], ref: str) -> FlavorOut:
    """A flavor by id, name, or a link ending in either (Trove's ``flavorRef``)."""
    ident = ref.rstrip("/").rsplit("/", 1)[-1]
    for f in flavors:
        if ident in (f.id, f.name):
            return f
    raise NotFound(f"flavor {ref!r} not found", code="flavor_not_found")


# -- datastores --------------------------------------------------------------------------------
def datastore_id(name: str) -> str:
    return str(uuid.uuid5(ID_SPACE, name))


def version_id(datastore: str, version: str) -> str:
    return str(uuid.uuid5(ID_SPACE, f"{datastore}/{version}"))


def find_datastore(stores: list[DatastoreOut], ident: str) -> DatastoreOut:
    for ds in stores:
        if ident in (ds.name, datastore_id(ds.name)):
            return ds
    raise NotFound(f"datastore {ident!r} not found", code="datastore_not_found")


def find_version(ds: DatastoreOut, ident: str | None) -> DatastoreVersionOut:
    """A version by name or id; the default one when none is named."""
    for v in ds.versions:
        if (ident is None and v.default) or ident in (v.version, version_id(ds.name, v.version)):
            return v
    raise NotFound(
        f"datastore {ds.name!r} has no version {ident!r}", code="datastore_version_not_found"
    )


def named_datastore(
    stores: Callable[[], list[DatastoreOut]], kind: str | None, version: str | None
) -> tuple[str | None, str | None]:
    """The platform's datastore and version names for a request's ``datastore`` (type and
    version by name or id; the default version when none is named), or (None, None)."""
    if not kind:
        return None, None
    ds = find_datastore(stores(), kind)
    return ds.name, find_version(ds, version).version


def find_version_anywhere(stores: list[DatastoreOut], ident: str) -> tuple[DatastoreOut, Any]:
    for ds in stores:
        for v in ds.versions:
            if ident == version_id(ds.name, v.version):
                return ds, v
    raise NotFound(f"datastore version {ident!r} not found", code="datastore_version_not_found")


def version(request: Request, ds: DatastoreOut, v: DatastoreVersionOut) -> dict[str, Any]:
    vid = version_id(ds.name, v.version)
    return {
        "id": vid,
        "name": v.version,
        "datastore": datastore_id(ds.name),
        "datastore_name": ds.name,
        "version": v.version,
        "active": True,
        "image": v.image,
        "packages": "",
        "links": links(request, "datastores/versions", vid),
        "default": v.default,
        "backup_types": v.backup_types,
    }


def datastore(request: Request, ds: DatastoreOut) -> dict[str, Any]:
    default = next((v for v in ds.versions if v.default), None)
    body: dict[str, Any] = {
        "id": datastore_id(ds.name),
        "name": ds.name,
        "links": links(request, "datastores", datastore_id(ds.name)),
        "versions": [
            {
                "id": version_id(ds.name, v.version),
                "name": v.version,
                "version": v.version,
                "active": 1,
                "links": links(request, "datastores/versions", version_id(ds.name, v.version)),
            }
            for v in ds.versions
        ],
    }
    if default is not None:
        body["default_version"] = version_id(ds.name, default.version)
    return body


def parameter(p: ParameterOut, ds: str, v: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": p.name,
        "type": p.type,
        "restart_required": p.restart_required,
        "datastore_version_id": version_id(ds, v),
    }
    if p.min is not None:
        body["min"] = int(p.min) if float(p.min).is_integer() else p.min
    if p.max is not None:
        body["max"] = int(p.max) if float(p.max).is_integer() else p.max
    if p.values:
        body["values"] = p.values
    if p.unit:
        body["unit"] = p.unit
    return body


# -- instances ---------------------------------------------------------------------------------
RETIRING = frozenset({"DELETING", "DELETED"})


def retired(db: DbInstanceOut, m: DbMemberOut) -> bool:
    """A member that bore ``db``'s name and is on its way out while the database lives on: a
    move's former primary, deleted by an operation of its own after the move ended, or a
    failover's fenced primary (ERROR until the failover discards it). Trove shows neither:
    its resize and its eject keep the instance's id on the server that serves."""
    if m.name != db.name or db.status in RETIRING or m.role == "primary":
        return False
    return m.state in RETIRING or (db.status == "FAILOVER" and m.state == "ERROR")


def shown(db: DbInstanceOut) -> list[DbMemberOut]:
    """``db``'s members as Trove instances (without a retired one)."""
    return [m for m in db.members if not retired(db, m)]


def stands_for(db: DbInstanceOut, m: DbMemberOut) -> bool:
    """Whether member ``m`` is the Trove instance that bears ``db``'s id and name: the member
    named as the database instance (its first primary, a replica after a switchover), or
    the primary when no member has that name (after a move, as Trove's resize keeps the id;
    from the moment the move ends, while the former primary is still being deleted)."""
    if m.name == db.name and not retired(db, m):
        return True
    return m.role == "primary" and all(x.name != db.name for x in shown(db))


def member_id(db: DbInstanceOut, m: DbMemberOut) -> str:
    """A member's Trove id: ``db``'s id for the member that stands for it, else its name."""
    return db.id if stands_for(db, m) else m.name


def member_name(db: DbInstanceOut, m: DbMemberOut) -> str:
    return db.name if stands_for(db, m) else m.name


def primary_of(db: DbInstanceOut) -> DbMemberOut | None:
    return next((m for m in db.members if m.role == "primary"), None)


def status_word(db: DbInstanceOut, backing_up: bool = False) -> str:
    word = STATUS.get(db.status, "UNKNOWN")
    if word == "ACTIVE" and db.restart_required:
        return "RESTART_REQUIRED"
    if word == "ACTIVE" and backing_up:
        return "BACKUP"
    return word


def instance(
    request: Request,
    db: DbInstanceOut,
    flavors: list[FlavorOut],
    *,
    detail: bool = True,
    backing_up: bool = False,
) -> dict[str, Any]:
    """``db`` as the Trove instance of its primary (a replica's own view is instances.py's):
    after a switchover that is the promoted member, by its name (see ``member_id``)."""
    status = status_word(db, backing_up)
    flavor_id = next((f.id for f in flavors if f.name == db.flavor), db.flavor)
    primary = primary_of(db)
    ident = member_id(db, primary) if primary is not None else db.id
    name = member_name(db, primary) if primary is not None else db.name
    body: dict[str, Any] = {
        "id": ident,
        "name": name,
        "status": status,
        "operating_status": db.health if status in IDLE else "",
        "links": links(request, "instances", ident),
        "flavor": {"id": flavor_id, "links": links(request, "flavors", flavor_id)},
        "datastore": {"type": db.datastore, "version": db.version, "version_number": db.version},
        "region": REGION,
        "access": {"is_public": False, "allowed_cidrs": []},
        "volume": {"size": db.size_gb},
        "tenant_id": db.project_id,
        # the platform's own, beside Trove's
        "compute_type": db.compute_type,
        "flavor_name": db.flavor,
    }
    if db.storage is not None:
        body["volume"]["used"] = round(db.storage.used_bytes / 1024**3, 2)
    if db.endpoint is not None:
        body["ip"] = [db.endpoint.host]
        body["addresses"] = [{"address": db.endpoint.host, "type": "private"}]
        body["hostname"] = db.endpoint.host
        body["port"] = db.endpoint.port
    replicas = [m for m in shown(db) if m.role != "primary"]
    if replicas:
        body["replicas"] = [
            {
                "id": member_id(db, m),
                "name": member_name(db, m),
                "links": links(request, "instances", member_id(db, m)),
            }
            for m in replicas
        ]
    if detail:
        body["created"] = timestamp(db.created_at)
        body["updated"] = timestamp(db.updated_at)
        body["service_status_updated"] = timestamp(db.health_checked_at or db.updated_at)
        if db.status == "ERROR":  # only then: the CLI reads fault["message"] when it is there
            body["fault"] = {
                "message": db.status_message,
                "created": timestamp(db.updated_at),
                "details": "",
            }
        if db.configuration:
            body["configuration"] = {"id": db.configuration, "name": db.configuration}
    return body


# -- backups -----------------------------------------------------------------------------------
BACKUP_STATUS = {"NEW": "NEW", "BUILDING": "BUILDING", "COMPLETED": "COMPLETED"}


def backup(b: BackupOut, db: DbInstanceOut | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": b.id,
        "name": b.name,
        "description": None,
        "locationRef": None,
        "instance_id": b.database_id,
        "created": timestamp(b.created_at),
        "updated": timestamp(b.finished_at or b.started_at or b.created_at),
        "size": round((b.repo_size_bytes or 0) / 1024**3, 3),
        "status": BACKUP_STATUS.get(b.status, b.status),
        "parent_id": None,
        "project_id": None,
        # the platform's own
        "type": b.type,
        "parent_name": b.parent,
        "instance_name": b.database,
    }
    if db is not None:
        body["datastore"] = {
            "type": db.datastore,
            "version": db.version,
            "version_id": version_id(db.datastore, db.version),
        }
        body["project_id"] = db.project_id
    return body


# -- configurations ----------------------------------------------------------------------------
def configuration(c: ConfigurationOut, *, detail: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": c.id,
        "name": c.name,
        "description": c.description,
        "datastore_name": c.datastore,
        "datastore_version_name": c.version,
        "datastore_version_id": version_id(c.datastore, c.version),
        "created": timestamp(c.created_at),
        "updated": timestamp(c.updated_at),
        "instance_count": len(c.instances),
    }
    if detail:
        body["values"] = {k: typed(v) for k, v in c.values.items()}
    return body


def typed(value: str) -> Any:
    """A stored value as Trove shows it: a number as a number, else the string."""
    try:
        return int(value)
    except ValueError:
        return value

"""Trove's root (``POST``/``GET``/``DELETE /instances/{id}/root``: ``openstack database root
enable|show|disable``), mapped onto the database's admin user: the highest role the platform
gives a tenant (on PostgreSQL LOGIN and CREATEDB, owner of the tenant's databases, never
SUPERUSER nor CREATEROLE: the engine's superuser stays the platform's). Enabling sets its
password (the one given, or a new one) and answers its name and password; it always exists,
so it always reads enabled, and it cannot be disabled (the tenant's objects are its)."""

from __future__ import annotations

from typing import Any

from fastapi import Body

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.trove.lookup import Found, build, find
from oneplatform.api.trove.routing import Json, NotSupported, trove_router
from oneplatform.api.trove.schemas import RootEnable
from oneplatform.dbaas import service
from oneplatform.errors import Conflict
from oneplatform.iam import Caller

router = trove_router(codes=(400, 401, 403, 404, 409, 501))


def _primary(platform: PlatformDep, caller: Caller, ident: str) -> Found:
    found = find(ident, service.list_dbs(platform.store, caller))
    if found.replica is not None:
        raise Conflict(
            f"{found.replica.name!r} is a replica: its admin user is its source's "
            f"({found.db.name!r})",
            code="is_replica",
        )
    return found


@router.post("/instances/{instance_id}/root")
def enable_root(
    instance_id: str, platform: PlatformDep, caller: CallerDep, body: Any = Body(None)
) -> Json:
    """``{"user": {"name", "password"}}``: the admin user with its new password (the body's
    ``password`` when given: 8-128 printable ASCII characters; else a generated one)."""
    given = build(RootEnable, **body) if isinstance(body, dict) else RootEnable()
    found = _primary(platform, caller, instance_id)
    creds = service.reset_admin_password(
        platform.store, platform.settings, caller, found.db.id, given.password
    )
    return {"user": {"name": creds.username, "password": creds.password}}


@router.get("/instances/{instance_id}/root")
def show_root(instance_id: str, platform: PlatformDep, caller: CallerDep) -> Json:
    """``{"rootEnabled": true}``: every database has its admin user from its creation on."""
    find(instance_id, service.list_dbs(platform.store, caller))
    return {"rootEnabled": True}


@router.delete("/instances/{instance_id}/root")
def disable_root(instance_id: str, platform: PlatformDep, caller: CallerDep) -> Json:
    """501 ``root_disable_not_supported``: the admin user owns the tenant's databases and
    stays; a new password (``POST …/root``) shuts out whoever knew the former one."""
    caller.require_writer("disable the admin user")
    found = _primary(platform, caller, instance_id)
    raise NotSupported(
        f"the admin user of {found.db.name!r} cannot be disabled: it owns the database's "
        "objects; set a new password with POST …/root (openstack database root enable)",
        code="root_disable_not_supported",
    )

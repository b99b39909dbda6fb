"""Trove's databases, users and their access, on an instance: the platform's SQL-level work
(done at once, answered 202 as Trove does). A user is ``name`` or ``name@host`` in a path
(quoted); the platform's users connect from anywhere, so the host is always ``%``."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.trove import views
from oneplatform.api.trove.lookup import build
from oneplatform.api.trove.routing import ACCEPTED, Json, accepted, trove_router
from oneplatform.api.trove.schemas import (
    AccessGrant,
    DatabasesCreate,
    PasswordsChange,
    TroveUser,
    UserChange,
    UsersCreate,
)
from oneplatform.dbaas import service
from oneplatform.errors import InvalidInput, NotFound
from oneplatform.iam import Caller
from oneplatform.schemas.databases import DatabaseCreate, DbUserCreate, DbUserOut, PasswordChange

router = trove_router("/instances/{instance_id}")
ANY_HOST = "%"


def user_name(segment: str) -> str:
    """``name`` from ``name`` or ``name@host`` (host ``%`` only)."""
    name, at, host = segment.rpartition("@")
    if not at:
        return segment
    if host not in ("", ANY_HOST):
        raise NotFound(
            f"user {segment!r} not found (every user's host is '%')", code="user_not_found"
        )
    return name


def _user_view(u: DbUserOut) -> Json:
    return {"name": u.name, "host": ANY_HOST, "databases": [{"name": d} for d in u.databases]}


# -- databases ---------------------------------------------------------------------------------
@router.get("/databases")
def list_databases(
    instance_id: str, request: Request, platform: PlatformDep, caller: CallerDep
) -> Json:
    found = service.list_databases(platform.store, platform.settings, caller, instance_id)
    chosen, more = views.page(
        request, found, lambda d: d.name, f"instances/{instance_id}/databases"
    )
    return views.listing("databases", [{"name": d.name} for d in chosen], more)


@router.post("/databases", status_code=ACCEPTED)
def create_databases(
    instance_id: str, body: DatabasesCreate, platform: PlatformDep, caller: CallerDep
) -> Response:
    """``{"databases": [{"name": …}]}`` (or openstacksdk's ``{"database": {…}}``)."""
    wanted = [*body.databases, *([body.database] if body.database else [])]
    if not wanted:
        raise InvalidInput("no database named", code="invalid_input")
    names = [build(DatabaseCreate, name=d.name).name for d in wanted]
    for name in names:
        service.create_database(platform.store, platform.settings, caller, instance_id, name)
    return accepted()


@router.delete("/databases/{name}", status_code=ACCEPTED)
def delete_database(
    instance_id: str, name: str, platform: PlatformDep, caller: CallerDep
) -> Response:
    service.delete_database(platform.store, platform.settings, caller, instance_id, name)
    return accepted()


# -- users -------------------------------------------------------------------------------------
@router.get("/users")
def list_users(
    instance_id: str, request: Request, platform: PlatformDep, caller: CallerDep
) -> Json:
    found = service.list_users(platform.store, platform.settings, caller, instance_id)
    chosen, more = views.page(request, found, lambda u: u.name, f"instances/{instance_id}/users")
    return views.listing("users", [_user_view(u) for u in chosen], more)


def _create_users(
    platform: PlatformDep, caller: Caller, ident: str, users: list[TroveUser]
) -> None:
    if not users:
        raise InvalidInput("no user named", code="invalid_input")
    reqs = []
    for u in users:
        if u.host not in (None, "", ANY_HOST):
            raise InvalidInput(f"user {u.name!r}: only host '%' is supported", code="invalid_input")
        if not u.password:
            raise InvalidInput(f"user {u.name!r} needs a password", code="invalid_input")
        databases = [d.name for d in u.databases]
        reqs.append(build(DbUserCreate, name=u.name, password=u.password, databases=databases))
    for req in reqs:
        service.create_user(platform.store, platform.settings, caller, ident, req)


@router.post("/users", status_code=ACCEPTED)
def create_users(
    instance_id: str, body: UsersCreate, platform: PlatformDep, caller: CallerDep
) -> Response:
    """``{"users": [{"name", "password", "databases": [{"name"}]}]}``."""
    users = [*body.users, *([body.user] if body.user else [])]
    _create_users(platform, caller, instance_id, users)
    return accepted()


@router.post("/users/{user}", status_code=ACCEPTED)
def create_named_user(
    instance_id: str, user: str, body: Json, platform: PlatformDep, caller: CallerDep
) -> Response:
    """openstacksdk's create: the user's fields under ``users`` (a dict, not a list), under
    ``user``, or bare; the name is the path's."""
    fields: Any = body.get("users", body.get("user", body))
    if isinstance(fields, list) and len(fields) == 1:
        fields = fields[0]
    if not isinstance(fields, dict):
        raise InvalidInput("the body is the user's fields", code="invalid_input")
    spec = build(TroveUser, **{**fields, "name": user_name(user)})
    _create_users(platform, caller, instance_id, [spec])
    return accepted()


@router.put("/users", status_code=ACCEPTED)
def change_passwords(
    instance_id: str, body: PasswordsChange, platform: PlatformDep, caller: CallerDep
) -> Response:
    """``{"users": [{"name", "password"}]}``: each user's new password."""
    changes = [(user_name(u.name), build(PasswordChange, password=u.password)) for u in body.users]
    for name, change in changes:
        service.set_user_password(
            platform.store, platform.settings, caller, instance_id, name, change.password
        )
    return accepted()


def _find_user(platform: PlatformDep, caller: Caller, ident: str, user: str) -> DbUserOut:
    name = user_name(user)
    for u in service.list_users(platform.store, platform.settings, caller, ident):
        if u.name == name:
            return u
    raise NotFound(f"user {user!r} not found", code="user_not_found")


@router.get("/users/{user}")
def show_user(instance_id: str, user: str, platform: PlatformDep, caller: CallerDep) -> Json:
    return {"user": _user_view(_find_user(platform, caller, instance_id, user))}


@router.put("/users/{user}", status_code=ACCEPTED)
def update_user(
    instance_id: str, user: str, body: UserChange, platform: PlatformDep, caller: CallerDep
) -> Response:
    """A new ``password``; a new name or host is refused (the platform's users keep theirs)."""
    current = _find_user(platform, caller, instance_id, user)
    change = body.user
    if change.name not in (None, "", current.name) or change.host not in (None, "", ANY_HOST):
        raise InvalidInput("a user's name and host cannot change", code="invalid_input")
    req = build(PasswordChange, password=change.password)
    service.set_user_password(
        platform.store, platform.settings, caller, instance_id, current.name, req.password
    )
    return accepted()


@router.delete("/users/{user}", status_code=ACCEPTED)
def delete_user(instance_id: str, user: str, platform: PlatformDep, caller: CallerDep) -> Response:
    service.delete_user(platform.store, platform.settings, caller, instance_id, user_name(user))
    return accepted()


# -- access ------------------------------------------------------------------------------------
@router.get("/users/{user}/databases")
def list_access(instance_id: str, user: str, platform: PlatformDep, caller: CallerDep) -> Json:
    found = _find_user(platform, caller, instance_id, user)
    return {"databases": [{"name": d} for d in found.databases]}


@router.put("/users/{user}/databases", status_code=ACCEPTED)
def grant_access(
    instance_id: str, user: str, body: AccessGrant, platform: PlatformDep, caller: CallerDep
) -> Response:
    name = user_name(user)
    for d in body.databases:
        service.grant(platform.store, platform.settings, caller, instance_id, name, d.name)
    return accepted()


@router.delete("/users/{user}/databases/{database}", status_code=ACCEPTED)
def revoke_access(
    instance_id: str, user: str, database: str, platform: PlatformDep, caller: CallerDep
) -> Response:
    service.revoke(
        platform.store, platform.settings, caller, instance_id, user_name(user), database
    )
    return accepted()

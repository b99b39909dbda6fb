from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.dbaas import events, replicas, service, storage
from oneplatform.dbaas.events import MAX_EVENTS, MAX_LOG_LINES
from oneplatform.schemas.databases import (
    Credentials,
    DatabaseCreate,
    DatabaseOut,
    DbEventOut,
    DbInstanceAccepted,
    DbInstanceCreate,
    DbInstanceOut,
    DbLogOut,
    DbMemberOut,
    DbUserCreate,
    DbUserCreated,
    DbUserOut,
    GrantRequest,
    MoveRequest,
    PasswordChange,
    ReplicaAccepted,
    ReplicaCreate,
    ReplicaDetach,
    StorageAutogrow,
    StorageResize,
    SwitchoverRequest,
)

router = APIRouter(
    prefix="/db/instances",
    tags=["db-instances"],
    responses=declared(401, 403, 404, 409, 413, 422, 502, 503),
)
ACCEPTED = status.HTTP_202_ACCEPTED
CREATED = status.HTTP_201_CREATED
NO_CONTENT = status.HTTP_204_NO_CONTENT


@router.get("", response_model=list[DbInstanceOut])
def list_db_instances(platform: PlatformDep, caller: CallerDep) -> list[DbInstanceOut]:
    return service.list_dbs(platform.store, caller)


@router.post("", response_model=DbInstanceAccepted, status_code=ACCEPTED)
def create_db_instance(
    body: DbInstanceCreate, platform: PlatformDep, caller: CallerDep
) -> DbInstanceAccepted:
    """Create a database server on the flavor's compute type; returns the operation."""
    return service.create_db(platform.store, platform.settings, caller, body)


@router.get("/{ident}", response_model=DbInstanceOut)
def show_db_instance(ident: str, platform: PlatformDep, caller: CallerDep) -> DbInstanceOut:
    return service.get_db(platform.store, caller, ident)


@router.delete("/{ident}", response_model=DbInstanceAccepted, status_code=ACCEPTED)
def delete_db_instance(ident: str, platform: PlatformDep, caller: CallerDep) -> DbInstanceAccepted:
    """Delete the database server, its data and its compute."""
    return service.delete_db(platform.store, caller, ident)


@router.post("/{ident}/restart", response_model=DbInstanceAccepted, status_code=ACCEPTED)
def restart_db_instance(ident: str, platform: PlatformDep, caller: CallerDep) -> DbInstanceAccepted:
    """Restart the engine; a compute that is down or failed is repaired first (from ERROR
    too, while the data volume exists)."""
    return service.restart_db(platform.store, platform.settings, caller, ident)


@router.get("/{ident}/events", response_model=list[DbEventOut])
def list_events(
    ident: str,
    platform: PlatformDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=MAX_EVENTS)] = 100,
) -> list[DbEventOut]:
    """The latest events of the database instance (live or deleted), its members, their
    compute and its backups, oldest first."""
    return events.db_events(platform.store, caller, ident, limit)


@router.get("/{ident}/logs", response_model=DbLogOut)
def engine_logs(
    ident: str,
    platform: PlatformDep,
    caller: CallerDep,
    tail: Annotated[int, Query(ge=1, le=MAX_LOG_LINES)] = 100,
    after: Annotated[int | None, Query(ge=0)] = None,
    member: Annotated[str | None, Query(max_length=63)] = None,
) -> DbLogOut:
    """The engine's own log on the primary (or on ``member``): the last ``tail`` lines, or
    those after line ``after`` (follow with the ``next`` of the previous answer)."""
    return events.db_logs(platform.store, platform.settings, caller, ident, tail, after, member)


@router.get("/{ident}/replicas", response_model=list[DbMemberOut])
def list_replicas(ident: str, platform: PlatformDep, caller: CallerDep) -> list[DbMemberOut]:
    """The group's members, the primary first, with each replica's lag."""
    return replicas.list_members(platform.store, platform.settings, caller, ident)


@router.post("/{ident}/replicas", response_model=ReplicaAccepted, status_code=ACCEPTED)
def create_replica(
    ident: str, body: ReplicaCreate, platform: PlatformDep, caller: CallerDep
) -> ReplicaAccepted:
    """A streaming replica on any flavor, of any compute type."""
    return replicas.create_replica(platform.store, platform.settings, caller, ident, body)


@router.post("/{ident}/switchover", response_model=DbInstanceAccepted, status_code=ACCEPTED)
def switchover(
    ident: str, body: SwitchoverRequest, platform: PlatformDep, caller: CallerDep
) -> DbInstanceAccepted:
    """Make a replica the primary with no acknowledged write lost; the endpoint follows."""
    op = replicas.switchover(platform.store, platform.settings, caller, ident, body)
    return DbInstanceAccepted(operation=op, instance=service.get_db(platform.store, caller, ident))


@router.post("/{ident}/move", response_model=DbInstanceAccepted, status_code=ACCEPTED)
def move(
    ident: str, body: MoveRequest, platform: PlatformDep, caller: CallerDep
) -> DbInstanceAccepted:
    """Move (or resize) to another flavor, of any compute type: a replica there, a
    switchover to it, the former primary retired. Same id, name, endpoint, users, backups."""
    op = replicas.move(platform.store, platform.settings, caller, ident, body)
    return DbInstanceAccepted(operation=op, instance=service.get_db(platform.store, caller, ident))


@router.post("/{ident}/resize", response_model=DbInstanceAccepted, status_code=ACCEPTED)
def resize_storage(
    ident: str, body: StorageResize, platform: PlatformDep, caller: CallerDep
) -> DbInstanceAccepted:
    """Grow the storage (every member's data volume, then its filesystem), online where the
    compute type allows; storage only grows."""
    return storage.resize_storage(platform.store, platform.settings, caller, ident, body)


@router.put("/{ident}/autogrow", response_model=DbInstanceOut)
def set_autogrow(
    ident: str, body: StorageAutogrow, platform: PlatformDep, caller: CallerDep
) -> DbInstanceOut:
    """Auto-growth: grow the storage by half when over 80 % full, up to ``max_gb`` (null:
    off). It acts where a volume's size is what the guest gets (VMs)."""
    return storage.set_autogrow(platform.store, platform.settings, caller, ident, body)


@router.get("/{ident}/credentials", response_model=Credentials)
def credentials(ident: str, platform: PlatformDep, caller: CallerDep) -> Credentials:
    """The admin user's name and password (owning project only)."""
    return service.credentials(platform.store, platform.settings, caller, ident)


@router.post("/{ident}/reset-password", response_model=Credentials)
def reset_admin_password(ident: str, platform: PlatformDep, caller: CallerDep) -> Credentials:
    """A new generated admin password, applied to the engine and returned once."""
    return service.reset_admin_password(platform.store, platform.settings, caller, ident)


@router.get("/{ident}/databases", response_model=list[DatabaseOut])
def list_databases(ident: str, platform: PlatformDep, caller: CallerDep) -> list[DatabaseOut]:
    return service.list_databases(platform.store, platform.settings, caller, ident)


@router.post("/{ident}/databases", response_model=DatabaseOut, status_code=CREATED)
def create_database(
    ident: str, body: DatabaseCreate, platform: PlatformDep, caller: CallerDep
) -> DatabaseOut:
    return service.create_database(platform.store, platform.settings, caller, ident, body.name)


@router.delete("/{ident}/databases/{name}", status_code=NO_CONTENT)
def delete_database(ident: str, name: str, platform: PlatformDep, caller: CallerDep) -> Response:
    service.delete_database(platform.store, platform.settings, caller, ident, name)
    return Response(status_code=NO_CONTENT)


@router.get("/{ident}/users", response_model=list[DbUserOut])
def list_users(ident: str, platform: PlatformDep, caller: CallerDep) -> list[DbUserOut]:
    return service.list_users(platform.store, platform.settings, caller, ident)


@router.post("/{ident}/users", response_model=DbUserCreated, status_code=CREATED)
def create_user(
    ident: str, body: DbUserCreate, platform: PlatformDep, caller: CallerDep
) -> DbUserCreated:
    """Create a user (password generated when omitted, shown once) with access to databases."""
    return service.create_user(platform.store, platform.settings, caller, ident, body)


@router.delete("/{ident}/users/{name}", status_code=NO_CONTENT)
def delete_user(ident: str, name: str, platform: PlatformDep, caller: CallerDep) -> Response:
    """Drop the user; what it owned passes to the admin user, nothing is dropped."""
    service.delete_user(platform.store, platform.settings, caller, ident, name)
    return Response(status_code=NO_CONTENT)


@router.put("/{ident}/users/{name}/password", response_model=Credentials)
def set_user_password(
    ident: str, name: str, body: PasswordChange, platform: PlatformDep, caller: CallerDep
) -> Credentials:
    return service.set_user_password(
        platform.store, platform.settings, caller, ident, name, body.password
    )


@router.post("/{ident}/users/{name}/grants", response_model=DbUserOut)
def grant(
    ident: str, name: str, body: GrantRequest, platform: PlatformDep, caller: CallerDep
) -> DbUserOut:
    """Let the user connect to the database and create and use tables in it."""
    return service.grant(platform.store, platform.settings, caller, ident, name, body.database)


@router.delete("/{ident}/users/{name}/grants/{database}", response_model=DbUserOut)
def revoke(
    ident: str, name: str, database: str, platform: PlatformDep, caller: CallerDep
) -> DbUserOut:
    return service.revoke(platform.store, platform.settings, caller, ident, name, database)


replica_router = APIRouter(
    prefix="/db/replicas",
    tags=["db-instances"],
    responses=declared(401, 403, 404, 409, 422, 502, 503),
)


@replica_router.delete("/{name}", response_model=ReplicaAccepted, status_code=ACCEPTED)
def delete_replica(name: str, platform: PlatformDep, caller: CallerDep) -> ReplicaAccepted:
    """Delete a replica (not the primary) and its compute."""
    return replicas.delete_replica(platform.store, caller, name)


@replica_router.post("/{name}/detach", response_model=DbInstanceAccepted, status_code=ACCEPTED)
def detach_replica(
    name: str, body: ReplicaDetach, platform: PlatformDep, caller: CallerDep
) -> DbInstanceAccepted:
    """Make a replica a database instance of its own: its data as of the detach, the
    group's users, its own endpoints and backup repository."""
    return service.detach_replica(platform.store, platform.settings, caller, name, body)

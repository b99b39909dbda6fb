from __future__ import annotations

from fastapi import APIRouter, Response, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.dbaas import configurations as service
from oneplatform.dbaas import service as db_service
from oneplatform.schemas.configurations import (
    ConfigurationAttach,
    ConfigurationCreate,
    ConfigurationOut,
    ConfigurationUpdate,
    ParameterOut,
)
from oneplatform.schemas.databases import DbInstanceOut

router = APIRouter(tags=["configurations"], responses=declared(401, 403, 404, 409, 413, 422))
GROUPS = "/db/configurations"


@router.get(GROUPS, response_model=list[ConfigurationOut])
def list_configurations(platform: PlatformDep, caller: CallerDep) -> list[ConfigurationOut]:
    """The project's configuration groups, each with the database instances using it."""
    return service.list_groups(platform.store, caller)


@router.post(GROUPS, response_model=ConfigurationOut, status_code=status.HTTP_201_CREATED)
def create_configuration(
    body: ConfigurationCreate, platform: PlatformDep, caller: CallerDep
) -> ConfigurationOut:
    """A configuration group; its values are checked against the datastore version's
    catalog (unknown, platform-owned, wrongly typed or out-of-range ones: 422)."""
    return service.create_group(platform.store, caller, body)


@router.get(GROUPS + "/{ident}", response_model=ConfigurationOut)
def show_configuration(ident: str, platform: PlatformDep, caller: CallerDep) -> ConfigurationOut:
    return service.get_group(platform.store, caller, ident)


@router.patch(GROUPS + "/{ident}", response_model=ConfigurationOut, responses=declared(502, 503))
def update_configuration(
    ident: str, body: ConfigurationUpdate, platform: PlatformDep, caller: CallerDep
) -> ConfigurationOut:
    """Merge ``values`` in, take ``unset`` out, and apply the result at once to every
    database instance using the group (all must be ACTIVE)."""
    return service.update_group(platform.store, platform.settings, caller, ident, body)


@router.delete(GROUPS + "/{ident}", status_code=status.HTTP_204_NO_CONTENT)
def delete_configuration(ident: str, platform: PlatformDep, caller: CallerDep) -> Response:
    """Delete the group (409 ``configuration_in_use`` while a database instance uses it)."""
    service.delete_group(platform.store, caller, ident)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put(
    "/db/instances/{ident}/configuration",
    response_model=DbInstanceOut,
    responses=declared(502, 503),
)
def attach_configuration(
    ident: str, body: ConfigurationAttach, platform: PlatformDep, caller: CallerDep
) -> DbInstanceOut:
    """Attach a configuration group and apply it at once; what the engine takes only at
    start leaves the instance ``restart_required``."""
    return db_service.attach_configuration(
        platform.store, platform.settings, caller, ident, body.configuration
    )


@router.delete(
    "/db/instances/{ident}/configuration",
    response_model=DbInstanceOut,
    responses=declared(502, 503),
)
def detach_configuration(ident: str, platform: PlatformDep, caller: CallerDep) -> DbInstanceOut:
    """Detach the group: the engine goes back to the platform's settings."""
    return db_service.detach_configuration(platform.store, platform.settings, caller, ident)


@router.get(
    "/datastores/{datastore}/versions/{version}/parameters", response_model=list[ParameterOut]
)
def list_parameters(
    datastore: str, version: str, _platform: PlatformDep, _caller: CallerDep
) -> list[ParameterOut]:
    """What a configuration group of this datastore version may set (from the engine's own
    catalog; the platform's own parameters left out)."""
    return service.parameters(datastore, version)

"""Trove's configurations: the platform's configuration groups (values validated against
the datastore version's parameters, applied at once to the instances attached)."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Response, status

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.trove import views
from oneplatform.api.trove.lookup import build
from oneplatform.api.trove.routing import ACCEPTED, Json, trove_router
from oneplatform.api.trove.schemas import ConfigurationChange, ConfigurationCreate
from oneplatform.dbaas import configurations, service
from oneplatform.errors import InvalidInput
from oneplatform.schemas.configurations import ConfigurationCreate as PlatformCreate
from oneplatform.schemas.configurations import ConfigurationUpdate

router = trove_router("/configurations")


def _value(value: Any) -> str:
    """A Trove value (JSON-typed) as the platform's string: true → on, 128 → 128."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def _values(values: dict[str, Any]) -> dict[str, str]:
    return {k: _value(v) for k, v in values.items()}


@router.get("")
def list_configurations(request: Request, platform: PlatformDep, caller: CallerDep) -> Json:
    found = configurations.list_groups(platform.store, caller)
    chosen, more = views.page(request, found, lambda c: c.id, "configurations")
    return views.listing(
        "configurations", [views.configuration(c, detail=False) for c in chosen], more
    )


@router.get("/{config_id}")
def show_configuration(config_id: str, platform: PlatformDep, caller: CallerDep) -> Json:
    """A configuration by id or name, with its values."""
    found = configurations.get_group(platform.store, caller, config_id)
    return {"configuration": views.configuration(found, detail=True)}


@router.get("/{config_id}/instances")
def configuration_instances(
    config_id: str, request: Request, platform: PlatformDep, caller: CallerDep
) -> Json:
    found = configurations.get_group(platform.store, caller, config_id)
    return {
        "instances": [
            {"id": i.id, "name": i.name, "links": views.links(request, "instances", i.id)}
            for i in found.instances
        ]
    }


@router.post("")
def create_configuration(
    body: ConfigurationCreate, platform: PlatformDep, caller: CallerDep
) -> Json:
    """Create (200) for ``datastore`` type and version (by name or id)."""
    spec = body.configuration
    ref = spec.datastore
    datastore, version = views.named_datastore(
        service.list_datastores, ref.type if ref else None, ref.version if ref else None
    )
    fields: Json = {
        "name": spec.name,
        "description": spec.description or "",
        "values": _values(spec.values),
        "version": version,
    }
    if datastore:
        fields["datastore"] = datastore
    made = configurations.create_group(platform.store, caller, build(PlatformCreate, **fields))
    return {"configuration": views.configuration(made, detail=True)}


@router.patch("/{config_id}", status_code=status.HTTP_200_OK)
def patch_configuration(
    config_id: str, body: ConfigurationChange, platform: PlatformDep, caller: CallerDep
) -> Response:
    """Merge ``values`` in (applied at once to the instances attached): 200 with no body, as
    Trove answers its ``edit`` (trove-tempest-plugin expects 200; PUT, Trove's ``update``,
    is 202)."""
    change = body.configuration
    req = build(ConfigurationUpdate, values=_values(change.values), description=change.description)
    configurations.update_group(platform.store, platform.settings, caller, config_id, req)
    return Response(status_code=status.HTTP_200_OK)


@router.put("/{config_id}", status_code=ACCEPTED)
def put_configuration(
    config_id: str, body: ConfigurationChange, platform: PlatformDep, caller: CallerDep
) -> Response:
    """Replace the values: those left out are unset."""
    change = body.configuration
    if change.name is not None:
        current = configurations.get_group(platform.store, caller, config_id)
        if change.name != current.name:
            raise InvalidInput("a configuration cannot be renamed", code="rename_not_supported")
    current = configurations.get_group(platform.store, caller, config_id)
    unset = [k for k in current.values if k not in change.values]
    req = build(
        ConfigurationUpdate,
        values=_values(change.values),
        unset=unset,
        description=change.description,
    )
    configurations.update_group(platform.store, platform.settings, caller, config_id, req)
    return Response(status_code=ACCEPTED)


@router.delete("/{config_id}", status_code=ACCEPTED)
def delete_configuration(config_id: str, platform: PlatformDep, caller: CallerDep) -> Response:
    configurations.delete_group(platform.store, caller, config_id)
    return Response(status_code=ACCEPTED)

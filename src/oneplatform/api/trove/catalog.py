"""Trove's flavors and datastores (with their versions and configuration parameters), read
from the platform's catalog. Datastores and versions are found by name or by id."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.trove import views
from oneplatform.api.trove.routing import trove_router
from oneplatform.compute import catalog
from oneplatform.dbaas import configurations, service
from oneplatform.errors import NotFound

router = trove_router(codes=(400, 401, 403, 404))
Body = dict[str, Any]


@router.get("")
def version(request: Request, _caller: CallerDep) -> Body:
    """Trove's version document at the endpoint itself: what keystoneauth's discovery reads
    (openstacksdk with an endpoint override)."""
    return {
        "version": {
            "id": "v1.0",
            "status": "CURRENT",
            "updated": "2012-08-01T00:00:00Z",
            # the version's root: openstacksdk adds the project's id to it
            "links": [{"rel": "self", "href": f"{str(request.base_url).rstrip('/')}/v1.0/"}],
        }
    }


@router.get("/flavors")
def list_flavors(request: Request, platform: PlatformDep, caller: CallerDep) -> Body:
    """Every shared flavor and the caller's project's own (its clusters'); ``compute_type``
    says which kind of compute it gives."""
    flavors = catalog.list_flavors(platform.store, caller)
    return {"flavors": [views.flavor(request, f) for f in flavors]}


@router.get("/flavors/{flavor_id}")
def show_flavor(flavor_id: str, request: Request, platform: PlatformDep, caller: CallerDep) -> Body:
    """A flavor by id or name."""
    found = views.find_flavor(catalog.list_flavors(platform.store, caller), flavor_id)
    return {"flavor": views.flavor(request, found)}


@router.get("/datastores")
def list_datastores(request: Request, _caller: CallerDep) -> Body:
    return {"datastores": [views.datastore(request, ds) for ds in service.list_datastores()]}


@router.get("/datastores/{datastore}")
def show_datastore(datastore: str, request: Request, _caller: CallerDep) -> Body:
    ds = views.find_datastore(service.list_datastores(), datastore)
    return {"datastore": views.datastore(request, ds)}


@router.get("/datastores/{datastore}/versions")
def list_versions(datastore: str, request: Request, _caller: CallerDep) -> Body:
    ds = views.find_datastore(service.list_datastores(), datastore)
    return {"versions": [views.version(request, ds, v) for v in ds.versions]}


@router.get("/datastores/{datastore}/versions/{version}")
def show_version(datastore: str, version: str, request: Request, _caller: CallerDep) -> Body:
    ds = views.find_datastore(service.list_datastores(), datastore)
    return {"version": views.version(request, ds, views.find_version(ds, version))}


@router.get("/datastores/versions/{version_id}")
def show_version_by_id(version_id: str, request: Request, _caller: CallerDep) -> Body:
    ds, v = views.find_version_anywhere(service.list_datastores(), version_id)
    return {"version": views.version(request, ds, v)}


@router.get("/datastores/{datastore}/versions/{version}/flavors")
def version_flavors(
    datastore: str, version: str, request: Request, platform: PlatformDep, caller: CallerDep
) -> Body:
    """Every flavor runs every datastore version (on its compute type)."""
    ds = views.find_datastore(service.list_datastores(), datastore)
    views.find_version(ds, version)
    return list_flavors(request, platform, caller)


def _parameters(ds_name: str, version: str) -> list[Body]:
    return [
        views.parameter(p, ds_name, version) for p in configurations.parameters(ds_name, version)
    ]


@router.get("/datastores/{datastore}/versions/{version}/parameters")
def list_parameters(datastore: str, version: str, _caller: CallerDep) -> Body:
    ds = views.find_datastore(service.list_datastores(), datastore)
    v = views.find_version(ds, version)
    return {"configuration-parameters": _parameters(ds.name, v.version)}


@router.get("/datastores/{datastore}/versions/{version}/parameters/{name}")
def show_parameter(datastore: str, version: str, name: str, _caller: CallerDep) -> Body:
    ds = views.find_datastore(service.list_datastores(), datastore)
    v = views.find_version(ds, version)
    return _one_parameter(ds.name, v.version, name)


@router.get("/datastores/versions/{version_id}/parameters")
def list_parameters_by_id(version_id: str, _caller: CallerDep) -> Body:
    ds, v = views.find_version_anywhere(service.list_datastores(), version_id)
    return {"configuration-parameters": _parameters(ds.name, v.version)}


@router.get("/datastores/versions/{version_id}/parameters/{name}")
def show_parameter_by_id(version_id: str, name: str, _caller: CallerDep) -> Body:
    ds, v = views.find_version_anywhere(service.list_datastores(), version_id)
    return _one_parameter(ds.name, v.version, name)


def _one_parameter(ds_name: str, version: str, name: str) -> Body:
    for p in _parameters(ds_name, version):
        if p["name"] == name:
            return p
    raise NotFound(f"{ds_name} {version} has no parameter {name!r}", code="parameter_not_found")

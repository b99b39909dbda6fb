"""Trove's limits (``GET /limits``) and quotas (``GET``/``PUT /mgmt/quotas/{project}``, what
``openstack database quota show|update`` and troveclient's ``quota`` call), mapped onto the
platform's quotas per project (:mod:`oneplatform.quotas`).

Trove's resources and the platform's: ``instances`` is ``databases`` (database instances; a
replica is a member of one, not an instance of its own, unlike Trove's count), ``volumes``
(GB) is ``storage_gb`` (a flavor's disk and the data volumes of every member), ``backups``
is ``backups``, ``ram`` (MB) is ``ram_mb``; the platform's ``vcpus`` is named as it is
(Trove has no such quota). Trove's ``-1`` (no limit) is the platform's null.
"""

from __future__ import annotations

from typing import Any

from fastapi import Body

from oneplatform import iam, quotas
from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.trove.lookup import build
from oneplatform.api.trove.routing import Json, trove_router
from oneplatform.errors import InvalidInput, NotFound
from oneplatform.iam import Caller
from oneplatform.schemas.quotas import QuotaOut, QuotaResource, QuotaSet
from oneplatform.store.db import Store

router = trove_router()
# Trove's resource name → the platform's
RESOURCES: dict[str, QuotaResource] = {
    "instances": "databases",
    "volumes": "storage_gb",
    "backups": "backups",
    "ram": "ram_mb",
    "vcpus": "vcpus",
}
UNLIMITED = -1


def _limit(value: int | None) -> int:
    return UNLIMITED if value is None else value


@router.get("/limits")
def limits(platform: PlatformDep, caller: CallerDep) -> Json:
    """Trove's absolute limits (``verb: ABSOLUTE``, ``max_<resource>``, -1: none) of the
    project; no rate limits follow (the platform has none)."""
    quota = quotas.get_quota(platform.store, caller).quota
    absolute: Json = {"verb": "ABSOLUTE"}
    for trove, ours in RESOURCES.items():
        absolute[f"max_{trove}"] = _limit(quota[ours].limit)
    return {"limits": [absolute]}


def _project_name(store: Store, caller: Caller, ident: str) -> str | None:
    """The project ``ident`` (an id or a name) names: the caller's own (None), or for an
    admin any; another project is not found for anyone else."""
    if ident in (caller.project_id, caller.project_name):
        return None
    if caller.is_admin:
        for project in iam.list_projects(store, caller):
            if ident in (project.id, project.name):
                return project.name
    raise NotFound(f"project {ident!r} not found", code="project_not_found")


def _usage(out: QuotaOut) -> Json:
    return {
        "quotas": [
            {
                "resource": trove,
                "in_use": out.quota[ours].used,
                "reserved": 0,
                "limit": _limit(out.quota[ours].limit),
            }
            for trove, ours in RESOURCES.items()
        ]
    }


@router.get("/mgmt/quotas/{project}")
def show_quota(project: str, platform: PlatformDep, caller: CallerDep) -> Json:
    """The project's quotas with what it uses (``reserved`` is always 0: the platform takes
    a resource in the transaction that checks its quota). A project reads its own; an admin
    any project's, by id or name."""
    name = _project_name(platform.store, caller, project)
    return _usage(quotas.get_quota(platform.store, caller, name))


def _changes(body: Any) -> dict[QuotaResource, int | None]:
    given = body.get("quotas") if isinstance(body, dict) else None
    if not isinstance(given, dict) or not given:
        raise InvalidInput("the body is {'quotas': {resource: limit}}", code="invalid_input")
    changes: dict[QuotaResource, int | None] = {}
    for resource, limit in given.items():
        if limit is None:  # Trove skips these
            continue
        if resource not in RESOURCES:
            known = ", ".join(RESOURCES)
            raise InvalidInput(
                f"unknown quota resource {resource!r} (one of {known})", code="invalid_input"
            )
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < UNLIMITED:
            raise InvalidInput(
                f"quota {resource!r}: a limit is an integer, -1 for none", code="invalid_input"
            )
        changes[RESOURCES[resource]] = None if limit == UNLIMITED else limit
    return changes


@router.put("/mgmt/quotas/{project}")
def update_quota(
    project: str, platform: PlatformDep, caller: CallerDep, body: Any = Body(...)
) -> Json:
    """Set limits (an admin): ``{"quotas": {"instances": 10, "volumes": -1}}``; answers the
    limits set, by Trove's names, as Trove does."""
    caller.require_admin()
    changes = _changes(body)
    name = _project_name(platform.store, caller, project) or caller.project_name
    out = quotas.set_quota(platform.store, caller, name, build(QuotaSet, **dict(changes)))
    by_ours = {ours: trove for trove, ours in RESOURCES.items()}
    return {"quotas": {by_ours[ours]: _limit(out.quota[ours].limit) for ours in changes}}

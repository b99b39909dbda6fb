"""Quotas per project: an admin sets them; every project sees its own with its usage."""

from __future__ import annotations

from fastapi import APIRouter

from oneplatform import quotas
from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.schemas.quotas import QuotaOut, QuotaSet

router = APIRouter(tags=["quotas"], responses=declared(401, 403, 404, 413, 422))


@router.get("/quota", response_model=QuotaOut)
def own_quota(platform: PlatformDep, caller: CallerDep) -> QuotaOut:
    """The caller's project's limits and what it uses."""
    return quotas.get_quota(platform.store, caller)


@router.get("/projects/{name}/quota", response_model=QuotaOut)
def project_quota(name: str, platform: PlatformDep, caller: CallerDep) -> QuotaOut:
    """A project's limits and usage (admin; or the caller's own project)."""
    return quotas.get_quota(platform.store, caller, name)


@router.patch("/projects/{name}/quota", response_model=QuotaOut)
def set_quota(name: str, body: QuotaSet, platform: PlatformDep, caller: CallerDep) -> QuotaOut:
    """Change a project's limits (admin only): a field left out keeps its limit, null
    lifts it. A limit under the current usage takes nothing away; the project can take no
    more until it is under."""
    return quotas.set_quota(platform.store, caller, name, body)

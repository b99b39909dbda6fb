"""What every router of the Trove facade shares: its prefix, declared answers, 202s."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from oneplatform.api.faults import declared
from oneplatform.errors import PlatformError

ACCEPTED = status.HTTP_202_ACCEPTED
Json = dict[str, Any]
WRITES = (400, 401, 403, 404, 409, 413)


def trove_router(path: str = "", codes: tuple[int, ...] = WRITES) -> APIRouter:
    """A router under ``/v1.0/{project_id}`` + ``path``."""
    return APIRouter(
        prefix=f"/v1.0/{{project_id}}{path}", tags=["trove"], responses=declared(*codes)
    )


def accepted() -> Response:
    """Trove's answer to an action, an update or a delete: 202 with no body."""
    return Response(status_code=ACCEPTED)


class NotSupported(PlatformError):
    """A Trove feature the platform has no faithful mapping for: ``501 notImplemented``, the
    status Trove itself answers for an operation a datastore, cluster or log does not support
    (trove/common/wsgi.py maps DatastoreOperationNotSupported, ClusterDatastoreNotSupported,
    LogsNotAvailable to HTTPNotImplemented), with a stable ``error_code``."""

    status = 501

"""Trove's fault format: ``{"itemNotFound": {"code": 404, "message": …}}``.

Every error on a facade route is answered so (the platform's own error codes ride along as
``error_code``): troveclient and openstacksdk read these bodies, and FastAPI's
``{"detail": …}`` breaks them.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, RootModel

from oneplatform.errors import PlatformError, QuotaExceeded

PREFIX = "/v1.0/"
# Trove's names for each status (trove/common/wsgi.py's Fault)
NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    422: "unprocessableEntity",
    501: "notImplemented",
    503: "serviceUnavailable",
}


class FaultBody(BaseModel):
    code: int
    message: str
    error_code: str | None = None


class Fault(RootModel[dict[str, FaultBody]]):
    """``{NAME: {code, message, error_code}}``, NAME Trove's (``badRequest``, ``itemNotFound``,
    ``overLimit`` …)."""


def is_trove(path: str) -> bool:
    return path.startswith(PREFIX)


def body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    name = NAMES.get(status, "instanceFault")
    fault: dict[str, Any] = {"code": status, "message": message}
    if code:
        fault["error_code"] = code
    return {name: fault}


def encoded(status: int, message: str, code: str | None = None) -> bytes:
    return json.dumps(body(status, message, code)).encode()


def respond(status: int, message: str, code: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Keystone uri=""'} if status == 401 else None
    return JSONResponse(status_code=status, content=body(status, message, code), headers=headers)


def status_of(err: PlatformError) -> int:
    """Trove's status for a platform error: a quota is ``413 overLimit``, an invalid request
    ``400 badRequest``; the others keep theirs."""
    if isinstance(err, QuotaExceeded):
        return 413
    if err.status == 422:
        return 400
    return err.status


def from_error(err: PlatformError) -> JSONResponse:
    return respond(status_of(err), err.message, err.code)


def declared(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a facade router: each error status with the fault schema."""
    return {s: {"model": Fault, "description": f"Trove's fault ({NAMES[s]})"} for s in statuses}

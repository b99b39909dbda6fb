"""FastAPI dependencies: the platform's services and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from oneplatform.api.gate import CALLER_KEY, token_of
from oneplatform.config import Settings
from oneplatform.errors import Forbidden
from oneplatform.iam import Caller, authenticate
from oneplatform.store.db import Store


@dataclass
class Platform:
    """What the routers need, built once at start-up."""

    store: Store
    settings: Settings


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


_bearer = HTTPBearer(auto_error=False)


READS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_any_caller(
    request: Request,
    platform: Annotated[Platform, Depends(get_platform)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The authenticated caller (the gate authenticated it before the body was read), of
    any role: for the few requests that change nothing of the project's (a reader may
    still get a dashboard ticket)."""
    caller = request.scope.get("state", {}).get(CALLER_KEY)
    if not isinstance(caller, Caller):
        token = credentials.credentials if credentials else token_of(dict(request.headers))
        caller = authenticate(platform.store, token)
    return caller


def get_caller(request: Request, caller: Annotated[Caller, Depends(get_any_caller)]) -> Caller:
    """The authenticated caller; a reader token may only read."""
    if caller.read_only and request.method not in READS:
        raise Forbidden("this token may only read", code="read_only")
    return caller


PlatformDep = Annotated[Platform, Depends(get_platform)]
CallerDep = Annotated[Caller, Depends(get_caller)]
AnyCallerDep = Annotated[Caller, Depends(get_any_caller)]

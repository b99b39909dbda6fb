"""A project's API tokens: list, create (shown once), revoke."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from oneplatform import iam
from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.schemas.projects import TokenCreate, TokenCreated, TokenOut

router = APIRouter(
    prefix="/tokens", tags=["tokens"], responses=declared(401, 403, 404, 409, 413, 422)
)


@router.get("", response_model=list[TokenOut])
def list_tokens(platform: PlatformDep, caller: CallerDep) -> list[TokenOut]:
    """The caller's project's tokens (never their secrets)."""
    return iam.list_tokens(platform.store, caller)


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, platform: PlatformDep, caller: CallerDep) -> TokenCreated:
    """A new token of the caller's project, with at most the caller's role; shown once."""
    return iam.create_token(platform.store, caller, body)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(name: str, platform: PlatformDep, caller: CallerDep) -> Response:
    """Revoke a token: it gets 401 from now on."""
    iam.revoke_token(platform.store, caller, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

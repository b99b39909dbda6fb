"""Platform users (admin): they sign in through the Keystone facade (/identity)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from oneplatform import identity
from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.schemas.users import UserCreate, UserCreated, UserOut

router = APIRouter(tags=["users"], responses=declared(401, 403, 404, 409, 413, 422))


@router.get("/users", response_model=list[UserOut])
def list_users(
    platform: PlatformDep, caller: CallerDep, project: str | None = None
) -> list[UserOut]:
    """Every project's users, or one project's (admin only); never their passwords."""
    return identity.list_users(platform.store, caller, project)


@router.post(
    "/projects/{project}/users", response_model=UserCreated, status_code=status.HTTP_201_CREATED
)
def create_user(
    project: str, body: UserCreate, platform: PlatformDep, caller: CallerDep
) -> UserCreated:
    """A user of the project (admin only), who signs in at /identity with its password.
    Left out, the password is generated and shown once; it is kept only as a hash."""
    return identity.create_user(platform.store, caller, project, body)


@router.delete("/projects/{project}/users/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(project: str, name: str, platform: PlatformDep, caller: CallerDep) -> Response:
    """Delete a user (admin only); the tokens it signed in for are revoked."""
    identity.delete_user(platform.store, caller, project, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

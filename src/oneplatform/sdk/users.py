"""The SDK's platform users (admin): they sign in through the Keystone facade."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from oneplatform.schemas.users import UserCreate, UserCreated, UserOut

if TYPE_CHECKING:
    from oneplatform.sdk.client import Client


class Users:
    def __init__(self, client: Client) -> None:
        self.c = client

    def list(self, project: str | None = None) -> builtins.list[UserOut]:
        """Every project's users, or one project's."""
        if project is None:
            return self.c.get_list("/v1/users", UserOut)
        return self.c.get_list("/v1/users", UserOut, project=project)

    def create(
        self, name: str, project: str, role: str = "member", password: str | None = None
    ) -> UserCreated:
        """A user of ``project``; without ``password`` one is generated and returned once."""
        fields: dict[str, Any] = {"name": name, "role": role, "password": password}
        body = UserCreate.model_construct(**fields)
        path = f"/v1/projects/{quote(project, safe='')}/users"
        return self.c.send("POST", path, UserCreated, body)

    def delete(self, name: str, project: str) -> None:
        """Delete a user; the tokens it signed in for are revoked."""
        path = f"/v1/projects/{quote(project, safe='')}/users/{quote(name, safe='')}"
        self.c.request("DELETE", path)

"""A typed client for the OnePlatform API.

from oneplatform.sdk import Client
client = Client.from_home()            # finds $ONEP_HOME/cli.json, written by `onep up`
accepted = client.instances.create("web1", flavor="container.small", image="postgresql-15")
client.operations.wait(accepted.operation.id)
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter

from oneplatform.schemas.compute import (
    ComputeTypeOut,
    FlavorCreate,
    FlavorOut,
    HostCreate,
    HostOut,
    PoolCreate,
    PoolOut,
)
from oneplatform.schemas.images import ImageBuildAccepted, ImageOut
from oneplatform.schemas.instances import (
    ConsoleOut,
    ExecOut,
    ExecRequest,
    InstanceAccepted,
    InstanceAction,
    InstanceCreate,
    InstanceOut,
    InstanceResize,
    SnapshotRequest,
)
from oneplatform.schemas.nodes import NodeAccepted, NodeEnroll, NodeOut, NodePower
from oneplatform.schemas.operations import OperationOut
from oneplatform.schemas.projects import (
    ProjectCreate,
    ProjectCreated,
    ProjectOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
    WhoAmI,
)
from oneplatform.schemas.quotas import QuotaOut
from oneplatform.schemas.ui import UiTicketOut
from oneplatform.schemas.warm import WarmPoolOut, WarmSet
from oneplatform.sdk.clusters import Clusters
from oneplatform.sdk.configurations import Configurations
from oneplatform.sdk.db import DbInstances
from oneplatform.sdk.users import Users

M = TypeVar("M", bound=BaseModel)
FINAL = frozenset({"SUCCEEDED", "FAILED"})


class ApiError(Exception):
    """An error answer from the API, with its stable code."""

    def __init__(self, status: int, code: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(f"{message} [{code}]")
        self.status = status
        self.code = code
        self.message = message
        self.details = details


class OperationFailed(ApiError):
    def __init__(self, op: OperationOut) -> None:
        super().__init__(
            500, op.error_code or "operation_failed", op.error_message or "failed", {"op": op.id}
        )
        self.operation = op


def default_home() -> Path:
    from oneplatform.config import Settings

    return Settings().home


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.url = url
        self.instances = Instances(self)
        self.operations = Operations(self)
        self.flavors = Flavors(self)
        self.images = Images(self)
        self.compute_types = ComputeTypes(self)
        self.projects = Projects(self)
        self.pools = Pools(self)
        self.hosts = Hosts(self)
        self.db = DbInstances(self)
        self.configurations = Configurations(self)
        self.nodes = Nodes(self)
        self.clusters = Clusters(self)
        self.warm = Warm(self)
        self.tokens = Tokens(self)
        self.users = Users(self)
        self.dashboard = Dashboard(self)

    @classmethod
    def from_home(cls, home: Path | None = None) -> Client:
        """ONEP_URL/ONEP_TOKEN if set, else the cli.json that `onep up` wrote in home."""
        url, token = os.environ.get("ONEP_URL"), os.environ.get("ONEP_TOKEN")
        config = (home or default_home()) / "cli.json"
        if (not url or not token) and config.exists():
            saved = json.loads(config.read_text())
            url, token = url or saved["url"], token or saved["token"]
        return cls(url or "http://127.0.0.1:8470", token)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(
                503, "unreachable", f"cannot reach the platform at {self.url}: {exc}", {}
            ) from exc
        if response.status_code == 204:
            return None
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                err = {"code": "http_error", "message": response.text[:500]}
            raise ApiError(
                response.status_code,
                err.get("code", "error"),
                err.get("message", ""),
                err.get("details") or {},
            )
        return response.json()

    def get(self, path: str, model: type[M], **params: Any) -> M:
        return model.model_validate(self.request("GET", path, params=params or None))

    def get_list(self, path: str, model: type[M], **params: Any) -> builtins.list[M]:
        return TypeAdapter(builtins.list[model]).validate_python(  # type: ignore[valid-type]
            self.request("GET", path, params=params or None)
        )

    def send(self, method: str, path: str, model: type[M], body: BaseModel | None = None) -> M:
        """Send ``body`` as JSON. Bodies are built unvalidated (``model_construct``): the
        server is the one judge of input, and answers bad input with a stable error code."""
        payload = body.model_dump(mode="json", warnings=False) if body is not None else None
        return model.model_validate(self.request(method, path, json=payload))


class _Resource:
    def __init__(self, client: Client) -> None:
        self.c = client


class Instances(_Resource):
    def list(self) -> builtins.list[InstanceOut]:
        return self.c.get_list("/v1/instances", InstanceOut)

    def get(self, ident: str) -> InstanceOut:
        return self.c.get(f"/v1/instances/{ident}", InstanceOut)

    def create(self, name: str, flavor: str, image: str) -> InstanceAccepted:
        body = InstanceCreate.model_construct(name=name, flavor=flavor, image=image)
        return self.c.send("POST", "/v1/instances", InstanceAccepted, body)

    def delete(self, ident: str) -> InstanceAccepted:
        return self.c.send("DELETE", f"/v1/instances/{ident}", InstanceAccepted)

    def action(self, ident: str, action: str, force: bool = False) -> InstanceAccepted:
        body = InstanceAction.model_construct(action=action, force=force)  # type: ignore[arg-type]
        return self.c.send("POST", f"/v1/instances/{ident}/action", InstanceAccepted, body)

    def resize(self, ident: str, flavor: str) -> InstanceAccepted:
        body = InstanceResize.model_construct(flavor=flavor)
        return self.c.send("POST", f"/v1/instances/{ident}/resize", InstanceAccepted, body)

    def console(self, ident: str, tail: int = 200) -> str:
        return self.c.get(f"/v1/instances/{ident}/console", ConsoleOut, tail=tail).output

    def exec(self, ident: str, command: builtins.list[str], timeout: float = 60.0) -> ExecOut:
        body = ExecRequest.model_construct(command=command, timeout=timeout)
        return self.c.send("POST", f"/v1/instances/{ident}/exec", ExecOut, body)

    def snapshot(self, ident: str, name: str) -> InstanceAccepted:
        body = SnapshotRequest.model_construct(name=name)
        return self.c.send("POST", f"/v1/instances/{ident}/snapshot", InstanceAccepted, body)


class Operations(_Resource):
    def get(self, operation_id: str) -> OperationOut:
        return self.c.get(f"/v1/operations/{operation_id}", OperationOut)

    def list(self, resource_id: str | None = None) -> builtins.list[OperationOut]:
        params = {"resource_id": resource_id} if resource_id else {}
        return self.c.get_list("/v1/operations", OperationOut, **params)

    def wait(
        self,
        operation_id: str,
        timeout: float = 900.0,
        poll: float = 0.25,
        on_progress: Callable[[OperationOut], None] | None = None,
        raise_on_failure: bool = True,
    ) -> OperationOut:
        """Poll until the operation ends; raises OperationFailed if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            op = self.get(operation_id)
            if on_progress is not None:
                on_progress(op)
            if op.status in FINAL:
                if op.status == "FAILED" and raise_on_failure:
                    raise OperationFailed(op)
                return op
            if time.monotonic() > deadline:
                raise ApiError(408, "wait_timeout", f"operation {operation_id} not done", {})
            time.sleep(poll)


class Flavors(_Resource):
    def list(self) -> builtins.list[FlavorOut]:
        return self.c.get_list("/v1/flavors", FlavorOut)

    def create(self, body: FlavorCreate) -> FlavorOut:
        return self.c.send("POST", "/v1/flavors", FlavorOut, body)


class Images(_Resource):
    def list(self) -> builtins.list[ImageOut]:
        return self.c.get_list("/v1/images", ImageOut)

    def get(self, name: str) -> ImageOut:
        return self.c.get(f"/v1/images/{name}", ImageOut)

    def build(self, name: str) -> ImageBuildAccepted:
        return self.c.send("POST", f"/v1/images/{name}/build", ImageBuildAccepted)


class ComputeTypes(_Resource):
    def list(self) -> builtins.list[ComputeTypeOut]:
        return self.c.get_list("/v1/compute-types", ComputeTypeOut)


class Projects(_Resource):
    def list(self) -> builtins.list[ProjectOut]:
        return self.c.get_list("/v1/projects", ProjectOut)

    def create(self, name: str) -> ProjectCreated:
        body = ProjectCreate.model_construct(name=name)
        return self.c.send("POST", "/v1/projects", ProjectCreated, body)

    def whoami(self) -> WhoAmI:
        return self.c.get("/v1/whoami", WhoAmI)

    def quota(self, project: str | None = None) -> QuotaOut:
        """A project's limits and usage (None: the caller's own project)."""
        path = f"/v1/projects/{project}/quota" if project else "/v1/quota"
        return self.c.get(path, QuotaOut)

    def set_quota(self, project: str, **limits: int | None) -> QuotaOut:
        """Change the limits named (admin): an int, or None to lift the limit; a limit not
        named keeps its value."""
        return QuotaOut.model_validate(
            self.c.request("PATCH", f"/v1/projects/{project}/quota", json=dict(limits))
        )


class Tokens(_Resource):
    def list(self) -> builtins.list[TokenOut]:
        return self.c.get_list("/v1/tokens", TokenOut)

    def create(
        self, name: str, role: str = "member", expires_in_s: int | None = None
    ) -> TokenCreated:
        fields: dict[str, Any] = {"name": name, "role": role}
        if expires_in_s is not None:
            fields["expires_in_s"] = expires_in_s
        body = TokenCreate.model_construct(**fields)
        return self.c.send("POST", "/v1/tokens", TokenCreated, body)

    def revoke(self, name: str) -> None:
        self.c.request("DELETE", f"/v1/tokens/{name}")


class Nodes(_Resource):
    def list(self) -> builtins.list[NodeOut]:
        return self.c.get_list("/v1/nodes", NodeOut)

    def get(self, ident: str) -> NodeOut:
        return self.c.get(f"/v1/nodes/{ident}", NodeOut)

    def enroll(self, body: NodeEnroll) -> NodeAccepted:
        return self.c.send("POST", "/v1/nodes", NodeAccepted, body)

    def act(self, ident: str, action: str) -> NodeAccepted:
        """manage, inspect or provide."""
        return self.c.send("POST", f"/v1/nodes/{ident}/{action}", NodeAccepted)

    def power(self, ident: str, action: str) -> NodeOut:
        body = NodePower.model_construct(action=action)  # type: ignore[arg-type]
        return self.c.send("POST", f"/v1/nodes/{ident}/power", NodeOut, body)


class Pools(_Resource):
    def list(self) -> builtins.list[PoolOut]:
        return self.c.get_list("/v1/pools", PoolOut)

    def create(self, body: PoolCreate) -> PoolOut:
        return self.c.send("POST", "/v1/pools", PoolOut, body)


class Warm(_Resource):
    def list(self) -> builtins.list[WarmPoolOut]:
        return self.c.get_list("/v1/warm", WarmPoolOut)

    def set(self, body: WarmSet) -> WarmPoolOut:
        return self.c.send("PUT", "/v1/warm", WarmPoolOut, body)


class Hosts(_Resource):
    def list(self) -> builtins.list[HostOut]:
        return self.c.get_list("/v1/hosts", HostOut)

    def create(self, body: HostCreate) -> HostOut:
        return self.c.send("POST", "/v1/hosts", HostOut, body)


class Dashboard(_Resource):
    def ticket(self) -> UiTicketOut:
        """A one-time login ticket for the web dashboard (two minutes, one use)."""
        return self.c.send("POST", "/v1/ui/tickets", UiTicketOut)

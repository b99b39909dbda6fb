"""What every request passes before the application reads it: a body-size limit, and — for
the API proper — authentication, so no unauthenticated body is ever read or parsed.

A pure ASGI middleware: a ``Content-Length`` over the limit is refused with 413 at once,
and a body that grows past it while it arrives is refused with 413 before the application
sees any of it. A request to ``/v1/`` or to the Trove facade (``/v1.0/``)
without a valid token (``Authorization: Bearer T`` or OpenStack's ``X-Auth-Token: T``) is
answered 401 before its body is touched; the caller found is handed to the routes
(``api.deps.get_caller``). A facade path names a project (``/v1.0/{project_id}/…``): another
project's id, or one that does not exist, is answered 403 (in Trove's fault format, as every
refusal there is). The deploy routes (``/v1/deploy/``) carry
their own per-deploy token in the URL and check it themselves, before reading a body.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from oneplatform.api import faults
from oneplatform.errors import PlatformError
from oneplatform.iam import authenticate
from oneplatform.store.db import Store

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 1024 * 1024
OPEN_PREFIXES = ("/v1/deploy/",)
CALLER_KEY = "onep.caller"


class Gate:
    def __init__(self, app: App, store: Store, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.store = store
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length", "")
        path = str(scope.get("path", ""))
        trove = faults.is_trove(path)
        if length.isdigit() and int(length) > self.limit:
            await _error(send, 413, "body_too_large", f"the body is over {self.limit} bytes", trove)
            return
        if (path.startswith("/v1/") and not path.startswith(OPEN_PREFIXES)) or trove:
            try:
                caller = authenticate(self.store, token_of(headers))
            except PlatformError as err:
                await _error(send, err.status, err.code, err.message, trove)
                return
            if trove and path.split("/")[2:3] != [caller.project_id]:
                message = "the token is not valid for this project"
                await _error(send, 403, "foreign_project", message, trove)
                return
            scope.setdefault("state", {})[CALLER_KEY] = caller
        await self._limited(scope, receive, send, trove)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, trove: bool) -> None:
        """Read the whole body first (at most ``limit`` bytes), then hand it to the app."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                too_large = f"the body is over {self.limit} bytes"
                await _error(send, 413, "body_too_large", too_large, trove)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: the client's disconnect
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_of(headers: dict[str, str]) -> str | None:
    """The request's token: ``Authorization: Bearer T``, else OpenStack's ``X-Auth-Token: T``
    (what troveclient, openstacksdk and the ``openstack`` CLI send). Header names lower-case."""
    return (
        _bearer(headers.get("authorization", "")) or headers.get("x-auth-token", "").strip() or None
    )


async def _error(send: Send, status: int, code: str, message: str, trove: bool = False) -> None:
    """A refusal: the platform's error body, or Trove's fault on a facade path."""
    if trove:
        body = faults.encoded(status, message, code)
    else:
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

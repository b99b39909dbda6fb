"""Trove's guest logs (``GET``/``POST /instances/{id}/log``: ``openstack database log
list|show|set``), mapped onto the engine's own log, which each member's guest agent keeps
(its latest lines, :mod:`oneplatform.guest.enginelog`; ``onep db logs``).

One log, ``engine``: the engine server's output, always on, so a ``SYS`` log as Trove calls
those (``enable``/``disable`` are refused, as Trove refuses them for its own ``SYS`` logs).
``pending`` is the bytes the agent holds now, ``published`` 0: Trove publishes a log into
Swift, which the platform has not (``publish``/``discard`` answer 501, as Trove does without
Swift); read the lines with ``onep db logs`` or ``GET /v1/db/{id}/logs``. A member that
cannot be asked reads ``Unavailable``."""

from __future__ import annotations

from typing import Any

from fastapi import Body

from oneplatform.api.deps import CallerDep, PlatformDep
from oneplatform.api.trove.lookup import Found, find
from oneplatform.api.trove.routing import Json, NotSupported, trove_router
from oneplatform.dbaas import events, service
from oneplatform.errors import InvalidInput, NotFound, PlatformError
from oneplatform.iam import Caller

router = trove_router(codes=(400, 401, 403, 404, 501))
ENGINE_LOG = "engine"
SWIFT_ACTIONS = ("publish", "discard")
SWITCHES = ("enable", "disable")


def _view(platform: PlatformDep, caller: Caller, found: Found) -> Json:
    member = found.member.name if found.member is not None else None
    try:
        got = events.db_logs(
            platform.store, platform.settings, caller, found.db.id, events.MAX_LOG_LINES,
            member=member,
        )  # fmt: skip
        status, pending = "Ready", sum(len(line.encode()) + 1 for line in got.lines)
    except PlatformError:  # not reachable now (building, stopped): nothing to read
        status, pending = "Unavailable", 0
    return {
        "name": ENGINE_LOG,
        "type": "SYS",
        "status": status,
        "published": 0,
        "pending": pending,
        "container": None,
        "prefix": None,
        "metafile": None,
    }


@router.get("/instances/{instance_id}/log")
def list_logs(instance_id: str, platform: PlatformDep, caller: CallerDep) -> Json:
    """``{"logs": [the engine log]}`` of the instance (a replica's own)."""
    found = find(instance_id, service.list_dbs(platform.store, caller))
    return {"logs": [_view(platform, caller, found)]}


@router.post("/instances/{instance_id}/log")
def log_action(
    instance_id: str, platform: PlatformDep, caller: CallerDep, body: Any = Body(...)
) -> Json:
    """``{"name": "engine"}`` shows the log; ``enable``/``disable`` are refused (400: it is
    always on), ``publish``/``discard`` answer 501 (no Swift)."""
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str):
        raise InvalidInput("the body names a log: {'name': 'engine'}", code="invalid_input")
    found = find(instance_id, service.list_dbs(platform.store, caller))
    if name != ENGINE_LOG:
        raise NotFound(f"no log {name!r}: the one log is {ENGINE_LOG!r}", code="log_not_found")
    asked = [a for a in (*SWITCHES, *SWIFT_ACTIONS) if body.get(a)]
    if any(a in SWITCHES for a in asked):
        raise InvalidInput(
            f"log {ENGINE_LOG!r} is the engine's own output, always on: it cannot be enabled "
            "or disabled",
            code="log_always_on",
        )
    if asked:
        raise NotSupported(
            f"a log cannot be {asked[0]}ed here: Trove publishes logs into Swift, which the "
            "platform has not; read the engine log with `onep db logs` "
            "(GET /v1/db/{id}/logs)",
            code="log_publish_not_supported",
        )
    return {"log": _view(platform, caller, found)}

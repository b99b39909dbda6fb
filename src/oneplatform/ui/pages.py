"""The dashboard's pages, built on the same service functions as the API's routes and with
the same ``Caller`` (the session's): a member sees only its project, a reader cannot write.

Every page is server-rendered. Its live part is also served alone (``?live=1``), and the
page's script fetches it again every two seconds, so statuses, health and operation steps
move without a reload. Every form that changes something carries the session's CSRF token
and is answered with a redirect (or an error page with the error's status and stable code).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError

from oneplatform.baremetal import nodes as node_service
from oneplatform.compute import catalog
from oneplatform.config import Settings
from oneplatform.dbaas import backups, replicas, service
from oneplatform.errors import Forbidden, InvalidInput, NotFound, PlatformError, Unauthorized
from oneplatform.ops import service as op_service
from oneplatform.schemas.backups import BackupCreate
from oneplatform.schemas.compute import HostOut, PoolOut
from oneplatform.schemas.databases import DbInstanceCreate, MoveRequest, ReplicaCreate
from oneplatform.store.db import Store
from oneplatform.ui import sessions
from oneplatform.ui.sessions import Issued, LoggedIn

HERE = Path(__file__).parent
COOKIE = "onep_session"
HOME = "/ui/databases"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
M = TypeVar("M", bound=BaseModel)

templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)


class _Platform(Protocol):
    store: Store
    settings: Settings


def _platform(request: Request) -> _Platform:
    platform: _Platform = request.app.state.platform
    return platform


class LoginNeeded(Exception):
    """A page asked for without a live session."""


class Shown(Exception):
    """A platform error to answer with the error page (its status and code)."""

    def __init__(self, err: PlatformError, who: LoggedIn | None = None) -> None:
        super().__init__(err.message)
        self.err, self.who = err, who


@contextmanager
def shown(who: LoggedIn) -> Iterator[None]:
    try:
        yield
    except PlatformError as err:
        raise Shown(err, who) from err


def logged_in(request: Request) -> LoggedIn:
    try:
        return sessions.resume(_platform(request).store, request.cookies.get(COOKIE))
    except Unauthorized:
        raise LoginNeeded from None


Who = Annotated[LoggedIn, Depends(logged_in)]


def _check_csrf(who: LoggedIn, csrf: str) -> None:
    if not hmac.compare_digest(csrf.encode(), who.csrf_token.encode()):
        raise Shown(Forbidden("the form is stale or not ours: reload it", code="csrf_invalid"), who)


def csrf_checked(who: Who, csrf: Annotated[str, Form(max_length=100)] = "") -> LoggedIn:
    _check_csrf(who, csrf)
    return who


def writer(who: Annotated[LoggedIn, Depends(csrf_checked)]) -> LoggedIn:
    if who.caller.read_only:
        raise Shown(Forbidden("this token may only read", code="read_only"), who)
    return who


Checked = Annotated[LoggedIn, Depends(csrf_checked)]
Writer = Annotated[LoggedIn, Depends(writer)]
FormText = Annotated[str, Form(max_length=200)]


def _valid(model: type[M], data: dict[str, Any]) -> M:
    """A request schema from form fields; what is wrong as ``invalid_input``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        raise InvalidInput(f"invalid request: {summary}", problems=problems) from None


# -- rendering ---------------------------------------------------------------------------------
def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _page(
    request: Request, who: LoggedIn, page: str, live: bool, status: int = 200, **ctx: Any
) -> Response:
    """A whole page, or (``live``) only its live part."""
    context = {"who": who, "caller": who.caller, "page": page, **ctx}
    template = f"{page}_live.html" if live else f"{page}.html"
    return _secured(templates.TemplateResponse(request, template, context, status_code=status))


def _login_form(request: Request, err: PlatformError | None = None) -> Response:
    status = err.status if err else 200
    response = templates.TemplateResponse(request, "login.html", {"err": err}, status_code=status)
    return _secured(response)


def _redirect(path: str) -> RedirectResponse:
    return RedirectResponse(path, status_code=303)


def _enter(request: Request, issued: Issued) -> Response:
    """Into the dashboard with a new session's cookie."""
    response = _redirect(HOME)
    response.set_cookie(
        COOKIE,
        issued.secret,
        expires=issued.expires_at,
        path="/ui",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def _login_needed(request: Request, _exc: Exception) -> Response:
    if request.query_params.get("live"):  # the page's script goes to the login page itself
        return _secured(Response("log in again", status_code=401, media_type="text/plain"))
    return _redirect("/ui/login")


async def _shown(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Shown)
    if exc.who is None:
        return _login_form(request, exc.err)
    return _page(request, exc.who, "error", live=False, status=exc.err.status, err=exc.err)


def mount(app: FastAPI) -> None:
    """The dashboard's pages at /ui and its files at /ui/static."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")
    app.add_exception_handler(LoginNeeded, _login_needed)
    app.add_exception_handler(Shown, _shown)


# -- logging in and out -------------------------------------------------------------------------
@router.get("")
@router.get("/")
def home() -> Response:
    return _redirect(HOME)


@router.get("/login")
def login_page(request: Request, ticket: str | None = None) -> Response:
    """The login form; with ``ticket`` (the URL `onep ui` prints), straight in."""
    if ticket is None:
        return _login_form(request)
    try:
        issued = sessions.exchange_ticket(_platform(request).store, ticket)
    except Unauthorized as err:
        return _login_form(request, err)
    return _enter(request, issued)


@router.post("/login")
def login(request: Request, token: FormText = "") -> Response:
    """Log in with an API token."""
    try:
        issued = sessions.login_with_token(_platform(request).store, token)
    except Unauthorized as err:
        return _login_form(request, err)
    return _enter(request, issued)


@router.post("/logout")
def logout(request: Request, _who: Checked) -> Response:
    sessions.logout(_platform(request).store, request.cookies.get(COOKIE, ""))
    response = _redirect("/ui/login")
    response.delete_cookie(COOKIE, path="/ui")
    return response


# -- databases ------------------------------------------------------------------------------------
@router.get("/databases")
def databases(request: Request, who: Who, live: bool = False) -> Response:
    p = _platform(request)
    dbs = service.list_dbs(p.store, who.caller)
    if live:
        return _page(request, who, "databases", live=True, databases=dbs)
    return _page(
        request,
        who,
        "databases",
        live=False,
        databases=dbs,
        flavors=catalog.list_flavors(p.store, who.caller),
        compute_types={ct.name.value: ct for ct in catalog.list_compute_types()},
        datastores=service.list_datastores(),
    )


@router.post("/databases")
def create_database(
    request: Request,
    who: Writer,
    name: FormText = "",
    engine: FormText = "",
    flavor: FormText = "",
    size_gb: FormText = "1",
    database: FormText = "",
    user: FormText = "",
    password: FormText = "",
) -> Response:
    """Create a database instance from the form (``engine``: DATASTORE:VERSION)."""
    p = _platform(request)
    datastore, _, version = engine.partition(":")
    body: dict[str, Any] = {
        "name": name,
        "datastore": datastore or None,
        "version": version or None,
        "flavor": flavor,
        "size_gb": size_gb,
        "databases": [database] if database else [],
    }
    if user:
        body["users"] = [
            {"name": user, "password": password, "databases": [database] if database else []}
        ]
    with shown(who):
        service.create_db(p.store, p.settings, who.caller, _valid(DbInstanceCreate, body))
    return _redirect(f"{HOME}/{quote(name)}")


@router.get("/databases/{name}")
def database(request: Request, who: Who, name: str, live: bool = False) -> Response:
    """One database instance: its members, backups and operations, and what can be done."""
    p = _platform(request)
    try:
        db = service.get_db(p.store, who.caller, name)
    except NotFound as err:
        if live:  # deleted while the page was open: the page says so
            return _page(request, who, "database", live=True, db=None, name=name)
        raise Shown(err, who) from err
    ctx: dict[str, Any] = {
        "db": db,
        "name": name,
        "backups": backups.list_backups(p.store, who.caller, db.id),
        "operations": op_service.list_operations(p.store, who.caller, db.id, limit=20),
    }
    if not live:
        ctx["flavors"] = catalog.list_flavors(p.store, who.caller)
        ctx["backup_types"] = _backup_types(db.datastore, db.version)
    return _page(request, who, "database", live=live, **ctx)


def _backup_types(datastore: str, version: str) -> list[str]:
    """The backup types the engine's version takes (none: it has no backups)."""
    for ds in service.list_datastores():
        for v in ds.versions:
            if ds.name == datastore and v.version == version:
                return v.backup_types
    return []


@router.post("/databases/{name}/restart")
def restart_database(request: Request, who: Writer, name: str) -> Response:
    p = _platform(request)
    with shown(who):
        service.restart_db(p.store, p.settings, who.caller, name)
    return _redirect(f"{HOME}/{quote(name)}")


@router.post("/databases/{name}/delete")
def delete_database(request: Request, who: Writer, name: str) -> Response:
    with shown(who):
        service.delete_db(_platform(request).store, who.caller, name)
    return _redirect(HOME)


@router.post("/databases/{name}/backups")
def create_backup(request: Request, who: Writer, name: str, type: FormText = "full") -> Response:
    p = _platform(request)
    with shown(who):
        req = _valid(BackupCreate, {"type": type})
        backups.create_backup(p.store, p.settings, who.caller, name, req)
    return _redirect(f"{HOME}/{quote(name)}")


@router.post("/databases/{name}/replicas")
def create_replica(request: Request, who: Writer, name: str, flavor: FormText = "") -> Response:
    p = _platform(request)
    with shown(who):
        req = _valid(ReplicaCreate, {"flavor": flavor or None})
        replicas.create_replica(p.store, p.settings, who.caller, name, req)
    return _redirect(f"{HOME}/{quote(name)}")


@router.post("/databases/{name}/replicas/{member}/delete")
def delete_replica(request: Request, who: Writer, name: str, member: str) -> Response:
    with shown(who):
        replicas.delete_replica(_platform(request).store, who.caller, member)
    return _redirect(f"{HOME}/{quote(name)}")


@router.post("/databases/{name}/move")
def move_database(request: Request, who: Writer, name: str, flavor: FormText = "") -> Response:
    p = _platform(request)
    with shown(who):
        replicas.move(
            p.store, p.settings, who.caller, name, _valid(MoveRequest, {"flavor": flavor})
        )
    return _redirect(f"{HOME}/{quote(name)}")


# -- the rest -------------------------------------------------------------------------------------
@router.get("/operations")
def operations(request: Request, who: Who, live: bool = False) -> Response:
    ops = op_service.list_operations(_platform(request).store, who.caller, limit=50)
    return _page(request, who, "operations", live=live, operations=ops)


@router.get("/infrastructure")
def infrastructure(request: Request, who: Who, live: bool = False) -> Response:
    """Pools with the capacity their hosts have in use, hosts and bare-metal nodes (the
    hosts and nodes are the operator's: an admin's session sees them)."""
    p = _platform(request)
    hosts = catalog.list_hosts(p.store, who.caller) if who.caller.is_admin else []
    nodes = node_service.list_nodes(p.store, who.caller) if who.caller.is_admin else []
    pools = catalog.list_pools(p.store, who.caller) if who.caller.is_admin else []
    return _page(
        request,
        who,
        "infrastructure",
        live=live,
        pools=[(pool, _pool_capacity(pool, hosts)) for pool in pools],
        hosts=hosts,
        nodes=nodes,
    )


def _pool_capacity(pool: PoolOut, hosts: list[HostOut]) -> dict[str, tuple[int, int]]:
    """(used, total) of vCPUs, RAM and disk over the pool's hosts."""
    mine = [h for h in hosts if h.pool == pool.name]
    return {
        "vcpus": (sum(h.used_vcpus for h in mine), sum(h.vcpus for h in mine)),
        "ram_mb": (sum(h.used_ram_mb for h in mine), sum(h.ram_mb for h in mine)),
        "disk_gb": (sum(h.used_disk_gb for h in mine), sum(h.disk_gb for h in mine)),
    }


@router.get("/catalog")
def catalog_page(request: Request, who: Who) -> Response:
    """Compute types and datastores with what they can and cannot do, and why; flavors."""
    return _page(
        request,
        who,
        "catalog",
        live=False,
        compute_types=catalog.list_compute_types(),
        datastores=service.list_datastores(),
        flavors=catalog.list_flavors(_platform(request).store, who.caller),
    )

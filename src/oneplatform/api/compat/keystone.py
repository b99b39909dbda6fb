"""Keystone v3, the minimum OpenStack's clients need, at ``/identity``: version discovery
and ``POST /v3/auth/tokens`` (password and token methods). A token issued here is an
ordinary platform token of one project (``identity`` issues it): it works on the whole API
and on the Trove routes. Every error is in Keystone's format, never FastAPI's ``detail``.
The API gate lets these routes through without a token; they check credentials themselves.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import uuid
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from oneplatform import identity
from oneplatform.api.compat import keystone_shapes as ks
from oneplatform.api.deps import Platform, PlatformDep
from oneplatform.errors import ClientError, PlatformError, Unauthorized
from oneplatform.iam import ADMIN, MEMBER, READER
from oneplatform.schemas.base import ErrorResponse

PREFIX = "/identity"
VERSION_ID = "v3.14"
VERSION_UPDATED = "2020-04-07T00:00:00Z"
MEDIA_TYPE = "application/vnd.openstack.identity-v3+json"
REGION = "RegionOne"
SUBJECT_TOKEN = "X-Subject-Token"
# Keystone's implied roles: a platform role shows as itself and the roles it includes.
ROLES = {ADMIN: (ADMIN, MEMBER, READER), MEMBER: (MEMBER, READER), READER: (READER,)}


def _stable_id(kind: str, name: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"oneplatform:{kind}:{name}").hex


def keystone_error(status: int, message: str, base_url: str = "") -> JSONResponse:
    body = ks.ErrorOut(
        error=ks.ErrorBody(code=status, title=HTTPStatus(status).phrase, message=message)
    )
    headers = {"WWW-Authenticate": f'Keystone uri="{base_url}{PREFIX}"'} if status == 401 else None
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _problems(exc: RequestValidationError) -> str:
    """Where and what, never the input (it may hold a password)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][1:]) or 'body'}: {e['msg']}" for e in exc.errors()
    )


class KeystoneRoute(APIRoute):
    """A route whose every error (validation, ours, Starlette's) is Keystone's format."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            base = _base_url(request)
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return keystone_error(400, f"Invalid request: {_problems(exc)}", base)
            except PlatformError as exc:
                status = exc.status if isinstance(exc, ClientError) else 500
                return keystone_error(status, exc.message, base)
            except HTTPException as exc:
                return keystone_error(exc.status_code, str(exc.detail), base)

        return route


def _declared(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Keystone's error schema for each status; 413 is the API gate's (the platform's)."""
    answers: dict[int | str, dict[str, Any]] = {
        s: {"model": ks.ErrorOut, "description": HTTPStatus(s).phrase} for s in statuses
    }
    answers[413] = {"model": ErrorResponse, "description": "The body is over 1 MiB."}
    return answers


router = APIRouter(prefix=PREFIX, tags=["identity (Keystone v3)"], route_class=KeystoneRoute)


def _base_url(request: Request) -> str:
    platform: Platform = request.app.state.platform
    configured = platform.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


def _version(base: str) -> ks.Version:
    return ks.Version(
        id=VERSION_ID,
        status="stable",
        updated=VERSION_UPDATED,
        links=[ks.Link(rel="self", href=f"{base}{PREFIX}/v3/")],
        media_types=[ks.MediaType(base="application/json", type=MEDIA_TYPE)],
    )


@router.get(
    "",
    status_code=300,
    response_model=ks.VersionsOut,
    response_model_by_alias=True,
    responses=_declared(),
)
def versions(request: Request) -> ks.VersionsOut:
    """The identity API's versions (Keystone v3 only): 300 Multiple Choices, as Keystone."""
    return ks.VersionsOut(versions=ks.Versions(values=[_version(_base_url(request))]))


@router.get("/v3", response_model=ks.VersionOut, response_model_by_alias=True)
def version(request: Request) -> ks.VersionOut:
    """Keystone v3's version document."""
    return ks.VersionOut(version=_version(_base_url(request)))


router.add_api_route("/", versions, methods=["GET"], status_code=300, include_in_schema=False)
router.add_api_route("/v3/", version, methods=["GET"], include_in_schema=False)


@router.post(
    "/v3/auth/tokens",
    status_code=201,
    response_model=ks.TokenOut,
    responses={
        201: {"headers": {SUBJECT_TOKEN: {"description": "The token.", "schema": {}}}},
        **_declared(400, 401),
    },
)
def issue_token(
    body: ks.AuthRequest, request: Request, response: Response, platform: PlatformDep
) -> ks.TokenOut:
    """A token for one project: the password method (a platform user of that project) or
    the token method (a valid token: a new one for its project, expiring no later). The
    token is in the ``X-Subject-Token`` header; the body holds its project, user, roles,
    expiry and the catalog (the ``database`` service at ``…/v1.0/{project_id}``)."""
    auth = body.auth
    lifetime = dt.timedelta(seconds=platform.settings.identity_token_seconds)
    methods = auth.identity.methods
    if "password" in methods:
        issued = _password(platform, auth.identity, _scope(auth.scope), lifetime)
        method = "password"
    elif "token" in methods:
        if auth.identity.token is None:
            raise _bad("the token method needs identity.token.id")
        scope = identity.Scope() if auth.scope is None else _scope(auth.scope)  # its own
        issued = identity.token_login(platform.store, lifetime, auth.identity.token.id, scope)
        method = "token"
    else:
        raise Unauthorized(f"unsupported authentication methods: {', '.join(methods)}")
    response.headers[SUBJECT_TOKEN] = issued.token
    return ks.TokenOut(token=_token(issued, method, _base_url(request)))


@router.api_route(
    "/{rest:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
def not_found(rest: str) -> None:
    """What the facade does not serve (Keystone's other APIs): 404 in Keystone's format."""
    raise HTTPException(404, "The resource could not be found.")


def _bad(message: str) -> PlatformError:
    return ClientError(message, code="bad_request")


def _scope(scope: ks.Scope | str | None) -> identity.Scope:
    """Only a project scope: unscoped, domain and system scopes are refused (401)."""
    if not isinstance(scope, ks.Scope) or scope.project is None:
        raise Unauthorized("a token must be scoped to a project", code="scope_required")
    project = scope.project
    if project.id is not None:
        return identity.Scope(project_id=project.id)
    if project.name is None:
        raise _bad("scope.project needs an id or a name")
    if project.domain is None:
        raise _bad("scope.project needs a domain with its name")
    if not project.domain.is_default:
        raise Unauthorized(identity.AUTH_FAILED, code="unknown_domain")
    return identity.Scope(project_name=project.name)


def _password(
    platform: Platform, ident: ks.Identity, scope: identity.Scope, lifetime: dt.timedelta
) -> identity.Issued:
    if ident.password is None:
        raise _bad("the password method needs identity.password.user")
    user = ident.password.user
    if user.id is None and user.name is None:
        raise _bad("identity.password.user needs an id or a name")
    if user.id is None and user.domain is None:
        raise _bad("identity.password.user needs a domain with its name")
    if user.domain is not None and not user.domain.is_default:
        raise Unauthorized(identity.AUTH_FAILED, code="unknown_domain")
    return identity.password_login(
        platform.store,
        lifetime,
        scope,
        user.password,
        user_id=user.id,
        user_name=None if user.id is not None else user.name,
    )


def _token(issued: identity.Issued, method: str, base: str) -> ks.Token:
    domain = ks.Domain(id=ks.DEFAULT_DOMAIN_ID, name=ks.DEFAULT_DOMAIN_NAME)
    audit = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
    return ks.Token(
        methods=[method],
        user=ks.UserRef(id=issued.user_id, name=issued.user_name, domain=domain),
        project=ks.ProjectOut(id=issued.project_id, name=issued.project_name, domain=domain),
        roles=[ks.Role(id=_stable_id("role", r), name=r) for r in ROLES[issued.role]],
        catalog=_catalog(issued.project_id, base),
        audit_ids=[audit],
        expires_at=ks.timestamp(issued.expires_at),
        issued_at=ks.timestamp(issued.issued_at),
    )


def _catalog(project_id: str, base: str) -> list[ks.Service]:
    """The database service (Trove v1.0, the project's own URL) and identity itself."""
    services = (
        ("database", "trove", f"{base}/v1.0/{project_id}"),
        ("identity", "keystone", f"{base}{PREFIX}"),
    )
    return [
        ks.Service(
            id=_stable_id("service", kind),
            type=kind,
            name=name,
            endpoints=[
                ks.Endpoint(
                    id=_stable_id(f"endpoint:{interface}", kind),
                    interface=interface,
                    region=REGION,
                    region_id=REGION,
                    url=url,
                )
                for interface in ("public", "internal")
            ],
        )
        for kind, name, url in services
    ]

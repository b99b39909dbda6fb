"""The FastAPI application: routers, and one handler that maps our errors to responses."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from oneplatform import __version__
from oneplatform.api import faults
from oneplatform.api.compat import keystone
from oneplatform.api.deps import CallerDep, Platform
from oneplatform.api.errors import declared
from oneplatform.api.gate import Gate
from oneplatform.api.metrics import CONTENT_TYPE, MeasureRequests, Metrics
from oneplatform.api.routes import (
    backups,
    clusters,
    compute_types,
    configurations,
    datastores,
    db_instances,
    deploy,
    flavors,
    hosts,
    images,
    instances,
    nodes,
    operations,
    pools,
    projects,
    quotas,
    tokens,
    ui_tickets,
    users,
    warm,
)
from oneplatform.api.trove import backups as trove_backups
from oneplatform.api.trove import catalog as trove_catalog
from oneplatform.api.trove import configurations as trove_configurations
from oneplatform.api.trove import instances as trove_instances
from oneplatform.api.trove import logs as trove_logs
from oneplatform.api.trove import objects as trove_objects
from oneplatform.api.trove import quotas as trove_quotas
from oneplatform.api.trove import root as trove_root
from oneplatform.api.trove import unsupported as trove_unsupported
from oneplatform.errors import PlatformError
from oneplatform.ui import mount as mount_dashboard


async def _platform_error(request: Request, exc: PlatformError) -> JSONResponse:
    """A platform error as its JSON body and status (and the bearer challenge on 401); on
    the Trove facade, as Trove's fault."""
    if faults.is_trove(request.url.path):
        return faults.from_error(exc)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(status_code=exc.status, content={"error": exc.to_dict()}, headers=headers)


def create_app(platform: Platform) -> FastAPI:
    app = FastAPI(
        title="OnePlatform",
        version=__version__,
        description="Databases as a service on containers, VMs and bare metal.",
    )
    app.state.platform = platform
    for module in (
        compute_types,
        pools,
        hosts,
        flavors,
        images,
        instances,
        operations,
        projects,
        quotas,
        tokens,
        users,
        datastores,
        db_instances,
        backups,
        configurations,
        nodes,
        clusters,
        warm,
        deploy,
        ui_tickets,
    ):
        app.include_router(module.router, prefix="/v1")
    app.include_router(db_instances.replica_router, prefix="/v1")
    app.include_router(keystone.router)  # Keystone v3 at /identity (no platform token)
    # the Trove v1.0 facade, under /v1.0/{project_id}
    for trove in (
        trove_catalog,
        trove_instances,
        trove_objects,
        trove_backups,
        trove_configurations,
        trove_quotas,
        trove_root,
        trove_logs,
        trove_unsupported,
    ):
        app.include_router(trove.router)
    mount_dashboard(app)  # the web dashboard at /ui

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    metrics = Metrics(platform.store)

    @app.get(
        "/metrics",
        tags=["metrics"],
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {}}, "description": "Prometheus's text format"},
            **declared(401, 403),
        },
    )
    def scrape(caller: CallerDep) -> Response:
        """The platform's metrics in Prometheus's text format (an admin token)."""
        caller.require_admin()
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.add_exception_handler(PlatformError, _platform_error)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": ".".join(str(p) for p in e["loc"][1:]), "message": e["msg"]}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        if faults.is_trove(request.url.path):
            return faults.respond(400, f"invalid request: {summary}", "invalid_input")
        return JSONResponse(
            status_code=422,
            content={
                "error": {
                    "code": "invalid_input",
                    "message": f"invalid request: {summary}",
                    "details": {"problems": problems},
                }
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        """FastAPI's own refusals (no such route, method not allowed); Trove's fault on the
        facade."""
        if faults.is_trove(request.url.path):
            return faults.respond(exc.status_code, str(exc.detail))
        return await http_exception_handler(request, exc)

    app.add_middleware(Gate, store=platform.store)
    app.add_middleware(MeasureRequests, metrics=metrics)  # outermost: refusals count too
    return app


def create_deploy_app(platform: Platform) -> FastAPI:
    """What the deploy listener serves on the provisioning network: the deploy routes alone
    (a node's ramdisk reaches nothing else of the platform)."""
    app = FastAPI(title="OnePlatform deploy", version=__version__, openapi_url=None)
    app.state.platform = platform
    app.include_router(deploy.router, prefix="/v1")

    app.add_exception_handler(PlatformError, _platform_error)  # type: ignore[arg-type]
    app.add_middleware(Gate, store=platform.store)
    return app

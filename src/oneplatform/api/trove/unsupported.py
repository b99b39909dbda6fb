"""Trove's routes the platform has no mapping for, answered as Trove answers a feature it
does not support (``501 notImplemented`` with a stable ``error_code``), never a bare 404:
clusters (the platform's groups are a primary with replicas, Trove's replication, not
Trove's sharded or Galera clusters) and modules (Trove's guest-side plugins: the platform's
guest agent takes none)."""

from __future__ import annotations

from fastapi import Request

from oneplatform.api.deps import CallerDep
from oneplatform.api.trove.routing import NotSupported, trove_router

router = trove_router(codes=(401, 403, 501))
CLUSTERS = (
    ("/clusters", ("GET", "POST")),
    ("/clusters/{cluster_id}", ("GET", "POST", "DELETE")),
    ("/clusters/{cluster_id}/instances/{instance_id}", ("GET",)),
)
MODULES = (
    ("/modules", ("GET", "POST")),
    ("/modules/{module_id}", ("GET", "PUT", "DELETE")),
    ("/modules/{module_id}/instances", ("GET",)),
    ("/instances/{instance_id}/modules", ("GET", "POST")),
    ("/instances/{instance_id}/modules/{module_id}", ("DELETE",)),
)


def clusters(request: Request, caller: CallerDep) -> None:
    """501 ``clusters_not_supported``."""
    raise NotSupported(
        "clusters are not supported: the platform's database instances replicate to replicas "
        "of their own (replica_of, replica_count), there are no Trove clusters",
        code="clusters_not_supported",
    )


def modules(request: Request, caller: CallerDep) -> None:
    """501 ``modules_not_supported``."""
    raise NotSupported(
        "modules are not supported: the platform's guest agent applies no Trove modules "
        "(configuration groups set the engine's parameters)",
        code="modules_not_supported",
    )


for routes, answer in ((CLUSTERS, clusters), (MODULES, modules)):
    for path, methods in routes:
        for method in methods:  # one route each: each its own operation id
            router.add_api_route(path, answer, methods=[method], status_code=501)

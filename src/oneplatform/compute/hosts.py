"""Reaching a host: the typed reference its driver gets, never a row of the store."""

from __future__ import annotations

from sqlalchemy.orm import Session

from oneplatform.compute.drivers import driver_for
from oneplatform.compute.drivers.base import ComputeDriver, HostRef
from oneplatform.compute.identities import cluster_identity
from oneplatform.compute.types import spec_for
from oneplatform.config import Settings
from oneplatform.schemas.compute import ComputeType
from oneplatform.store.models import Host, Pool


def host_ref(host: Host, pool: Pool) -> HostRef:
    """What the pool and host rows say: enough to probe a host that is not stored yet.

    The settings are the pool's with the host's own over them (an SSH ``identity_file`` and
    ``host_key`` are usually the host's; a cluster's pool names its ``cluster_id``, whose key
    :func:`reach_host` writes where it is needed)."""
    return HostRef(
        id=host.id,
        name=host.name,
        compute_type=ComputeType(pool.compute_type),
        uri=host.uri,
        bind_address=host.bind_address,
        settings={**(pool.settings or {}), **(host.settings or {})},
    )


def reach_host(session: Session, settings: Settings, host: Host) -> HostRef:
    """``host_ref`` plus what is kept elsewhere: a node's BMC, a cluster's key (written on
    this machine, which may not be the one that made the cluster)."""
    pool = session.get_one(Pool, host.pool_id)
    ref = host_ref(host, pool)
    extra = dict(spec_for(pool.compute_type).host_settings(session, settings, host) or {})
    cluster_id = ref.settings.get("cluster_id")
    if cluster_id and not ref.settings.get("identity_file"):
        identity = cluster_identity(session, settings, str(cluster_id))
        if identity:
            extra["identity_file"] = identity
    if not extra:
        return ref
    return HostRef(
        id=ref.id,
        name=ref.name,
        compute_type=ref.compute_type,
        uri=ref.uri,
        bind_address=ref.bind_address,
        settings={**ref.settings, **extra},
    )


def driver_of(session: Session, settings: Settings, host: Host) -> ComputeDriver:
    """The driver bound to ``host``."""
    return driver_for(reach_host(session, settings, host))

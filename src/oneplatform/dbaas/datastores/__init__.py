"""The datastore catalog: one engine contract, one module per engine."""

from __future__ import annotations

from oneplatform.dbaas.datastores.base import Datastore, DatastoreVersion
from oneplatform.dbaas.datastores.mariadb import MariaDB
from oneplatform.dbaas.datastores.postgresql import PostgreSQL
from oneplatform.dbaas.datastores.redis import Redis
from oneplatform.errors import NotFound

DATASTORES: dict[str, Datastore] = {ds.name: ds for ds in (PostgreSQL(), MariaDB(), Redis())}


def get_datastore(name: str) -> Datastore:
    try:
        return DATASTORES[name]
    except KeyError:
        raise NotFound(f"datastore {name!r} not found", code="datastore_not_found") from None


def get_version(datastore: Datastore, version: str | None) -> DatastoreVersion:
    wanted = version or datastore.default_version
    for v in datastore.versions:
        if v.version == wanted:
            return v
    raise NotFound(
        f"datastore {datastore.name!r} has no version {wanted!r} "
        f"(known: {', '.join(v.version for v in datastore.versions)})",
        code="datastore_version_not_found",
    )


__all__ = ["DATASTORES", "Datastore", "DatastoreVersion", "get_datastore", "get_version"]

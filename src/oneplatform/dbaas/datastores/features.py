"""What a datastore can do, as compute capabilities say what a compute type can.

Every datastore (and version) declares what it does *not* support and why; the matrix at
``GET /v1/datastores`` is derived from that, and the service layer asks :func:`require`
before it acts, so nothing there branches on a datastore's name. A request for what the
engine cannot do is refused up front: 409 ``capability_not_supported`` with the reason.
"""

from __future__ import annotations

import enum

from oneplatform.errors import CapabilityNotSupported


class Feature(enum.StrEnum):
    DATABASES = "databases"
    USERS = "users"
    GRANTS = "grants"
    BACKUPS = "backups"
    PITR = "pitr"
    REPLICAS = "replicas"
    SWITCHOVER = "switchover"
    MOVE = "move"
    FAILOVER = "failover"
    DETACH = "detach"


FEATURE_HELP: dict[Feature, str] = {
    Feature.DATABASES: "create, list and delete databases inside the instance",
    Feature.USERS: "create, list and delete users and set their passwords",
    Feature.GRANTS: "give a user access to one database and take it back",
    Feature.BACKUPS: "back up to the object store and restore onto any compute type",
    Feature.PITR: "restore to a moment in the recovery window (--to-time)",
    Feature.REPLICAS: "streaming replicas of the primary, on any flavor, and their detach",
    Feature.SWITCHOVER: "make a replica the primary behind the same endpoint",
    Feature.MOVE: "move or resize to any flavor with the database live (db move)",
    Feature.FAILOVER: "automatic failover: fence the silent primary, promote a replica",
    Feature.DETACH: "make a replica a database instance of its own (db replica detach)",
}

# Backup types, as ``onep backup create --type`` takes them.
BACKUP_TYPES: dict[str, str] = {
    "full": "the whole database",
    "diff": "what changed since the last full backup",
    "incr": "what changed since the last backup",
}


def refusal(
    unsupported: dict[Feature, str], feature: Feature, datastore: str, version: str
) -> CapabilityNotSupported | None:
    """The error a request for ``feature`` gets, or None when it is supported."""
    reason = unsupported.get(feature)
    if reason is None:
        return None
    return CapabilityNotSupported(
        f"{datastore} {version} does not support {feature.value}: {reason}",
        capability=feature.value,
        datastore=datastore,
        version=version,
    )

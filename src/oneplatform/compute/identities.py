"""Private SSH keys the platform made for hosts it built itself (a cluster's nodes): kept
encrypted in the store, written (0600) under ``$ONEP_HOME/clusters/<id>/`` on whichever
machine needs one, when it needs it — any worker on any machine may drive any host."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.orm import Session

from oneplatform.config import Settings
from oneplatform.secrets import box_for
from oneplatform.store.models import Cluster


def identity_path(settings: Settings, cluster_id: str) -> Path:
    """Where this machine keeps the cluster's private key for ``podman --identity``."""
    return settings.home / "clusters" / cluster_id / "id_ed25519"


def write_identity(settings: Settings, cluster_id: str, private_key: str) -> Path:
    """Write the key file (0600) unless it holds that key already; returns its path."""
    path = identity_path(settings, cluster_id)
    if path.is_file() and path.read_text() == private_key:
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(private_key)
    tmp.replace(path)
    return path


def remove_identity(settings: Settings, cluster_id: str) -> None:
    path = identity_path(settings, cluster_id)
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()


def cluster_identity(session: Session, settings: Settings, cluster_id: str) -> str | None:
    """The path of the cluster's private key on this machine, written if it is not there
    (None for a cluster that is gone)."""
    cluster = session.get(Cluster, cluster_id)
    if cluster is None or not cluster.key_enc:
        return None
    return str(write_identity(settings, cluster_id, box_for(settings).decrypt(cluster.key_enc)))

"""Service ports: each instance port a host port on the host's bind address."""

from __future__ import annotations

import socket
from collections.abc import Mapping

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from oneplatform.errors import NoValidHost
from oneplatform.store.models import Host, Instance, PortAllocation


def allocate_from_range(
    session: Session, host: Host, instance: Instance, services: Mapping[str, int]
) -> None:
    """Give every service port of the instance a free port of the host's range, unique per
    host, skipping ports something outside the platform holds (local hosts)."""
    used = set(
        session.scalars(select(PortAllocation.host_port).where(PortAllocation.host_id == host.id))
    )
    candidates = (p for p in range(host.port_range_start, host.port_range_end + 1) if p not in used)
    for name, guest_port in sorted(services.items()):
        port = next((p for p in candidates if _bindable(host, p)), None)
        if port is None:
            raise NoValidHost(f"host {host.name!r} has no free port left", code="no_free_port")
        record(session, host, instance, name, int(guest_port), port)


def record(
    session: Session, host: Host, instance: Instance, name: str, guest_port: int, host_port: int
) -> None:
    session.add(
        PortAllocation(
            host_id=host.id,
            host_port=host_port,
            instance_id=instance.id,
            name=name,
            guest_port=guest_port,
        )
    )
    session.flush()


def release(session: Session, instance_id: str) -> None:
    session.execute(delete(PortAllocation).where(PortAllocation.instance_id == instance_id))


def _bindable(host: Host, port: int) -> bool:
    """On a local host, skip ports that something outside the platform already holds."""
    if not host.uri.startswith("local"):
        return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host.bind_address, port))
        except OSError:
            return False
    return True

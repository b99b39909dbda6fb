"""Service ports: each instance port gets a port on the machine that publishes it.

A port is a property of the machine and the address it is bound on, not of the host row:
two hosts that publish on the same machine and address (the local Podman and the local
libvirt both publish on this machine's 127.0.0.1) never get the same port, whatever their
compute type, and on this machine any port something else holds is skipped.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from oneplatform.compute.drivers import driver_for
from oneplatform.compute.hosts import host_ref
from oneplatform.compute.types import registered
from oneplatform.errors import BackendError, InvalidInput, NoValidHost
from oneplatform.store.models import Host, Instance, Pool, PortAllocation

log = logging.getLogger(__name__)

LOCAL = "local"
# A port allocation whose name starts so is a forward with no service of the instance's own
# behind it (a cluster node's block, for the containers it will run): nobody waits for it.
FORWARD_ONLY_PREFIX = "fwd-"
WILDCARDS = frozenset({"0.0.0.0", "::"})
_LOOPBACK_NAMES = frozenset({"", "localhost", "127.0.0.1", "::1"})


def machine_of(uri: str) -> str:
    """The machine a host URI reaches: ``local`` for this one (``local://``, ``unix://``,
    ``qemu:///system``), else the URI's host name (``ssh://user@db7/…`` → ``db7``)."""
    host = (urlsplit(uri).hostname or "").lower()
    return LOCAL if host in _LOOPBACK_NAMES else host


def machine_of_address(address: str) -> str:
    """The machine an address is on, for ports reached at an address (a node's port map)."""
    address = address.lower()
    return LOCAL if address in _LOOPBACK_NAMES or address.startswith("127.") else address


def taken(session: Session, machine: str, address: str) -> set[int]:
    """Ports allocated on ``machine`` that a bind on ``address`` would collide with."""
    query = select(PortAllocation.host_port).where(PortAllocation.machine == machine)
    if address not in WILDCARDS:
        query = query.where(PortAllocation.address.in_([address, *WILDCARDS]))
    return set(session.scalars(query))


def allocate_from_range(
    session: Session, host: Host, instance: Instance, services: Mapping[str, int]
) -> None:
    """Give every service port of the instance a free port of the host's range on its
    machine and bind address. ``held`` ports (a node's port map on the same machine) are
    skipped, and so is any port the host's backend publishes for anything (the platform's
    or not) and, on this machine, any port something outside the platform holds."""
    used = taken(session, host.machine, host.bind_address)
    used |= held_ports(session, host.machine, host.bind_address)
    used |= published(session, host)
    candidates = (p for p in range(host.port_range_start, host.port_range_end + 1) if p not in used)
    for name, guest_port in sorted(services.items()):
        port = next((p for p in candidates if _bindable(host, p)), None)
        if port is None:
            raise NoValidHost(
                f"host {host.name!r} has no free port left in "
                f"{host.port_range_start}-{host.port_range_end} on {host.bind_address}",
                code="no_free_port",
            )
        record(session, host, instance, name, int(guest_port), host.bind_address, port)


def allocate_block(session: Session, host: Host, instance: Instance, count: int) -> range:
    """``count`` consecutive free ports of ``host``'s range, each forwarded to the same port
    of the guest (named ``fwd-<port>``): what a cluster node's containers publish on."""
    used = taken(session, host.machine, host.bind_address)
    used |= held_ports(session, host.machine, host.bind_address)
    used |= published(session, host)
    start = host.port_range_start
    while start + count - 1 <= host.port_range_end:
        block = range(start, start + count)
        busy = [p for p in block if p in used or not _bindable(host, p)]
        if not busy:
            for port in block:
                record(
                    session,
                    host,
                    instance,
                    f"{FORWARD_ONLY_PREFIX}{port}",
                    port,
                    host.bind_address,
                    port,
                )
            return block
        start = busy[-1] + 1
    raise NoValidHost(
        f"host {host.name!r} has no {count} consecutive free ports left in "
        f"{host.port_range_start}-{host.port_range_end} on {host.bind_address}",
        code="no_free_port",
    )


def published(session: Session, host: Host) -> set[int]:
    """The ports ``host``'s backend publishes (none known when it cannot be asked now: the
    create then fails on the backend, not here)."""
    pool = session.get_one(Pool, host.pool_id)
    try:
        return driver_for(host_ref(host, pool)).published_ports()
    except (BackendError, InvalidInput) as err:
        log.warning("host %s: its published ports are unknown: %s", host.name, err)
        return set()


def record(
    session: Session,
    host: Host,
    instance: Instance,
    name: str,
    guest_port: int,
    address: str,
    host_port: int,
    machine: str | None = None,
) -> None:
    session.add(
        PortAllocation(
            host_id=host.id,
            machine=machine or host.machine,
            address=address,
            host_port=host_port,
            instance_id=instance.id,
            name=name,
            guest_port=guest_port,
        )
    )
    session.flush()


def release(session: Session, instance_id: str) -> None:
    session.execute(delete(PortAllocation).where(PortAllocation.instance_id == instance_id))


def held_ports(session: Session, machine: str, address: str) -> set[int]:
    """Ports that hosts hold on ``machine`` outside any allocation (a node's port map: the
    lab's nodes forward their ports from this machine), colliding with a bind on
    ``address``."""
    held: list[tuple[str, str, int]] = []
    for spec in registered():
        held += spec.held_ports(session)
    return in_use(held, machine, address)


def in_use(ports: Iterable[tuple[str, str, int]], machine: str, address: str) -> set[int]:
    """The ports of ``ports`` (machine, address, port) a bind on ``address`` collides with."""
    return {
        port
        for m, a, port in ports
        if m == machine and (a == address or a in WILDCARDS or address in WILDCARDS)
    }


def _bindable(host: Host, port: int) -> bool:
    """On this machine, skip ports that something outside the platform already holds."""
    return host.machine != LOCAL or bindable(host.bind_address, port)


def bindable(address: str, port: int) -> bool:
    """Whether ``port`` on ``address`` of this machine is free to bind now."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True

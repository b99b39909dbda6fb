"""Stale port forwarding left by Podman 4.3's CNI networking on this host.

When a container dies, a process of its own tears its network down: its address is released
and its port forwarding (the portmap plugin's ``CNI-DN-…`` chain, jumped to from
``CNI-HOSTPORT-DNAT`` with the container's id in a comment) is removed. Under load that
tear-down was seen to leave both behind, and the platform reuses a database's host ports
when it starts or recreates its container: the stale jump, earlier in the chain, then sends
the published port to an address nobody holds, and the port refuses every connection.

A host port is published by one container at a time (the platform allocates them), so a
forwarding of one of a container's host ports that names another container is stale:
:func:`drop_stale_forwards` removes it, as the portmap plugin's own tear-down would.
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
from collections.abc import Iterable

log = logging.getLogger(__name__)

DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
_JUMP = re.compile(
    r'id: \\"(?P<id>[0-9a-f]{12,64})\\".*--dports (?P<ports>[0-9,:]+) -j (?P<chain>CNI-DN-\S+)'
)


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["iptables", "-w", "10", "-t", "nat", *args], capture_output=True, text=True, timeout=60
    )


def _ports(spec: str) -> set[int]:
    ports: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition(":")
        ports.update(range(int(first), int(last or first) + 1))
    return ports


def stale_jumps(rules: str, container_id: str, host_ports: Iterable[int]) -> list[str]:
    """The rules of ``iptables -S CNI-HOSTPORT-DNAT`` that forward one of ``host_ports``
    for a container other than ``container_id``."""
    wanted = set(host_ports)
    stale = []
    for line in rules.splitlines():
        found = _JUMP.search(line)
        if found is None or not line.startswith(f"-A {DNAT_CHAIN} "):
            continue
        if found["id"] != container_id and wanted & _ports(found["ports"]):
            stale.append(line)
    return stale


def drop_stale_forwards(container_id: str, host_ports: Iterable[int]) -> int:
    """Remove the stale forwardings of ``host_ports`` (this host's iptables); returns how
    many. Best effort: without iptables, or when a rule went meanwhile, nothing happens."""
    ports = list(host_ports)
    if not ports:
        return 0
    try:
        listed = _iptables("-S", DNAT_CHAIN)
    except (OSError, subprocess.SubprocessError):
        return 0
    if listed.returncode != 0:
        return 0
    dropped = 0
    for rule in stale_jumps(listed.stdout, container_id, ports):
        argv = shlex.split(rule)
        chain = argv[argv.index("-j") + 1]
        if _iptables("-D", *argv[1:]).returncode == 0:
            dropped += 1
            _iptables("-F", chain)
            _iptables("-X", chain)
            log.warning("removed a stale port forwarding of %s: %s", ports, rule)
    return dropped

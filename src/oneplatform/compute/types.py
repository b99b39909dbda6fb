"""Compute types: one registered description each, the only place the compute layer learns
how a compute type differs from another.

The compute package registers containers and virtual machines (:mod:`compute.builtin`);
:mod:`oneplatform.baremetal` registers bare metal, filling the same description with what
nodes know. Nothing in ``compute/`` branches on a compute type's name: it asks its
:class:`ComputeTypeSpec`.

What a description says:

- ``create`` / ``delete``: the operation kinds that build and remove an instance;
- ``whole_host``: a host carries one instance at a time (a bare-metal node is one unit);
- ``claim``: what placing an instance takes beyond the capacity the scheduler sums (a node
  is taken off the scheduler until it is cleaned);
- ``allocate_ports``: how the instance's service ports are reached from outside;
- ``allocate_block``: a block of ports each reached at the same port of the instance (what a
  cluster node's containers publish on: a VM's forwards made for it, a node's network's 1:1
  forwards); None when its instances cannot be cluster nodes;
- ``host_settings``: what the driver needs about a host beyond its pool's settings (a
  node's BMC and port map, decrypted for the call at hand);
- ``prepare_image``: the image format its driver loads, made on demand (qcow2, whole disk);
  ``preload_images``: whether an image build makes that format and loads it into every
  host at once (else the first instance on a host waits for it);
- ``enrolled_hosts``: its hosts come from another resource (nodes), never from
  ``POST /v1/hosts``;
- ``held_ports``: (machine, address, port) its hosts hold outside any allocation (a node's
  port map), which the port allocator of every compute type skips;
- ``host_schemes``: the URI schemes a host of this type may be registered with;
- ``port_settle_s``: how long a connection to a published port must stay open before the
  port counts as served (a VM's or node's forwarded port accepts even with nothing behind
  it, then drops; a container's published port refuses until the service listens: 0).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from oneplatform.config import Settings
from oneplatform.errors import InvalidInput
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.images.builder import Progress
from oneplatform.ops.kinds import OperationKind
from oneplatform.schemas.compute import ComputeType
from oneplatform.store.models import Host, Instance

ClaimFn = Callable[[Session, Host, Instance], None]
PortsFn = Callable[[Session, Host, Instance, Mapping[str, int]], None]
BlockFn = Callable[[Session, Host, Instance, int], range]
HostSettingsFn = Callable[[Session, Settings, Host], Mapping[str, Any]]
HeldPortsFn = Callable[[Session], list[tuple[str, str, int]]]
PrepareImageFn = Callable[[Settings, ImageArtifact, Progress], ImageArtifact]


def _no_claim(session: Session, host: Host, instance: Instance) -> None:
    """Capacity is the scheduler's sum over the host's instances: nothing more to take."""


def _no_host_settings(session: Session, settings: Settings, host: Host) -> Mapping[str, Any]:
    return {}


def _nothing_held(session: Session) -> list[tuple[str, str, int]]:
    return []


def _as_built(settings: Settings, artifact: ImageArtifact, progress: Progress) -> ImageArtifact:
    """The root filesystem the image build made is what the driver loads."""
    return artifact


@dataclass(frozen=True)
class ComputeTypeSpec:
    compute_type: ComputeType
    create: OperationKind
    delete: OperationKind
    allocate_ports: PortsFn
    allocate_block: BlockFn | None = None
    whole_host: bool = False
    claim: ClaimFn = _no_claim
    host_settings: HostSettingsFn = _no_host_settings
    prepare_image: PrepareImageFn = _as_built
    preload_images: bool = True
    enrolled_hosts: bool = False
    held_ports: HeldPortsFn = _nothing_held
    port_settle_s: float = 0.15
    host_schemes: frozenset[str] = frozenset()
    description: str = ""


_SPECS: dict[ComputeType, ComputeTypeSpec] = {}


def register_compute_type(spec: ComputeTypeSpec) -> ComputeTypeSpec:
    _SPECS[spec.compute_type] = spec
    return spec


def spec_for(compute_type: ComputeType | str) -> ComputeTypeSpec:
    try:
        return _SPECS[ComputeType(compute_type)]
    except (KeyError, ValueError):
        raise InvalidInput(
            f"compute type {compute_type!s} is not available in this platform",
            code="compute_type_not_available",
        ) from None


def registered() -> list[ComputeTypeSpec]:
    return [_SPECS[ct] for ct in ComputeType if ct in _SPECS]

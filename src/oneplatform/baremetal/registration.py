"""Bare metal registers itself with the compute layer: its driver, the BMC protocols it
speaks, and its compute-type description, filled with what nodes know."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from oneplatform.baremetal.bmc import BmcFactory, register_bmc
from oneplatform.baremetal.deploy import BAREMETAL_CREATE, BAREMETAL_DELETE
from oneplatform.baremetal.driver import BaremetalDriver
from oneplatform.baremetal.reach import node_host_settings, node_of_host
from oneplatform.compute import ports
from oneplatform.compute.drivers import register_driver
from oneplatform.compute.drivers.base import ComputeDriver
from oneplatform.compute.types import ComputeTypeSpec, register_compute_type
from oneplatform.config import Settings
from oneplatform.errors import InvalidInput, NoValidHost
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.images.builder import Progress
from oneplatform.images.recipes import load_recipe
from oneplatform.images.wholedisk import build_disk_image
from oneplatform.schemas.compute import ComputeType
from oneplatform.store.models import Host, Instance, Node


def _redfish() -> BmcFactory:
    from oneplatform.baremetal.redfish import RedfishBmc, sushy_available

    if not sushy_available():
        raise InvalidInput(
            "BMC protocol 'redfish' needs sushy (pip install sushy), which is not installed",
            code="bmc_protocol_not_supported",
        )
    return RedfishBmc


def _baremetal_driver() -> type[ComputeDriver]:
    return BaremetalDriver


def claim_node(session: Session, host: Host, instance: Instance) -> None:
    """The node under ``host`` carries ``instance`` until it is cleaned again."""
    node_of_host(session, host.id).instance_id = instance.id


def ports_from_port_map(
    session: Session, host: Host, instance: Instance, services: Mapping[str, int]
) -> None:
    """A node's service ports are where its network puts them: its port map."""
    port_map = node_of_host(session, host.id).port_map or {}
    for name, guest_port in sorted(services.items()):
        target = port_map.get(str(guest_port))
        if target is None:
            raise NoValidHost(
                f"node {host.name!r} has no way to reach guest port {guest_port}",
                code="no_free_port",
            )
        address = str(target["host"])
        ports.record(
            session,
            host,
            instance,
            name,
            int(guest_port),
            address,
            int(target["port"]),
            machine=ports.machine_of_address(address),
        )


def block_from_port_map(session: Session, host: Host, instance: Instance, count: int) -> range:
    """``count`` consecutive guest ports that the node's network forwards 1:1 (guest port P
    reached at port P of its target address): a node's forwards are its network's, so a
    cluster node's containers can only publish on those (recorded as ``fwd-<port>``)."""
    port_map = node_of_host(session, host.id).port_map or {}
    same = {
        int(guest): str(target["host"])
        for guest, target in port_map.items()
        if int(target["port"]) == int(guest)
    }
    for start in sorted(same):
        block = range(start, start + count)
        if all(p in same and same[p] == same[start] for p in block):
            address = same[start]
            for port in block:
                ports.record(
                    session,
                    host,
                    instance,
                    f"{ports.FORWARD_ONLY_PREFIX}{port}",
                    port,
                    address,
                    port,
                    machine=ports.machine_of_address(address),
                )
            return block
    raise NoValidHost(
        f"node {host.name!r} forwards no {count} consecutive guest ports 1:1 (guest port P "
        "at port P of one address): its port map cannot carry a cluster node's containers",
        code="no_port_block",
    )


def node_port_targets(session: Session) -> list[tuple[str, str, int]]:
    """Every enrolled node's port-map targets: held for the node whether it runs or not."""
    held: list[tuple[str, str, int]] = []
    maps: list[dict[str, Any]] = list(session.scalars(select(Node.port_map)))
    for port_map in maps:
        for target in (port_map or {}).values():
            address = str(target["host"])
            held.append((ports.machine_of_address(address), address, int(target["port"])))
    return held


def with_disk_image(
    settings: Settings, artifact: ImageArtifact, progress: Progress
) -> ImageArtifact:
    """Make the whole-disk format the deploy ramdisk writes (cached by the recipe's hash)."""
    build_disk_image(load_recipe(artifact.name), settings.images_dir, progress)
    return artifact


register_bmc("redfish", _redfish)
register_driver(ComputeType.BAREMETAL, "bmc", _baremetal_driver, default=True)
BAREMETAL = register_compute_type(
    ComputeTypeSpec(
        compute_type=ComputeType.BAREMETAL,
        create=BAREMETAL_CREATE,
        delete=BAREMETAL_DELETE,
        allocate_ports=ports_from_port_map,
        allocate_block=block_from_port_map,
        whole_host=True,
        claim=claim_node,
        host_settings=node_host_settings,
        prepare_image=with_disk_image,
        preload_images=False,
        enrolled_hosts=True,
        held_ports=node_port_targets,
        description="Whole machines behind a BMC (Redfish), deployed through virtual media.",
    )
)

"""The compute types the compute package drives itself: containers and virtual machines.

Both are hosts with a capacity shared by many instances, service ports published from a
range of the host's ports, and the common create and delete. A VM host loads the qcow2 format
of an image (made from the same root filesystem on first need).
"""

from __future__ import annotations

from oneplatform.compute.operations import INSTANCE_CREATE, INSTANCE_DELETE
from oneplatform.compute.ports import allocate_block, allocate_from_range
from oneplatform.compute.types import ComputeTypeSpec, register_compute_type
from oneplatform.config import Settings
from oneplatform.images.artifacts import ImageArtifact
from oneplatform.images.builder import Progress, artifact_for, build_vm_image
from oneplatform.images.recipes import load_recipe
from oneplatform.schemas.compute import ComputeType


def with_vm_format(
    settings: Settings, artifact: ImageArtifact, progress: Progress
) -> ImageArtifact:
    """The artifact with its qcow2 disk, kernel and initrd (built now if missing; cached)."""
    if artifact.vm is not None:
        return artifact
    recipe = load_recipe(artifact.name)
    build_vm_image(recipe, settings.images_dir, progress)
    return artifact_for(recipe, settings.images_dir)


CONTAINER = register_compute_type(
    ComputeTypeSpec(
        compute_type=ComputeType.CONTAINER,
        create=INSTANCE_CREATE,
        delete=INSTANCE_DELETE,
        allocate_ports=allocate_from_range,
        host_schemes=frozenset({"local", "unix", "ssh", "tcp"}),
        port_settle_s=0.0,  # a published port refuses until the service listens
        description="Podman containers sharing a host's kernel and capacity.",
    )
)
VM = register_compute_type(
    ComputeTypeSpec(
        compute_type=ComputeType.VM,
        create=INSTANCE_CREATE,
        delete=INSTANCE_DELETE,
        allocate_ports=allocate_from_range,
        allocate_block=allocate_block,  # the VM's own forwards, made by its driver
        prepare_image=with_vm_format,
        host_schemes=frozenset({"qemu", "qemu+ssh", "qemu+tcp", "qemu+tls", "qemu+unix", "test"}),
        description="libvirt/QEMU virtual machines (KVM where the host has it, TCG otherwise).",
    )
)

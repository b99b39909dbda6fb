"""A built image as a host needs it: the formats the compute types load."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class VmImage:
    """The virtual-machine format of an image: a qcow2 root disk and what boots it."""

    disk: Path  # qcow2, ext4 root filesystem labelled ROOT_LABEL
    kernel: Path
    initrd: Path
    cmdline: str  # kernel command line (root=, console=, init=)


@dataclass(frozen=True)
class ImageArtifact:
    """A built image as a host needs it: a reference and where to load it from."""

    name: str
    ref: str  # the backend's name for it, e.g. an OCI reference; also names VM base disks
    rootfs: Path | None  # root filesystem tarball the host can import
    command: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    vm: VmImage | None = None  # set once the VM format has been exported

    def import_changes(self) -> list[str]:
        """``podman import`` arguments that give the imported image its command and
        environment (a rootfs tarball carries neither)."""
        args: list[str] = []
        if self.command:
            args += ["--change", f"CMD {json.dumps(list(self.command))}"]
        for key, value in self.env.items():
            args += ["--change", f"ENV {key}={value}"]
        return args

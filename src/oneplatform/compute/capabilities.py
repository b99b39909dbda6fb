"""Typed capabilities.

A driver *is* capable of something by implementing the matching mixin from
``compute.drivers.base``; a driver that is not says why in ``UNSUPPORTED``. The support matrix
served at ``GET /v1/compute-types`` is derived from the classes, never written by hand, and
every capability advertised is one the platform calls: exec, snapshot, resize and forced
reboot through the instance API, boot device and virtual media through the bare-metal
deploy, storage growth through ``onep db resize``.
"""

from __future__ import annotations

import enum


class Capability(enum.StrEnum):
    EXEC = "exec"
    SNAPSHOT = "snapshot"
    RESIZE = "resize"
    LIVE_MIGRATE = "live_migrate"
    FORCED_REBOOT = "forced_reboot"
    BOOT_DEVICE = "boot_device"
    VIRTUAL_MEDIA = "virtual_media"
    GROW_STORAGE = "grow_storage"


CAPABILITY_HELP: dict[Capability, str] = {
    Capability.EXEC: "run a command inside the running instance",
    Capability.SNAPSHOT: "take a point-in-time copy of the instance's disks",
    Capability.RESIZE: "change vCPUs and RAM of an existing instance",
    Capability.LIVE_MIGRATE: "move a running instance to another host",
    Capability.FORCED_REBOOT: "reset the machine without asking the guest (reboot --force)",
    Capability.BOOT_DEVICE: "choose the device the machine boots from",
    Capability.VIRTUAL_MEDIA: "attach an ISO image as a virtual CD",
    Capability.GROW_STORAGE: "grow a data volume while the instance runs (never shrink it)",
}

"""VM mode: the agent as a virtual machine's PID 1.

``onep-vm-init`` execs the agent with ``ONEP_POWEROFF_ON_EXIT=1``: Ctrl-Alt-Del and the ACPI
power button then stop it like SIGTERM, and however it ends it leaves the disks clean and
powers the machine off, since PID 1 exiting would panic the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import os
import signal
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .contract import DATA_ROOT, POWEROFF_ENV

log = logging.getLogger("onep-agent")

# reboot(2) through glibc's wrapper (<sys/reboot.h>).
RB_DISABLE_CAD = 0  # Ctrl-Alt-Del sends SIGINT to PID 1 instead of rebooting at once
RB_POWER_OFF = 0x4321FEDC
RB_HALT_SYSTEM = 0xCDEF0123
MS_RDONLY = 1
MS_REMOUNT = 32
# struct input_event on 64-bit Linux: struct timeval, __u16 type, __u16 code, __s32 value.
INPUT_EVENT = struct.Struct("llHHi")
EV_KEY = 1
KEY_POWER = 116


def poweroff_on_exit(environ: Mapping[str, str] | None = None, pid: int | None = None) -> bool:
    """VM mode: asked for by the VM init, and only ever as PID 1."""
    env = os.environ if environ is None else environ
    return env.get(POWEROFF_ENV) == "1" and (os.getpid() if pid is None else pid) == 1


class Machine:
    """The system calls VM mode makes, through libc; tests replace it with a fake."""

    def __init__(self) -> None:
        self._libc: Any = None

    def _call(self, name: str, *args: Any) -> None:
        if self._libc is None:
            self._libc = ctypes.CDLL(None, use_errno=True)  # the C library Python runs on
        if getattr(self._libc, name)(*args) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{name}: {os.strerror(code)}")

    def disable_cad(self) -> None:
        self._call("reboot", ctypes.c_int(RB_DISABLE_CAD))

    def power_off(self) -> None:
        self._call("reboot", ctypes.c_int(RB_POWER_OFF))

    def halt(self) -> None:
        self._call("reboot", ctypes.c_int(RB_HALT_SYSTEM))  # c_int wraps it, as C would

    def sync(self) -> None:
        os.sync()

    def is_mount(self, path: str) -> bool:
        return os.path.ismount(path)

    def unmount(self, path: str) -> None:
        self._call("umount2", ctypes.c_char_p(path.encode()), ctypes.c_int(0))

    def remount_read_only(self, path: str) -> None:
        flags = ctypes.c_ulong(MS_REMOUNT | MS_RDONLY)
        self._call("mount", None, ctypes.c_char_p(path.encode()), None, flags, None)

    def kill_all(self, sig: int) -> None:
        """Signal every process but this one (PID 1) and kernel threads."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, sig)

    def wait_children(self, timeout: float) -> bool:
        """Reap children until none is left (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)

    def idle_forever(self) -> None:
        while True:  # PID 1 must never exit: that panics the kernel
            time.sleep(3600)


def shut_down_machine(
    machine: Machine, mounts: tuple[str, ...] = (DATA_ROOT,), grace: float = 10.0
) -> None:
    """Leave the disks clean and power off. Returns only if ``machine`` lets it."""
    log.info("powering off")
    machine.sync()
    machine.kill_all(signal.SIGTERM)
    if not machine.wait_children(grace):
        log.warning("processes left %.0f s after SIGTERM: killing them", grace)
        machine.kill_all(signal.SIGKILL)
        machine.wait_children(grace)
    for path in mounts:
        if not machine.is_mount(path):
            continue
        try:
            machine.unmount(path)
            log.info("unmounted %s", path)
        except OSError as exc:
            log.warning("cannot unmount %s (%s): remounting it read-only", path, exc.strerror)
            try:
                machine.remount_read_only(path)
            except OSError as again:
                log.error("cannot remount %s read-only: %s", path, again.strerror)
    try:
        machine.remount_read_only("/")
    except OSError as exc:
        log.warning("cannot remount / read-only: %s", exc.strerror)
    machine.sync()
    for name, action in (("power off", machine.power_off), ("halt", machine.halt)):
        try:
            action()
        except OSError as exc:
            log.error("cannot %s: %s", name, exc.strerror)
    machine.idle_forever()


def power_button_devices(sys_root: str = "/sys/class/input") -> list[str]:
    """The /dev/input/event* devices of the ACPI power button(s)."""
    found = []
    for name_file in sorted(glob.glob(f"{sys_root}/event*/device/name")):
        try:
            with open(name_file, encoding="utf-8", errors="replace") as handle:
                name = handle.read().strip()
        except OSError:
            continue
        if name == "Power Button":
            found.append("/dev/input/" + name_file.split("/")[-3])
    return found


def is_power_key_press(event: bytes) -> bool:
    if len(event) != INPUT_EVENT.size:
        return False
    _sec, _usec, kind, code, value = INPUT_EVENT.unpack(event)
    return kind == EV_KEY and code == KEY_POWER and value == 1


def watch_power_button(on_press: Callable[[], None], devices: list[str] | None = None) -> int:
    """Call ``on_press`` when the ACPI power button is pressed (the host's ACPI shutdown);
    one daemon thread per device. Returns how many devices are watched."""

    def watch(path: str) -> None:
        try:
            with open(path, "rb", buffering=0) as handle:
                while True:
                    event = handle.read(INPUT_EVENT.size)
                    if not event:
                        return
                    if is_power_key_press(event):
                        on_press()
        except OSError as exc:
            log.warning("stopped watching the power button %s: %s", path, exc.strerror)

    paths = power_button_devices() if devices is None else devices
    for path in paths:
        threading.Thread(target=watch, args=(path,), name="power-button", daemon=True).start()
    return len(paths)

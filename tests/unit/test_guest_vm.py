"""The guest agent's VM mode without a VM: when it applies, and the power-off sequence with
the system calls injected."""

from __future__ import annotations

import errno
import signal
import threading
from pathlib import Path

import pytest

from oneplatform.guest import main as main_mod
from oneplatform.guest.contract import DATA_ROOT, POWEROFF_ENV
from oneplatform.guest.machine import (
    EV_KEY,
    INPUT_EVENT,
    KEY_POWER,
    Machine,
    is_power_key_press,
    power_button_devices,
    poweroff_on_exit,
    shut_down_machine,
    watch_power_button,
)
from oneplatform.guest.main import run


class Idle(Exception):
    """Raised by the fake machine where the real one would sleep forever."""


class FakeMachine(Machine):
    def __init__(
        self,
        *,
        mounted: tuple[str, ...] = (DATA_ROOT,),
        unmount_error: int | None = None,
        power_off_error: int | None = None,
        children_exit: bool = True,
    ) -> None:
        super().__init__()
        self.calls: list[tuple[object, ...]] = []
        self.mounted = set(mounted)
        self.unmount_error = unmount_error
        self.power_off_error = power_off_error
        self.children_exit = children_exit

    def disable_cad(self) -> None:
        self.calls.append(("disable_cad",))

    def power_off(self) -> None:
        self.calls.append(("power_off",))
        if self.power_off_error is not None:
            raise OSError(self.power_off_error, "power off refused")

    def halt(self) -> None:
        self.calls.append(("halt",))

    def sync(self) -> None:
        self.calls.append(("sync",))

    def is_mount(self, path: str) -> bool:
        return path in self.mounted

    def unmount(self, path: str) -> None:
        self.calls.append(("unmount", path))
        if self.unmount_error is not None:
            raise OSError(self.unmount_error, "busy")
        self.mounted.discard(path)

    def remount_read_only(self, path: str) -> None:
        self.calls.append(("remount_ro", path))

    def kill_all(self, sig: int) -> None:
        self.calls.append(("kill_all", sig))

    def wait_children(self, timeout: float) -> bool:
        self.calls.append(("wait_children",))
        return self.children_exit

    def idle_forever(self) -> None:
        self.calls.append(("idle",))
        raise Idle


@pytest.mark.parametrize(
    ("environ", "pid", "expected"),
    [
        ({POWEROFF_ENV: "1"}, 1, True),
        ({POWEROFF_ENV: "1"}, 4242, False),  # never outside PID 1 (e.g. a test run)
        ({POWEROFF_ENV: "0"}, 1, False),
        ({POWEROFF_ENV: "yes"}, 1, False),
        ({}, 1, False),  # a container: its PID 1 just exits
    ],
)
def test_vm_mode_needs_the_variable_and_pid_1(
    environ: dict[str, str], pid: int, expected: bool
) -> None:
    assert poweroff_on_exit(environ, pid) is expected


def test_not_in_vm_mode_run_is_just_main() -> None:
    made: list[Machine] = []

    def factory() -> Machine:
        made.append(FakeMachine())
        return made[-1]

    seen: list[Machine | None] = []

    def main(machine: Machine | None) -> int:
        seen.append(machine)
        return 3

    assert run({}, 1, factory, main) == 3
    assert seen == [None]
    assert made == []


def test_the_power_off_sequence() -> None:
    machine = FakeMachine()
    with pytest.raises(Idle):
        shut_down_machine(machine)
    assert machine.calls == [
        ("sync",),
        ("kill_all", signal.SIGTERM),
        ("wait_children",),
        ("unmount", DATA_ROOT),
        ("remount_ro", "/"),
        ("sync",),
        ("power_off",),
        ("halt",),  # reached only because the fake's power_off returned
        ("idle",),
    ]


def test_stubborn_processes_are_killed() -> None:
    machine = FakeMachine(children_exit=False)
    with pytest.raises(Idle):
        shut_down_machine(machine)
    kills = [c for c in machine.calls if c[0] == "kill_all"]
    assert kills == [("kill_all", signal.SIGTERM), ("kill_all", signal.SIGKILL)]
    assert machine.calls.index(("kill_all", signal.SIGKILL)) < machine.calls.index(
        ("unmount", DATA_ROOT)
    )


def test_a_busy_data_disk_is_remounted_read_only() -> None:
    machine = FakeMachine(unmount_error=errno.EBUSY)
    with pytest.raises(Idle):
        shut_down_machine(machine)
    assert ("remount_ro", DATA_ROOT) in machine.calls
    assert machine.calls.index(("unmount", DATA_ROOT)) < machine.calls.index(
        ("remount_ro", DATA_ROOT)
    )


def test_no_data_disk_mounted_is_fine() -> None:
    machine = FakeMachine(mounted=())
    with pytest.raises(Idle):
        shut_down_machine(machine)
    assert not [c for c in machine.calls if c[0] == "unmount"]
    assert ("power_off",) in machine.calls


def test_a_failed_power_off_halts_and_never_returns() -> None:
    machine = FakeMachine(power_off_error=errno.EPERM)
    with pytest.raises(Idle):
        shut_down_machine(machine)
    assert machine.calls[-3:] == [("power_off",), ("halt",), ("idle",)]


@pytest.mark.parametrize("outcome", ["returns", "raises", "exits"])
def test_in_vm_mode_every_end_of_main_powers_off(outcome: str) -> None:
    machine = FakeMachine()

    def main(given: Machine | None) -> int:
        assert given is machine
        if outcome == "raises":
            raise RuntimeError("boom")
        if outcome == "exits":
            raise SystemExit(2)
        return 1  # e.g. the agent's port was taken

    with pytest.raises(Idle):
        run({POWEROFF_ENV: "1"}, 1, lambda: machine, main)
    assert ("power_off",) in machine.calls
    assert machine.calls[-1] == ("idle",)


def test_main_in_vm_mode_routes_ctrl_alt_del(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() disables the kernel's Ctrl-Alt-Del reboot (so it sends SIGINT) and stops on
    SIGINT; run() then powers off."""
    machine = FakeMachine()
    monkeypatch.setenv("ONEP_BUNDLE", "/nonexistent/bundle.json")
    monkeypatch.setattr(main_mod, "DEFAULT_AGENT_PORT", 0)
    monkeypatch.setattr(main_mod, "watch_power_button", lambda on_press: 0)
    started = threading.Event()

    class NoSupervisor(main_mod.Supervisor):
        def start(self) -> None:
            started.set()

    monkeypatch.setattr(main_mod, "Supervisor", NoSupervisor)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        timer = threading.Timer(0.2, lambda: signal.raise_signal(signal.SIGINT))
        timer.start()
        assert main_mod.main(machine) == 0
        timer.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert machine.calls[0] == ("disable_cad",)
    assert started.is_set()


def test_power_button_events(tmp_path: Path) -> None:
    press = INPUT_EVENT.pack(1, 2, EV_KEY, KEY_POWER, 1)
    release = INPUT_EVENT.pack(1, 2, EV_KEY, KEY_POWER, 0)
    other_key = INPUT_EVENT.pack(1, 2, EV_KEY, 30, 1)
    assert is_power_key_press(press)
    assert not is_power_key_press(release)
    assert not is_power_key_press(other_key)
    assert not is_power_key_press(press[:-1])

    for index, name in ((0, "AT Translated Set 2 keyboard"), (1, "Power Button")):
        device = tmp_path / "sys" / f"event{index}" / "device"
        device.mkdir(parents=True)
        (device / "name").write_text(name + "\n")
    assert power_button_devices(str(tmp_path / "sys")) == ["/dev/input/event1"]

    events = tmp_path / "event1"
    events.write_bytes(other_key + release + press)
    pressed = threading.Event()
    assert watch_power_button(pressed.set, [str(events)]) == 1
    assert pressed.wait(5)

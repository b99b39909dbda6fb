"""A second host on loopback, reached as in production: a real sshd of the test's own.

:func:`ssh_host` runs OpenSSH's sshd in the foreground on 127.0.0.2 (a free port), with a
host key and an authorized client key made under the test's directory; the machine's own
sshd (if any) and its configuration are never touched. With ``podman=True`` it also runs a
Podman API service (``podman system service``) with a storage root of its own under that
directory: a Podman "host" with its own images, containers, volumes and secrets, reached only
through ``ssh://root@127.0.0.2:PORT/…/podman.sock``. (Its kernel, its firewall and the CNI
network definitions are this machine's: the container networks are shared with the local
Podman.) libvirt is this machine's libvirtd, reached through ``qemu+ssh://`` the same way.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
ADDRESS = "127.0.0.2"


def sshd_missing() -> str | None:
    """Why the test sshd cannot run here, or None (scripts/setup.sh installs it)."""
    for tool in (SSHD, shutil.which("ssh-keygen")):
        if not tool or not Path(tool).exists():
            return f"{tool or 'ssh-keygen'} is missing: run scripts/setup.sh (openssh-server)"
    return None


@dataclass(frozen=True)
class SshHost:
    root: Path
    address: str
    port: int
    identity_file: Path
    host_key: str  # the line of its host key's .pub file
    podman_socket: Path | None

    @property
    def podman_uri(self) -> str:
        assert self.podman_socket is not None, "started without podman=True"
        return f"ssh://root@{self.address}:{self.port}{self.podman_socket}"

    @property
    def libvirt_uri(self) -> str:
        return f"qemu+ssh://root@{self.address}:{self.port}/system"

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Podman on the host's own storage, bypassing SSH: what the test looks at."""
        return subprocess.run(
            ["podman", *_storage_args(self.root), *args],
            capture_output=True,
            text=True,
            timeout=300,
            check=check,
        )


def _runroot(root: Path) -> Path:
    """Podman refuses a runroot longer than 50 characters (pytest's tmp dirs under xdist
    are longer): a short one under /run, named after ``root``."""
    return Path("/run") / f"onep-sshd-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"


def _storage_args(root: Path) -> list[str]:
    return ["--root", str(root / "storage"), "--runroot", str(_runroot(root))]


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)], check=True
    )


def _wait(check: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}: {log.read_text()[-2000:]}")
        if callable(check) and check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not come up: {log.read_text()[-2000:]}")


def _listening(address: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((address, port)) == 0


def _sshd_config(root: Path, address: str, port: int) -> Path:
    config = root / "sshd_config"
    config.write_text(
        f"ListenAddress {address}:{port}\n"
        f"HostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
        "PidFile none\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        # the keys live under the test's tmp dir, whose parents are not root-only
        "StrictModes no\n"
    )
    return config


@contextmanager
def ssh_host(root: Path, address: str = ADDRESS, podman: bool = False) -> Iterator[SshHost]:
    """The sshd (and Podman service) described above, stopped and removed at the end."""
    root.mkdir(parents=True, exist_ok=True)
    _keygen(root / "host_key")
    _keygen(root / "id_ed25519")
    shutil.copy(root / "id_ed25519.pub", root / "authorized_keys")
    port = _free_port(address)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    config = _sshd_config(root, address, port)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        log = root / "sshd.log"
        with log.open("wb") as out:
            sshd = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(sshd)
        _wait(lambda: _listening(address, port), "sshd", sshd, log)
        sock = root / "podman.sock" if podman else None
        if sock is not None:
            procs.append(_podman_service(root, sock))
        host_key = (root / "host_key.pub").read_text().strip()
        yield SshHost(root, address, port, root / "id_ed25519", host_key, sock)
    finally:
        for proc in reversed(procs):
            proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        if podman:
            _remove_storage(root)


def _podman_service(root: Path, sock: Path) -> subprocess.Popen[bytes]:
    log = root / "podman-service.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["podman", *_storage_args(root), "system", "service", "--time=0", f"unix://{sock}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _wait(sock.exists, "podman system service", proc, log)
    return proc


def _mounted(path: Path) -> bool:
    """Whether ``path`` is a mount point (os.path.ismount misses Podman's bind mount of its
    overlay directory onto itself: same device)."""
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    return any(line.split()[4] == str(path) for line in mounts)


def _remove_storage(root: Path) -> None:
    """What the host's Podman holds, then its storage (its overlay mount first)."""
    storage = _storage_args(root)
    for args in (["rm", "--all", "--force", "--time", "0"], ["volume", "prune", "--force"]):
        subprocess.run(["podman", *storage, *args], capture_output=True, timeout=300)
    for secret in subprocess.run(
        ["podman", *storage, "secret", "ls", "--format", "{{.Name}}"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split():
        subprocess.run(["podman", *storage, "secret", "rm", secret], capture_output=True)
    subprocess.run(["podman", *storage, "rmi", "--all", "--force"], capture_output=True)
    overlay = root / "storage" / "overlay"
    for _ in range(10):  # each podman call above may have mounted it once more
        if not _mounted(overlay):
            break
        subprocess.run(["umount", str(overlay)], capture_output=True, timeout=60)
    shutil.rmtree(root / "storage", ignore_errors=True)
    shutil.rmtree(_runroot(root), ignore_errors=True)

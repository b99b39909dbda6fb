"""Reaching a host over SSH: its identity file and the host key it must present.

A remote Podman host (``ssh://user@host[:port]/run/podman/podman.sock``) and a remote libvirt
host (``qemu+ssh://user@host[:port]/system``) are reached over SSH. What a driver reads from
``HostRef.settings`` (the host's own settings merged over its pool's):

* ``identity_file`` — the private key to log in with (a path on the control plane's machine);
  without it, the SSH client's defaults.
* ``host_key`` — the host's public key (``ssh-ed25519 AAAA…``, as in its
  ``/etc/ssh/ssh_host_ed25519_key.pub``) that ``onep host add --host-key`` stored; or
  ``known_hosts`` — a known_hosts file that names the host. Without either, the platform
  user's ``~/.ssh/known_hosts``.

Trust is explicit: before any connection the host (``[host]:port`` for another port than 22)
must be in that known_hosts, else :class:`HostKeyUnknown` — never trust on first use (which
Podman's SSH client does silently when a known_hosts file exists without the host, and it
connects without any check when there is no file at all). The file the SSH clients read is one
the platform writes per host (:func:`trust_home`) with only that host's keys, so a key added to
one host's record is never trusted for another.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from oneplatform.compute.drivers.base import HostRef
from oneplatform.errors import BackendError, BackendUnavailable

SSH_SCHEMES = frozenset({"ssh", "qemu+ssh", "qemu+libssh", "qemu+libssh2"})


class HostKeyUnknown(BackendUnavailable):
    """The host's SSH key is not one the platform was told to trust."""

    code = "host_key_unknown"


@dataclass(frozen=True)
class SshTarget:
    user: str | None
    host: str
    port: int

    @property
    def known_name(self) -> str:
        """How known_hosts names it: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def ssh_target(uri: str) -> SshTarget | None:
    """The SSH endpoint of ``uri``, or None for a URI that is not reached over SSH."""
    parts = urlsplit(uri)
    if parts.scheme not in SSH_SCHEMES or not parts.hostname:
        return None
    try:
        port = parts.port or 22
    except ValueError as exc:
        raise BackendError(f"host URI {uri!r} has an invalid port") from exc
    return SshTarget(user=parts.username, host=parts.hostname, port=port)


def identity_file(settings: Mapping[str, Any]) -> str | None:
    value = settings.get("identity_file")
    return str(value) if value else None


def known_host_line(target: SshTarget, host_key: str) -> str:
    """A known_hosts line trusting ``host_key`` (``type base64 [comment]``) for ``target``."""
    fields = host_key.split()
    if len(fields) < 2:
        raise BackendError(f"host key {host_key[:40]!r} is not 'TYPE BASE64' (an OpenSSH key)")
    return f"{target.known_name} {fields[0]} {fields[1]}\n"


def is_known(known_hosts: Path, target: SshTarget) -> bool:
    """Whether ``known_hosts`` has a key for ``target`` (hashed entries too: ssh-keygen -F)."""
    if not known_hosts.is_file():
        return False
    try:
        proc = subprocess.run(
            ["ssh-keygen", "-F", target.known_name, "-f", str(known_hosts)],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except FileNotFoundError as exc:
        raise BackendUnavailable("ssh-keygen (openssh-client) is not installed") from exc
    return proc.returncode == 0 and bool(proc.stdout.strip())


def _trusted_lines(host: HostRef, target: SshTarget) -> str:
    """The known_hosts lines of ``target`` the host's settings say to trust."""
    key = host.settings.get("host_key")
    if key:
        return known_host_line(target, str(key))
    source = Path(str(host.settings.get("known_hosts") or Path.home() / ".ssh" / "known_hosts"))
    if not is_known(source, target):
        raise HostKeyUnknown(
            f"the SSH host key of {target.known_name} (host {host.name}) is not trusted: it is "
            f"not in {source} and the host has no host_key setting. Read the key on the host "
            "(/etc/ssh/ssh_host_ed25519_key.pub) and give it with onep host add --host-key",
            host=host.name,
        )
    proc = subprocess.run(
        ["ssh-keygen", "-F", target.known_name, "-f", str(source)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return "".join(f"{line}\n" for line in proc.stdout.splitlines() if not line.startswith("#"))


def trust_home(host: HostRef) -> Path | None:
    """A directory whose ``.ssh/known_hosts`` holds only the keys trusted for ``host``.

    The SSH clients read it: Podman's as ``$HOME/.ssh/known_hosts``, libvirt's through the
    URI's ``known_hosts``. Written (atomically, 0600 under 0700 directories) only when its
    content changes. None for a URI not reached over SSH. Raises HostKeyUnknown when no key is
    trusted for the host.
    """
    target = ssh_target(host.uri)
    if target is None:
        return None
    lines = _trusted_lines(host, target)
    digest = hashlib.sha256(f"{host.uri}\n{lines}".encode()).hexdigest()[:16]
    root = Path.home() / ".cache" / "oneplatform" / "ssh"
    home = root / digest
    path = home / ".ssh" / "known_hosts"
    if path.is_file() and path.read_text() == lines:
        return home
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".known_hosts.")
    with os.fdopen(fd, "w") as out:
        out.write(lines)
    os.replace(tmp, path)
    return home


def libvirt_uri(host: HostRef) -> str:
    """The URI libvirt is opened with: ``host.uri``, or for ``qemu+ssh://`` the same host
    through libvirt's own SSH client (``qemu+libssh2://``) with the identity file and the
    trusted known_hosts. libvirt's ``ssh`` transport runs the ssh binary and ignores a
    ``known_hosts`` parameter (libvirt 9.0: it read only ~/.ssh/known_hosts); ``libssh2``
    verifies against the given file and refuses an unknown or changed key. (``libssh`` does
    too, but through the Python binding, without an event loop, it hung on any reply of more
    than a few kB, e.g. ``getCapabilities``.)"""
    home = trust_home(host)
    if home is None:
        return host.uri
    parts = urlsplit(host.uri)
    query = [
        f"known_hosts={quote(str(home / '.ssh' / 'known_hosts'), safe='/')}",
        "known_hosts_verify=normal",
    ]
    key = identity_file(host.settings)
    if key:
        query += [f"keyfile={quote(key, safe='/')}", "sshauth=privkey"]
    if parts.query:
        query.insert(0, parts.query)
    return urlunsplit(("qemu+libssh2", parts.netloc, parts.path, "&".join(query), ""))

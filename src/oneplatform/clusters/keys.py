"""A cluster's SSH keys: the one the platform makes (kept encrypted in the store, written to
a 0600 file where a process needs it) and the one its owner may give."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oneplatform.config import Settings
from oneplatform.errors import InvalidInput


def new_private_key() -> str:
    """A fresh Ed25519 key, in OpenSSH's private key format."""
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()


def public_key_of(private_key: str, comment: str) -> str:
    """The OpenSSH public key line of ``private_key``."""
    key = serialization.load_ssh_private_key(private_key.encode(), password=None)
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return f"{line.decode()} {comment}"


def checked_public_key(text: str) -> str:
    """The owner's public key as one OpenSSH line; ``422 invalid_public_key`` otherwise."""
    line = text.strip()
    if "\n" in line:
        raise InvalidInput("give one SSH public key (one line)", code="invalid_public_key")
    try:
        serialization.load_ssh_public_key(line.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise InvalidInput(
            f"not an SSH public key in OpenSSH format: {err}", code="invalid_public_key"
        ) from None
    return line


def identity_path(settings: Settings, cluster_id: str) -> Path:
    """Where this machine keeps the cluster's private key for ``podman --identity``."""
    return settings.home / "clusters" / cluster_id / "id_ed25519"


def write_identity(settings: Settings, cluster_id: str, private_key: str) -> Path:
    """Write the key file (0600) unless it holds that key already; returns its path."""
    path = identity_path(settings, cluster_id)
    if path.is_file() and path.read_text() == private_key:
        return path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(private_key)
    tmp.replace(path)
    return path


def remove_identity(settings: Settings, cluster_id: str) -> None:
    path = identity_path(settings, cluster_id)
    path.unlink(missing_ok=True)
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()

"""A cluster's SSH keys: the one the platform makes (kept encrypted in the store, written to
a 0600 file where a process needs it) and the one its owner may give."""

from __future__ import annotations

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from oneplatform.compute.identities import identity_path, remove_identity, write_identity
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


__all__ = [
    "checked_public_key",
    "identity_path",
    "new_private_key",
    "public_key_of",
    "remove_identity",
    "write_identity",
]

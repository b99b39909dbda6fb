"""Sealing: a secret message from the platform to one agent, readable by that agent only.

A warm instance is handed to its owner by ``POST /v1/claim``, whose body carries the owner's
config bundle (passwords, the new agent secret). The call is signed like every call, and
its payload is sealed with the warm bundle's agent secret, which reached the instance only
through its compute type's private channel (a Podman secret, a config drive, the deploy's
config partition) and never crosses the network: so the bundle is neither readable nor
changeable on the way, whatever carries it.

The agent runs on the image's Python with the standard library only, so the cipher is
built from HMAC-SHA256 alone, encrypt-then-MAC::

    enc_key = HMAC(secret, "onep-seal-enc"), mac_key = HMAC(secret, "onep-seal-mac")
    keystream block i = HMAC(enc_key, nonce || i as 8 bytes big-endian)   (CTR mode, PRF)
    sealed = base64url(nonce(16) || plaintext XOR keystream || HMAC(mac_key, nonce || ct))

A fresh random nonce per message; the tag is checked (in constant time) before anything
is decrypted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

NONCE_BYTES = 16
TAG_BYTES = 32
MAX_PLAINTEXT = 256 * 1024


class SealError(ValueError):
    """The sealed text is malformed, or was not sealed with this secret."""


def _keys(secret: str) -> tuple[bytes, bytes]:
    key = secret.encode("utf-8")
    enc = hmac.new(key, b"onep-seal-enc", hashlib.sha256).digest()
    mac = hmac.new(key, b"onep-seal-mac", hashlib.sha256).digest()
    return enc, mac


def _keystream(enc_key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = (length + 31) // 32
    return b"".join(
        hmac.new(enc_key, nonce + i.to_bytes(8, "big"), hashlib.sha256).digest()
        for i in range(blocks)
    )[:length]


def _xor(data: bytes, stream: bytes) -> bytes:
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def seal(secret: str, plaintext: bytes, nonce: bytes | None = None) -> str:
    """``plaintext`` sealed for whoever holds ``secret`` (ASCII, URL-safe)."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise SealError(f"cannot seal more than {MAX_PLAINTEXT} bytes")
    enc_key, mac_key = _keys(secret)
    nonce = nonce or secrets.token_bytes(NONCE_BYTES)
    ciphertext = _xor(plaintext, _keystream(enc_key, nonce, len(plaintext)))
    tag = hmac.new(mac_key, nonce + ciphertext, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(nonce + ciphertext + tag).decode("ascii")


def unseal(secret: str, sealed: str) -> bytes:
    """The plaintext of ``sealed``; :class:`SealError` if it was changed or not for us."""
    try:
        raw = base64.urlsafe_b64decode(sealed.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise SealError("the sealed text is not base64") from None
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise SealError("the sealed text is too short")
    nonce, ciphertext, tag = raw[:NONCE_BYTES], raw[NONCE_BYTES:-TAG_BYTES], raw[-TAG_BYTES:]
    enc_key, mac_key = _keys(secret)
    expected = hmac.new(mac_key, nonce + ciphertext, hashlib.sha256).digest()
    if not hmac.compare_digest(tag, expected):
        raise SealError("the sealed text was not sealed with this secret, or was changed")
    return _xor(ciphertext, _keystream(enc_key, nonce, len(ciphertext)))

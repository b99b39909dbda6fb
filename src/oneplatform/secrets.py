"""Secrets at rest: Fernet (AES-128-CBC + HMAC-SHA256) with a key kept beside the store.

The key comes from ``ONEP_SECRET_KEY`` or, by default, ``$ONEP_HOME/secret.key`` (made on
first use, mode 0600). Losing the key loses the stored passwords, so back it up with the
store.
"""

from __future__ import annotations

import contextlib
import os
import secrets as _random
import tempfile
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from oneplatform.config import Settings
from oneplatform.errors import PlatformError
from oneplatform.guest.contract import PASSWORD_ALPHABET, PASSWORD_LENGTH


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise PlatformError(
                "a stored secret cannot be decrypted: is ONEP_SECRET_KEY / secret.key the one "
                "this store was written with?",
                code="secret_key_mismatch",
            ) from None


def box_for(settings: Settings) -> SecretBox:
    if settings.secret_key:
        return SecretBox(settings.secret_key.encode())
    return _box_from_file(settings.home / "secret.key")


@lru_cache(maxsize=8)
def _box_from_file(path: Path) -> SecretBox:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # a temporary file of this caller's own: two threads or processes making the key at
        # once each link theirs, the first wins, and neither removes the other's
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".secret.", suffix=".tmp")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)  # never replace a key another process just made
        finally:
            tmp.unlink()
    return SecretBox(path.read_bytes().strip())


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A strong random password of letters and digits (no quoting trouble anywhere)."""
    return "".join(_random.choice(PASSWORD_ALPHABET) for _ in range(length))


def generate_token(nbytes: int = 32) -> str:
    return _random.token_urlsafe(nbytes)

"""Request signing: every call to the agent is signed with the instance's own secret.

::

    X-Onep-Signature = hex HMAC-SHA256(secret, "\\n".join([METHOD, path_with_query,
        instance_id, timestamp, nonce, sha256(body).hexdigest()]))

The platform signs (:func:`sign_request`); the agent verifies (:class:`RequestVerifier`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

MAX_CLOCK_SKEW = 300  # seconds a signed request's timestamp may be off

HEADER_INSTANCE = "X-Onep-Instance"
HEADER_TIMESTAMP = "X-Onep-Timestamp"
HEADER_NONCE = "X-Onep-Nonce"
HEADER_SIGNATURE = "X-Onep-Signature"
SIGNED_HEADERS = (HEADER_INSTANCE, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)

_NONCE_RE = re.compile(r"^[0-9a-fA-F]{16,128}$")


def canonical_request(
    method: str, path: str, instance_id: str, timestamp: str, nonce: str, body: bytes
) -> bytes:
    """The exact bytes that are signed."""
    parts = [method.upper(), path, instance_id, timestamp, nonce, hashlib.sha256(body).hexdigest()]
    return "\n".join(parts).encode("utf-8")


def compute_signature(secret: str, canonical: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), canonical, hashlib.sha256).hexdigest()


def sign_request(
    secret: str,
    instance_id: str,
    method: str,
    path: str,
    body: bytes = b"",
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers that authenticate one call; ``path`` includes the query string."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    canonical = canonical_request(method, path, instance_id, timestamp, nonce, body)
    return {
        HEADER_INSTANCE: instance_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: compute_signature(secret, canonical),
    }


class AuthError(Exception):
    """A call was refused; ``status`` and ``code`` go into the HTTP response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class RequestVerifier:
    """Checks signed calls for one instance and remembers nonces to refuse replays.

    A nonce is remembered until its request's timestamp leaves the skew window, after which
    the timestamp check refuses a replay anyway. Thread-safe.
    """

    def __init__(
        self,
        secret: str,
        instance_id: str,
        *,
        max_skew: int = MAX_CLOCK_SKEW,
        clock: Callable[[], float] = time.time,
        max_nonces: int = 100_000,
    ) -> None:
        self._secret = secret
        self._instance_id = instance_id
        self._max_skew = max_skew
        self._clock = clock
        self._max_nonces = max_nonces
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce -> forget after
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RequestVerifier(instance_id={self._instance_id!r})"

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> None:
        """Return if the call is authentic and fresh; raise :class:`AuthError` otherwise."""
        lowered = {k.lower(): v for k, v in headers.items()}
        values = [lowered.get(h.lower(), "").strip() for h in SIGNED_HEADERS]
        missing = [h for h, v in zip(SIGNED_HEADERS, values, strict=True) if not v]
        if missing:
            raise AuthError(401, "unsigned", f"missing headers: {', '.join(missing)}")
        instance_id, timestamp, nonce, signature = values
        if not hmac.compare_digest(instance_id.encode(), self._instance_id.encode()):
            raise AuthError(403, "wrong_instance", "this agent serves another instance")
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise AuthError(401, "unsigned", f"{HEADER_TIMESTAMP} must be unix seconds")
        if not _NONCE_RE.match(nonce):
            raise AuthError(401, "unsigned", f"{HEADER_NONCE} must be 16-128 hex characters")
        now = self._clock()
        if abs(now - int(timestamp)) > self._max_skew:
            raise AuthError(
                401, "stale", f"timestamp is more than {self._max_skew} s off the agent's clock"
            )
        canonical = canonical_request(method, path, instance_id, timestamp, nonce, body)
        expected = compute_signature(self._secret, canonical)
        if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
            raise AuthError(401, "bad_signature", "the signature does not match")
        with self._lock:
            self._forget_expired(now)
            if nonce.lower() in self._nonces:
                raise AuthError(401, "replayed", "this nonce was already used")
            self._nonces[nonce.lower()] = int(timestamp) + self._max_skew + 1
            while len(self._nonces) > self._max_nonces:
                self._nonces.popitem(last=False)

    def _forget_expired(self, now: float) -> None:
        expired = [n for n, until in self._nonces.items() if until < now]
        for nonce in expired:
            del self._nonces[nonce]

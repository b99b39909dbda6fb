"""One error hierarchy. Client errors carry a stable code and an HTTP status.

Driver errors are translated from Podman/libvirt/Redfish errors at the driver edge into
:class:`BackendError` subclasses, so nothing above the drivers sees vendor exceptions.
"""

from __future__ import annotations

from typing import Any, ClassVar


class PlatformError(Exception):
    """Base of every error the platform raises on purpose."""

    code: str = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body


class ClientError(PlatformError):
    code = "bad_request"
    status = 400


class InvalidInput(ClientError):
    code = "invalid_input"
    status = 422


class NotFound(ClientError):
    code = "not_found"
    status = 404


class AlreadyExists(ClientError):
    code = "already_exists"
    status = 409


class Conflict(ClientError):
    """The request is valid but the resource's state does not allow it now."""

    code = "conflict"
    status = 409


class CapabilityNotSupported(ClientError):
    code = "capability_not_supported"
    status = 409


class NoValidHost(ClientError):
    code = "no_valid_host"
    status = 409


class ImageNotReady(ClientError):
    code = "image_not_ready"
    status = 409


class Unauthorized(ClientError):
    code = "unauthorized"
    status = 401


class Forbidden(ClientError):
    code = "forbidden"
    status = 403


class QuotaExceeded(Forbidden):
    """A request would take its project over a quota; ``details`` names the resource."""

    code = "quota_exceeded"


class BackendError(PlatformError):
    """A compute backend (Podman, libvirt, a BMC) failed; translated at the driver edge."""

    code = "backend_error"
    status = 502


class BackendNotFound(BackendError):
    code = "backend_not_found"


class BackendUnavailable(BackendError):
    code = "backend_unavailable"
    status = 503


class ImageBuildError(PlatformError):
    code = "image_build_failed"
    status = 500


class NotYet(Exception):
    """Raised by an operation step that must be called again later (polling)."""

    def __init__(self, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class LeaseLost(Exception):
    """The worker no longer holds the operation's lease; it must stop writing."""

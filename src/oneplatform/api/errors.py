"""The error answers a router declares in the OpenAPI document, all with one schema."""

from __future__ import annotations

from typing import Any

from oneplatform.schemas.base import ErrorResponse

MEANING = {
    401: "No token, or a token that is not valid (`token_missing`, `token_invalid`).",
    403: "The token's role may not do this (`admin_required`, `read_only`), or it would take "
    "the project over a quota (`quota_exceeded`, naming the resource in `details`).",
    404: "No such resource in the caller's project (another project's looks the same).",
    409: "The resource's state or another resource does not allow it now.",
    413: "The body is over 1 MiB (`body_too_large`).",
    422: "The request is not valid (`invalid_input`, with the problems in `details`).",
    502: "A backend (Podman, libvirt, a BMC, an engine) failed.",
    503: "A backend could not be reached.",
}


def declared(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a router: each status with the error schema and its meaning."""
    return {s: {"model": ErrorResponse, "description": MEANING[s]} for s in statuses}

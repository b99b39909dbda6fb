"""Images: built datastore images and their formats."""

from __future__ import annotations

from typing import Any

from oneplatform.schemas.base import Response
from oneplatform.schemas.operations import OperationOut


class ImageOut(Response):
    name: str
    description: str = ""
    status: str
    status_message: str = ""
    content_hash: str | None = None
    formats: dict[str, Any] = {}
    ports: dict[str, int] = {}
    size_bytes: int = 0


class ImageBuildAccepted(Response):
    operation: OperationOut | None
    image: ImageOut

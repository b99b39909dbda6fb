"""The Python SDK: a typed httpx client that uses the API's own schemas."""

from oneplatform.sdk.client import ApiError, Client

__all__ = ["ApiError", "Client"]

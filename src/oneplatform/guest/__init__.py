"""The guest side: the agent that runs inside every datastore image, and its client.

:mod:`oneplatform.guest.agent` is the agent itself (standard library only, baked into the
images); the bundle format and request signing are re-exported here for the platform.
:mod:`oneplatform.guest.client` is the platform's signed HTTP client for it.
"""

from oneplatform.guest.agent import (
    BUNDLE_FORMAT,
    DEFAULT_AGENT_PORT,
    AdminCredentials,
    AgentSettings,
    AuthError,
    Bundle,
    BundleError,
    EngineSettings,
    RequestVerifier,
    generate_password,
    generate_secret,
    sign_request,
)

__all__ = [
    "BUNDLE_FORMAT",
    "DEFAULT_AGENT_PORT",
    "AdminCredentials",
    "AgentSettings",
    "AuthError",
    "Bundle",
    "BundleError",
    "EngineSettings",
    "RequestVerifier",
    "generate_password",
    "generate_secret",
    "sign_request",
]

"""The web dashboard's one-time login tickets."""

from __future__ import annotations

import datetime as dt

from pydantic import Field

from oneplatform.schemas.base import Response


class UiTicketOut(Response):
    ticket: str = Field(description="Shown once: exchanged once for a dashboard session.")
    login_path: str = Field(description="Open the API's address plus this path in a browser.")
    expires_at: dt.datetime = Field(description="Unused, the ticket is void after this.")

"""One-time login tickets for the web dashboard (what `onep ui` asks for)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, status

from oneplatform.api.deps import AnyCallerDep, PlatformDep
from oneplatform.api.errors import declared
from oneplatform.schemas.ui import UiTicketOut
from oneplatform.ui import sessions

router = APIRouter(prefix="/ui", tags=["dashboard"], responses=declared(401))


@router.post("/tickets", response_model=UiTicketOut, status_code=status.HTTP_201_CREATED)
def create_ticket(platform: PlatformDep, caller: AnyCallerDep) -> UiTicketOut:
    """A login ticket for the dashboard, acting as the caller's token: valid for two minutes
    and for one exchange; the session it becomes has the token's project and role (a
    reader's token gets one too: its session only reads)."""
    issued = sessions.create_ticket(platform.store, caller)
    return UiTicketOut(
        ticket=issued.secret,
        login_path=f"/ui/login?ticket={quote(issued.secret)}",
        expires_at=issued.expires_at,
    )

"""The dashboard's logins: one-time tickets and browser sessions.

A ticket is made for an API token (``POST /v1/ui/tickets``, what `onep ui` calls), lives
two minutes and is exchanged once for a session. A session lives twelve hours at most, never
past its token's expiry, and ends at logout or when its token is revoked. Only SHA-256
hashes of both secrets are stored. A session acts as the token that made it: the same
project and role (a reader's session only reads). Each session has its own CSRF token,
which every form that changes something must send back.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import Session

from oneplatform.errors import Unauthorized
from oneplatform.iam import Caller, authenticate, hash_token
from oneplatform.store.db import Store
from oneplatform.store.models import Project, Token, UiSession, utcnow

TICKET = "ticket"
SESSION = "session"
TICKET_LIFETIME = dt.timedelta(minutes=2)
SESSION_LIFETIME = dt.timedelta(hours=12)
KEEP_AFTER_END = dt.timedelta(days=1)  # ended rows are removed this long after their end


@dataclass(frozen=True)
class Issued:
    """A new ticket or session: its secret (shown once) and when it ends."""

    secret: str
    csrf_token: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class LoggedIn:
    """A live session: who it acts as, and the CSRF token its forms carry."""

    caller: Caller
    csrf_token: str


def _live_token(session: Session, caller: Caller) -> Token:
    token = session.scalars(
        select(Token).where(
            Token.project_id == caller.project_id,
            Token.name == caller.token_name,
            Token.revoked_at.is_(None),
        )
    ).first()
    if token is None:  # revoked between authentication and now
        raise Unauthorized(f"token {caller.token_name!r} was revoked", code="token_revoked")
    return token


def _issue(session: Session, token: Token, kind: str, lifetime: dt.timedelta) -> Issued:
    now = utcnow()
    session.execute(delete(UiSession).where(UiSession.expires_at < now - KEEP_AFTER_END))
    expires = now + lifetime
    if token.expires_at is not None:
        expires = min(expires, token.expires_at)
    secret, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        UiSession(
            token_id=token.id,
            kind=kind,
            secret_hash=hash_token(secret),
            csrf_token=csrf if kind == SESSION else "",
            expires_at=expires,
        )
    )
    return Issued(secret, csrf, expires)


def create_ticket(store: Store, caller: Caller) -> Issued:
    """A one-time login ticket for the caller's own token."""
    with store.session() as session:
        return _issue(session, _live_token(session, caller), TICKET, TICKET_LIFETIME)


def exchange_ticket(store: Store, ticket: str) -> Issued:
    """A session for a live ticket, which is used up (a second exchange is refused)."""
    now = utcnow()
    with store.session() as session:
        used = session.execute(
            update(UiSession)
            .where(
                UiSession.secret_hash == hash_token(ticket),
                UiSession.kind == TICKET,
                UiSession.used_at.is_(None),
                UiSession.expires_at > now,
            )
            .values(used_at=now)
            .returning(UiSession.token_id)
        ).first()
        if used is None:
            raise Unauthorized(
                "the login ticket is not valid, was used or has expired: run `onep ui` again",
                code="ticket_invalid",
            )
        token = session.get_one(Token, used.token_id)
        return _issue(session, token, SESSION, SESSION_LIFETIME)


def login_with_token(store: Store, api_token: str) -> Issued:
    """A session for an API token typed into the login form."""
    caller = authenticate(store, api_token.strip() or None)
    with store.session() as session:
        return _issue(session, _live_token(session, caller), SESSION, SESSION_LIFETIME)


def resume(store: Store, secret: str | None) -> LoggedIn:
    """The caller a session cookie acts as; 401 when it is unknown, over, or its token is."""
    if not secret:
        raise Unauthorized("not logged in", code="session_missing")
    now = utcnow()
    with store.session() as session:
        row = session.execute(
            select(UiSession, Token, Project)
            .join(Token, Token.id == UiSession.token_id)
            .join(Project, Project.id == Token.project_id)
            .where(
                UiSession.secret_hash == hash_token(secret),
                UiSession.kind == SESSION,
                UiSession.used_at.is_(None),
                UiSession.expires_at > now,
                Token.revoked_at.is_(None),
                or_(Token.expires_at.is_(None), Token.expires_at > now),
            )
        ).first()
        if row is None:
            raise Unauthorized("the session is over: log in again", code="session_invalid")
        ui, token, project = row
        return LoggedIn(
            Caller(project.id, project.name, token.role, token.name, token.user_id), ui.csrf_token
        )


def logout(store: Store, secret: str) -> None:
    """End the session (silent if it is already over)."""
    with store.session() as session:
        session.execute(
            update(UiSession)
            .where(UiSession.secret_hash == hash_token(secret), UiSession.kind == SESSION)
            .values(used_at=utcnow())
        )

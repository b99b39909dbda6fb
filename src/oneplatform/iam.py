"""Projects, tokens and roles. Tokens are random, shown once, stored as SHA-256 hashes.

Every token expires; a project's tokens can be listed, created and revoked by its members
(never with more than the caller's own role). A revoked or expired token gets 401. Roles:
``admin`` (the admin project: everything), ``member`` (everything in its project),
``reader`` (its project, read only).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import Select, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform.errors import AlreadyExists, Forbidden, NotFound, Unauthorized
from oneplatform.schemas.projects import (
    ProjectCreated,
    ProjectOut,
    TokenCreate,
    TokenCreated,
    TokenOut,
    WhoAmI,
)
from oneplatform.store.db import Store
from oneplatform.store.models import Project, Token, utcnow

ADMIN = "admin"
MEMBER = "member"
READER = "reader"
RANK = {READER: 0, MEMBER: 1, ADMIN: 2}
TOKEN_PREFIX = "onep_"
ADMIN_TOKEN_NAME = "admin"
ADMIN_TOKEN_LIFETIME = dt.timedelta(days=90)
ADMIN_TOKEN_RENEW_BEFORE = dt.timedelta(days=30)  # `onep up` rotates a token this close to expiry
FIRST_TOKEN_LIFETIME = dt.timedelta(days=90)
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)  # how often a token's use is written down


@dataclass(frozen=True)
class Caller:
    project_id: str
    project_name: str
    role: str
    token_name: str
    # The platform user a token was issued to (a sign-in at /identity, or a token made with
    # one): the tokens it makes are tied to that user too, so deleting the user ends them.
    user_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def read_only(self) -> bool:
        return self.role == READER

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this needs an admin token", code="admin_required")

    def require_writer(self, what: str) -> None:
        """A reader reads the project's resources, never what would let it write (a
        database's credentials)."""
        if self.read_only:
            raise Forbidden(f"a reader token cannot {what}", code="read_only")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _issue(
    session: Session,
    project: Project,
    role: str,
    name: str,
    lifetime: dt.timedelta,
    user_id: str | None = None,
) -> tuple[Token, str]:
    token = new_token()
    row = Token(
        project_id=project.id,
        name=name,
        role=role,
        token_hash=hash_token(token),
        expires_at=utcnow() + lifetime,
        user_id=user_id,
    )
    session.add(row)
    session.flush()
    return row, token


def authenticate(store: Store, token: str | None) -> Caller:
    if not token:
        raise Unauthorized("missing bearer token", code="token_missing")
    with store.session() as session:
        row = session.execute(
            select(Token, Project)
            .join(Project, Project.id == Token.project_id)
            .where(Token.token_hash == hash_token(token))
        ).first()
        if row is None:
            raise Unauthorized("invalid token", code="token_invalid")
        tok, project = row
        now = utcnow()
        if tok.revoked_at is not None:
            raise Unauthorized(f"token {tok.name!r} was revoked", code="token_revoked")
        if tok.expires_at is not None and tok.expires_at <= now:
            raise Unauthorized(f"token {tok.name!r} has expired", code="token_expired")
        if tok.last_used_at is None or now - tok.last_used_at > LAST_USED_RESOLUTION:
            tok.last_used_at = now
        return Caller(project.id, project.name, tok.role, tok.name, tok.user_id)


# -- projects --------------------------------------------------------------------------------
def create_project(store: Store, caller: Caller, name: str) -> ProjectCreated:
    caller.require_admin()
    try:
        with store.session() as session:
            project = Project(name=name)
            session.add(project)
            session.flush()
            _row, token = _issue(session, project, MEMBER, f"{name}-member", FIRST_TOKEN_LIFETIME)
            return ProjectCreated(project=ProjectOut.model_validate(project), token=token)
    except IntegrityError:
        raise AlreadyExists(f"project {name!r} already exists", code="project_exists") from None


def list_projects(store: Store, caller: Caller) -> list[ProjectOut]:
    caller.require_admin()
    with store.session() as session:
        # Names starting with "_" are the platform's own (the warm capacity's): not tenants.
        rows = session.scalars(
            select(Project)
            .where(~Project.name.startswith("_", autoescape=True))
            .order_by(Project.name)
        )
        return [ProjectOut.model_validate(p) for p in rows]


def whoami(caller: Caller) -> WhoAmI:
    return WhoAmI(
        project=ProjectOut(id=caller.project_id, name=caller.project_name),
        role=caller.role,
        token_name=caller.token_name,
    )


# -- tokens ------------------------------------------------------------------------------------
def _live(project_id: str) -> Select[Token]:
    return select(Token).where(Token.project_id == project_id, Token.revoked_at.is_(None))


def list_tokens(store: Store, caller: Caller) -> list[TokenOut]:
    """The caller's project's tokens that are not revoked (expired ones too, marked so)."""
    with store.session() as session:
        rows = session.scalars(_live(caller.project_id).order_by(Token.created_at))
        return [TokenOut.model_validate(t) for t in rows]


def create_token(store: Store, caller: Caller, req: TokenCreate) -> TokenCreated:
    """A new token of the caller's project, with at most the caller's role, tied to the
    caller's user when the caller signed in as one (deleting the user revokes it too)."""
    if RANK[req.role] > RANK[caller.role]:
        raise Forbidden(
            f"a {caller.role} token cannot create a {req.role} token", code="role_too_high"
        )
    try:
        with store.session() as session:
            project = session.get_one(Project, caller.project_id)
            lifetime = dt.timedelta(seconds=req.expires_in_s)
            row, token = _issue(
                session, project, req.role, req.name, lifetime, user_id=caller.user_id
            )
            return TokenCreated(**TokenOut.model_validate(row).model_dump(), token=token)
    except IntegrityError:
        raise AlreadyExists(f"a token named {req.name!r} exists", code="token_exists") from None


def revoke_token(store: Store, caller: Caller, name: str) -> None:
    """Revoke a token of the caller's project; it gets 401 from now on."""
    with store.session() as session:
        row = session.scalars(_live(caller.project_id).where(Token.name == name)).first()
        if row is None:
            raise NotFound(f"token {name!r} not found", code="token_not_found")
        row.revoked_at = utcnow()


def ensure_admin(store: Store, existing_token: str | None) -> str | None:
    """Keep ``existing_token`` while it is a live admin token far from expiry (None); else
    issue a new admin token and revoke the previous ones: rotated, never duplicated."""
    now = utcnow()
    with store.session() as session:
        if existing_token:
            tok = session.scalars(
                select(Token).where(Token.token_hash == hash_token(existing_token))
            ).first()
            if (
                tok is not None
                and tok.role == ADMIN
                and tok.revoked_at is None
                and (tok.expires_at is None or tok.expires_at - now > ADMIN_TOKEN_RENEW_BEFORE)
            ):
                return None
        project = session.scalars(select(Project).where(Project.name == ADMIN)).first()
        if project is None:
            project = Project(name=ADMIN)
            session.add(project)
            session.flush()
        session.execute(
            update(Token)
            .where(
                Token.project_id == project.id,
                Token.name == ADMIN_TOKEN_NAME,
                Token.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        session.flush()
        _row, token = _issue(session, project, ADMIN, ADMIN_TOKEN_NAME, ADMIN_TOKEN_LIFETIME)
        return token

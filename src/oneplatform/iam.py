"""Projects, tokens and roles. Tokens are random, shown once, stored as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform.errors import AlreadyExists, Forbidden, Unauthorized
from oneplatform.schemas.projects import ProjectCreated, ProjectOut, WhoAmI
from oneplatform.store.db import Store
from oneplatform.store.models import Project, Token

ADMIN = "admin"
MEMBER = "member"
TOKEN_PREFIX = "onep_"


@dataclass(frozen=True)
class Caller:
    project_id: str
    project_name: str
    role: str
    token_name: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this needs an admin token", code="admin_required")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def _issue(session: Session, project: Project, role: str, name: str) -> str:
    token = new_token()
    session.add(Token(project_id=project.id, name=name, role=role, token_hash=hash_token(token)))
    return token


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
        return Caller(project.id, project.name, tok.role, tok.name)


def create_project(store: Store, caller: Caller, name: str) -> ProjectCreated:
    caller.require_admin()
    try:
        with store.session() as session:
            project = Project(name=name)
            session.add(project)
            session.flush()
            token = _issue(session, project, MEMBER, f"{name}-member")
            return ProjectCreated(project=ProjectOut.model_validate(project), token=token)
    except IntegrityError:
        raise AlreadyExists(f"project {name!r} already exists", code="project_exists") from None


def list_projects(store: Store, caller: Caller) -> list[ProjectOut]:
    caller.require_admin()
    with store.session() as session:
        rows = session.scalars(select(Project).order_by(Project.name))
        return [ProjectOut.model_validate(p) for p in rows]


def whoami(caller: Caller) -> WhoAmI:
    return WhoAmI(
        project=ProjectOut(id=caller.project_id, name=caller.project_name),
        role=caller.role,
        token_name=caller.token_name,
    )


def ensure_admin(store: Store, existing_token: str | None) -> str | None:
    """Create the admin project and return a new admin token, unless ``existing_token``
    is still a valid admin token (then None)."""
    with store.session() as session:
        if existing_token:
            tok = session.scalars(
                select(Token).where(Token.token_hash == hash_token(existing_token))
            ).first()
            if tok is not None and tok.role == ADMIN:
                return None
        project = session.scalars(select(Project).where(Project.name == ADMIN)).first()
        if project is None:
            project = Project(name=ADMIN)
            session.add(project)
            session.flush()
        return _issue(session, project, ADMIN, "admin")

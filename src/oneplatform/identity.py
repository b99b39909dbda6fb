"""Platform users and the tokens they sign in for (the Keystone facade's service).

A user has a name in one project, a role (``admin`` only in the admin project) and a
password kept only as an Argon2id hash (argon2-cffi, RFC 9106's parameters). Signing in
issues an ordinary platform token (the ``tokens`` table, resolved by :func:`iam.authenticate`)
scoped to the user's project, with the user's role and a short lifetime. Every refusal of
a sign-in is the same :class:`Unauthorized`, whatever was wrong, so a caller learns nothing
of which users or projects exist; an unknown user costs the same hash as a wrong password.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Select, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from oneplatform import iam
from oneplatform.errors import AlreadyExists, InvalidInput, NotFound, Unauthorized
from oneplatform.iam import ADMIN, Caller
from oneplatform.schemas.users import UserCreate, UserCreated, UserOut
from oneplatform.store.db import Store
from oneplatform.store.models import Project, Token, User, utcnow

HASHER = PasswordHasher()  # Argon2id, 64 MiB, 3 passes, 4 lanes (RFC 9106, low memory)
# At most this many hashes at once: sign-ins need no token, and each hash takes 64 MiB.
HASHING = threading.BoundedSemaphore(4)
GENERATED_PASSWORD_BYTES = 24  # 32 URL-safe characters, 192 bits
AUTH_FAILED = "The request you have made requires authentication."
SIGN_IN_MARK = "-ks-"  # a sign-in's token is named USER-ks-<10 hex digits>
SIGN_IN_SUFFIX_HEX = 10
# A sign-in's token row is deleted this long after it expired (until then `onep token list`
# shows it, marked expired): clients sign in every hour, rows must not pile up.
SIGN_IN_KEPT_AFTER_EXPIRY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A token just issued by a sign-in; ``token`` is the secret, returned once."""

    token: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    project_id: str
    project_name: str
    role: str
    user_id: str
    user_name: str


@dataclass(frozen=True)
class Scope:
    """The project a sign-in asks for: by id, or by name (in the one domain)."""

    project_id: str | None = None
    project_name: str | None = None


# -- passwords -------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    with HASHING:
        return HASHER.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    """Argon2's own verification (it compares the digests in constant time)."""
    try:
        with HASHING:
            return HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A hash to verify against when there is no user, so both cost the same."""
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_urlsafe(16)))
    return _DUMMY[0]


# -- users (admin) ---------------------------------------------------------------------------
def _tenant(session: Session, name: str) -> Project:
    """A project users may belong to: any but the platform's own (names starting "_")."""
    project = None
    if "\x00" not in name:  # PostgreSQL refuses NUL in text: no such project
        project = session.scalars(select(Project).where(Project.name == name)).first()
    if project is None or project.name.startswith("_"):
        raise NotFound(f"project {name!r} not found", code="project_not_found")
    return project


def _out(user: User, project: Project) -> UserOut:
    return UserOut(
        id=user.id,
        name=user.name,
        project=project.name,
        role=user.role,
        created_at=user.created_at,
    )


def create_user(store: Store, caller: Caller, project: str, req: UserCreate) -> UserCreated:
    """A user of ``project`` (admin only); the password is generated unless given, and
    returned once only when generated."""
    caller.require_admin()
    if req.role == ADMIN and project != ADMIN:
        raise InvalidInput(
            "role admin is for users of the admin project only",
            code="role_not_allowed",
            role=req.role,
            project=project,
        )
    generated = None if req.password else secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    password_hash = hash_password(req.password or generated or "")
    try:
        with store.session() as session:
            proj = _tenant(session, project)
            user = User(
                project_id=proj.id, name=req.name, role=req.role, password_hash=password_hash
            )
            session.add(user)
            session.flush()
            return UserCreated(**_out(user, proj).model_dump(), password=generated)
    except IntegrityError:
        raise AlreadyExists(
            f"user {req.name!r} exists in project {project!r}", code="user_exists"
        ) from None


def list_users(store: Store, caller: Caller, project: str | None = None) -> list[UserOut]:
    """Every project's users, or one project's (admin only)."""
    caller.require_admin()
    with store.session() as session:
        query = select(User, Project).join(Project, Project.id == User.project_id)
        if project is not None:
            query = query.where(Project.id == _tenant(session, project).id)
        rows = session.execute(query.order_by(Project.name, User.name)).all()
        return [_out(user, proj) for user, proj in rows]


def delete_user(store: Store, caller: Caller, project: str, name: str) -> None:
    """Delete a user (admin only); the tokens it signed in for are revoked with it."""
    caller.require_admin()
    with store.session() as session:
        proj = _tenant(session, project)
        user = (
            session.scalars(
                select(User).where(User.project_id == proj.id, User.name == name)
            ).first()
            if "\x00" not in name
            else None
        )
        if user is None:
            raise NotFound(f"user {name!r} not found in project {project!r}", code="user_not_found")
        session.execute(
            update(Token)
            .where(Token.user_id == user.id, Token.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        session.delete(user)


# -- signing in ------------------------------------------------------------------------------
def _scoped(query: Select[User, Project], scope: Scope) -> Select[User, Project]:
    if scope.project_id is not None:
        return query.where(Project.id == scope.project_id)
    if scope.project_name is not None:
        return query.where(Project.name == scope.project_name)
    raise Unauthorized(AUTH_FAILED, code="scope_required")


def password_login(
    store: Store,
    lifetime: dt.timedelta,
    scope: Scope,
    password: str,
    *,
    user_id: str | None = None,
    user_name: str | None = None,
) -> Issued:
    """A token for a user of the scope's project whose password matches; else 401."""
    query = _scoped(select(User, Project).join(Project, Project.id == User.project_id), scope)
    if user_id is not None:
        query = query.where(User.id == user_id)
    elif user_name is not None:
        query = query.where(User.name == user_name)
    else:
        raise Unauthorized(AUTH_FAILED, code="user_required")
    with store.session() as session:
        row = session.execute(query).first()
        stored = row[0].password_hash if row is not None else _dummy_hash()
        if not password_matches(stored, password) or row is None:
            raise Unauthorized(AUTH_FAILED, code="auth_failed")
        user, project = row
        if project.name.startswith("_"):
            raise Unauthorized(AUTH_FAILED, code="auth_failed")
        if HASHER.check_needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        now = utcnow()
        return _issue(session, project, user.role, user, now, now + lifetime)


def token_login(store: Store, lifetime: dt.timedelta, token: str, scope: Scope) -> Issued:
    """A new token for a valid token's project, role and user, expiring no later than it;
    a scope naming another project is refused (401)."""
    caller = iam.authenticate(store, token)  # 401 for an unknown, expired or revoked one
    if scope.project_id not in (None, caller.project_id) or scope.project_name not in (
        None,
        caller.project_name,
    ):
        raise Unauthorized(AUTH_FAILED, code="scope_mismatch")
    with store.session() as session:
        old = session.scalars(select(Token).where(Token.token_hash == iam.hash_token(token))).one()
        project = session.get_one(Project, old.project_id)
        user = session.get(User, old.user_id) if old.user_id else None
        now = utcnow()
        expires = now + lifetime
        if old.expires_at is not None:
            expires = min(expires, old.expires_at)
        # A token made without a user (`onep token create`) stands for its own user.
        return _issue(session, project, old.role, user or old, now, expires)


def _issue(
    session: Session,
    project: Project,
    role: str,
    who: User | Token,
    now: dt.datetime,
    expires_at: dt.datetime,
) -> Issued:
    """A platform token named after ``who``, tied to it when it is a user. Sign-ins of the
    project that expired over a day ago are deleted on the way."""
    session.execute(
        delete(Token)
        .where(
            Token.project_id == project.id,
            Token.name.like(f"%{SIGN_IN_MARK}{'_' * SIGN_IN_SUFFIX_HEX}"),
            Token.expires_at < now - SIGN_IN_KEPT_AFTER_EXPIRY,
        )
        .execution_options(synchronize_session=False)
    )
    token = iam.new_token()
    row = Token(
        created_at=now,
        project_id=project.id,
        name=f"{who.name[:40]}{SIGN_IN_MARK}{secrets.token_hex(SIGN_IN_SUFFIX_HEX // 2)}",
        role=role,
        token_hash=iam.hash_token(token),
        expires_at=expires_at,
        user_id=who.id if isinstance(who, User) else None,
    )
    session.add(row)
    session.flush()
    return Issued(token, now, expires_at, project.id, project.name, role, who.id, who.name)

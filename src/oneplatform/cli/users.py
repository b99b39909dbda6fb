"""`onep user`: platform users (admin), who sign in with OpenStack's clients (/identity)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from oneplatform.cli.output import Format, OutputOpt, WideOpt, api_errors, console, emit, fail
from oneplatform.sdk.client import Client

user_app = typer.Typer(
    help="Platform users (admin): a name and password in one project, for OpenStack's "
    "clients (Keystone v3 at /identity).",
    no_args_is_help=True,
)
ProjectOpt = Annotated[str, typer.Option("--project", "-p", help="The user's project.")]


def _password_from_stdin() -> str:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise fail("--password-stdin: no password on standard input", code=2)
    return password


@user_app.command("create")
def user_create(
    name: str,
    project: ProjectOpt,
    role: Annotated[
        str, typer.Option(help="member, reader (read only), or admin (admin project only).")
    ] = "member",
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the password from standard input's first line."
        ),
    ] = False,
    output: Format = OutputOpt,
) -> None:
    """Create a user of a project. Its password is generated and shown once (unless
    --password-stdin); the platform keeps only an Argon2id hash of it."""
    password = _password_from_stdin() if password_stdin else None
    with Client.from_home() as c, api_errors():
        created = c.users.create(name, project, role=role, password=password)
    if output is Format.json:
        emit(created, output, ())
        return
    console.print(f"user {created.name} ({created.role}) in project {created.project}")
    if created.password is not None:
        console.print(f"password (shown once): {created.password}")


@user_app.command("list")
def user_list(
    project: Annotated[
        str | None, typer.Option("--project", "-p", help="Only this project's users.")
    ] = None,
    output: Format = OutputOpt,
    wide: bool = WideOpt,
) -> None:
    """Users (never their passwords)."""
    with Client.from_home() as c, api_errors():
        rows = c.users.list(project)
    emit(rows, output, ("name", "project", "role", "created_at", "id"), wide=wide)


@user_app.command("delete")
def user_delete(name: str, project: ProjectOpt) -> None:
    """Delete a user; the tokens it signed in for are revoked at once."""
    with Client.from_home() as c, api_errors():
        c.users.delete(name, project)
    console.print(f"deleted user {name} of project {project}")

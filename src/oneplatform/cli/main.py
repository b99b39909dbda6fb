"""`onep`: run the platform and drive it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from oneplatform.cli.clusters import cluster_app
from oneplatform.cli.db import datastore_app, db_app
from oneplatform.cli.nodes import node_app
from oneplatform.cli.output import (
    Format,
    OutputOpt,
    WideOpt,
    api_errors,
    console,
    emit,
    fail,
    wait_with_progress,
)
from oneplatform.cli.quotas import quota_app
from oneplatform.cli.users import user_app
from oneplatform.cli.warm import warm_app
from oneplatform.schemas.compute import ComputeType, FlavorCreate, HostCreate
from oneplatform.schemas.instances import InstanceAccepted
from oneplatform.schemas.operations import Intent
from oneplatform.sdk.client import Client, OperationFailed

app = typer.Typer(
    help="OnePlatform: databases on containers, VMs and bare metal.", no_args_is_help=True
)
instance_app = typer.Typer(help="Compute instances.", no_args_is_help=True)
flavor_app = typer.Typer(help="Flavors: a compute type and a size.", no_args_is_help=True)
image_app = typer.Typer(help="Datastore images.", no_args_is_help=True)
ct_app = typer.Typer(help="Compute types and their capabilities.", no_args_is_help=True)
op_app = typer.Typer(help="Long-running operations.", no_args_is_help=True)
project_app = typer.Typer(help="Projects and tokens (admin).", no_args_is_help=True)
token_app = typer.Typer(help="Your project's API tokens.", no_args_is_help=True)
pool_app = typer.Typer(help="Pools of hosts (admin).", no_args_is_help=True)
host_app = typer.Typer(help="Hosts (admin).", no_args_is_help=True)
for sub, name in (
    (db_app, "db"),
    (datastore_app, "datastore"),
    (instance_app, "instance"),
    (node_app, "node"),
    (cluster_app, "cluster"),
    (warm_app, "warm"),
    (flavor_app, "flavor"),
    (image_app, "image"),
    (ct_app, "compute-type"),
    (op_app, "operation"),
    (project_app, "project"),
    (token_app, "token"),
    (user_app, "user"),
    (quota_app, "quota"),
    (pool_app, "pool"),
    (host_app, "host"),
):
    app.add_typer(sub, name=name)

INSTANCE_COLUMNS = ("name", "status", "compute_type", "flavor", "host", "endpoints")
OP_COLUMNS = ("id", "kind", "status", "progress", "error_message")
WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="Wait until the work is done.")]


def client() -> Client:
    return Client.from_home()


# -- running the platform ----------------------------------------------------------------------
@app.command()
def up(
    port: Annotated[int | None, typer.Option(help="API port (default 8470).")] = None,
    host: Annotated[str | None, typer.Option(help="API address (default 127.0.0.1).")] = None,
    api_only: Annotated[
        bool,
        typer.Option(
            "--api-only",
            help="Serve the API alone: no workers, no background loops, no host services "
            "(`onep worker` runs those two; the host services come from at most one full "
            "`onep up` per machine).",
        ),
    ] = False,
) -> None:
    """Run the API, workers, background loops and host services in the foreground (the
    embedded defaults; ONEP_DATABASE_URL names a shared PostgreSQL store)."""
    from oneplatform.config import Settings
    from oneplatform.server import run_up

    overrides = {k: v for k, v in (("port", port), ("host", host)) if v is not None}
    settings = Settings(**overrides)  # type: ignore[arg-type]

    def announce(url: str, home: str, builds: list[str], enrolling: list[str]) -> None:
        console.print(f"[bold green]OnePlatform is up[/] at {url}  (state in {home})")
        console.print(
            "  onep instance create web1 --flavor container.small --image postgresql-15 --wait"
        )
        console.print("  onep instance list    onep flavor list    onep compute-type list")
        console.print(f"  API docs: {url}/docs    stop with Ctrl-C")
        if enrolling:
            console.print(
                f"  enrolling {len(enrolling)} bare-metal node(s) of the lab: each is verified, "
                "inspected and cleaned, then available (a few minutes); follow with "
                "`onep node list`"
            )
        if builds:
            console.print(
                f"  building {len(builds)} image(s) on first use: "
                "onep operation list shows progress"
            )
            _follow_builds(url, home, builds)

    run_up(settings, announce, api_only=api_only)


def _follow_builds(url: str, home: str, op_ids: list[str]) -> None:
    """Print image build progress lines in the background while the server runs."""
    import threading
    import time
    from pathlib import Path

    def follow() -> None:
        time.sleep(0.5)
        with Client.from_home(Path(home)) as c:
            last: dict[str, str] = {}
            pending = set(op_ids)
            while pending:
                for op_id in sorted(pending):
                    try:
                        op = c.operations.get(op_id)
                    except Exception:
                        continue
                    running = next((s for s in op.steps if s.status == "running"), None)
                    line = (
                        f"{op.status} {running.name}: {running.message}" if running else op.status
                    )
                    if last.get(op_id) != line:
                        last[op_id] = line
                        console.print(f"  image build {op_id[:8]}: {line}", highlight=False)
                    if op.status in ("SUCCEEDED", "FAILED"):
                        pending.discard(op_id)
                time.sleep(1.0)

    threading.Thread(target=follow, daemon=True, name="build-progress").start()


@app.command()
def worker(count: Annotated[int, typer.Option(help="Worker threads.")] = 2) -> None:
    """Run workers and the background loops against the store (ONEP_DATABASE_URL), no API:
    workers claim operations with leases; each loop runs in one process at a time."""
    from oneplatform.config import Settings
    from oneplatform.server import run_worker

    run_worker(Settings(), count)


@app.command()
def status() -> None:
    """Exit 0 when the platform answers, 1 otherwise."""
    with client() as c:
        try:
            who = c.projects.whoami()
        except Exception as exc:
            raise fail(f"the platform at {c.url} is not reachable or refused us: {exc}") from None
        console.print(f"up at {c.url} (project {who.project.name}, role {who.role})")


@app.command()
def ui() -> None:
    """Print a one-time URL that logs a browser into the web dashboard as your token (valid
    for two minutes, once)."""
    with client() as c, api_errors():
        ticket = c.dashboard.ticket()
        typer.echo(c.url.rstrip("/") + ticket.login_path)


# -- instances ---------------------------------------------------------------------------------
def _finish(c: Client, accepted: InstanceAccepted, wait: bool, fmt: Format) -> None:
    op, ident, name = accepted.operation, accepted.instance.id, accepted.instance.name
    if wait:
        try:
            wait_with_progress(c, op, quiet=False)
        except OperationFailed as failed:
            raise fail(
                f"{failed.operation.kind} failed: {failed.message} "
                f"[{failed.code}] (operation {op.id})"
            ) from None
        if op.intent is Intent.DELETE:
            if fmt is Format.json:
                emit(c.operations.get(op.id), fmt, OP_COLUMNS)
            else:
                console.print(f"deleted {name}")
            return
        emit(c.instances.get(ident), fmt, INSTANCE_COLUMNS)
        return
    if fmt is Format.json:
        emit(op, fmt, OP_COLUMNS)
    else:
        console.print(f"{op.kind} accepted: operation {op.id}  (onep operation show {op.id})")


@instance_app.command("create")
def instance_create(
    name: str,
    flavor: Annotated[str, typer.Option(help="Flavor name; it picks the compute type.")],
    image: Annotated[str, typer.Option(help="Image name, e.g. postgresql-15.")],
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Create an instance on a host the scheduler picks for the flavor."""
    with client() as c, api_errors():
        accepted = c.instances.create(name, flavor=flavor, image=image)
        _finish(c, accepted, wait, output)


@instance_app.command("list")
def instance_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with client() as c, api_errors():
        emit(c.instances.list(), output, INSTANCE_COLUMNS, wide=wide)


@instance_app.command("show")
def instance_show(name: str, output: Format = OutputOpt) -> None:
    with client() as c, api_errors():
        emit(
            c.instances.get(name),
            output,
            ("id", *INSTANCE_COLUMNS, "power_state", "status_message"),
        )


def _action(name: str, action: str, wait: bool, output: Format, force: bool = False) -> None:
    with client() as c, api_errors():
        accepted = c.instances.action(name, action, force=force)
        _finish(c, accepted, wait, output)


@instance_app.command("stop")
def instance_stop(name: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    _action(name, "stop", wait, output)


@instance_app.command("start")
def instance_start(name: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    _action(name, "start", wait, output)


@instance_app.command("reboot")
def instance_reboot(
    name: str,
    force: Annotated[
        bool, typer.Option("--force", help="Reset without asking the guest (forced_reboot).")
    ] = False,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Reboot gracefully, or reset with --force where the compute type can."""
    _action(name, "reboot", wait, output, force=force)


@instance_app.command("resize")
def instance_resize(
    name: str,
    flavor: Annotated[str, typer.Option(help="A flavor of the instance's compute type.")],
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Change vCPUs and RAM in place (compute types with the resize capability)."""
    with client() as c, api_errors():
        _finish(c, c.instances.resize(name, flavor), wait, output)


@instance_app.command("delete")
def instance_delete(name: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    """Delete the instance and its backend objects."""
    with client() as c, api_errors():
        accepted = c.instances.delete(name)
        _finish(c, accepted, wait, output)


@instance_app.command("console")
def instance_console(
    name: str, tail: Annotated[int, typer.Option(help="Last N lines.")] = 200
) -> None:
    """Print the instance's console log."""
    with client() as c, api_errors():
        sys.stdout.write(c.instances.console(name, tail=tail))


@instance_app.command("exec")
def instance_exec(
    name: str,
    command: Annotated[list[str], typer.Argument(help="Command and arguments (after --).")],
    output: Format = OutputOpt,
) -> None:
    """Run a command inside the instance (containers only: the exec capability)."""
    with client() as c, api_errors():
        result = c.instances.exec(name, command)
        if output is Format.json:
            emit(result, output, ("exit_code", "output"))
        else:
            sys.stdout.write(result.output)
        raise typer.Exit(result.exit_code)


@instance_app.command("snapshot")
def instance_snapshot(
    name: str, snapshot_name: str, wait: WaitOpt = False, output: Format = OutputOpt
) -> None:
    """Snapshot the instance's disks (compute types with the snapshot capability)."""
    with client() as c, api_errors():
        accepted = c.instances.snapshot(name, snapshot_name)
        _finish(c, accepted, wait, output)


# -- catalog -----------------------------------------------------------------------------------
@flavor_app.command("list")
def flavor_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with client() as c, api_errors():
        emit(
            c.flavors.list(),
            output,
            ("name", "compute_type", "vcpus", "ram_mb", "disk_gb"),
            wide=wide,
        )


@flavor_app.command("create")
def flavor_create(
    name: str,
    compute_type: Annotated[ComputeType, typer.Option("--compute-type")],
    vcpus: Annotated[int, typer.Option()],
    ram_mb: Annotated[int, typer.Option("--ram-mb")],
    disk_gb: Annotated[int, typer.Option("--disk-gb")],
    trait: Annotated[list[str] | None, typer.Option(help="Required host trait.")] = None,
    output: Format = OutputOpt,
) -> None:
    """Create a flavor (admin)."""
    with client() as c, api_errors():
        body = FlavorCreate(
            name=name,
            compute_type=compute_type,
            vcpus=vcpus,
            ram_mb=ram_mb,
            disk_gb=disk_gb,
            traits=trait or [],
        )
        emit(c.flavors.create(body), output, ("name", "compute_type", "vcpus", "ram_mb"))


@ct_app.command("list")
def compute_type_list(output: Format = OutputOpt) -> None:
    """Compute types and which capabilities each has (with the reason when not)."""
    with client() as c, api_errors():
        types = c.compute_types.list()
        if output is Format.json:
            emit(types, output, ())
            return
        for ct in types:
            console.print(f"[bold]{ct.name.value}[/] ({ct.driver})")
            for cap in ct.capabilities:
                mark = "[green]yes[/]" if cap.supported else "[red]no[/] "
                text = cap.reason or cap.description + (f" ({cap.limit})" if cap.limit else "")
                console.print(f"  {mark} {cap.name:<15} {text}", highlight=False)


@image_app.command("list")
def image_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with client() as c, api_errors():
        emit(
            c.images.list(),
            output,
            ("name", "status", "ports", "size_bytes", "description"),
            wide=wide,
        )


@image_app.command("build")
def image_build(
    name: str,
    wait: Annotated[bool, typer.Option("--wait/--no-wait")] = True,
    output: Format = OutputOpt,
) -> None:
    """Build an image from its recipe (instant when cached) and import it into the hosts."""
    with client() as c, api_errors():
        accepted = c.images.build(name)
        if accepted.operation is not None and wait:
            try:
                wait_with_progress(c, accepted.operation, quiet=False)
            except OperationFailed as failed:
                raise fail(f"image build failed: {failed.message}") from None
        emit(c.images.get(name), output, ("name", "status", "content_hash", "size_bytes"))


@op_app.command("show")
def operation_show(operation_id: str, output: Format = OutputOpt) -> None:
    with client() as c, api_errors():
        op = c.operations.get(operation_id)
        if output is Format.json:
            emit(op, output, ())
            return
        emit(op, output, OP_COLUMNS)
        for step in op.steps:
            console.print(f"  {step.status:<8} {step.name:<14} {step.message}", highlight=False)


@op_app.command("list")
def operation_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with client() as c, api_errors():
        emit(
            c.operations.list(),
            output,
            ("id", "kind", "resource_id", "status", "progress"),
            wide=wide,
        )


@project_app.command("create")
def project_create(name: str, output: Format = OutputOpt) -> None:
    """Create a project; prints its first token once."""
    with client() as c, api_errors():
        created = c.projects.create(name)
        if output is Format.json:
            emit(created, output, ())
        else:
            console.print(f"project {created.project.name} ({created.project.id})")
            console.print(f"token (shown once): {created.token}")


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600s`` (or plain seconds) as seconds."""
    unit = text[-1:] if text[-1:] in DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in DURATION_UNITS else text
    if not number.isdigit():
        raise fail(f"--expires-in takes a number and a unit (s, m, h, d), e.g. 30d; not {text!r}")
    return int(number) * DURATION_UNITS[unit]


@token_app.command("create")
def token_create(
    name: str,
    role: Annotated[str, typer.Option(help="member, reader (read only) or admin.")] = "member",
    expires_in: Annotated[str, typer.Option(help="Lifetime, e.g. 30d, 12h.")] = "90d",
    output: Format = OutputOpt,
) -> None:
    """Create a token for your project (never with more than your own role); shown once."""
    with client() as c, api_errors():
        created = c.tokens.create(name, role=role, expires_in_s=_duration(expires_in))
        if output is Format.json:
            emit(created, output, ())
        else:
            console.print(f"token {created.name} ({created.role}, expires {created.expires_at})")
            console.print(f"token (shown once): {created.token}")


@token_app.command("list")
def token_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    """Your project's tokens (their names, roles and expiry; never the secrets)."""
    with client() as c, api_errors():
        columns = ("name", "role", "expires_at", "last_used_at", "created_at")
        emit(c.tokens.list(), output, columns, wide=wide)


@token_app.command("revoke")
def token_revoke(name: str) -> None:
    """Revoke a token: it is refused (401) from now on."""
    with client() as c, api_errors():
        c.tokens.revoke(name)
        console.print(f"revoked {name}")


@project_app.command("list")
def project_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with client() as c, api_errors():
        emit(c.projects.list(), output, ("id", "name"), wide=wide)


@pool_app.command("list")
def pool_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with client() as c, api_errors():
        emit(c.pools.list(), output, ("name", "compute_type", "settings"), wide=wide)


@host_app.command("list")
def host_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with client() as c, api_errors():
        emit(
            c.hosts.list(),
            output,
            ("name", "pool", "uri", "vcpus", "used_vcpus", "ram_mb", "used_ram_mb", "disk_gb"),
            wide=wide,
        )


@host_app.command("add")
def host_add(
    name: str,
    pool: Annotated[str, typer.Option(help="The pool it joins (its compute type's).")],
    uri: Annotated[
        str,
        typer.Option(
            help="How it is reached: ssh://USER@HOST[:PORT]/run/podman/podman.sock (Podman) "
            "or qemu+ssh://USER@HOST[:PORT]/system (libvirt)."
        ),
    ],
    bind_address: Annotated[
        str, typer.Option(help="The address its service ports are published on.")
    ] = "127.0.0.1",
    identity_file: Annotated[
        str | None,
        typer.Option(help="SSH private key (a path on the platform's machine) to log in with."),
    ] = None,
    host_key: Annotated[
        str | None,
        typer.Option(
            help="The host's SSH public key, e.g. the line of its ssh_host_ed25519_key.pub."
        ),
    ] = None,
    host_key_file: Annotated[
        Path | None, typer.Option(help="Read --host-key from this file (a .pub file).")
    ] = None,
    trait: Annotated[list[str] | None, typer.Option(help="A trait it offers.")] = None,
    zone: Annotated[str, typer.Option(help="Its failure domain: zone")] = "",
    rack: Annotated[str, typer.Option(help="Its failure domain: rack")] = "",
    output: Format = OutputOpt,
) -> None:
    """Add a host: the platform reaches it (over SSH for a remote one) and reads its capacity
    first; one that does not answer is not added."""
    if host_key_file is not None:
        host_key = host_key_file.read_text().strip()
    with client() as c, api_errors():
        fields: dict[str, Any] = {"bind_address": bind_address}  # the API judges it
        body = HostCreate.model_construct(
            name=name,
            pool=pool,
            uri=uri,
            identity_file=str(Path(identity_file).absolute()) if identity_file else None,
            host_key=host_key,
            traits=trait or [],
            zone=zone,
            rack=rack,
            **fields,
        )
        emit(c.hosts.create(body), output, ("name", "pool", "uri", "bind_address", "vcpus"))


if __name__ == "__main__":  # pragma: no cover
    app()

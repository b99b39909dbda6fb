"""`onep node`: bare-metal nodes (admin)."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from oneplatform.cli.output import (
    Format,
    OutputOpt,
    WideOpt,
    api_errors,
    emit,
    fail,
    wait_with_progress,
)
from oneplatform.schemas.nodes import NodeAccepted, NodeEnroll, PortTarget, ProvisioningNic
from oneplatform.sdk.client import Client, OperationFailed

node_app = typer.Typer(help="Bare-metal nodes (admin).", no_args_is_help=True)
power_app = typer.Typer(help="Switch a node's power through its BMC.", no_args_is_help=True)
node_app.add_typer(power_app, name="power")
# target_state: where a node in transition is going (an enrolling node: "available").
NODE_COLUMNS = ("name", "state", "target_state", "power_state", "instance", "pool", "last_error")
WaitOpt = Annotated[bool, typer.Option("--wait", "-w", help="Wait until the work is done.")]


def _finish(c: Client, accepted: NodeAccepted, wait: bool, fmt: Format) -> None:
    if wait:
        try:
            wait_with_progress(c, accepted.operation, quiet=False)
        except OperationFailed as failed:
            raise fail(
                f"{failed.operation.kind} failed: {failed.message} [{failed.code}]"
            ) from None
        emit(c.nodes.get(accepted.node.id), fmt, NODE_COLUMNS)
        return
    emit(accepted.node, fmt, NODE_COLUMNS)


def _port_map(entries: list[str]) -> dict[str, PortTarget]:
    out: dict[str, PortTarget] = {}
    for entry in entries:
        guest, sep, target = entry.partition("=")
        host, sep2, port = target.rpartition(":")
        if not sep or not sep2 or not guest.isdigit() or not port.isdigit():
            raise fail(f"--port takes GUEST=HOST:PORT, got {entry!r}")
        out[guest] = PortTarget(host=host, port=int(port))
    return out


def _provisioning(entry: str | None) -> ProvisioningNic | None:
    if entry is None:
        return None
    mac, sep, address = entry.partition("=")
    if not sep:
        raise fail(f"--provisioning takes MAC=ADDRESS/PREFIX, got {entry!r}")
    try:
        return ProvisioningNic.model_validate({"mac": mac.lower(), "address": address})
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]) for e in exc.errors())
        raise fail(f"--provisioning {entry!r}: {problems}") from None


@node_app.command("enroll")
def node_enroll(
    name: str,
    bmc_address: Annotated[str, typer.Option(help="Redfish service root, e.g. http://h:8000")],
    system_id: Annotated[str, typer.Option(help="Redfish system id")],
    username: Annotated[str, typer.Option(help="BMC user")] = "",
    password: Annotated[str, typer.Option(help="BMC password")] = "",
    pool: Annotated[str, typer.Option(help="Bare-metal pool")] = "baremetal",
    port: Annotated[list[str] | None, typer.Option(help="GUEST=HOST:PORT reachability")] = None,
    provisioning: Annotated[
        str | None,
        typer.Option(
            help="MAC=ADDRESS/PREFIX: the NIC and address its deploy ramdisk uses on the "
            "provisioning network"
        ),
    ] = None,
    zone: Annotated[str, typer.Option(help="Its failure domain: zone")] = "",
    rack: Annotated[str, typer.Option(help="Its failure domain: rack")] = "",
    provide: Annotated[bool, typer.Option("--provide/--no-provide")] = True,
    wait: WaitOpt = False,
    output: Format = OutputOpt,
) -> None:
    """Enroll a node: verify its BMC, inspect it, and clean it into `available`."""
    with Client.from_home() as c, api_errors():
        body = NodeEnroll.model_construct(
            name=name,
            pool=pool,
            bmc_address=bmc_address,
            bmc_system_id=system_id,
            bmc_username=username,
            bmc_password=password,
            port_map=_port_map(port or []),
            provisioning=_provisioning(provisioning),
            zone=zone,
            rack=rack,
            provide=provide,
        )
        _finish(c, c.nodes.enroll(body), wait, output)


@node_app.command("list")
def node_list(output: Format = OutputOpt, wide: bool = WideOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.nodes.list(), output, NODE_COLUMNS, wide=wide)


@node_app.command("show")
def node_show(name: str, output: Format = OutputOpt) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.nodes.get(name), output, ("id", *NODE_COLUMNS, "bmc_address", "inventory"))


def _act(name: str, action: str, wait: bool, output: Format) -> None:
    with Client.from_home() as c, api_errors():
        _finish(c, c.nodes.act(name, action), wait, output)


@node_app.command("manage")
def node_manage(name: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    """Verify the BMC and move the node to `manageable`."""
    _act(name, "manage", wait, output)


@node_app.command("inspect")
def node_inspect(name: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    """Read the node's hardware over its BMC."""
    _act(name, "inspect", wait, output)


@node_app.command("provide")
def node_provide(name: str, wait: WaitOpt = False, output: Format = OutputOpt) -> None:
    """Clean the node (wipe its disks' partition tables) and make it `available`."""
    _act(name, "provide", wait, output)


def _power(name: str, action: str, output: Format) -> None:
    with Client.from_home() as c, api_errors():
        emit(c.nodes.power(name, action), output, NODE_COLUMNS)


@power_app.command("on")
def power_on(name: str, output: Format = OutputOpt) -> None:
    _power(name, "on", output)


@power_app.command("off")
def power_off(name: str, output: Format = OutputOpt) -> None:
    _power(name, "off", output)


@power_app.command("reboot")
def power_reboot(name: str, output: Format = OutputOpt) -> None:
    """Power-cycle the node through its BMC."""
    _power(name, "reboot", output)

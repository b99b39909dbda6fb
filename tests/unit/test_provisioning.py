"""The provisioning network: what a node's deploy ramdisk is told, and all it can reach."""

from __future__ import annotations

import json

import pytest
import typer
from fastapi.testclient import TestClient
from pydantic import ValidationError

from oneplatform import iam
from oneplatform.api.app import create_deploy_app
from oneplatform.api.deps import Platform
from oneplatform.baremetal import media
from oneplatform.baremetal.deploy_iso import isolinux_cfg, network_args
from oneplatform.baremetal.ramdisk import deploy_listener, node_base_url
from oneplatform.cli.nodes import _provisioning
from oneplatform.config import Settings
from oneplatform.errors import PlatformError
from oneplatform.schemas.nodes import NodeEnroll, ProvisioningNic
from oneplatform.store.db import Store
from tests.fakes import CLOUD, FakeNode
from tests.world import World

NIC = ProvisioningNic.model_validate({"mac": "52:54:00:6f:71:07", "address": "10.95.0.17/24"})


def _capture_cmdlines(world: World, fake: FakeNode) -> list[str]:
    """The kernel command line of every ISO the node boots (the fake ISO holds just that)."""
    seen: list[str] = []
    inner = fake.on_media_boot
    assert inner is not None

    def capture(node: FakeNode, url: str) -> None:
        token = url.split("/v1/deploy/")[1].split("/")[0]
        path = media.iso_file(world.store, world.settings, token)
        assert path is not None
        seen.append(path.read_text())
        inner(node, url)

    fake.on_media_boot = capture
    return seen


def test_the_ramdisk_is_told_its_nic_and_the_deploy_listener(world: World) -> None:
    op_id = world.enroll("n1", provisioning=NIC)
    fake = CLOUD.nodes["n1"]
    world.play_the_ramdisk(fake)
    seen = _capture_cmdlines(world, fake)
    assert world.drive(op_id).status == "SUCCEEDED"
    (cmdline,) = seen  # the clean that makes the node available
    assert cmdline.startswith(f"http://10.95.0.1:{world.settings.deploy_port}/v1/deploy/")
    assert cmdline.endswith(" onep.mac=52:54:00:6f:71:07 onep.ip=10.95.0.17/24")
    with world.store.session() as session:
        from oneplatform.baremetal.nodes import to_out_node
        from oneplatform.baremetal.reach import find_node

        assert to_out_node(session, find_node(session, "n1")).provisioning == NIC


def test_without_a_provisioning_network_a_deploy_fails_and_says_why(world: World) -> None:
    world.settings.deploy_host = None  # and no lab file
    op = world.drive(world.enroll("n1"))
    assert op.status == "FAILED"
    node = world.node("n1")
    assert "failed" in node.state and "ONEP_DEPLOY_HOST" in node.last_error


@pytest.mark.parametrize(
    "nic",
    [
        {"mac": "52:54:00:6F:71:07", "address": "10.95.0.17/24"},  # upper case
        {"mac": "52:54:00:6f:71:07 init=/bin/sh", "address": "10.95.0.17/24"},
        {"mac": "52:54:00:6f:71:07", "address": "10.95.0.17/24 init=/bin/sh"},
        {"mac": "52:54:00:6f:71:07", "address": "fd00::5/64"},
        {"mac": "52:54:00:6f:71:07", "address": "10.95.0.300/24"},
        {"mac": "52:54:00:6f:71:07"},
    ],
)
def test_a_bad_provisioning_nic_is_refused_at_enroll(nic: dict[str, str]) -> None:
    body = {
        "name": "n1",
        "bmc_address": "http://127.0.0.1:8000",
        "bmc_system_id": "abc",
        "provisioning": nic,
    }
    with pytest.raises(ValidationError):
        NodeEnroll.model_validate(body)


def test_network_args_are_checked_again_where_they_become_a_command_line() -> None:
    assert network_args("52:54:00:6f:71:07", "10.95.0.17/24") == (
        "onep.mac=52:54:00:6f:71:07 onep.ip=10.95.0.17/24"
    )
    for mac, address in (("52:54:00:6f:71:07", "10.95.0.17/24 x=y"), ("x y", "10.95.0.17/24")):
        with pytest.raises(ValueError):
            network_args(mac, address)
    cfg = isolinux_cfg("http://10.95.0.1:8469/v1/deploy/t", network_args(NIC.mac, "10.95.0.9/24"))
    assert cfg.splitlines()[-1].endswith(
        "onep.deploy_url=http://10.95.0.1:8469/v1/deploy/t "
        "onep.mac=52:54:00:6f:71:07 onep.ip=10.95.0.9/24"
    )


def test_the_deploy_listener_is_configured_or_the_labs_gateway(settings: Settings) -> None:
    assert deploy_listener(settings) == ("10.95.0.1", settings.deploy_port)
    settings.deploy_host = None
    assert deploy_listener(settings) is None
    with pytest.raises(PlatformError) as refused:
        node_base_url(settings)
    assert refused.value.code == "no_deploy_network"
    settings.bmlab_file.write_text(json.dumps({"provisioning": {"gateway": "10.95.0.1"}}))
    settings.deploy_port = 8411
    assert node_base_url(settings) == "http://10.95.0.1:8411"
    settings.bmlab_file.write_text(json.dumps({"provisioning": {"gateway": "10.95.0.1; x"}}))
    with pytest.raises(ValueError):
        deploy_listener(settings)


def test_the_deploy_listener_serves_the_deploy_routes_alone(
    store: Store, settings: Settings
) -> None:
    token = iam.ensure_admin(store, None)
    assert token is not None
    with TestClient(create_deploy_app(Platform(store, settings))) as client:
        gone = client.get("/v1/deploy/not-a-token/manifest")
        assert (gone.status_code, gone.text) == (404, "unknown or expired deploy token\n")
        admin = {"Authorization": f"Bearer {token}"}  # even the admin finds nothing else
        for path in ("/v1/projects", "/v1/instances", "/v1/nodes", "/healthz", "/docs"):
            assert client.get(path, headers=admin).status_code == 404, path
        assert client.get("/openapi.json").status_code == 404


def test_the_cli_takes_mac_equals_address(capsys: pytest.CaptureFixture[str]) -> None:
    assert _provisioning("52:54:00:6F:71:07=10.95.0.17/24") == NIC
    assert _provisioning(None) is None
    for bad in ("52:54:00:6f:71:07", "52:54:00:6f:71:07=10.95.0.17"):
        with pytest.raises(typer.Exit):
            _provisioning(bad)
        assert "--provisioning" in capsys.readouterr().err


@pytest.mark.parametrize("ca_file", [None, "/etc/oneplatform/bmc-ca.pem"])
def test_a_bmcs_certificate_is_verified_against_the_ca_asked(
    world: World, ca_file: str | None
) -> None:
    """ONEP_BMC_CA_FILE, else the system's CAs: never an unchecked https:// BMC."""
    from pathlib import Path

    from oneplatform.baremetal.reach import find_node, node_driver

    world.settings.bmc_ca_file = Path(ca_file) if ca_file else None
    world.enroll("n1", provide=False)
    with world.store.session() as session:
        bmc = node_driver(session, world.settings, find_node(session, "n1")).bmc()
    assert bmc.verify_tls == (ca_file or True)

"""The Redfish BMC driver against the sushy-tools emulator over libvirt domains (the lab of
``scripts/bmlab.sh``). Everything the driver does goes through Redfish; virsh only checks what
happened to the domain behind the emulated BMC.

Only lab node 0 is ever powered on (TCG on two cores), and it is off again after each test.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from oneplatform.baremetal.bmc import (
    BmcAuthFailed,
    BmcNotAllowed,
    BootDevice,
    BootMode,
    MediaType,
    PowerAction,
    PowerState,
)
from oneplatform.baremetal.redfish import RedfishBmc
from oneplatform.errors import BackendUnavailable
from tests.integration.conftest import BM_ISO_MARKER, BMLAB_DIR, find_free_port, virsh

pytestmark = pytest.mark.integration

POWER_TIMEOUT_S = 120.0
BOOT_TIMEOUT_S = 180.0  # SeaBIOS + ISOLINUX under TCG on a busy machine


def bmc_of(node: dict[str, object], **overrides: str) -> RedfishBmc:
    fields = {
        "address": str(node["bmc_url"]),
        "username": str(node["username"]),
        "password": str(node["password"]),
        "system_id": str(node["system_id"]),
    } | overrides
    return RedfishBmc(**fields)


def domain_xml(name: str) -> ET.Element:
    return ET.fromstring(virsh("dumpxml", "--inactive", name))


def first_boot_device(name: str) -> str | None:
    """The libvirt device type (disk, cdrom, …) with boot order 1, per the domain XML."""
    for disk in domain_xml(name).iterfind("devices/disk"):
        boot = disk.find("boot")
        if boot is not None and boot.get("order") == "1":
            return disk.get("device")
    return None


def cdrom_source(name: str) -> str | None:
    for disk in domain_xml(name).iterfind("devices/disk[@device='cdrom']"):
        source = disk.find("source")
        if source is not None:
            return source.get("file")
    return None


def wait_until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(1.0)


def test_inspect_reports_the_domain(bm_node: dict[str, object]) -> None:
    name = str(bm_node["name"])
    with bmc_of(bm_node) as bmc:
        inv = bmc.inspect()
    xml = domain_xml(name)
    assert inv.cpus == int(xml.findtext("vcpu") or 0) == 1
    assert inv.cpu_arch == "x86_64"
    memory_kib = int(xml.findtext("memory") or 0)
    assert memory_kib == 1536 * 1024
    # Redfish reports memory in whole GiB: 1536 MiB reads as 1 GiB.
    assert inv.memory_mb == memory_kib // (1024 * 1024) * 1024
    capacity = int(virsh("vol-info", "--bytes", "--pool", "default", str(bm_node["disk_volume"]))
                   .split("Capacity:")[1].split()[0])  # fmt: skip
    assert (str(bm_node["disk_volume"]), capacity // 2**30) in inv.disks
    assert capacity // 2**30 == 8
    macs = [m.get("address") for m in xml.iterfind("devices/interface/mac")]
    provisioning = bm_node["provisioning"]
    assert isinstance(provisioning, dict)
    # The node's own NIC (its published ports) and its provisioning NIC, in that order.
    assert list(inv.nics) == macs == [bm_node["mac"], provisioning["mac"]]
    assert inv.boot_modes == (BootMode.BIOS,)  # SeaBIOS: Redfish says Legacy
    assert MediaType.CD in inv.virtual_media_types
    assert inv.power_state is PowerState.STOPPED
    assert inv.to_dict()["disks"][0]["size_gb"] == inv.disks[0].size_gb


def test_power_on_reboot_and_off(bm_node: dict[str, object]) -> None:
    name = str(bm_node["name"])
    with bmc_of(bm_node) as bmc:
        assert bmc.allowed_power_actions() == frozenset(PowerAction)
        assert bmc.power_state() is PowerState.STOPPED
        bmc.set_power(PowerAction.FORCE_OFF)  # already off: silent
        bmc.set_power("on")
        bmc.wait_for_power(PowerState.RUNNING, POWER_TIMEOUT_S)
        assert virsh("domstate", name) == "running"
        first_id = virsh("domid", name)

        bmc.set_power("on")  # already on: silent, the same QEMU process runs on
        assert virsh("domid", name) == first_id

        bmc.set_power(PowerAction.FORCE_REBOOT)  # the emulator destroys and starts the domain
        bmc.wait_for_power(PowerState.RUNNING, POWER_TIMEOUT_S)
        wait_until(lambda: virsh("domstate", name) == "running", POWER_TIMEOUT_S, "running")
        assert virsh("domid", name) != first_id

        bmc.set_power(PowerAction.REBOOT)  # graceful: accepted (no OS here to act on it)
        assert bmc.power_state() is PowerState.RUNNING

        bmc.set_power(PowerAction.FORCE_OFF)
        bmc.wait_for_power(PowerState.STOPPED, POWER_TIMEOUT_S)
        assert virsh("domstate", name) == "shut off"
        bmc.set_power("off")  # already off: silent


def test_boot_from_virtual_media_once_then_disk(
    bm_node: dict[str, object], bm_media_server: dict[str, object]
) -> None:
    """The deploy sequence: insert an ISO by URL, boot from CD once, then disk persistently."""
    name, url = str(bm_node["name"]), str(bm_media_server["url"])
    with bmc_of(bm_node) as bmc:
        assert {BootDevice.CD, BootDevice.HDD} <= bmc.allowed_boot_devices()
        bmc.insert_media(url)
        assert cdrom_source(name) is not None

        bmc.set_boot_device(BootDevice.CD, persistent=False)
        setting = bmc.boot_setting()
        assert setting.device is BootDevice.CD and setting.bmc_value == "Cd"
        # The emulator reports a one-time override as Continuous; real BMCs say Once.
        assert setting.persistent in (True, False)
        assert first_boot_device(name) == "cdrom"

        bmc.set_power(PowerAction.ON)
        bmc.wait_for_power(PowerState.RUNNING, POWER_TIMEOUT_S)
        console = Path(str(bm_node["console_log"]))
        wait_until(
            lambda: console.is_file() and BM_ISO_MARKER in console.read_text(errors="replace"),
            BOOT_TIMEOUT_S,
            f"{BM_ISO_MARKER!r} on {name}'s serial console",
        )
        bmc.set_power(PowerAction.FORCE_OFF)
        bmc.wait_for_power(PowerState.STOPPED, POWER_TIMEOUT_S)

        bmc.set_boot_device("hdd", persistent=True)
        setting = bmc.boot_setting()
        assert setting.device is BootDevice.HDD and setting.bmc_value == "Hdd"
        assert setting.persistent is True
        assert first_boot_device(name) == "disk"
        bmc.eject_media()


def test_virtual_media_insert_and_eject(
    bm_node: dict[str, object], bm_media_server: dict[str, object]
) -> None:
    name, url = str(bm_node["name"]), str(bm_media_server["url"])
    requests = bm_media_server["requests"]
    assert isinstance(requests, list)
    with bmc_of(bm_node) as bmc:
        bmc.eject_media()  # whatever an earlier run left in
        assert not bmc.media_status().inserted

        before = len(requests)
        bmc.insert_media(url)
        status = bmc.media_status()
        assert status.inserted and status.image_url == url
        assert MediaType.CD in status.media_types
        assert requests[before:] == ["/" + url.rsplit("/", 1)[1]]  # the BMC downloaded it
        source = cdrom_source(name)
        assert source is not None and source.endswith(f"-{bm_node['system_id']}.img")

        bmc.insert_media(url)  # already inserted: silent, not downloaded again
        assert len(requests) == before + 1

        bmc.eject_media()
        status = bmc.media_status()
        assert not status.inserted and status.image_url is None
        assert cdrom_source(name) is None
        bmc.eject_media()  # already empty: silent


def test_values_the_bmc_does_not_allow_are_refused(bm_node: dict[str, object]) -> None:
    with bmc_of(bm_node) as bmc:
        allowed = sorted(d.value for d in bmc.allowed_boot_devices())
        assert allowed == ["cd", "hdd", "pxe"]
        before = bmc.boot_setting()
        for device in ("usb", "Hdd", "disk", "no-such-device"):
            with pytest.raises(BmcNotAllowed) as caught:
                bmc.set_boot_device(device, persistent=True)
            err = caught.value
            assert err.code == "bmc_value_not_allowed" and err.status == 422
            assert err.details["allowed"] == allowed
            assert err.details["value"] == device
            assert "it allows: cd, hdd, pxe" in err.message
        assert bmc.boot_setting() == before  # nothing was sent

        with pytest.raises(BmcNotAllowed) as caught:
            bmc.set_power("hibernate")
        assert "force_reboot" in caught.value.details["allowed"]


def test_unreachable_bmc_is_backend_unavailable(bm_node: dict[str, object]) -> None:
    port = find_free_port()  # nothing listens there
    bmc = bmc_of(bm_node, address=f"http://127.0.0.1:{port}")
    with pytest.raises(BackendUnavailable) as caught:
        bmc.power_state()
    assert caught.value.code == "backend_unavailable"
    assert f"127.0.0.1:{port}" in caught.value.message


def test_wrong_credentials_are_a_clear_error(bm_node: dict[str, object]) -> None:
    bmc = bmc_of(bm_node, password="not-the-password")
    with pytest.raises(BmcAuthFailed) as caught:
        bmc.inspect()
    err = caught.value
    assert err.code == "bmc_auth_failed" and err.details["http_status"] == 401
    assert "refused the credentials of user 'admin'" in err.message


# -- a BMC over HTTPS ---------------------------------------------------------------------------
def _certificate_authority(where: Path, name: str) -> tuple[Path, Any, Any]:
    """A CA of the test's own: (its PEM, its key, its certificate)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = where / f"{name}.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return pem, key, cert


def _server_certificate(where: Path, ca_key: Any, ca_cert: Any) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by the CA: (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_pem, key_pem = where / "bmc.pem", where / "bmc.key"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_pem.chmod(0o600)
    return cert_pem, key_pem


@pytest.fixture(scope="module")
def https_bmc(
    bmlab: list[dict[str, object]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, Path]]:
    """The lab's emulator once more, over HTTPS with a certificate of a CA of the test's own:
    (its URL, that CA's PEM, another CA's PEM)."""
    where = tmp_path_factory.mktemp("https-bmc")
    ca, ca_key, ca_cert = _certificate_authority(where, "bmc-ca")
    other, _, _ = _certificate_authority(where, "other-ca")
    cert, key = _server_certificate(where, ca_key, ca_cert)
    port = find_free_port()
    lab_conf = (BMLAB_DIR / "emulator.conf").read_text()
    conf = where / "emulator.conf"
    conf.write_text(
        re.sub(
            r"(?m)^SUSHY_EMULATOR_LISTEN_PORT = .*$",
            f"SUSHY_EMULATOR_LISTEN_PORT = {port}",
            lab_conf,
        )
        + f"SUSHY_EMULATOR_SSL_CERT = '{cert}'\nSUSHY_EMULATOR_SSL_KEY = '{key}'\n"
    )
    emulator = Path(sys.executable).parent / "sushy-emulator"
    log = where / "emulator.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(emulator), "--config", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        yield f"https://127.0.0.1:{port}", ca, other
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_an_https_bmc_is_reached_only_with_a_certificate_that_verifies(
    bm_node: dict[str, object], https_bmc: tuple[str, Path, Path]
) -> None:
    url, ca, other = https_bmc
    trusted = RedfishBmc(
        url, str(bm_node["username"]), str(bm_node["password"]), str(bm_node["system_id"]),
        verify_tls=str(ca),
    )  # fmt: skip
    assert trusted.power_state() is PowerState.STOPPED
    for verify in (True, str(other)):  # the system's CAs; another CA
        bmc = bmc_of(bm_node, address=url)
        bmc.verify_tls = verify
        with pytest.raises(BackendUnavailable) as caught:
            bmc.power_state()
        assert "certificate verify failed" in caught.value.message, caught.value.message

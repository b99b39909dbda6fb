"""How the drivers reach a host over SSH: which key they trust, how libvirt is opened."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from oneplatform.compute.drivers.base import HostRef
from oneplatform.compute.drivers.ssh import (
    HostKeyUnknown,
    libvirt_uri,
    ssh_target,
    trust_home,
)
from oneplatform.schemas.compute import ComputeType

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJRXLLIC+Y7EnChRs4+Gu4qZPzTStB3W+wBm837mOIdU"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINM4zXCtime0000000000000000000000000000000000"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def ref(uri: str, **settings: object) -> HostRef:
    return HostRef(id="h", name="h", compute_type=ComputeType.VM, uri=uri, settings=settings)


@pytest.mark.parametrize(
    ("uri", "known_name"),
    [
        ("ssh://root@db7/run/podman/podman.sock", "db7"),
        ("ssh://root@127.0.0.2:2222/run/podman/podman.sock", "[127.0.0.2]:2222"),
        ("qemu+ssh://root@db7:22/system", "db7"),
    ],
)
def test_ssh_targets_are_named_as_known_hosts_names_them(uri: str, known_name: str) -> None:
    target = ssh_target(uri)
    assert target is not None and target.known_name == known_name


@pytest.mark.parametrize("uri", ["local://", "qemu:///system", "unix:///run/podman.sock"])
def test_other_uris_need_no_trust(uri: str) -> None:
    assert ssh_target(uri) is None
    assert trust_home(ref(uri)) is None
    assert libvirt_uri(ref(uri)) == uri


def test_the_trusted_file_holds_only_the_hosts_own_key(home: Path) -> None:
    trusted = trust_home(ref("ssh://root@127.0.0.2:2222/s.sock", host_key=KEY + " root@db7"))
    assert trusted is not None and trusted.is_relative_to(home)
    known = trusted / ".ssh" / "known_hosts"
    assert known.read_text() == f"[127.0.0.2]:2222 {KEY}\n"
    assert known.stat().st_mode & 0o077 == 0
    other = trust_home(ref("ssh://root@127.0.0.3:2222/s.sock", host_key=KEY))
    assert other != trusted  # one file per host: a key is trusted for its host only


def test_without_a_host_key_the_users_known_hosts_must_name_the_host(home: Path) -> None:
    host = ref("ssh://root@db7:2200/s.sock")
    with pytest.raises(HostKeyUnknown, match=r"\[db7\]:2200"):
        trust_home(host)
    (home / ".ssh").mkdir()
    (home / ".ssh" / "known_hosts").write_text(f"db8 {OTHER}\n[db7]:2200 {KEY}\n")
    trusted = trust_home(host)
    assert trusted is not None
    assert (trusted / ".ssh" / "known_hosts").read_text() == f"[db7]:2200 {KEY}\n"


def test_a_known_hosts_setting_is_read_instead(tmp_path: Path) -> None:
    source = tmp_path / "fleet_known_hosts"
    source.write_text(f"db7 {KEY}\n")
    trusted = trust_home(ref("ssh://root@db7/s.sock", known_hosts=str(source)))
    assert trusted is not None
    with pytest.raises(HostKeyUnknown):
        trust_home(ref("ssh://root@db9/s.sock", known_hosts=str(source)))


def test_libvirt_over_ssh_goes_through_libssh2_with_the_key_and_the_trusted_file() -> None:
    uri = libvirt_uri(
        ref("qemu+ssh://root@127.0.0.2:2222/system", host_key=KEY, identity_file="/k/id")
    )
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "qemu+libssh2",
        "root@127.0.0.2:2222",
        "/system",
    )
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["keyfile"] == "/k/id" and query["sshauth"] == "privkey"
    assert query["known_hosts_verify"] == "normal"
    assert Path(query["known_hosts"]).read_text() == f"[127.0.0.2]:2222 {KEY}\n"

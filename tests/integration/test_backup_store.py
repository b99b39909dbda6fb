"""The embedded backup store for real: SeaweedFS over TLS from the platform's CA, a bucket and
keys per database instance, read by pgBackRest (the guests' client) — and nothing else's."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from oneplatform.config import Settings
from oneplatform.errors import BackendUnavailable
from oneplatform.hostsvc.objectstore import StoreAdmin, embedded_store, store_config
from oneplatform.hostsvc.supervisor import HostService
from tests.integration.conftest import require_or_fail

pytestmark = pytest.mark.integration
PORT = 8338  # in the range the guest firewall opens; the e2e platforms use 8333


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, HostService]]:
    require_or_fail(shutil.which("pgbackrest"), "pgbackrest is not installed (scripts/setup.sh)")
    home = tmp_path_factory.mktemp("store-home")
    settings = Settings(home=home, store_port=PORT)
    require_or_fail(
        subprocess.run(
            ["ip", "addr", "show", "to", settings.service_address], capture_output=True, text=True
        ).stdout.strip(),
        f"the service address {settings.service_address} is not set up (scripts/setup.sh)",
    )
    service = embedded_store(settings)
    service.start()
    assert service.wait_ready(60), service.detail
    yield settings, service
    service.stop()


def pgbackrest(
    settings: Settings,
    tmp: Path,
    bucket: str,
    key: str,
    secret: str,
    *args: str,
    stdin: bytes = b"",
) -> subprocess.CompletedProcess[bytes]:
    ca = tmp / "ca.pem"
    ca.write_text(store_config(settings).ca_pem)
    return subprocess.run(
        [
            "pgbackrest",
            "--config=/dev/null",
            "--repo1-type=s3",
            "--repo1-s3-endpoint=localhost",
            f"--repo1-storage-port={settings.store_port}",
            f"--repo1-s3-bucket={bucket}",
            "--repo1-s3-region=onep",
            "--repo1-s3-uri-style=path",
            f"--repo1-storage-ca-file={ca}",
            "--repo1-path=/repo",
            "--log-level-console=warn",
            *args,
        ],
        input=stdin,
        capture_output=True,
        env={
            "PGBACKREST_REPO1_S3_KEY": key,
            "PGBACKREST_REPO1_S3_KEY_SECRET": secret,
            "PATH": "/usr/bin:/bin",
        },
        timeout=60,
    )


def test_each_repository_is_reachable_with_its_own_keys_only(
    store: tuple[Settings, HostService], tmp_path: Path
) -> None:
    settings, _ = store
    admin = StoreAdmin(settings)
    admin.create_repository("onep-db-aaa", "ONDAAA", "secret-of-aaa-0123456789")
    admin.create_repository("onep-db-bbb", "ONDBBB", "secret-of-bbb-0123456789")
    own = pgbackrest(
        settings,
        tmp_path,
        "onep-db-aaa",
        "ONDAAA",
        "secret-of-aaa-0123456789",
        "repo-put",
        "x/f",
        stdin=b"hello",
    )
    assert own.returncode == 0, own.stderr
    back = pgbackrest(
        settings, tmp_path, "onep-db-aaa", "ONDAAA", "secret-of-aaa-0123456789", "repo-get", "x/f"
    )
    assert back.stdout == b"hello"
    # a's keys on b's bucket: refused; a wrong secret: refused
    other = pgbackrest(
        settings, tmp_path, "onep-db-bbb", "ONDAAA", "secret-of-aaa-0123456789", "repo-ls"
    )
    assert other.returncode != 0 and b"403" in other.stderr
    wrong = pgbackrest(
        settings, tmp_path, "onep-db-aaa", "ONDAAA", "not-the-secret-01234567", "repo-ls"
    )
    assert wrong.returncode != 0
    # a reader reads and cannot write; removed, it reads nothing
    admin.add_reader("onep-db-aaa", "r-new", "ONRNEW", "reader-secret-0123456789")
    read = pgbackrest(
        settings, tmp_path, "onep-db-aaa", "ONRNEW", "reader-secret-0123456789", "repo-get", "x/f"
    )
    assert read.stdout == b"hello", read.stderr
    write = pgbackrest(
        settings,
        tmp_path,
        "onep-db-aaa",
        "ONRNEW",
        "reader-secret-0123456789",
        "repo-put",
        "x/g",
        stdin=b"no",
    )
    assert write.returncode != 0
    admin.remove_identity("r-new")
    gone = pgbackrest(
        settings, tmp_path, "onep-db-aaa", "ONRNEW", "reader-secret-0123456789", "repo-get", "x/f"
    )
    assert gone.returncode != 0
    # deleting a repository takes its data and its keys
    admin.delete_repository("onep-db-aaa")
    after = pgbackrest(
        settings, tmp_path, "onep-db-aaa", "ONDAAA", "secret-of-aaa-0123456789", "repo-get", "x/f"
    )
    assert after.returncode != 0


def test_the_store_survives_its_platform_and_is_adopted(
    store: tuple[Settings, HostService],
) -> None:
    """A platform that dies leaves the store running (guests keep archiving); the next one
    adopts it instead of starting a second."""
    settings, service = store
    first_pid = service.pid
    successor = embedded_store(settings)
    successor.start()
    assert successor.wait_ready(30)
    assert successor.pid == first_pid
    successor._stop.set()  # stop supervising only: the fixture stops the process


def test_an_absent_store_is_a_clear_error_at_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, store_port=8331)
    with pytest.raises(BackendUnavailable, match="not running"):
        StoreAdmin(settings).create_repository("onep-db-x", "ONDX", "secret-secret-secret-x")

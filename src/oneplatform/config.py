"""One typed Settings object; every knob is an ``ONEP_*`` environment variable."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "oneplatform"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ONEP_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="State directory.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the store; SQLite under home by default."
    )
    host: str = "127.0.0.1"
    port: int = 8470
    bind_address: str = Field(
        default="127.0.0.1", description="Address on which instance service ports are published."
    )
    lease_seconds: float = Field(default=20.0, gt=0, description="Operation lease length.")
    worker_poll_seconds: float = Field(default=0.2, gt=0)
    workers: int = Field(default=2, ge=0, description="Worker threads inside `onep up`.")
    loop_lease_seconds: float = Field(
        default=15.0,
        gt=0,
        description="Lease length of the background loops (reconciler, health checker, "
        "schedules, warm pools, failover watcher): each runs in one process at a time; a dead "
        "holder's loops move to another process within about this long.",
    )
    proxy_sync_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often the process that runs this machine's host services (the full "
        "`onep up`) brings the endpoint proxy in line with the store, for changes other "
        "processes made.",
    )
    image_cache: Path | None = Field(
        default=None,
        description="Where built root filesystems are kept (shared by every home on the "
        "machine): ~/.cache/oneplatform/images by default.",
    )
    podman_runtime: str = "runc"
    libvirt_uri: str = Field(
        default="qemu:///system", description="The local libvirt registered in pool 'vms'."
    )
    port_range_start: int = Field(default=20000, ge=1024, le=65535)
    port_range_end: int = Field(default=29999, ge=1024, le=65535)
    ready_timeout_seconds: float = Field(default=300.0, gt=0)
    images: str = Field(
        default="*",
        description="The images `onep up` builds at its start: '*' every recipe, else a "
        "comma-separated list ('' none). Any other is built when an instance first needs it.",
    )
    secret_key: str | None = Field(
        default=None,
        description="Fernet key for secrets at rest; $ONEP_HOME/secret.key when unset.",
    )
    deploy_host: str | None = Field(
        default=None,
        description="The address of the deploy listener, on the provisioning network: what "
        "nodes' deploy ramdisks reach, and all they reach. Unset: the bare-metal lab's "
        "provisioning gateway (from ONEP_BMLAB_FILE), if there is a lab.",
    )
    deploy_port: int = Field(
        default=8469, ge=1, le=65535, description="The deploy listener's port."
    )
    bmc_ca_file: Path | None = Field(
        default=None,
        description="A CA bundle (PEM) that an https:// BMC's certificate must chain to; "
        "unset: the system's CAs. A certificate that does not verify is refused.",
    )
    bmc_media_host: str = Field(
        default="127.0.0.1", description="The address BMCs download virtual media from."
    )
    bmlab_file: Path = Field(
        default=Path("/var/lib/oneplatform/bmlab/nodes.json"),
        description="Emulated bare-metal nodes made by scripts/bmlab.sh; enrolled by `onep up`.",
    )
    backups: bool = Field(
        default=True,
        description="Give every new database instance a repository in the backup store "
        "(continuous archiving, backups, restores); off: new instances have none.",
    )
    service_address: str = Field(
        default="10.95.255.1",
        description="The host address the host services guests may reach listen on (the "
        "backup store); scripts/setup.sh puts it on interface onep-svc and lets guests reach "
        "it, and nothing else of the host.",
    )
    store_port: int = Field(
        default=8333,
        ge=8330,
        le=8339,
        description="The embedded backup store's S3 (HTTPS) port on the service address, "
        "in 8330-8339 (the ports the guest firewall opens there); its other ports are "
        "18000 + 10 x (port - 8330) and the six after, on 127.0.0.1. With an external store: "
        "the port of the relay guests reach it through.",
    )
    replication_port: int = Field(
        default=8334,
        ge=8330,
        le=8339,
        description="The replication hub's port on the service address (in 8330-8339, not "
        "the store's): a database's replicas (any compute type) reach its primary there, "
        "routed by the database's replication user, through the endpoint proxy.",
    )
    endpoint_port_start: int = Field(
        default=15000,
        ge=1024,
        le=65535,
        description="First port of the range databases' stable endpoints (read-write and "
        "read-only, served by the endpoint proxy) are given on ONEP_BIND_ADDRESS.",
    )
    endpoint_port_end: int = Field(
        default=17999, ge=1024, le=65535, description="Last port of that range."
    )
    backup_store_url: str = Field(
        default="",
        pattern=r"^(https://[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?/?)?$",
        description="An S3 endpoint of your own (https://NAME[:PORT], path-style, a name its "
        "certificate holds and the host resolves) instead of the embedded store; empty: the "
        "embedded one. Databases write under a prefix of their own in one bucket, each "
        "encrypted with a key of its own; guests reach it through a relay on the service "
        "address.",
    )
    backup_store_bucket: str = Field(
        default="oneplatform",
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="The external store's bucket (it must exist).",
    )
    backup_store_region: str = Field(
        default="us-east-1", pattern=r"^[A-Za-z0-9_-]+$", description="The external store's region."
    )
    backup_store_access_key: str = Field(
        default="", pattern=r"^[A-Za-z0-9_+/=.-]*$", description="The external store's access key."
    )
    backup_store_secret_key: str = Field(
        default="",
        pattern=r"^[A-Za-z0-9_+/=.-]*$",
        repr=False,
        description="The external store's secret key.",
    )
    backup_store_ca_file: Path | None = Field(
        default=None,
        description="PEM certificates that sign the external store's (default: the host's "
        "trusted ones, /etc/ssl/certs/ca-certificates.crt).",
    )
    backup_schedule_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often schedules and retention are looked at."
    )
    health_interval_seconds: float = Field(default=10.0, gt=0)
    engine_stats_interval_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How often the health checker reads a database's engine figures and its "
        "replicas' lag for /metrics (each reading runs queries in the guest).",
    )
    failover_grace_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a database's primary may not answer (neither its agent nor its "
        "engine) before the platform fences it and promotes a replica.",
    )
    failover_check_seconds: float = Field(
        default=1.0, gt=0, description="How often the primaries of groups with replicas are asked."
    )
    reconcile_interval_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How often instances' backends are compared with "
        "what the platform wants of them (and repaired).",
    )
    warm_interval_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often warm capacity is brought back to its target (and at once "
        "after a `warm set` or a create that claimed one).",
    )
    repair_attempts: int = Field(
        default=5, ge=1, description="Attempts of one repair before it gives up (ERROR)."
    )
    repair_backoff_seconds: float = Field(
        default=2.0, gt=0, description="Wait after a failed repair attempt, doubled each time."
    )
    identity_token_seconds: int = Field(
        default=3600,
        ge=60,
        le=7 * 86400,
        description="Lifetime of a token issued by the Keystone facade (/identity).",
    )
    public_url: str | None = Field(
        default=None,
        pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
        description="The platform's base URL as clients reach it (http[s]://HOST[:PORT][/PATH]"
        "), the Keystone catalog's endpoints start with it; unset: the URL a request came to.",
    )
    failpoint: str | None = Field(
        default=None,
        description="Testing only: 'KIND:STEP' makes a worker hang after that step's work is "
        "done but before it is recorded, so a test can kill the process at the worst moment.",
    )

    @property
    def store_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'oneplatform.db'}"

    @property
    def images_dir(self) -> Path:
        return self.image_cache or Path.home() / ".cache" / "oneplatform" / "images"

    @property
    def admin_token_file(self) -> Path:
        return self.home / "admin-token"

    @property
    def cli_config_file(self) -> Path:
        return self.home / "cli.json"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()

"""The config bundle: everything an instance needs to configure itself, as JSON (format 1).

The platform makes bundles (:class:`Bundle`, :func:`generate_secret`,
:func:`generate_password`) and the agent reads them (:func:`load_bundle`). Importing this
module does no I/O.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import DEFAULT_AGENT_PORT, PASSWORD_ALPHABET, PASSWORD_LENGTH

BUNDLE_FORMAT = 1
MIN_SECRET_LENGTH = 32

_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")  # Redis's have dashes
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_ROLE_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_LABEL_RE = re.compile(r"^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$")  # pgBackRest's
_TIME_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?\+00$")


class BundleError(ValueError):
    """The bundle is not valid. Messages name fields, never their (secret) values."""


@dataclass(frozen=True)
class AgentSettings:
    secret: str = field(repr=False)
    port: int = DEFAULT_AGENT_PORT


@dataclass(frozen=True)
class EngineSettings:
    port: int
    # Values may be given as numbers or booleans; they are kept as strings.
    settings: Mapping[str, str] = field(default_factory=dict)
    # The configuration group's values (they win over ``settings``): what a new member
    # starts with until the platform applies the group to it (``POST /v1/configuration``).
    configuration: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        normal = {str(k): _setting_value(k, v) for k, v in self.settings.items()}
        object.__setattr__(self, "settings", normal)
        group = {str(k): _setting_value(k, v) for k, v in self.configuration.items()}
        object.__setattr__(self, "configuration", group)


@dataclass(frozen=True)
class AdminCredentials:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class StoreSettings:
    """An object-store repository (S3 over TLS) the engine's backup tool reaches: ``host`` is
    the name the store's certificate names, which the guest maps to ``address`` (its path to
    the store on its compute type); ``bucket`` is the instance's own, with its own keys."""

    host: str
    address: str
    port: int
    bucket: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    ca_pem: str = field(repr=False)
    cipher_pass: str = field(repr=False)  # the repository's encryption passphrase
    region: str = "onep"
    path: str = "/repo"

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "bucket": self.bucket,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "ca_pem": self.ca_pem,
            "cipher_pass": self.cipher_pass,
            "region": self.region,
            "path": self.path,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str) -> StoreSettings:
        obj = _object(data, where)
        return cls(
            host=_string(obj, "host", where),
            address=_string(obj, "address", where),
            port=_port(obj.get("port"), f"{where}.port"),
            bucket=_string(obj, "bucket", where),
            access_key=_string(obj, "access_key", where),
            secret_key=_string(obj, "secret_key", where),
            ca_pem=_string(obj, "ca_pem", where),
            cipher_pass=_string(obj, "cipher_pass", where),
            region=_string(obj, "region", where) if "region" in obj else "onep",
            path=_string(obj, "path", where) if "path" in obj else "/repo",
        )


@dataclass(frozen=True)
class RestoreSettings:
    """Where a new instance's data comes from at its first start: a backup (``backup_set``,
    the tool's label) in another instance's repository (``store``, with read-only keys), and
    optionally a moment to recover to (``target_time``, ISO 8601; empty: the backup's end)."""

    store: StoreSettings
    backup_set: str
    target_time: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "store": self.store.to_dict(),
            "backup_set": self.backup_set,
            **({"target_time": self.target_time} if self.target_time else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> RestoreSettings:
        obj = _object(data, "restore")
        target = obj.get("target_time", "")
        if not isinstance(target, str):
            raise BundleError("bundle: 'restore.target_time' must be a string")
        return cls(
            store=StoreSettings.from_dict(obj.get("store"), "restore.store"),
            backup_set=_string(obj, "backup_set", "restore"),
            target_time=target,
        )


@dataclass(frozen=True)
class UpstreamSettings:
    """The primary a replica follows, as the guest reaches it: the platform's replication
    hub (``host``: the guest's path to the host's service address) and the database's
    replication role. A new instance with it is seeded from the primary (``pg_basebackup``)
    or, with ``from_backup``, from the repository's latest backup, and starts as a standby."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    name: str = "replica"  # the member's name, as its primary lists it (application_name)
    from_backup: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "name": self.name,
            **({"from_backup": True} if self.from_backup else {}),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "standby") -> UpstreamSettings:
        obj = _object(data, where)
        from_backup = obj.get("from_backup", False)
        if type(from_backup) is not bool:
            raise BundleError(f"bundle: '{where}.from_backup' must be a boolean")
        return cls(
            host=_string(obj, "host", where),
            port=_port(obj.get("port"), f"{where}.port"),
            user=_string(obj, "user", where),
            password=_string(obj, "password", where),
            name=_string(obj, "name", where) if "name" in obj else "replica",
            from_backup=from_backup,
        )


@dataclass(frozen=True)
class Bundle:
    """Everything an instance needs to configure itself. JSON on the wire, format 1."""

    instance_id: str
    datastore: str
    version: str
    agent: AgentSettings
    engine: EngineSettings
    admin: AdminCredentials
    # The platform's own role, for the work only it does (users, passwords): never given
    # to the tenant. None in bundles made before it existed.
    platform: AdminCredentials | None = None
    # A warm instance's bundle: the engine is initialized and started, but no role is
    # made; the agent waits for its owner's bundle (``POST /v1/claim``, sealed with this
    # bundle's agent secret) and answers nothing else but its health.
    warm: bool = False
    # The instance's own backup repository (None: no backups, WAL is not archived).
    backup: StoreSettings | None = None
    # What the first start restores the data directory from (None: a new, empty one).
    restore: RestoreSettings | None = None
    # A replica's first start: the primary it is seeded from and follows (None: a primary).
    standby: UpstreamSettings | None = None
    format: int = BUNDLE_FORMAT

    def __post_init__(self) -> None:
        _validate_bundle(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "instance_id": self.instance_id,
            "datastore": self.datastore,
            "version": self.version,
            "agent": {"port": self.agent.port, "secret": self.agent.secret},
            "engine": {
                "port": self.engine.port,
                "settings": dict(sorted(self.engine.settings.items())),
                **(
                    {"configuration": dict(sorted(self.engine.configuration.items()))}
                    if self.engine.configuration
                    else {}
                ),
            },
            "admin": {"username": self.admin.username, "password": self.admin.password},
            **(
                {
                    "platform": {
                        "username": self.platform.username,
                        "password": self.platform.password,
                    }
                }
                if self.platform
                else {}
            ),
            **({"warm": True} if self.warm else {}),
            **({"backup": self.backup.to_dict()} if self.backup else {}),
            **({"restore": self.restore.to_dict()} if self.restore else {}),
            **({"standby": self.standby.to_dict()} if self.standby else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @staticmethod
    def check_setting_names(settings: Mapping[str, str]) -> None:
        """Raise BundleError for a setting name or value a configuration file must not get."""
        for name, value in settings.items():
            if not _SETTING_NAME_RE.match(name):
                raise BundleError(f"bundle: engine setting name {name!r} is not valid")
            if not isinstance(value, str) or _CONTROL_RE.search(value):
                raise BundleError(f"bundle: engine setting {name!r} must be a single-line string")

    @classmethod
    def from_dict(cls, data: Any) -> Bundle:
        """Read a decoded bundle; unknown keys are ignored, a format other than 1 is not."""
        obj = _object(data, "bundle")
        fmt = obj.get("format")
        if type(fmt) is not int:
            raise BundleError("bundle: 'format' must be an integer")
        if fmt != BUNDLE_FORMAT:
            raise BundleError(
                f"bundle: unsupported format {fmt} (this agent reads {BUNDLE_FORMAT})"
            )
        agent = _object(obj.get("agent"), "agent")
        engine = _object(obj.get("engine"), "engine")
        admin = _object(obj.get("admin"), "admin")
        platform = _object(obj["platform"], "platform") if "platform" in obj else None
        raw_settings = _object(engine.get("settings", {}), "engine.settings")
        warm = obj.get("warm", False)
        if type(warm) is not bool:
            raise BundleError("bundle: 'warm' must be a boolean")
        backup = StoreSettings.from_dict(obj["backup"], "backup") if "backup" in obj else None
        restore = RestoreSettings.from_dict(obj["restore"]) if "restore" in obj else None
        standby = UpstreamSettings.from_dict(obj["standby"]) if "standby" in obj else None
        return cls(
            warm=warm,
            backup=backup,
            restore=restore,
            standby=standby,
            format=fmt,
            instance_id=_string(obj, "instance_id", "bundle"),
            datastore=_string(obj, "datastore", "bundle"),
            version=_string(obj, "version", "bundle"),
            agent=AgentSettings(
                port=_port(agent.get("port", DEFAULT_AGENT_PORT), "agent.port"),
                secret=_string(agent, "secret", "agent"),
            ),
            engine=EngineSettings(
                port=_port(engine.get("port"), "engine.port"),
                settings=raw_settings,
                configuration=_object(engine.get("configuration", {}), "engine.configuration"),
            ),
            admin=AdminCredentials(
                username=_string(admin, "username", "admin"),
                password=_string(admin, "password", "admin"),
            ),
            platform=AdminCredentials(
                username=_string(platform, "username", "platform"),
                password=_string(platform, "password", "platform"),
            )
            if platform is not None
            else None,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Bundle:
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            # Say where, not what: the text holds the secret and the password.
            raise BundleError(f"bundle: not valid JSON (line {_json_line(exc)})") from None
        return cls.from_dict(data)


def generate_secret() -> str:
    """A new agent secret: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def generate_password(length: int = PASSWORD_LENGTH) -> str:
    """A new engine password: ``length`` letters and digits of the contract's alphabet."""
    return "".join(secrets.choice(PASSWORD_ALPHABET) for _ in range(length))


def _json_line(exc: Exception) -> int:
    return int(getattr(exc, "lineno", 0) or 0)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BundleError(f"bundle: '{where}' must be an object")
    return value


def _string(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise BundleError(f"bundle: '{where}.{key}' must be a non-empty string")
    return value


def _port(value: Any, where: str) -> int:
    if type(value) is not int or not 0 < value < 65536:
        raise BundleError(f"bundle: '{where}' must be a port number (1-65535)")
    return value


def _setting_value(name: Any, value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float | str):
        return str(value)
    raise BundleError(f"bundle: engine setting {name!r} must be a string, number or boolean")


def _validate_bundle(bundle: Bundle) -> None:
    if bundle.format != BUNDLE_FORMAT:
        raise BundleError(f"bundle: unsupported format {bundle.format}")
    for where, value in (
        ("instance_id", bundle.instance_id),
        ("datastore", bundle.datastore),
        ("version", bundle.version),
    ):
        if not value or _CONTROL_RE.search(value) or len(value) > 200:
            raise BundleError(f"bundle: '{where}' must be a short printable string")
    if len(bundle.agent.secret) < MIN_SECRET_LENGTH:
        raise BundleError(f"bundle: 'agent.secret' must be at least {MIN_SECRET_LENGTH} characters")
    _port(bundle.agent.port, "agent.port")
    _port(bundle.engine.port, "engine.port")
    if bundle.agent.port == bundle.engine.port:
        raise BundleError("bundle: 'agent.port' and 'engine.port' must differ")
    Bundle.check_setting_names({**bundle.engine.settings, **bundle.engine.configuration})
    for where, creds in (("admin", bundle.admin), ("platform", bundle.platform)):
        if creds is None:
            continue
        if not _ROLE_NAME_RE.match(creds.username) or creds.username.startswith("pg_"):
            raise BundleError(
                f"bundle: '{where}.username' must be 1-63 letters, digits or _ (not starting pg_)"
            )
        if not creds.password or "\x00" in creds.password:
            raise BundleError(f"bundle: '{where}.password' must be a non-empty string without NUL")
    if bundle.platform is not None and bundle.platform.username == bundle.admin.username:
        raise BundleError("bundle: 'platform.username' and 'admin.username' must differ")
    stores = [("backup", bundle.backup)]
    if bundle.restore is not None:
        stores.append(("restore.store", bundle.restore.store))
    for where, store in stores:
        if store is None:
            continue
        for key in ("host", "address", "bucket", "access_key", "secret_key", "region", "path"):
            value = getattr(store, key)
            if not value or _CONTROL_RE.search(value) or "=" in value or " " in value:
                raise BundleError(f"bundle: '{where}.{key}' must be a printable word")
        if not store.path.startswith("/"):
            raise BundleError(f"bundle: '{where}.path' must start with '/'")
        if _CONTROL_RE.search(store.cipher_pass) or "BEGIN CERTIFICATE" not in store.ca_pem:
            raise BundleError(f"bundle: '{where}' has an invalid cipher_pass or ca_pem")
    if bundle.restore is not None and not _LABEL_RE.match(bundle.restore.backup_set):
        raise BundleError("bundle: 'restore.backup_set' is not a backup label")
    restore = bundle.restore
    if restore is not None and restore.target_time and not _TIME_RE.match(restore.target_time):
        raise BundleError("bundle: 'restore.target_time' must be 'YYYY-MM-DD HH:MM:SS+00'")


def load_bundle(path: Path) -> tuple[Bundle | None, str]:
    """The bundle at ``path``, or None and why not. Never logs or returns its contents."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, f"no config bundle at {path}"
    except OSError as exc:
        return None, f"cannot read the config bundle at {path}: {exc.strerror}"
    try:
        return Bundle.from_json(data), ""
    except BundleError as exc:
        return None, f"the config bundle at {path} is invalid: {exc}"

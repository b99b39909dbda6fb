"""Engine parameters a configuration group may set: each datastore version's catalog (made
from the engine itself by ``catalog_gen``, checked into ``catalogs/``), the parameters the
platform owns, and validation that normalises a value as the engine reads it.

A value is checked for its name (known to the engine, not the platform's), its type
(boolean, integer, real, enum, string), its unit (``8MB``, ``1GB``, ``30s``: converted to
the parameter's own unit, rounded as the engine rounds) and its range. Every refusal is a
422 with a stable code and the parameter in ``details``.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from oneplatform.errors import CapabilityNotSupported, InvalidInput

# PostgreSQL: what the platform itself sets, and why a group may not.
_PG_OWNED_REASONS: dict[str, tuple[str, ...]] = {
    "the platform publishes the server on its own address, port and socket": (
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "unix_socket_group",
        "unix_socket_permissions",
        "bonjour",
        "bonjour_name",
    ),
    "the platform owns the data directory and its configuration files": (
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        "external_pid_file",
        "include",
        "include_dir",
        "include_if_exists",
    ),
    "the platform owns WAL archiving, replication and recovery (backups, replicas, failover)": (
        "wal_level",
        "wal_log_hints",
        "archive_mode",
        "archive_command",
        "archive_library",
        "archive_timeout",
        "archive_cleanup_command",
        "restore_command",
        "recovery_end_command",
        "recovery_init_sync_method",
        "primary_conninfo",
        "primary_slot_name",
        "promote_trigger_file",
        "hot_standby",
        "max_wal_senders",
        "max_replication_slots",
        "synchronous_standby_names",
        "synchronous_commit",
        "wal_receiver_create_temp_slot",
        "full_page_writes",
        "fsync",
        "ignore_invalid_pages",
        "zero_damaged_pages",
        "data_sync_retry",
    ),
    "the platform owns TLS and authentication": (
        "password_encryption",
        "krb_server_keyfile",
        "krb_caseins_users",
        "db_user_namespace",
        "authentication_timeout",
    ),
    "the agent reads the server's log from its output": (
        "logging_collector",
        "log_destination",
        "log_directory",
        "log_filename",
        "log_file_mode",
        "log_rotation_age",
        "log_rotation_size",
        "log_truncate_on_rotation",
        "syslog_facility",
        "syslog_ident",
        "event_source",
    ),
    "loading server code or running programs is the platform's": (
        "shared_preload_libraries",
        "local_preload_libraries",
        "session_preload_libraries",
        "dynamic_library_path",
        "jit",
        "jit_provider",
        "ssl_passphrase_command",
    ),
}
_MARIADB_OWNED_REASONS: dict[str, tuple[str, ...]] = {
    "the platform publishes the server on its own address, port and socket": (
        "port", "bind_address", "socket", "skip_networking", "extra_port",
        "proxy_protocol_networks", "skip_name_resolve", "report_host", "report_port",
        "report_user", "report_password",
    ),
    "the platform owns the data directory and the server's files": (
        "datadir", "basedir", "tmpdir", "pid_file", "log_error", "general_log_file",
        "slow_query_log_file", "innodb_data_home_dir", "innodb_log_group_home_dir",
        "innodb_undo_directory", "aria_log_dir_path", "character_sets_dir", "lc_messages_dir",
        "plugin_dir", "secure_file_priv", "local_infile", "lower_case_table_names",
        "core_file", "large_pages", "user",
    ),
    "the platform owns the binary log and replication (backups, replicas, failover)": (
        "log_bin", "log_bin_basename", "log_bin_index", "binlog_format", "log_slave_updates",
        "server_id", "read_only", "skip_slave_start", "sync_binlog", "expire_logs_days",
        "binlog_expire_logs_seconds", "init_slave", "gtid_domain_id", "gtid_strict_mode",
        "gtid_ignore_duplicates", "master_verify_checksum",
    ),
    "the platform owns authentication and the server's start": (
        "skip_grant_tables", "init_file", "init_connect", "plugin_load", "plugin_load_add",
        "plugin_maturity", "secure_auth", "thread_handling",
    ),
    "the platform sets the server's character set (utf8mb4)": (
        "character_set_server", "collation_server",
    ),
}  # fmt: skip
_REDIS_OWNED_REASONS: dict[str, tuple[str, ...]] = {
    "the platform publishes the server on its own address, port and socket": (
        "bind", "bind-source-addr", "port", "protected-mode", "unixsocket", "unixsocketperm",
        "tcp-backlog",
    ),
    "the platform owns the data directory and persistence (backups)": (
        "dir", "dbfilename", "appendonly", "appendfilename", "appenddirname", "appendfsync",
        "save", "databases",
    ),
    "the platform owns users and authentication (its ACL file)": (
        "aclfile", "requirepass", "masterauth", "masteruser",
    ),
    "the platform owns replication (replicas, failover)": ("replicaof", "slaveof"),
    "the platform owns the server's process and log": (
        "daemonize", "supervised", "logfile", "pidfile", "syslog-enabled", "syslog-ident",
        "syslog-facility", "include", "loadmodule", "rename-command", "enable-debug-command",
        "enable-module-command", "enable-protected-configs", "proc-title-template",
        "set-proc-title", "oom-score-adj", "oom-score-adj-values", "ignore-warnings",
        "server_cpulist", "bio_cpulist", "aof_rewrite_cpulist", "bgsave_cpulist",
    ),
}  # fmt: skip
_OWNED_PREFIXES: dict[str, tuple[tuple[str, str], ...]] = {
    "redis": (
        ("tls-", "the platform owns TLS and authentication"),
        ("cluster-", "the platform runs Redis without cluster mode"),
        ("repl-", "the platform owns replication (replicas, failover)"),
        ("replica-", "the platform owns replication (replicas, failover)"),
        ("slave-", "the platform owns replication (replicas, failover)"),
        ("min-replicas-", "the platform owns replication (replicas, failover)"),
        ("min-slaves-", "the platform owns replication (replicas, failover)"),
    ),
    "postgresql": (
        ("ssl", "the platform owns TLS and authentication"),
        ("recovery_target", "the platform owns point-in-time recovery (restores)"),
    ),
    "mariadb": (
        ("ssl_", "the platform owns TLS and authentication"),
        ("wsrep_", "the platform owns replication (Galera is not used)"),
        ("relay_log", "the platform owns the binary log and replication"),
        ("slave_", "the platform owns the binary log and replication"),
        ("replicate_", "the platform owns the binary log and replication"),
        ("rpl_", "the platform owns the binary log and replication"),
        ("debug", "debugging the server is the platform's"),
    ),
}
OWNED: dict[str, dict[str, str]] = {
    "postgresql": {name: reason for reason, names in _PG_OWNED_REASONS.items() for name in names},
    "mariadb": {name: reason for reason, names in _MARIADB_OWNED_REASONS.items() for name in names},
    "redis": {name: reason for reason, names in _REDIS_OWNED_REASONS.items() for name in names},
}
# Redis's memory values: 1k is 1000 bytes, 1kb 1024 (and m, mb, g, gb).
_REDIS_MEMORY = {"K": 1000, "KB": 1024, "M": 1000**2, "MB": 1024**2, "G": 1000**3, "GB": 1024**3}
# MariaDB's option files take K, M, G ... (in 1024s) after any number.
_SUFFIXES = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4, "P": 1024**5, "E": 1024**6}


@dataclass(frozen=True)
class Style:
    """How an engine spells values: its booleans, the suffixes its numbers take, whether
    '-' and '_' are one in a name."""

    true: str = "on"
    false: str = "off"
    suffixes: Mapping[str, int] | None = None
    suffixes_for_bytes_only: bool = False  # only a parameter in bytes takes them
    dashes_are_underscores: bool = False
    # its configuration file reads quotes, escapes (and MariaDB's '#' comments)
    plain_words_only: bool = False


STYLES = {
    "postgresql": Style(),
    "mariadb": Style("ON", "OFF", _SUFFIXES, dashes_are_underscores=True, plain_words_only=True),
    "redis": Style("yes", "no", _REDIS_MEMORY, suffixes_for_bytes_only=True, plain_words_only=True),
}

_NUMBER = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")
# PostgreSQL's units, each in bytes or microseconds.
_MEMORY = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME = {"us": 1, "ms": 1000, "s": 1000**2, "min": 60 * 1000**2, "h": 3600 * 1000**2}
_TIME["d"] = 24 * _TIME["h"]
_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")
MAX_STRING = 1024


@dataclass(frozen=True)
class Parameter:
    """One engine parameter as its catalog describes it."""

    name: str
    type: str  # bool | integer | real | enum | string
    restart: bool  # takes effect only when the server restarts
    unit: str = ""
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()
    default: str = ""
    block: int = 1  # an integer is rounded down to a multiple of it (MariaDB)
    style: Style = Style()


@dataclass(frozen=True)
class Catalog:
    datastore: str
    version: str
    parameters: Mapping[str, Parameter]

    def key(self, name: str) -> str:
        """``name`` as the catalog spells it."""
        key = name.strip().lower()
        style = STYLES.get(self.datastore, Style())
        return key.replace("-", "_") if style.dashes_are_underscores else key

    def owned_reason(self, name: str) -> str | None:
        """Why the platform keeps ``name`` for itself, or None when a group may set it."""
        reason = OWNED.get(self.datastore, {}).get(name)
        if reason is not None:
            return reason
        for prefix, why in _OWNED_PREFIXES.get(self.datastore, ()):
            if name.startswith(prefix):
                return why
        return None


@functools.cache
def catalog(datastore: str, version: str) -> Catalog:
    """The parameter catalog of ``datastore`` ``version``; 409 when there is none."""
    path = resources.files("oneplatform.dbaas") / "catalogs" / f"{datastore}-{version}.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CapabilityNotSupported(
            f"{datastore} {version} has no parameter catalog: configuration groups are not "
            "built for it yet",
            code="capability_not_supported",
            capability="configuration",
            datastore=datastore,
            version=version,
        ) from None
    style = STYLES.get(datastore, Style())
    params = {p["name"]: _parameter(p, style) for p in doc["parameters"]}
    return Catalog(datastore, version, params)


def _parameter(raw: Mapping[str, Any], style: Style) -> Parameter:
    return Parameter(
        name=raw["name"],
        type=raw["type"],
        restart=bool(raw["restart"]),
        unit=raw.get("unit", ""),
        min=raw.get("min"),
        max=raw.get("max"),
        values=tuple(raw.get("values", ())),
        default=str(raw.get("default", "")),
        block=int(raw.get("block", 1)),
        style=style,
    )


def validate(cat: Catalog, values: Mapping[str, str]) -> dict[str, str]:
    """``values`` checked and normalised as the engine reads them (sorted by name)."""
    out = {cat.key(name): validate_one(cat, name, value) for name, value in values.items()}
    return dict(sorted(out.items()))


def validate_one(cat: Catalog, name: str, value: str) -> str:
    key = cat.key(name)
    reason = cat.owned_reason(key)
    if reason is not None:
        raise InvalidInput(
            f"parameter {key!r} is managed by the platform and cannot be set by a "
            f"configuration group: {reason}",
            code="config_parameter_owned",
            parameter=key,
        )
    param = cat.parameters.get(key)
    if param is None:
        raise InvalidInput(
            f"{cat.datastore} {cat.version} has no parameter {key!r}",
            code="config_parameter_unknown",
            parameter=key,
        )
    if "\n" in value or "\x00" in value or len(value) > MAX_STRING:
        raise _bad(param, value, "a value is one line of at most 1024 characters")
    return _NORMALISERS[param.type](param, value.strip())


def _bad(param: Parameter, value: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"invalid value {value!r} for parameter {param.name!r}: {why}",
        code="config_value_invalid",
        parameter=param.name,
    )


def _out_of_range(param: Parameter, value: str, shown: str) -> InvalidInput:
    unit = f" (in {param.unit})" if param.unit else ""
    return InvalidInput(
        f"value {value!r} of parameter {param.name!r} is out of range: {shown} is not "
        f"between {_fmt(param.min)} and {_fmt(param.max)}{unit}",
        code="config_value_out_of_range",
        parameter=param.name,
        min=param.min,
        max=param.max,
        unit=param.unit or None,
    )


def _fmt(number: float | None) -> str:
    if number is None:
        return "-"
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e18 else str(number)


def _bool(param: Parameter, value: str) -> str:
    word = value.lower()
    if word in _TRUE:
        return param.style.true
    if word in _FALSE:
        return param.style.false
    raise _bad(param, value, "a boolean (on, off, true, false, yes, no, 1, 0)")


def _enum(param: Parameter, value: str) -> str:
    for allowed in param.values:
        if allowed.lower() == value.lower():
            return allowed
    raise _bad(param, value, f"one of {', '.join(param.values)}")


def _string(param: Parameter, value: str) -> str:
    if param.style.plain_words_only and (not value or any(c in value for c in "\"'\\#")):
        raise _bad(param, value, "a non-empty value without quotes, backslashes or '#'")
    return value


def _in_unit(param: Parameter, value: str) -> tuple[float, bool]:
    """``value`` (a number, with a unit or not) in the parameter's own unit, and whether
    it came with a unit."""
    match = _NUMBER.match(value)
    if match is None:
        kind = "an integer" if param.type == "integer" else "a number"
        raise _bad(param, value, f"{kind}{_unit_help(param)}")
    number, unit = float(match.group(1)), match.group(2)
    if not unit:
        return number, False
    suffixes = param.style.suffixes
    if param.style.suffixes_for_bytes_only and param.unit != "B":
        suffixes = {}
    if suffixes is not None and param.type == "integer":
        if unit.upper() not in suffixes:
            with_units = f", or one with {', '.join(suffixes)}" if suffixes else " (no unit)"
            raise _bad(param, value, f"a number{with_units}")
        return number * suffixes[unit.upper()], True
    base, table = _unit_base(param)
    if table is None or unit not in table:
        raise _bad(param, value, f"unknown unit {unit!r}{_unit_help(param)}")
    return number * table[unit] / base, True


def _unit_base(param: Parameter) -> tuple[float, dict[str, int] | None]:
    """The size of one of the parameter's units, in bytes or microseconds, and its table."""
    unit = param.unit
    match = re.match(r"^(\d*)([A-Za-z]+)$", unit)
    if not match:
        return 1.0, None
    factor, name = int(match.group(1) or 1), match.group(2)
    if name in _MEMORY:
        return float(factor * _MEMORY[name]), _MEMORY
    if name in _TIME:
        return float(factor * _TIME[name]), _TIME
    return 1.0, None


def _unit_help(param: Parameter) -> str:
    _, table = _unit_base(param)
    if table is None:
        return ""
    return f" (units: {', '.join(table)}; without one: {param.unit})"


def _integer(param: Parameter, value: str) -> str:
    amount, has_unit = _in_unit(param, value)
    if not math.isfinite(amount):
        raise _bad(param, value, "a finite number")
    if not has_unit and not float(amount).is_integer():
        raise _bad(param, value, f"an integer{_unit_help(param)}")
    number = math.floor(amount + 0.5) if amount >= 0 else -math.floor(-amount + 0.5)
    _check_range(param, value, number)
    if param.block > 1:
        number -= number % param.block
    if param.style.suffixes is not None:
        return str(number)
    return _with_unit(param, number)


def _with_unit(param: Parameter, number: int) -> str:
    """``number`` of the parameter's units in the largest unit that holds it exactly, as
    the engine shows it (8192 kB is ``8MB``); zero and negatives (off) without a unit."""
    base, table = _unit_base(param)
    if table is None or number <= 0:
        return str(number)
    total = int(number * base)
    for unit, size in sorted(table.items(), key=lambda item: -item[1]):
        if size >= base and total % size == 0:
            return f"{total // size}{unit}"
    return str(number)


def _real(param: Parameter, value: str) -> str:
    amount, _ = _in_unit(param, value)
    if not math.isfinite(amount):
        raise _bad(param, value, "a finite number")
    _check_range(param, value, amount)
    return repr(amount) if not amount.is_integer() else str(int(amount))


def _check_range(param: Parameter, value: str, number: float) -> None:
    if (param.min is not None and number < param.min) or (
        param.max is not None and number > param.max
    ):
        raise _out_of_range(param, value, _fmt(number))


def _set(param: Parameter, value: str) -> str:
    """A comma-separated subset of the allowed words (empty: none)."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    return ",".join(_enum(param, item) for item in items)


def _flagset(param: Parameter, value: str) -> str:
    """``flag=on|off|default`` pairs (or ``default``), as optimizer_switch takes them."""
    out = []
    for item in (i.strip() for i in value.split(",") if i.strip()):
        flag, sep, state = item.partition("=")
        if flag.strip().lower() == "default" and not sep:
            out.append("default")
            continue
        known = [v for v in param.values if v.lower() == flag.strip().lower()]
        if not sep or not known or state.strip().lower() not in ("on", "off", "default"):
            raise _bad(param, value, f"flag=on|off|default, flags: {', '.join(param.values)}")
        out.append(f"{known[0]}={state.strip().lower()}")
    return ",".join(out)


_NORMALISERS = {
    "set": _set,
    "flagset": _flagset,
    "bool": _bool,
    "integer": _integer,
    "real": _real,
    "enum": _enum,
    "string": _string,
}

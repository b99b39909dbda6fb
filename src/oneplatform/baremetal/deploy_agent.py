"""The bare-metal deploy agent and its protocol with the platform (standard library only).

The agent is a **busybox shell script**: PID 1 (``/init``) of the deploy ramdisk that the
deploy ISO boots (baremetal/deploy_iso.py builds both). It needs no Python on the node. This
module renders that script and holds everything the platform side shares with it: the
manifest and status formats. The partition layout it writes (the image's two partitions and
the data partition it adds) is images/wholedisk.py's, so the image, the agent and the
platform use one definition.

Protocol (plain HTTP; the per-deploy token in the URL is all the auth the node has)::

    kernel command line   onep.deploy_url=http://DEPLOY_HOST:PORT/v1/deploy/TOKEN
                          onep.mac=MAC onep.ip=ADDRESS/PREFIX (the provisioning NIC; without
                          them: the first NIC at 10.0.2.15/24 via 10.0.2.2, QEMU's defaults)
    GET  <deploy_url>/manifest   -> text/plain, KEY=VALUE lines (see DeployManifest)
    GET  <image_url>             -> the image's mapped blocks back to back (image_map:
                                    START:COUNT runs of 1 MiB blocks; the rest of the
                                    image is zeros, which cleaning left on the disk)
    GET  <config_url>            -> the instance's config bundle (bundle.json)
    POST <deploy_url>/status     <- KEY=VALUE lines (see DeployStatus), several times:
                                    status=running (stage=started, writing, verifying,
                                    partitioning, config), then status=ok or status=error

Only the mapped blocks are sent and written (cleaning left zeros everywhere else). The node
then hashes the blocks it wrote from its page cache, which still holds them (no read-back
from the disk), checks that against ``stream_sha256`` before it adds the data partition and
the bundle, and reports it; the platform checks it again. The data partition is
``data_mib`` MiB when the manifest gives it (the database's storage), else the rest of the
disk; the final report says its size (``data_mib``) and the most it can grow to, the rest of
the disk (``data_max_mib``), which the platform records as the storage's ceiling.

then the node syncs and powers itself off (``poweroff -f``); the platform ejects the media,
sets the boot device to disk and powers it on.

Clean mode (before a node is ``available`` again): the manifest is ``version=2``,
``mode=clean`` and optionally ``target_disk`` (:func:`render_clean_manifest`). The agent
zeroes the whole disk (every partition: the tenant's data, its config bundle, its logs; and
the partition table) with the kernel's BLKZEROOUT (util-linux's ``blkdiscard -z``, shipped in
the ramdisk: the device's Write Zeroes command where it has one, which a virtio disk turns
into holes in its file, else the kernel writes the zeros), falling back to writing zeros
with dd, reporting ``stage=erasing`` with ``erased_mib`` and
``disk_mib`` every ERASE_CHUNK_MIB, then ``status=ok stage=done mode=clean`` (no sha256),
and powers off. Nothing of one tenant reaches the node's next one (Ironic's erase_devices
with zeros, not only its erase_devices_metadata).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from oneplatform.guest.contract import CONFIG_DRIVE_BUNDLE, CONFIG_DRIVE_HOSTNAME
from oneplatform.images.wholedisk import (
    CONFIG_PARTITION,
    DATA_PARTITION,
    MBR_ENTRY_SIZE,
    MBR_MAX_SECTORS,
    MBR_TABLE_OFFSET,
    MIN_DATA_MIB,
    SECTOR,
    TYPE_LINUX,
)

MANIFEST_VERSION = "2"
MODE_DEPLOY = "deploy"
MODE_CLEAN = "clean"
MAX_DATA_MIB = MBR_MAX_SECTORS // (1024**2 // SECTOR)  # what an MBR entry can hold
CMDLINE_KEY = "onep.deploy_url"
CMDLINE_MAC = "onep.mac"  # the provisioning NIC (absent: the first NIC)
CMDLINE_IP = "onep.ip"  # its address/prefix (absent: QEMU user networking's 10.0.2.15/24)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAP = re.compile(r"^[0-9]{1,9}:[0-9]{1,9}(,[0-9]{1,9}:[0-9]{1,9}){0,4095}$")
_URL = re.compile(r"^http://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%\-/]*)?$")
_DISK = re.compile(r"^(/dev/)?[a-z][a-z0-9]*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,62}$")


class ProtocolError(ValueError):
    """A manifest or status that does not follow the deploy protocol."""


def check_url(url: str, what: str = "URL") -> str:
    """``url`` if it is a plain http:// URL safe on a kernel command line and in sh."""
    if not _URL.match(url):
        raise ProtocolError(
            f"{what} {url!r} must be http://HOST[:PORT]/PATH with letters, digits and ._~%-/"
        )
    return url


@dataclass(frozen=True)
class DeployManifest:
    """What the node fetches first: where the image and the bundle are, and the disk."""

    image_url: str
    image_sha256: str  # of the whole image (what the platform built)
    image_size: int
    image_map: str  # START:COUNT,... runs of 1 MiB blocks: what image_url streams
    stream_sha256: str  # of that stream
    config_url: str
    config_sha256: str | None = None
    target_disk: str | None = None  # e.g. /dev/vda; default: the first disk, not a CD
    hostname: str | None = None  # written beside the bundle on the config partition
    data_mib: int | None = None  # the data partition's size; default: the rest of the disk

    def __post_init__(self) -> None:
        check_url(self.image_url, "image_url")
        check_url(self.config_url, "config_url")
        if not _MAP.match(self.image_map):
            raise ProtocolError("image_map must be START:COUNT runs, comma-separated")
        for name in ("image_sha256", "stream_sha256", "config_sha256"):
            value = getattr(self, name)
            if value is not None and not _HEX64.match(value):
                raise ProtocolError(f"{name} must be 64 lower-case hex digits")
        if self.image_size <= 0 or self.image_size % SECTOR:
            raise ProtocolError(f"image_size {self.image_size} is not a positive multiple of 512")
        if self.target_disk is not None and not _DISK.match(self.target_disk):
            raise ProtocolError(f"target_disk {self.target_disk!r} is not a disk name")
        if self.hostname is not None and not _HOSTNAME.match(self.hostname):
            raise ProtocolError(f"hostname {self.hostname!r} is not a host name")
        if self.data_mib is not None and not MIN_DATA_MIB <= self.data_mib <= MAX_DATA_MIB:
            raise ProtocolError(f"data_mib {self.data_mib} is not {MIN_DATA_MIB}..{MAX_DATA_MIB}")

    def render(self) -> str:
        lines = [
            f"version={MANIFEST_VERSION}",
            f"image_url={self.image_url}",
            f"image_sha256={self.image_sha256}",
            f"image_size={self.image_size}",
            f"image_map={self.image_map}",
            f"stream_sha256={self.stream_sha256}",
            f"config_url={self.config_url}",
        ]
        optional = {
            "config_sha256": self.config_sha256,
            "target_disk": self.target_disk,
            "hostname": self.hostname,
            "data_mib": self.data_mib,
        }
        lines += [f"{key}={value}" for key, value in optional.items() if value is not None]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> DeployManifest:
        """Strict on the fields it knows, lenient on the ones it does not (ignored)."""
        fields = parse_key_values(text)
        if fields.get("version") != MANIFEST_VERSION:
            raise ProtocolError(f"manifest version {fields.get('version')!r} is not supported")
        if fields.get("mode", MODE_DEPLOY) != MODE_DEPLOY:
            raise ProtocolError(f"a {fields['mode']} manifest is not a deploy manifest")
        try:
            size = int(fields["image_size"])
            data_mib = fields.get("data_mib")
            return cls(
                image_url=fields["image_url"],
                image_sha256=fields["image_sha256"],
                image_size=size,
                image_map=fields["image_map"],
                stream_sha256=fields["stream_sha256"],
                config_url=fields["config_url"],
                config_sha256=fields.get("config_sha256"),
                target_disk=fields.get("target_disk"),
                hostname=fields.get("hostname"),
                data_mib=None if data_mib is None else int(data_mib),
            )
        except KeyError as exc:
            raise ProtocolError(f"the manifest has no {exc.args[0]}") from None
        except ValueError as exc:
            if isinstance(exc, ProtocolError):
                raise
            raise ProtocolError("image_size or data_mib is not a number") from None


def render_clean_manifest(target_disk: str | None = None) -> str:
    """The manifest of a clean: erase the target disk's metadata, write nothing."""
    if target_disk is not None and not _DISK.match(target_disk):
        raise ProtocolError(f"target_disk {target_disk!r} is not a disk name")
    disk = f"target_disk={target_disk}\n" if target_disk else ""
    return f"version={MANIFEST_VERSION}\nmode={MODE_CLEAN}\n{disk}"


def manifest_mode(text: str) -> str:
    """``deploy`` (the default) or ``clean``."""
    return parse_key_values(text).get("mode", MODE_DEPLOY)


StatusValue = Literal["running", "ok", "error"]


@dataclass(frozen=True)
class DeployStatus:
    """One report from the node. ``ok`` carries the sha256 of the image stream it wrote."""

    status: StatusValue
    stage: str = ""
    sha256: str | None = None
    message: str = ""
    disk: str | None = None
    extra: dict[str, str] = field(default_factory=dict)  # timings and sizes (informational)

    @property
    def final(self) -> bool:
        return self.status in ("ok", "error")

    def render(self) -> str:
        fields = {"status": self.status, "stage": self.stage, "message": self.message}
        if self.sha256 is not None:
            fields["sha256"] = self.sha256
        if self.disk is not None:
            fields["disk"] = self.disk
        fields.update(self.extra)
        return "".join(f"{key}={value}\n" for key, value in fields.items() if value != "")

    @classmethod
    def parse(cls, body: bytes | str) -> DeployStatus:
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        fields = parse_key_values(text)
        status = fields.pop("status", "")
        if status not in ("running", "ok", "error"):
            raise ProtocolError(f"status {status!r} is not running, ok or error")
        sha256 = fields.pop("sha256", None)
        if sha256 is not None and not _HEX64.match(sha256):
            raise ProtocolError("sha256 must be 64 lower-case hex digits")
        if status == "ok" and sha256 is None and fields.get("mode") != MODE_CLEAN:
            raise ProtocolError("status ok without the sha256 of the image stream")
        return cls(
            status=status,  # type: ignore[arg-type]  # checked just above
            stage=fields.pop("stage", ""),
            sha256=sha256,
            message=fields.pop("message", ""),
            disk=fields.pop("disk", None),
            extra=fields,
        )


def parse_key_values(text: str) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and lines without '=' are skipped, the last key wins."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            fields[key.strip()] = value.strip()
    return fields


# --- the script ------------------------------------------------------------------------------

_FUNCTIONS = r"""
# --- pure helpers (tests/unit/test_deploy_agent.py runs them against images/wholedisk.py)
partition_name() {
  # partition_name /dev/vda 2 -> /dev/vda2; /dev/nvme0n1 2 -> /dev/nvme0n1p2
  case "$1" in *[0-9]) echo "${1}p$2" ;; *) echo "$1$2" ;; esac
}

le32() {
  # The 4 little-endian bytes of $1.
  for bits in 0 8 16 24; do
    printf "\\$(printf '%03o' $(( ($1 >> bits) & 255 )))"
  done
}

one_line() {
  # The words as one line of at most 400 characters (a status message).
  printf '%s' "$*" | tr '\n\r\t' '   ' | cut -c1-400
}

data_span() {
  # data_span IMAGE_SIZE DISK_SECTORS -> "START SECTORS" of the data partition: from the
  # first MiB at or after the image to the last whole MiB of the disk (or of the MBR's
  # reach); SECTORS may be <= 0 when the disk is too small.
  start=$(( ($1 + 1048575) / 1048576 * 2048 ))
  limit=$2
  [ "$limit" -gt @MBR_MAX_SECTORS@ ] && limit=@MBR_MAX_SECTORS@
  echo "$start $(( limit / 2048 * 2048 - start ))"
}

data_sectors() {
  # data_sectors ROOM DATA_MIB -> the data partition's sectors: DATA_MIB MiB, or (empty)
  # all of ROOM; fails when DATA_MIB MiB do not fit in ROOM sectors.
  [ -n "$2" ] || { echo "$1"; return 0; }
  [ $(( $2 * 2048 )) -le "$1" ] || return 1
  echo $(( $2 * 2048 ))
}

wipe_ends() {
  # wipe_ends DEV START SECTORS: zero the first and last MiB (at most) of that range.
  count=$(( $3 < 2048 ? $3 : 2048 ))
  dd if=/dev/zero of="$1" bs=512 seek="$2" count="$count" conv=notrunc 2>/dev/null \
    && dd if=/dev/zero of="$1" bs=512 seek=$(( $2 + $3 - count )) count="$count" \
      conv=notrunc 2>/dev/null
}

erase_disk() {
  # erase_disk DEV SECTORS: zeros over every sector, a chunk at a time, reporting how far.
  # Each chunk is zeroed by the kernel (BLKZEROOUT through ZERO_TOOL, `blkdiscard -z`: the
  # device's Write Zeroes where it has one, else the kernel writes the zeros itself) and,
  # when that fails (no tool, not a block device), by writing zeros with dd.
  total_mib=$(( $2 / 2048 ))
  at=0
  zeroout=no
  [ -x "${ZERO_TOOL:-}" ] && [ -b "$1" ] && zeroout=yes \
    && echo "onep-deploy: zeroing $1 through the kernel (BLKZEROOUT)" >&2
  while [ "$at" -lt "$total_mib" ]; do
    n=$(( total_mib - at < ERASE_CHUNK_MIB ? total_mib - at : ERASE_CHUNK_MIB ))
    if [ "$zeroout" = yes ] && ! "$ZERO_TOOL" -f -z -o $((at * 1048576)) -l $((n * 1048576)) \
      "$1" 2>/tmp/zero.err; then
      echo "onep-deploy: zeroout failed ($(tail -n 1 /tmp/zero.err)): writing zeros" >&2
      zeroout=no
    fi
    if [ "$zeroout" = no ]; then
      dd if=/dev/zero of="$1" bs=1048576 seek="$at" count="$n" conv=notrunc 2>/dev/null \
        || return 1
    fi
    at=$((at + n))
    report status=running stage=erasing "erased_mib=$at" "disk_mib=$total_mib" || true
  done
  tail=$(( $2 - total_mib * 2048 ))  # a disk that is not a whole number of MiB
  if [ "$tail" -gt 0 ]; then
    dd if=/dev/zero of="$1" bs=512 seek=$(( total_mib * 2048 )) count="$tail" conv=notrunc \
      2>/dev/null || return 1
  fi
  sync
}

runs_of() {
  # runs_of MAP: its START:COUNT runs, one word each (the manifest checked MAP's characters).
  printf '%s\n' "$1" | tr ',' ' '
}

write_runs() {
  # write_runs DEV MAP: stdin holds the MAP's runs (START:COUNT,... of 1 MiB blocks) back to
  # back; each run is written at its place. Fails on a short stream or a failed write.
  for run in $(runs_of "$2"); do
    dd of="$1" bs=1048576 seek="${run%%:*}" count="${run#*:}" iflag=fullblock conv=notrunc \
      2>/tmp/dd.out || { cat /tmp/dd.out >>/tmp/dd.err; return 1; }
    [ "$(sed -n 's/^\([0-9]*\)+0 records in$/\1/p' /tmp/dd.out)" = "${run#*:}" ] \
      || { echo "the image stream ended inside run $run" >>/tmp/dd.err; return 1; }
  done
  cat >/dev/null  # more than the map: the sha256 check fails it
}

read_runs() {
  # read_runs DEV MAP: the MAP's runs as written, back to back (from the page cache, which
  # still holds what write_runs wrote: no disk read-back).
  for run in $(runs_of "$2"); do
    dd if="$1" bs=1048576 skip="${run%%:*}" count="${run#*:}" 2>/dev/null || return 1
  done
}

map_mib() {
  # map_mib MAP: how many 1 MiB blocks its runs hold.
  total=0
  for run in $(runs_of "$1"); do total=$((total + ${run#*:})); done
  echo "$total"
}

data_entry() {
  # data_entry START SECTORS -> the 16-byte MBR entry of the data partition.
  printf '\000\376\377\377'
  printf "\\@DATA_TYPE_OCTAL@"
  printf '\376\377\377'
  le32 "$1"
  le32 "$2"
}
"""

_SCRIPT = r"""#!/bin/sh
# OnePlatform deploy agent: PID 1 of the deploy ramdisk (busybox only, no Python).
# Rendered by oneplatform/baremetal/deploy_agent.py, which documents the protocol (the
# disk layout is in oneplatform/images/wholedisk.py). Reads onep.deploy_url=URL from the
# kernel command line, fetches URL/manifest, writes the image to the target disk, reads it
# back and checks its sha256, adds the data partition, writes the config bundle to the
# config partition, reports to URL/status and powers the node off. Any failure is
# reported, then the node powers off. It never prints the bundle or the token.

PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PATH
umask 077
cd /

CONFIG_PART=@CONFIG_PARTITION@
DATA_PART=@DATA_PARTITION@
MIN_DATA_MIB=@MIN_DATA_MIB@
DATA_ENTRY_OFFSET=@DATA_ENTRY_OFFSET@
HTTP_TIMEOUT=60
ERASE_CHUNK_MIB=512
ZERO_TOOL=@ZERO_TOOL@
deploy_url=""
stage=boot

centis() {
  # Uptime in hundredths of a second ("1${up#*.} - 100": no leading zero read as octal).
  read -r up _ </proc/uptime
  echo $(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

seconds_since() {
  elapsed=$(( $(centis) - $1 ))
  printf '%d.%02d' $((elapsed / 100)) $((elapsed % 100))
}

say() {
  up=""
  [ -r /proc/uptime ] && read -r up _ </proc/uptime
  echo "onep-deploy: [${up:-?}] $*"
}

power_off() {
  say "powering off"
  sync
  poweroff -f
  echo o >/proc/sysrq-trigger
  while :; do sleep 3600; done
}

report() {
  # report KEY=VALUE... : POST the lines to <deploy_url>/status (three tries).
  [ -n "$deploy_url" ] || return 1
  : >/tmp/status
  for pair in "$@"; do printf '%s\n' "$pair" >>/tmp/status; done
  printf 'uptime_s=%s\n' "$(seconds_since 0)" >>/tmp/status
  for try in 1 2 3; do
    if timeout "$HTTP_TIMEOUT" wget -q -O /tmp/status.reply --post-file /tmp/status \
        "$deploy_url/status" 2>/tmp/wget.err; then
      return 0
    fi
    sleep "$try"
  done
  say "cannot report to the platform: $(tail -n 1 /tmp/wget.err)"
  return 1
}

fail() {
  message="$(one_line "$*")"
  say "FAILED at $stage: $message"
  report status=error "stage=$stage" "message=$message"
  power_off
}

progress() {
  stage="$1"
  say "$stage"
  report status=running "stage=$stage" || true
}

cmdline_value() {
  for word in $(cat /proc/cmdline); do
    case "$word" in "$1"=*) echo "${word#*=}"; return 0 ;; esac
  done
  return 1
}

@FUNCTIONS@

fetch() {
  # fetch URL FILE: download with a timeout; the URL is never printed (it holds the token).
  timeout "$HTTP_TIMEOUT" wget -q -O "$2" "$1" 2>/tmp/wget.err \
    || fail "cannot download $3: $(tail -n 1 /tmp/wget.err)"
}

first_disk() {
  for path in /sys/block/*; do
    name="${path##*/}"
    case "$name" in loop* | ram* | sr* | fd* | zram* | dm-* | md* | nbd*) continue ;; esac
    [ "$(cat "$path/removable" 2>/dev/null)" = 1 ] && continue
    [ "$(cat "$path/size" 2>/dev/null || echo 0)" -gt 0 ] || continue
    echo "$name"
    return 0
  done
  return 1
}

# --- the machine
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /mnt/config
/bin/busybox mount -t proc -o nosuid,nodev,noexec proc /proc
/bin/busybox mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
/bin/busybox mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
/bin/busybox mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
/bin/busybox --install -s /bin
set -o pipefail
started=$(centis)
say "deploy agent started ($(uname -r))"
# The modules this ramdisk ships (written by its builder), dependencies loaded by modprobe.
for module in $(cat @MODULES_LIST@ 2>/dev/null); do
  modprobe -q "$module" 2>/dev/null || say "modprobe $module failed"
done

deploy_url="$(cmdline_value @CMDLINE_KEY@)"
if [ -z "$deploy_url" ]; then
  say "FAILED: no @CMDLINE_KEY@= on the kernel command line"
  power_off
fi

# --- network: the provisioning NIC (by its MAC) at its address, with no route beyond its
# subnet; without onep.mac, the first NIC on QEMU user networking's defaults
stage=network
ip link set lo up
want_mac="$(cmdline_value @CMDLINE_MAC@ || true)"
iface=""
tries=0
while [ -z "$iface" ] && [ "$tries" -lt 100 ]; do
  for path in /sys/class/net/*; do
    [ -e "$path/device" ] || continue
    if [ -z "$want_mac" ] || [ "$(cat "$path/address")" = "$want_mac" ]; then
      iface="${path##*/}"
      break
    fi
  done
  [ -n "$iface" ] || { sleep 0.1; tries=$((tries + 1)); }
done
if [ -z "$iface" ]; then
  say "FAILED: no network interface ${want_mac:+with MAC $want_mac}"
  power_off
fi
if [ -n "$want_mac" ]; then
  if ! address="$(cmdline_value @CMDLINE_IP@)"; then
    say "FAILED: @CMDLINE_MAC@ without @CMDLINE_IP@"
    power_off
  fi
  gateway="$(cmdline_value onep.gw || true)"
else
  address="$(cmdline_value @CMDLINE_IP@ || echo 10.0.2.15/24)"
  gateway="$(cmdline_value onep.gw || echo 10.0.2.2)"
fi
ip link set "$iface" up
ip addr add "$address" dev "$iface" || say "cannot add $address to $iface"
if [ -n "$gateway" ]; then
  ip route add default via "$gateway" dev "$iface" || say "cannot add a route via $gateway"
fi
say "network: $iface $address${gateway:+ via $gateway}"
progress started

# --- the manifest
stage=manifest
fetch "$deploy_url/manifest" /tmp/manifest "the manifest"
version="" mode=@MODE_DEPLOY@ image_url="" image_sha256="" image_size="" image_map=""
stream_sha256="" config_url="" config_sha256="" target_disk="" hostname="" data_mib=""
while IFS= read -r line || [ -n "$line" ]; do
  value="${line#*=}"
  case "$line" in
    version=*) version="$value" ;;
    mode=*) mode="$value" ;;
    image_url=*) image_url="$value" ;;
    image_sha256=*) image_sha256="$value" ;;
    image_size=*) image_size="$value" ;;
    image_map=*) image_map="$value" ;;
    stream_sha256=*) stream_sha256="$value" ;;
    config_url=*) config_url="$value" ;;
    config_sha256=*) config_sha256="$value" ;;
    target_disk=*) target_disk="$value" ;;
    hostname=*) hostname="$value" ;;
    data_mib=*) data_mib="$value" ;;
  esac
done </tmp/manifest
[ "$version" = @MANIFEST_VERSION@ ] || fail "manifest version '$version' is not supported"
case "$mode" in
  @MODE_DEPLOY@)
    [ -n "$image_url" ] && [ -n "$config_url" ] || fail "the manifest lacks image_url or config_url"
    case "$image_sha256" in *[!0-9a-f]* | "") fail "bad image_sha256" ;; esac
    [ "${#image_sha256}" -eq 64 ] || fail "bad image_sha256"
    case "$image_size" in *[!0-9]* | "") fail "bad image_size" ;; esac
    [ $((image_size % 512)) -eq 0 ] && [ "$image_size" -gt 0 ] || fail "bad image_size"
    case "$stream_sha256" in *[!0-9a-f]* | "") fail "bad stream_sha256" ;; esac
    [ "${#stream_sha256}" -eq 64 ] || fail "bad stream_sha256"
    case "$image_map" in *[!0-9:,]* | "") fail "bad image_map" ;; esac
    case "$data_mib" in *[!0-9]*) fail "bad data_mib" ;; esac
    ;;
  @MODE_CLEAN@) ;;
  *) fail "unknown mode '$mode'" ;;
esac

# --- the config bundle first: a missing bundle fails before the disk is touched
if [ "$mode" = @MODE_DEPLOY@ ]; then
  stage=download-config
  fetch "$config_url" /tmp/bundle.json "the config bundle"
  [ -s /tmp/bundle.json ] || fail "the config bundle is empty"
  if [ -n "$config_sha256" ]; then
    got="$(sha256sum /tmp/bundle.json | cut -d' ' -f1)"
    [ "$got" = "$config_sha256" ] || fail "the config bundle's sha256 is $got, not $config_sha256"
  fi
fi

# --- the target disk
stage=disk
target_disk="${target_disk#/dev/}"
tries=0
while [ -z "$target_disk" ] && [ "$tries" -lt 200 ]; do
  target_disk="$(first_disk)" || { sleep 0.1; tries=$((tries + 1)); }
done
[ -n "$target_disk" ] || fail "no disk found (only CD-ROMs, or no driver for the disk)"
[ -e "/sys/block/$target_disk" ] || fail "target disk $target_disk does not exist"
disk="/dev/$target_disk"
disk_sectors="$(cat "/sys/block/$target_disk/size")"
disk_bytes=$((disk_sectors * 512))

# --- clean mode: erase the whole disk, then report and power off
if [ "$mode" = @MODE_CLEAN@ ]; then
  progress erasing
  mark=$(centis)
  erase_disk "$disk" "$disk_sectors" || fail "cannot erase $disk"
  blockdev --rereadpt "$disk" || say "the kernel cannot re-read the partition table of $disk"
  stage=done
  say "erased $disk in $(seconds_since "$mark") s"
  report status=ok stage=done mode=@MODE_CLEAN@ "disk=$disk" "disk_bytes=$disk_bytes" \
    "clean_s=$(seconds_since "$mark")" || say "the final report was not delivered"
  power_off
fi
set -- $(data_span "$image_size" "$disk_sectors")
data_start=$1 data_room=$2
[ "$data_room" -ge $((MIN_DATA_MIB * 2048)) ] \
  || fail "$disk ($disk_bytes bytes) has no room for the image and ${MIN_DATA_MIB} MiB of data"
data_sectors="$(data_sectors "$data_room" "$data_mib")" \
  || fail "$disk ($disk_bytes bytes) has room for $((data_room / 2048)) MiB of data" \
    "after the image, not the $data_mib MiB asked for"
say "target disk $disk: $disk_bytes bytes"

# --- stream the image's mapped blocks onto the disk, then hash them from the page cache
progress writing
mark=$(centis)
wget -q -O - "$image_url" 2>/tmp/wget.err | write_runs "$disk" "$image_map" \
  || fail "writing the image to $disk failed: $(tail -n 1 /tmp/wget.err) $(tail -n 1 /tmp/dd.err)"
write_s="$(seconds_since "$mark")"
say "image written in $write_s s ($(map_mib "$image_map") MiB of $((image_size / 1048576)) MiB)"
progress verifying
mark=$(centis)
got="$(read_runs "$disk" "$image_map" | sha256sum | cut -d' ' -f1)"
sync
verify_s="$(seconds_since "$mark")"
[ "$got" = "$stream_sha256" ] \
  || fail "the image stream has sha256 $got, the image is $stream_sha256"
say "sha256 of the stream verified in $verify_s s"

# --- the data partition: the data volume's size (default: the rest of the disk), blank (the
# image's init makes its fs); the rest of the disk stays free for it to grow into
progress partitioning
data_entry "$data_start" "$data_sectors" >/tmp/entry
[ "$(wc -c </tmp/entry)" -eq 16 ] || fail "cannot make the partition entry"
dd if=/tmp/entry of="$disk" bs=1 seek="$DATA_ENTRY_OFFSET" count=16 conv=notrunc 2>/dev/null \
  || fail "cannot write the partition table of $disk"
wipe_ends "$disk" "$data_start" "$data_sectors" || fail "cannot clear the data partition"
sync
blockdev --rereadpt "$disk" || fail "the kernel cannot re-read the partition table of $disk"
say "data partition $(partition_name "$disk" "$DATA_PART"): sectors $data_start+$data_sectors"

# --- the config partition: the bundle (and hostname)
progress config
config_dev="$(partition_name "$disk" "$CONFIG_PART")"
tries=0
while [ ! -b "$config_dev" ] && [ "$tries" -lt 50 ]; do sleep 0.1; tries=$((tries + 1)); done
mount -t vfat -o nosuid,nodev,noexec "$config_dev" /mnt/config \
  || fail "cannot mount the config partition $config_dev"
rm -f /mnt/config/@CONFIG_BUNDLE@ /mnt/config/@CONFIG_HOSTNAME@
cp /tmp/bundle.json /mnt/config/@CONFIG_BUNDLE@ || fail "cannot write the bundle to $config_dev"
if [ -n "$hostname" ]; then
  printf '%s\n' "$hostname" >/mnt/config/@CONFIG_HOSTNAME@ || fail "cannot write the hostname"
fi
umount /mnt/config || fail "cannot unmount the config partition"
sync

stage=done
say "deployed in $(seconds_since "$started") s"
report status=ok stage=done mode=@MODE_DEPLOY@ "sha256=$got" "disk=$disk" "disk_bytes=$disk_bytes" \
  "image_size=$image_size" "written_mib=$(map_mib "$image_map")" "write_s=$write_s" \
  "verify_s=$verify_s" "data_mib=$((data_sectors / 2048))" "data_max_mib=$((data_room / 2048))" \
  "deploy_s=$(seconds_since "$started")" || say "the final report was not delivered"
power_off
"""

# Modules the ramdisk loads (those the kernel has; dependencies come from modules.dep):
# virtio disks and NIC, SCSI/SATA/NVMe disks and CDs, common NICs, vfat for the config
# partition. Debian's cloud kernel has no AHCI or Intel NIC drivers: a node that needs
# them boots a deploy ramdisk made from a kernel that has them (linux-image-amd64).
ZERO_TOOL = "/usr/sbin/blkdiscard"  # util-linux's, with its libraries, in the ramdisk
MODULES_LIST = "/etc/onep-modules"  # in the ramdisk: the DEPLOY_MODULES its kernel has
DEPLOY_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "virtio_rng",
    "sd_mod",
    "sr_mod",
    "ata_piix",
    "ahci",
    "nvme",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "ena",
    "vmxnet3",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
)


def agent_script() -> str:
    """The deploy agent: a busybox sh script, run as /init of the deploy ramdisk."""
    return _render(_SCRIPT.replace("@FUNCTIONS@", _FUNCTIONS.strip("\n")))


def agent_functions() -> str:
    """The script's pure helpers alone (partition_name, le32, one_line, data_span,
    data_sectors, data_entry, wipe_ends)."""
    return _render(_FUNCTIONS)


def _render(template: str) -> str:
    values = {
        "CONFIG_PARTITION": str(CONFIG_PARTITION),
        "DATA_PARTITION": str(DATA_PARTITION),
        "MIN_DATA_MIB": str(MIN_DATA_MIB),
        "MBR_MAX_SECTORS": str(MBR_MAX_SECTORS),
        "DATA_ENTRY_OFFSET": str(MBR_TABLE_OFFSET + (DATA_PARTITION - 1) * MBR_ENTRY_SIZE),
        "DATA_TYPE_OCTAL": f"{TYPE_LINUX:03o}",
        "MODULES_LIST": MODULES_LIST,
        "ZERO_TOOL": ZERO_TOOL,
        "CMDLINE_KEY": CMDLINE_KEY,
        "CMDLINE_MAC": CMDLINE_MAC,
        "CMDLINE_IP": CMDLINE_IP,
        "MANIFEST_VERSION": MANIFEST_VERSION,
        "MODE_DEPLOY": MODE_DEPLOY,
        "MODE_CLEAN": MODE_CLEAN,
        "CONFIG_BUNDLE": CONFIG_DRIVE_BUNDLE,
        "CONFIG_HOSTNAME": CONFIG_DRIVE_HOSTNAME,
    }
    script = template
    for name, value in values.items():
        script = script.replace(f"@{name}@", value)
    leftover = re.search(r"@[A-Z_]+@", script)
    if leftover:
        raise AssertionError(f"unrendered placeholder {leftover.group(0)}")
    return script

#!/usr/bin/env bash
# Idempotent host set-up for a fresh Debian 12 machine (root, no systemd).
# Every step checks first and is skipped when already done, so a second run is fast.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

cd "$(dirname "$0")/.."
REPO="$(pwd)"

log() { echo "setup: $*"; }

APT_PACKAGES=(
  podman runc mmdebstrap uidmap slirp4netns iptables
  postgresql-15 postgresql-client-15
  busybox-static ca-certificates python3-venv
  # Backups: pgBackRest on the host runs the repository-side commands (expire, info) against
  # the backup store (the guests run their own copy). busybox-static's nc (above) carries a
  # VM's connection to a host service (a QEMU guestfwd).
  pgbackrest
  # Stable database endpoints: HAProxy, reconfigured at run time through its runtime API.
  haproxy
  # MariaDB's server and client binaries (no service): the MariaDB engine's tests run them;
  # its backups are mariadb-backup's, compressed by zstd, stored and expired by rclone.
  mariadb-server-core mariadb-client-core mariadb-client mariadb-backup zstd rclone
  # Redis's server and client (the Redis engine's tests run them; its service is disabled).
  redis-server redis-tools
  # promtool, which checks /metrics in the tests (the package's server is not run).
  prometheus
  # Virtual machines: QEMU (TCG here), libvirt, and the tools that make VM disks.
  qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients
  xorriso e2fsprogs
  # libvirt-python (PyPI) is built from source against these.
  libvirt-dev pkg-config gcc python3-dev
  # Bare metal: whole-disk images with extlinux, the deploy ISO, the emulated nodes' BIOS,
  # and a kernel for the deploy ramdisk.
  isolinux syslinux-common extlinux dosfstools mtools seabios linux-image-cloud-amd64
  # The web dashboard's browser test: headless Chromium driven through its chromedriver.
  chromium chromium-driver
)
LIBVIRT_URI="qemu:///system"
SERVICE_ADDRESS="${ONEP_SERVICE_ADDRESS:-10.95.255.1}"
SERVICE_LINK="onep-svc"
SERVICE_PORTS="8330:8339"  # the host services' ports there (ONEP_STORE_PORT is one)
POOL_NAME="default"
POOL_DIR="/var/lib/libvirt/images"

installed() {
  # True when the package is fully installed (not merely known to dpkg).
  [ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null)" = "ii " ]
}

install_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    if installed "$pkg"; then
      log "$pkg ok"
    else
      missing+=("$pkg")
    fi
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing ${missing[*]}"
  apt-get update -qq
  # Wait for a dpkg lock held by another apt run instead of failing at once.
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 \
    "${missing[@]}" >/dev/null
  for pkg in "${missing[@]}"; do
    installed "$pkg" || { log "ERROR: $pkg did not install"; exit 1; }
    log "$pkg installed"
  done
}

check_python() {
  PYTHON="$(command -v python3 || true)"
  if [ -z "$PYTHON" ]; then
    log "ERROR: python3 not found on PATH"; exit 1
  fi
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    log "ERROR: $PYTHON is $("$PYTHON" --version 2>&1), need Python 3.11"; exit 1
  fi
  log "python3 ok ($("$PYTHON" --version 2>&1))"
}

ensure_venv() {
  local venv="$REPO/.venv"
  if [ -x "$venv/bin/python" ] \
    && "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    log "venv ok"
  else
    log "creating .venv with $PYTHON"
    rm -rf "$venv"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
  fi
  local marker="$venv/.onep-pyproject.sha256" want have=""
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  [ -f "$marker" ] && have="$(cat "$marker")"
  if [ "$want" = "$have" ] && [ -x "$venv/bin/onep" ]; then
    log "python packages ok"
    return 0
  fi
  log "pip install -e '.[dev]'"
  "$venv/bin/python" -m pip install -q -e '.[dev]'
  echo "$want" >"$marker"
  log "python packages installed"
}

ensure_daemon() {
  # No systemd here: start the daemon unless a process of that name already runs.
  local name="$1"
  if pgrep -x "$name" >/dev/null; then
    log "$name running"
  else
    log "starting $name"
    "$name" -d
  fi
}

ensure_libvirt() {
  ensure_daemon virtlogd  # libvirt needs it to start domains (their console logs)
  ensure_daemon libvirtd
  local i
  for i in $(seq 1 60); do
    virsh -q -c "$LIBVIRT_URI" version >/dev/null 2>&1 && break
    [ "$i" -eq 60 ] && { log "ERROR: libvirtd does not answer on $LIBVIRT_URI"; exit 1; }
    sleep 0.5
  done
  log "libvirt ok ($(virsh -c "$LIBVIRT_URI" version 2>/dev/null | grep -i 'running hypervisor' | sed 's/.*: *//'))"
  # The Redfish emulator (sushy-tools) needs a storage pool named "default".
  if ! virsh -q -c "$LIBVIRT_URI" pool-info "$POOL_NAME" >/dev/null 2>&1; then
    log "defining the libvirt storage pool $POOL_NAME at $POOL_DIR"
    mkdir -p "$POOL_DIR"
    virsh -q -c "$LIBVIRT_URI" pool-define-as "$POOL_NAME" dir --target "$POOL_DIR" >/dev/null
    virsh -q -c "$LIBVIRT_URI" pool-autostart "$POOL_NAME" >/dev/null
  fi
  local info
  info="$(virsh -q -c "$LIBVIRT_URI" pool-info "$POOL_NAME")"
  if grep -Eq '^State: +running' <<<"$info"; then
    log "storage pool $POOL_NAME ok"
  else
    mkdir -p "$POOL_DIR"
    virsh -q -c "$LIBVIRT_URI" pool-start "$POOL_NAME" >/dev/null
    log "storage pool $POOL_NAME started"
  fi
}

ensure_subids() {
  # podman run --userns=auto takes each container's uid and gid range from the "containers"
  # user's subordinate ids: a billion of them, 65536 per container.
  local file
  for file in /etc/subuid /etc/subgid; do
    if grep -q '^containers:' "$file" 2>/dev/null; then
      log "$file ok"
    else
      echo "containers:1000000:1000000000" >>"$file"
      log "$file: subordinate ids for containers added"
    fi
  done
}

ensure_guest_firewall() {
  # Container guests live on per-project networks carved from GUEST_SUBNETS (the container
  # driver's constant). From there a guest opens no connection but to guests on its own
  # bridge: not to the host, not to another project, not outside. Answers to connections
  # that come in through published ports pass. Rebuilt on every run (the rules do not
  # survive a reboot); CNI-ADMIN is the chain CNI's own FORWARD rules consult first.
  local subnets="10.96.0.0/12" chain="ONEP-GUESTS" hook
  iptables -N "$chain" 2>/dev/null || true
  iptables -F "$chain"
  iptables -A "$chain" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -A "$chain" -m physdev --physdev-is-bridged -j RETURN
  # The host services meant for guests (the backup store) listen on the service address.
  iptables -A "$chain" -d "$SERVICE_ADDRESS" -p tcp --dport "$SERVICE_PORTS" -j RETURN
  iptables -A "$chain" -j DROP
  iptables -N CNI-ADMIN 2>/dev/null || true
  for hook in INPUT FORWARD CNI-ADMIN; do
    iptables -C "$hook" -s "$subnets" -j "$chain" 2>/dev/null \
      || iptables -I "$hook" 1 -s "$subnets" -j "$chain"
  done
  log "guest firewall ok ($subnets)"
}

no_stale_port_forwards() {
  # A container whose network was never torn down (its podman killed mid-way) leaves CNI's
  # port forward behind: a DNAT of 127.0.0.1:PORT to an address nobody has any more. Any
  # later listener on PORT (a platform's API, a guest's published port) is then unreachable
  # ("connection refused"). Each forward names its container: those podman no longer
  # knows go, with their chains.
  local known rule id chain gone=0
  known="$(podman ps -a -q --no-trunc 2>/dev/null || true)"
  while IFS= read -r rule; do
    id="$(sed -n 's/.*id: \\"\([0-9a-f]\{64\}\)\\".*/\1/p' <<<"$rule")"
    chain="$(sed -n 's/.* -j \(CNI-DN-[0-9a-f]*\)$/\1/p' <<<"$rule")"
    [ -n "$id" ] && [ -n "$chain" ] || continue
    grep -qx "$id" <<<"$known" && continue
    # shellcheck disable=SC2086 # the rule's own words
    eval "iptables -t nat ${rule/-A /-D }"
    iptables -t nat -F "$chain" 2>/dev/null || true
    iptables -t nat -X "$chain" 2>/dev/null || true
    gone=$((gone + 1))
  done < <(iptables -t nat -S CNI-HOSTPORT-DNAT 2>/dev/null | grep '^-A ' || true)
  log "stale port forwards removed: $gone"
}

ensure_service_address() {
  # The host services guests may reach (the backup store) listen on one address of their
  # own, on an interface of its own with no ports (a bridge: kernels without the dummy
  # module have it): containers reach it through their bridge's gateway, VMs and bare-metal
  # nodes through their forwards; nothing else on the host is reachable there.
  # (ONEP_SERVICE_ADDRESS in the platform's settings; rebuilt by every run.)
  if ! ip link show "$SERVICE_LINK" >/dev/null 2>&1; then
    ip link add "$SERVICE_LINK" type bridge
  fi
  ip addr replace "$SERVICE_ADDRESS/32" dev "$SERVICE_LINK"
  ip link set "$SERVICE_LINK" up
  log "service address ok ($SERVICE_ADDRESS on $SERVICE_LINK)"
}

no_redis_service() {
  # The package starts a redis-server of the host's own where systemd runs: the platform
  # and its tests run theirs; this one only takes memory and port 6379.
  if [ -d /run/systemd/system ] && systemctl is-enabled --quiet redis-server 2>/dev/null; then
    systemctl disable --now redis-server >/dev/null 2>&1 || true
    log "the host's redis-server service disabled"
  fi
}

ensure_mysql_user() {
  # mariadb-server-core makes no user; the MariaDB engine runs its server as "mysql" (as
  # in the images, where the full package makes it).
  if ! getent passwd mysql >/dev/null; then
    useradd --system --user-group --home-dir /nonexistent --shell /usr/sbin/nologin mysql
    log "user mysql created"
  fi
}

install_sshd() {
  # The remote-host tests run an sshd of their own in the foreground (tests/sshd.py, on
  # 127.0.0.2): only the binary is needed. The package's own service must not start, so a
  # policy-rc.d that refuses every start is in place while it installs (unless one is).
  if installed openssh-server; then
    log "openssh-server ok"
    return 0
  fi
  local guard=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    guard=1
  fi
  # In a subshell: a failed install still takes the guard away (set -e ends the subshell).
  local failed=""
  (
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 \
      openssh-server >/dev/null
  ) || failed=1
  [ -n "$guard" ] && rm -f /usr/sbin/policy-rc.d
  [ -z "$failed" ] || { log "ERROR: installing openssh-server failed"; exit 1; }
  installed openssh-server || { log "ERROR: openssh-server did not install"; exit 1; }
  log "openssh-server installed (its service not started)"
}

install_packages
install_sshd
ensure_mysql_user
no_redis_service
ensure_subids
ensure_service_address
ensure_guest_firewall
no_stale_port_forwards
ensure_libvirt
check_python
ensure_venv
# The bare-metal lab: emulated nodes (libvirt domains) behind a Redfish emulator on 127.0.0.1.
"$REPO/scripts/bmlab.sh" up
log "done"

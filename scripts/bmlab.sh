#!/usr/bin/env bash
# A bare-metal lab on this machine: N emulated nodes (libvirt domains onep-bm-0 … onep-bm-N-1)
# behind the sushy-tools Redfish BMC emulator on 127.0.0.1, as Ironic's CI does. The emulator is
# a test double for the BMC only: the platform drives the nodes through Redfish.
#
# Usage: scripts/bmlab.sh up [N] | down | status | nodes
#   up      define N nodes (shut off; default 2, or as many as exist) and start the emulator;
#           idempotent (fast when all is up)
#   down    stop the emulator, undefine the nodes, delete their volumes and the lab's files
#   status  the emulator and each node's power state; exit 0 when the lab is up, 3 otherwise
#   nodes   print nodes.json (what a test or `onep node enroll` needs), exit 1 when missing
#
# Each node: TCG (type='qemu'), 1 vCPU, 1536 MiB, SeaBIOS (a 'rom' loader, reported by Redfish
# as boot mode Legacy), boot order cdrom then hd, a blank 8 GiB qcow2 disk
# onep-bm-I-disk.qcow2 in the libvirt pool `default` (virtio), an IDE CD-ROM for virtual media,
# one virtio NIC at PCI 0x10 on QEMU user networking with host forwards
# 127.0.0.1:(PORT_BASE+10*I+K) -> the K-th of GUEST_PORTS (5432, 8471, 3306, 6379, 22: sshd of a
# cluster node), 127.0.0.1:P -> guest port P for the CLUSTER_PORTS ports from
# CLUSTER_PORT_BASE+CLUSTER_PORTS*I (1:1: what a cluster node's containers publish on, as a VM
# node's forwards; the platform's clusters NODE_PORTS) and restrict=on
# (the node reaches nothing through it but the backup store: 10.0.2.100:8333 is forwarded to
# the store on the host's service address), a second virtio NIC (MAC 52:54:00:6f:71:I) on the
# provisioning bridge, and its serial console logged to $STATE_DIR/onep-bm-I.console.log
# (truncated at each power-on).
#
# The provisioning network: the bridge $PROV_BRIDGE, the host at $PROV_GATEWAY/24, node I at
# 10.95.0.(10+I)/24 (set by its deploy ramdisk from the kernel command line). The firewall chain
# ONEP-NODES lets a node open connections to the host's deploy listener ports
# ($PROV_GATEWAY, tcp $DEPLOY_PORTS) and to nothing else: not the host's other services, not
# another node, not outside. nodes.json names the gateway and each node's NIC; `onep up` serves
# its deploy listener there (ONEP_DEPLOY_HOST / ONEP_DEPLOY_PORT override).
#
# The disk drops zeroed blocks (detect_zeroes=unmap): a clean that writes zeros over the whole
# disk leaves the qcow2 file sparse.
#
# The NIC is a libvirt <interface type='user'> (so the emulator lists it under
# EthernetInterfaces and offers Pxe) whose QEMU device is re-pointed by <qemu:override> at a
# `-netdev user,id=n0,hostfwd=…` passed through <qemu:commandline>: libvirt 9.0 only forwards
# ports with the passt backend, which it rejects here. QEMU warns "netdev hostua-onep-nic0 has no
# peer" for libvirt's own unused netdev; that is harmless.
#
# The emulator: $VENV/bin/sushy-emulator with $STATE_DIR/emulator.conf (listen 127.0.0.1:PORT,
# libvirt qemu:///system, ALLOWED_INSTANCES = the nodes' UUIDs, HTTP basic auth from a bcrypt
# htpasswd file), log $STATE_DIR/emulator.log, pid $STATE_DIR/emulator.pid. The BMC user is
# `admin`; its password is generated once into $STATE_DIR/bmc-password (0600) and written to
# nodes.json (0600).
#
# Settings (environment): ONEP_BMLAB_NODES (the N of `up`), ONEP_BMLAB_PORT (8000),
# ONEP_BMLAB_PORT_BASE (23000), ONEP_BMLAB_CLUSTER_PORT_BASE (32100), ONEP_BMLAB_DIR
# (/var/lib/oneplatform/bmlab; the tests read nodes.json there too).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

cd "$(dirname "$0")/.."
REPO="$(pwd)"
VENV="$REPO/.venv"
EMULATOR="$VENV/bin/sushy-emulator"
SUSHY_TOOLS_SPEC='sushy-tools>=2,<3'

LIBVIRT_URI="qemu:///system"
POOL_NAME="default"
POOL_DIR="/var/lib/libvirt/images"
STATE_DIR="${ONEP_BMLAB_DIR:-/var/lib/oneplatform/bmlab}"
NODES="${ONEP_BMLAB_NODES:-}"  # empty: 2, or as many as are defined already
BMC_IP="127.0.0.1"
BMC_PORT="${ONEP_BMLAB_PORT:-8000}"
BMC_URL="http://$BMC_IP:$BMC_PORT"
PORT_BASE="${ONEP_BMLAB_PORT_BASE:-23000}"
BMC_USER="admin"
# The emulator checks the bcrypt hash on every request (no Redfish sessions): a low cost keeps
# each call cheap. The password is random and the emulator listens on 127.0.0.1 only.
BCRYPT_COST=05
NAME_PREFIX="onep-bm-"
MEMORY_MIB=1536
VCPUS=1
DISK_SIZE="8G"
# An explicit SeaBIOS loader of type 'rom', which the emulator reports as boot mode Legacy.
# (<os firmware='bios'> would too, but libvirt here finds no firmware descriptor for SeaBIOS:
# "Unable to find any firmware to satisfy 'bios'" at power-on.)
SEABIOS="/usr/share/seabios/bios-256k.bin"
PROV_BRIDGE="onepbm0"
PROV_GATEWAY="10.95.0.1"
# The data network's path to the platform's backup store: the node reaches
# $STORE_GUEST_ADDRESS:$STORE_PORT, which QEMU carries (busybox nc per connection) to the
# store on the host's service address; libvirt's default sandbox forbids that process, so
# the node's QEMU gets the same sandbox with spawning allowed.
SERVICE_ADDRESS="${ONEP_SERVICE_ADDRESS:-10.95.255.1}"
STORE_PORT="${ONEP_BMLAB_STORE_PORT:-8333}"
# ... and the platform's replication hub (a replica reaches its primary there), the same way.
REPL_PORT="${ONEP_BMLAB_REPLICATION_PORT:-8334}"
STORE_GUEST_ADDRESS="10.0.2.100"
PROV_SUBNET="10.95.0.0/24"
DEPLOY_PORTS="8400:8499"  # where a platform's deploy listener may be

CONF="$STATE_DIR/emulator.conf"
PIDFILE="$STATE_DIR/emulator.pid"
EMU_LOG="$STATE_DIR/emulator.log"
HTPASSWD="$STATE_DIR/htpasswd"
PWFILE="$STATE_DIR/bmc-password"
NODES_JSON="$STATE_DIR/nodes.json"

log() { echo "bmlab: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
virsh_() { virsh -q -c "$LIBVIRT_URI" "$@"; }

node_name() { echo "${NAME_PREFIX}$1"; }
disk_vol() { echo "${NAME_PREFIX}$1-disk.qcow2"; }
node_mac() { printf '52:54:00:6f:70:%02x' "$1"; }
prov_mac() { printf '52:54:00:6f:71:%02x' "$1"; }
# The guest ports a node forwards, in order: node I's K-th at PORT_BASE + 10*I + K (PostgreSQL,
# the guest agent, MariaDB, Redis). nodes.json lists them; enrolment takes them as the port map.
GUEST_PORTS=(5432 8471 3306 6379 22)
host_port() { echo $((PORT_BASE + 10 * $1 + $2)); }
# Node I's block of ports forwarded 1:1 for a cluster node's containers (clusters NODE_PORTS).
CLUSTER_PORT_BASE="${ONEP_BMLAB_CLUSTER_PORT_BASE:-32100}"
CLUSTER_PORTS=20
cluster_port() { echo $((CLUSTER_PORT_BASE + CLUSTER_PORTS * $1 + $2)); }
hostfwds() {
  local k p out=""
  for k in "${!GUEST_PORTS[@]}"; do
    out+="hostfwd=tcp:127.0.0.1:$(host_port "$1" "$k")-:${GUEST_PORTS[$k]},"
  done
  for k in $(seq 0 $((CLUSTER_PORTS - 1))); do
    p="$(cluster_port "$1" "$k")"
    out+="hostfwd=tcp:127.0.0.1:$p-:$p,"
  done
  echo "$out"
}
console_log() { echo "$STATE_DIR/$(node_name "$1").console.log"; }

# ---------------------------------------------------------------------------- prerequisites

ensure_daemon() {
  pgrep -x "$1" >/dev/null || { log "starting $1"; "$1" -d; }
}

ensure_libvirt() {
  command -v virsh >/dev/null || die "virsh is missing (run scripts/setup.sh)"
  [ -f "$SEABIOS" ] || die "$SEABIOS is missing (apt-get install seabios)"
  ensure_daemon virtlogd
  ensure_daemon libvirtd
  local i
  for i in $(seq 1 60); do
    virsh_ version >/dev/null 2>&1 && break
    [ "$i" -eq 60 ] && die "libvirtd does not answer on $LIBVIRT_URI"
    sleep 0.5
  done
  # The emulator stores uploaded virtual media in a pool that must be named "default".
  if ! virsh_ pool-info "$POOL_NAME" >/dev/null 2>&1; then
    log "defining the libvirt storage pool $POOL_NAME at $POOL_DIR"
    mkdir -p "$POOL_DIR"
    virsh_ pool-define-as "$POOL_NAME" dir --target "$POOL_DIR" >/dev/null
    virsh_ pool-autostart "$POOL_NAME" >/dev/null
  fi
  local info
  info="$(virsh_ pool-info "$POOL_NAME")"
  if ! grep -Eq '^State: +running' <<<"$info"; then
    mkdir -p "$POOL_DIR"
    virsh_ pool-start "$POOL_NAME" >/dev/null
  fi
}

ensure_provisioning_network() {
  # The bridge (the host's side of the provisioning network) and the firewall that confines
  # the nodes on it; both rebuilt by every `up` (neither survives a reboot).
  if ! ip link show "$PROV_BRIDGE" >/dev/null 2>&1; then
    log "creating the provisioning bridge $PROV_BRIDGE ($PROV_GATEWAY/24)"
    ip link add "$PROV_BRIDGE" type bridge
  fi
  ip addr replace "$PROV_GATEWAY/24" dev "$PROV_BRIDGE"
  ip link set "$PROV_BRIDGE" up
  local chain="ONEP-NODES" hook
  iptables -N "$chain" 2>/dev/null || true
  iptables -F "$chain"
  iptables -A "$chain" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -A "$chain" -d "$PROV_GATEWAY" -p tcp --dport "$DEPLOY_PORTS" -j RETURN
  iptables -A "$chain" -j DROP
  for hook in INPUT FORWARD; do
    iptables -C "$hook" -i "$PROV_BRIDGE" -j "$chain" 2>/dev/null \
      || iptables -I "$hook" 1 -i "$PROV_BRIDGE" -j "$chain"
  done
}

remove_provisioning_network() {
  local hook
  for hook in INPUT FORWARD; do
    iptables -D "$hook" -i "$PROV_BRIDGE" -j ONEP-NODES 2>/dev/null || true
  done
  iptables -F ONEP-NODES 2>/dev/null || true
  iptables -X ONEP-NODES 2>/dev/null || true
  ip link del "$PROV_BRIDGE" 2>/dev/null || true
}

ensure_emulator_installed() {
  [ -x "$EMULATOR" ] && return 0
  [ -x "$VENV/bin/python" ] || die "no virtualenv at $VENV (run scripts/setup.sh first)"
  log "installing $SUSHY_TOOLS_SPEC into $VENV"
  "$VENV/bin/python" -m pip install -q "$SUSHY_TOOLS_SPEC"
  [ -x "$EMULATOR" ] || die "$EMULATOR is missing after pip install"
}

ensure_htpasswd_tool() {
  command -v htpasswd >/dev/null && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing apache2-utils (htpasswd)"
    apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 apache2-utils \
      >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null 2>&1 || true
      apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 apache2-utils \
        >/dev/null 2>&1 || true
    }
  fi
  command -v htpasswd >/dev/null
}

ensure_credentials() {
  if [ ! -s "$PWFILE" ]; then
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(16))' >"$PWFILE")
  fi
  local password
  password="$(cat "$PWFILE")"
  if [ -s "$HTPASSWD" ] && grep -q "^$BMC_USER:\$2[aby]\$$BCRYPT_COST\\$" "$HTPASSWD" \
    && check_htpasswd "$password"; then
    return 0
  fi
  log "writing the emulator's htpasswd file (bcrypt) for user $BMC_USER"
  if ensure_htpasswd_tool; then
    (umask 077; htpasswd -nbB -C "$BCRYPT_COST" "$BMC_USER" "$password" | sed '/^$/d' >"$HTPASSWD")
  else  # sushy-tools depends on bcrypt, so the venv always has it
    log "htpasswd unavailable: hashing with the venv's bcrypt"
    (umask 077; BMLAB_PW="$password" "$VENV/bin/python" -c '
import bcrypt, os, sys
pw = os.environ["BMLAB_PW"].encode()
print(sys.argv[1] + ":" + bcrypt.hashpw(pw, bcrypt.gensalt(int(sys.argv[2]))).decode())' "$BMC_USER" "$BCRYPT_COST" \
      >"$HTPASSWD")
  fi
}

check_htpasswd() {
  BMLAB_PW="$1" "$VENV/bin/python" - "$HTPASSWD" "$BMC_USER" <<'EOF' 2>/dev/null
import bcrypt, os, sys
path, user = sys.argv[1], sys.argv[2]
for line in open(path):
    name, _, digest = line.strip().partition(":")
    if name == user:
        sys.exit(0 if bcrypt.checkpw(os.environ["BMLAB_PW"].encode(), digest.encode()) else 1)
sys.exit(1)
EOF
}

# ---------------------------------------------------------------------------- nodes

node_xml() {
  local i="$1"
  cat <<EOF
<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>$(node_name "$i")</name>
  <title>OnePlatform bare-metal lab node $i</title>
  <description>Emulated bare-metal node behind the sushy-tools Redfish emulator at $BMC_URL (scripts/bmlab.sh)</description>
  <memory unit='MiB'>$MEMORY_MIB</memory>
  <vcpu>$VCPUS</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <loader readonly='yes' type='rom'>$SEABIOS</loader>
    <boot dev='cdrom'/>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap' detect_zeroes='unmap'/>
      <source pool='$POOL_NAME' volume='$(disk_vol "$i")'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='user'>
      <mac address='$(node_mac "$i")'/>
      <model type='virtio'/>
      <alias name='ua-onep-nic0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x10' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <mac address='$(prov_mac "$i")'/>
      <source bridge='$PROV_BRIDGE'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x11' function='0x0'/>
    </interface>
    <serial type='pty'>
      <log file='$(console_log "$i")' append='off'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=n0,restrict=on,$(hostfwds "$i")guestfwd=tcp:$STORE_GUEST_ADDRESS:$STORE_PORT-cmd:/bin/sh -c &quot;exec /usr/bin/busybox nc $SERVICE_ADDRESS $STORE_PORT 2&gt;/dev/null&quot;,guestfwd=tcp:$STORE_GUEST_ADDRESS:$REPL_PORT-cmd:/bin/sh -c &quot;exec /usr/bin/busybox nc $SERVICE_ADDRESS $REPL_PORT 2&gt;/dev/null&quot;'/>
    <qemu:arg value='-sandbox'/>
    <qemu:arg value='on,obsolete=deny,elevateprivileges=allow,spawn=allow,resourcecontrol=deny'/>
  </qemu:commandline>
  <qemu:capabilities>
    <qemu:del capability='seccomp-sandbox'/>
  </qemu:capabilities>
  <qemu:override>
    <qemu:device alias='ua-onep-nic0'>
      <qemu:frontend>
        <qemu:property name='netdev' type='string' value='n0'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
EOF
}

ensure_node() {
  local i="$1" name vol
  name="$(node_name "$i")"
  vol="$(disk_vol "$i")"
  if ! virsh_ vol-info --pool "$POOL_NAME" "$vol" >/dev/null 2>&1; then
    log "creating the blank $DISK_SIZE disk $vol in pool $POOL_NAME"
    virsh_ vol-create-as "$POOL_NAME" "$vol" "$DISK_SIZE" --format qcow2 >/dev/null
  fi
  # (Re)defined when its definition changed: a running node takes it at its next power-on.
  local xml want have="" stamp="$STATE_DIR/$name.xml.sha256"
  xml="$(mktemp)"
  node_xml "$i" >"$xml"
  want="$(sha256sum "$xml" | cut -d' ' -f1)"
  [ -f "$stamp" ] && have="$(cat "$stamp")"
  if ! virsh_ domuuid "$name" >/dev/null 2>&1; then
    log "defining $name"
  elif [ "$want" != "$have" ]; then
    log "redefining $name (its definition changed)"
    sed -i "s|^  <name>$name</name>\$|&\n  <uuid>$(node_uuid "$i")</uuid>|" "$xml"
  else
    rm -f "$xml"
    return 0
  fi
  virsh_ define "$xml" >/dev/null
  echo "$want" >"$stamp"
  rm -f "$xml"
}

node_uuid() { virsh_ domuuid "$(node_name "$1")" | head -n1; }

write_nodes_json() {
  local tmp uuids=() i
  for i in $(seq 0 $((NODES - 1))); do uuids+=("$(node_uuid "$i")"); done
  tmp="$(mktemp "$STATE_DIR/.nodes.XXXXXX")"
  python3 - "$tmp" "$BMC_URL" "$BMC_USER" "$PWFILE" "$PORT_BASE" "$STATE_DIR" "$NAME_PREFIX" \
    "$PROV_GATEWAY" "${GUEST_PORTS[*]}" "$CLUSTER_PORT_BASE" "$CLUSTER_PORTS" "${uuids[@]}" <<'EOF'
import json, sys
out, url, user, pwfile, base, state, prefix, gateway, guest_ports, cbase, cports, *uuids = sys.argv[1:]
password = open(pwfile).read().strip()
nodes = []
for i, uuid in enumerate(uuids):
    name = f"{prefix}{i}"
    nodes.append({
        "name": name,
        "bmc_url": url,
        "system_id": uuid,
        "system_path": f"/redfish/v1/Systems/{uuid}",
        "username": user,
        "password": password,
        "mac": "52:54:00:6f:70:%02x" % i,
        "ports": {
            **{g: int(base) + 10 * i + k for k, g in enumerate(guest_ports.split())},
            **{str(p): p for p in range(int(cbase) + int(cports) * i, int(cbase) + int(cports) * (i + 1))},
        },
        "console_log": f"{state}/{name}.console.log",
        "disk_volume": f"{prefix}{i}-disk.qcow2",
        "provisioning": {"mac": "52:54:00:6f:71:%02x" % i, "address": f"10.95.0.{10 + i}/24"},
    })
lab = {"version": 1, "bmc_url": url, "provisioning": {"gateway": gateway}, "nodes": nodes}
with open(out, "w") as f:
    json.dump(lab, f, indent=2)
    f.write("\n")
EOF
  chmod 600 "$tmp"
  if [ -f "$NODES_JSON" ] && cmp -s "$tmp" "$NODES_JSON"; then
    rm -f "$tmp"
  else
    mv -f "$tmp" "$NODES_JSON"
  fi
}

# ---------------------------------------------------------------------------- emulator

emulator_pid() {
  # The pid in the pid file, if that process is our emulator (not a reused pid).
  local pid
  [ -f "$PIDFILE" ] || return 1
  pid="$(cat "$PIDFILE")"
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
  [[ "$cmdline" == *"sushy-emulator --config $CONF"* ]] || return 1
  echo "$pid"
}

write_conf() {
  local tmp uuids="" i
  for i in $(seq 0 $((NODES - 1))); do uuids+="'$(node_uuid "$i")', "; done
  tmp="$(mktemp "$STATE_DIR/.conf.XXXXXX")"
  cat >"$tmp" <<EOF
# Written by scripts/bmlab.sh: the Redfish BMC emulator for the bare-metal lab.
SUSHY_EMULATOR_LISTEN_IP = '$BMC_IP'
SUSHY_EMULATOR_LISTEN_PORT = $BMC_PORT
SUSHY_EMULATOR_LIBVIRT_URI = '$LIBVIRT_URI'
SUSHY_EMULATOR_STORAGE_POOL = '$POOL_NAME'
SUSHY_EMULATOR_ALLOWED_INSTANCES = [${uuids%, }]
SUSHY_EMULATOR_AUTH_FILE = '$HTPASSWD'
SUSHY_EMULATOR_FEATURE_SET = 'full'
EOF
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
    return 1  # unchanged
  fi
  mv -f "$tmp" "$CONF"
  return 0
}

stop_emulator() {
  local pid i
  pid="$(emulator_pid)" || { rm -f "$PIDFILE"; return 0; }
  log "stopping the emulator (pid $pid)"
  kill "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
}

port_in_use() { (exec 3<>"/dev/tcp/$BMC_IP/$BMC_PORT") 2>/dev/null; }

start_emulator() {
  port_in_use && die "$BMC_IP:$BMC_PORT is taken by another process (set ONEP_BMLAB_PORT)"
  log "starting sushy-emulator on $BMC_URL (log $EMU_LOG)"
  echo "--- $(date -u +%FT%TZ) start" >>"$EMU_LOG"
  # Its own session, no terminal, output to the log: it outlives this script and its caller.
  setsid "$EMULATOR" --config "$CONF" </dev/null >>"$EMU_LOG" 2>&1 9>&- &
  echo $! >"$PIDFILE"
}

wait_emulator() {
  local i code password
  password="$(cat "$PWFILE")"
  for i in $(seq 1 120); do
    code="$(curl -s -o /dev/null -w '%{http_code}' -u "$BMC_USER:$password" \
      "$BMC_URL/redfish/v1/Systems" || true)"
    [ "$code" = "200" ] && return 0
    emulator_pid >/dev/null || die "the emulator exited; see $EMU_LOG: $(tail -n 5 "$EMU_LOG")"
    sleep 0.25
  done
  die "the emulator does not answer at $BMC_URL/redfish/v1/Systems (HTTP $code); see $EMU_LOG"
}

# ---------------------------------------------------------------------------- commands

cmd_up() {
  [ -n "${1:-}" ] && NODES="$1"
  command -v curl >/dev/null || die "curl is missing"
  mkdir -p "$STATE_DIR"
  chmod 700 "$STATE_DIR"
  ensure_libvirt
  ensure_provisioning_network
  if [ -z "$NODES" ]; then  # keep a lab made bigger by an earlier `up N`
    NODES="$(lab_domains | wc -l)"
    [ "$NODES" -ge 2 ] || NODES=2
  fi
  [[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "node count must be 1..99, got '$NODES'"
  ensure_emulator_installed
  ensure_credentials
  local i changed=0
  for i in $(seq 0 $((NODES - 1))); do ensure_node "$i"; done
  local name
  for name in $(lab_domains); do
    [ "${name#"$NAME_PREFIX"}" -lt "$NODES" ] \
      || log "note: $name is beyond the $NODES node(s) asked for: left out of nodes.json and the emulator"
  done
  write_nodes_json
  write_conf && changed=1
  [ -n "$(find "$HTPASSWD" -newer "$PIDFILE" 2>/dev/null)" ] && changed=1
  if emulator_pid >/dev/null && [ "$changed" -eq 1 ]; then
    log "the emulator's configuration changed: restarting it"
    stop_emulator
  fi
  emulator_pid >/dev/null || start_emulator
  wait_emulator
  log "up: $NODES node(s) behind $BMC_URL (nodes: $NODES_JSON)"
}

lab_domains() { virsh_ list --all --name | grep -E "^${NAME_PREFIX}[0-9]+$" || true; }

cmd_down() {
  stop_emulator
  if virsh_ version >/dev/null 2>&1; then
    local name uuid vol
    for name in $(lab_domains); do
      uuid="$(virsh_ domuuid "$name" | head -n1)"
      [ "$(virsh_ domstate "$name")" = "shut off" ] || virsh_ destroy "$name" >/dev/null 2>&1 || true
      log "undefining $name"
      virsh_ undefine "$name" >/dev/null
      # The emulator uploads inserted media as <image>-<uuid>.img and never deletes it.
      for vol in $(virsh_ vol-list "$POOL_NAME" 2>/dev/null | awk '{print $1}' | grep -- "-$uuid.img$" || true); do
        virsh_ vol-delete --pool "$POOL_NAME" "$vol" >/dev/null || true
      done
    done
    for vol in $(virsh_ vol-list "$POOL_NAME" 2>/dev/null | awk '{print $1}' | grep -E "^${NAME_PREFIX}[0-9]+-disk\.qcow2$" || true); do
      log "deleting volume $vol"
      virsh_ vol-delete --pool "$POOL_NAME" "$vol" >/dev/null
    done
  fi
  remove_provisioning_network
  rm -f "$NODES_JSON" "$CONF" "$PIDFILE" "$HTPASSWD" "$PWFILE" "$STATE_DIR"/${NAME_PREFIX}*.console.log \
    "$STATE_DIR"/${NAME_PREFIX}*.xml.sha256
  log "down"
}

cmd_status() {
  local ok=0 pid name
  if pid="$(emulator_pid)"; then
    echo "emulator: running (pid $pid) at $BMC_URL, log $EMU_LOG"
  else
    echo "emulator: stopped"
    ok=3
  fi
  [ -f "$NODES_JSON" ] || ok=3
  for name in $(lab_domains); do
    printf '%s: %s (%s)\n' "$name" "$(virsh_ domstate "$name")" "$(virsh_ domuuid "$name" | head -n1)"
  done
  [ -n "$(lab_domains)" ] || { echo "nodes: none"; ok=3; }
  return "$ok"
}

cmd_nodes() {
  [ -f "$NODES_JSON" ] || die "no $NODES_JSON: run scripts/bmlab.sh up"
  cat "$NODES_JSON"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    up | down)
      mkdir -p "$STATE_DIR"
      exec 9>"$STATE_DIR/.lock"
      flock 9  # one up/down at a time, e.g. two test sessions starting together
      "cmd_$cmd" "$@"
      ;;
    status) cmd_status ;;
    nodes) cmd_nodes ;;
    *)
      sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
      exit 2
      ;;
  esac
}

main "$@"

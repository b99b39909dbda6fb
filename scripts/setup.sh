#!/usr/bin/env bash
# Idempotent host set-up for a fresh Debian 12 machine (root, no systemd).
# Every step checks first and is skipped when already done, so a second run is fast.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

cd "$(dirname "$0")/.."
REPO="$(pwd)"

log() { echo "setup: $*"; }

APT_PACKAGES=(
  podman runc mmdebstrap uidmap slirp4netns
  postgresql-15 postgresql-client-15
  busybox-static ca-certificates python3-venv
)

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
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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

install_packages
check_python
ensure_venv
log "done"

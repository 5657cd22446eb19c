#!/usr/bin/env bash
# Install what hpcdesk's dev cluster and tests need on a fresh Debian 12/13 machine (as root):
# Debian packages (Slurm, munge, Xorg + dummy driver, a window manager, a terminal, Chromium),
# and a shared virtual environment at $HPCDESK_VENV (readable by the unprivileged test user)
# holding the pinned Python dependencies and this checkout's hpcdesk.
# Idempotent; downloads are cached under $HPCDESK_CACHE, the venv is keyed by content.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
VENV=${HPCDESK_VENV:-/opt/hpcdesk/venv}
CACHE=${HPCDESK_CACHE:-/var/cache/hpcdesk}
APT_PACKAGES=(
  slurm-wlm munge iproute2 util-linux procps psmisc curl ca-certificates
  xserver-xorg-core xserver-xorg-video-dummy x11-utils x11-xserver-utils xauth
  openbox xterm chromium fonts-dejavu-core
  libxkbcommon0 libpulse0   # loaded by selkies' pixelflux and pulsectl
  python3 python3-venv python3-dev gcc
  coturn socat   # TURN: the site's server and the in-job one (tests start their own); tunnels
)

log() { printf '[setup] %s\n' "$*" >&2; }

[[ $(id -u) -eq 0 ]] || { echo "setup.sh must run as root (it installs packages)" >&2; exit 1; }
mkdir -p "$CACHE"

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" coturn "* ]]; then
    # The package enables a system-wide TURN server; hpcdesk and its tests start their own.
    if [[ -d /run/systemd/system ]]; then
      systemctl disable --now coturn >/dev/null 2>&1 || true
    else
      service coturn stop >/dev/null 2>&1 || true
      update-rc.d coturn disable >/dev/null 2>&1 || true
    fi
  fi
fi

# The venv is rebuilt only when the pinned requirements or the Python version change.
key=$( { cat "$HERE/requirements/dev.txt"; /usr/bin/python3 -V; } | sha256sum | cut -c1-16)
if [[ "$(cat "$VENV/.hpcdesk-key" 2>/dev/null)" != "$key" ]]; then
  log "creating $VENV (key $key)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  /usr/bin/python3 -m venv "$VENV"
  PIP_CACHE_DIR="$CACHE/pip" "$VENV/bin/pip" install -q --disable-pip-version-check \
    -r "$HERE/requirements/dev.txt" 2>&1 | { grep -v "^WARNING: Location" || true; }
  echo "$key" > "$VENV/.hpcdesk-key"
fi
# This checkout's hpcdesk, as a real (non-editable) install: the test user cannot read /root.
PIP_CACHE_DIR="$CACHE/pip" "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
  --no-build-isolation --force-reinstall "$HERE" 2>&1 | { grep -v "^WARNING: Location" || true; }
chmod -R a+rX "$(dirname "$VENV")"
log "ready: $VENV ($("$VENV/bin/hpcdesk" --version))"

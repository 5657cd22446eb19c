#!/usr/bin/env bash
# Install what hpcdesk's dev cluster and tests need on a fresh Debian 12/13 machine (as root):
# Debian packages (Slurm, munge, Xorg + dummy driver, a window manager, a terminal, Chromium),
# and a shared virtual environment at $HPCDESK_VENV (readable by the unprivileged test user)
# holding the pinned Python dependencies and this checkout's hpcdesk, and pyslurm unless
# --no-pyslurm is given.
# Idempotent; downloads are cached under $HPCDESK_CACHE, the venv is keyed by content.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
VENV=${HPCDESK_VENV:-/opt/hpcdesk/venv}
CACHE=${HPCDESK_CACHE:-/var/cache/hpcdesk}
# Every tool a test uses is listed here, never left to arrive as someone's dependency: under
# `make test` a missing tool fails its test (tests/tooling.py), so this list is the contract.
APT_PACKAGES=(
  slurm-wlm slurm-client munge iproute2 util-linux procps psmisc curl ca-certificates openssl
  xserver-xorg-core xserver-xorg-video-dummy x11-utils x11-xserver-utils xauth xvfb
  xcvt        # `cvt`: the modeline tests compare hpcdesk's CVT with it byte for byte
  openbox xterm chromium fonts-dejavu-core
  libxkbcommon0 libpulse0   # loaded by selkies' pixelflux and pulsectl
  nginx       # the upstream image entrypoint's nginx config is checked with `nginx -t`
  shellcheck  # lints the image entrypoint
  python3 python3-venv python3-dev gcc libc6-dev make
  libslurm-dev  # headers and libslurm for building pyslurm (scheduler.backend: pyslurm)
  # `hpcdesk tunnel` tests: their own OpenSSH servers (keys; PAM TOTP through libpam-oath,
  # codes from oathtool); no system sshd is started (service starts are denied below).
  openssh-server openssh-client libpam-oath oathtool
  coturn socat   # TURN: the site's server and the in-job one (tests start their own); tunnels
  ruby        # `hpcdesk ood generate` tests: the real ood_core renders the batch connect app
  # The OOD tests' portal: Apache httpd (mod_lua, mod_proxy*, mod_ssl ship in apache2-bin)
  # running ood-portal-generator's config (Ruby: dotenv, bcrypt for htpasswd) and
  # mod_ood_proxy's Lua (posix.pwd from lua-posix); tests start their own instance.
  apache2 apache2-utils ruby-dotenv ruby-bcrypt lua-posix
  ruby-redcarpet  # OodAppkit.markdown: the dashboard renders view.html.erb through it
  # Sound (docs/sound.md): each desktop's own PulseAudio server on the node (host runtime),
  # paplay/parecord/pactl for the sound tests and `doctor --node`.
  pulseaudio pulseaudio-utils
  xclip       # Selkies' X clipboard fallback; the data-policy test reads the desktop's clipboard
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
  # Packages such as nginx start a system service on install; the tests start their own
  # instances, so nothing may be left listening. Deny service starts for this install only.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  lock=(-o DPkg::Lock::Timeout=600)  # another apt run (or unattended-upgrades) may hold it
  apt-get "${lock[@]}" update -qq
  apt-get "${lock[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" coturn "* ]] && [[ -d /run/systemd/system ]]; then
    # The package enables a system-wide TURN server; hpcdesk and its tests start their own.
    systemctl disable --now coturn >/dev/null 2>&1 || true
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
# pyslurm for this Slurm, from the vendored release source (built once, cached by content):
# minutes on a fresh machine, and only `scheduler.backend: pyslurm` (and its tests) use it,
# so `make demo` leaves it out (--no-pyslurm).
if [[ ${1:-} != --no-pyslurm ]]; then
  bash "$HERE/scripts/build-pyslurm.sh" "$VENV" "$CACHE"
fi
chmod -R a+rX "$(dirname "$VENV")"
log "ready: $VENV ($("$VENV/bin/hpcdesk" --version))"

#!/usr/bin/env bash
# Install what hpcdesk's dev cluster and tests need on a fresh Debian 12/13 machine (as root):
# Debian packages (Slurm, munge, Xorg + dummy driver, a window manager, a terminal, Chromium),
# and a shared virtual environment at $HPCDESK_VENV (readable by the unprivileged test user)
# holding the pinned Python dependencies and this checkout's hpcdesk, and pyslurm.
#   --no-pyslurm          leave pyslurm out (minutes of building; only its backend uses it)
#   --runtime-only        the venv gets requirements/runtime.txt only, not the test and docs
#                         tools of requirements/dev.txt (what `make demo` needs)
#   --print-requirements  print the requirements file this run would install, and stop
# Idempotent; downloads are cached under $HPCDESK_CACHE, the venv is keyed by content.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
pyslurm=1
requirements=$HERE/requirements/dev.txt
for arg in "$@"; do
  case $arg in
    --no-pyslurm) pyslurm=0 ;;
    --runtime-only) requirements=$HERE/requirements/runtime.txt ;;
    --print-requirements) echo "$requirements"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg (see the comment at its top)" >&2; exit 2 ;;
  esac
done
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

# The venv is keyed by content: the runtime pins and the Python version, then the tools' pins
# once dev.txt was installed. A runtime-only venv gets the tools on top (no rebuild); a full
# venv serves a runtime-only run as it is; any other change of pins rebuilds it.
pip_install() {
  PIP_CACHE_DIR="$CACHE/pip" "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
}
runtime_key=$( { cat "$HERE/requirements/runtime.txt"; /usr/bin/python3 -V; } | sha256sum | cut -c1-16)
tools_key=$(sha256sum <"$HERE/requirements/dev.txt" | cut -c1-16)
want=$runtime_key
[[ $requirements == */dev.txt ]] && want=$runtime_key+$tools_key
have=$(cat "$VENV/.hpcdesk-key" 2>/dev/null || true)
if [[ $have == "$want" || $have == "$want+"* ]]; then
  :
elif [[ $want == "$have+"* ]]; then
  log "adding the test and docs tools to $VENV (key $want)"
  pip_install -r "$requirements"
  echo "$want" > "$VENV/.hpcdesk-key"
else
  log "creating $VENV (key $want) from ${requirements#"$HERE"/}"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  /usr/bin/python3 -m venv "$VENV"
  pip_install -r "$requirements"
  echo "$want" > "$VENV/.hpcdesk-key"
fi
# This checkout's hpcdesk, as a real (non-editable) install: the test user cannot read /root.
pip_install --no-deps --no-build-isolation --force-reinstall "$HERE"
# pyslurm for this Slurm, from the vendored release source (built once, cached by content):
# minutes on a fresh machine, and only `scheduler.backend: pyslurm` (and its tests) use it,
# so `make demo` leaves it out (--no-pyslurm).
if ((pyslurm)); then
  bash "$HERE/scripts/build-pyslurm.sh" "$VENV" "$CACHE"
fi
# Readable by the dev users, who run hpcdesk from it on the login side and on the nodes.
chmod a+rX "$(dirname "$VENV")"
chmod -R a+rX "$VENV"
log "ready: $VENV ($("$VENV/bin/hpcdesk" --version))"

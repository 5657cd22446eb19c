#!/bin/sh
# The %post of hpcdesk's Debian images (debian-desktop.def: Xfce, kde-desktop.def: KDE Plasma),
# installed by their %files section and run as `sh build.sh DESKTOP`. Everything both images
# share is here: the apt set-up, X (Xorg with the dummy driver; on a GPU node the runtime binds
# the host's NVIDIA X driver files in), GL/EGL and their test tools, the sound server, Selkies
# 2.1.0 from PyPI, TigerVNC + noVNC as the VNC fallback, coturn for the in-job TURN, and the
# size savings. DESKTOP (xfce | kde) adds the desktop and its everyday apps and defaults.
#
# Environment (from the definition's build arguments): DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR,
# PIP_INDEX_URL. apptainer build binds the HOST's /tmp into %post: scratch files stay inside the
# image tree and /tmp is never cleaned.
set -eu
desktop=${1:?usage: build.sh xfce|kde}
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
scratch=$(mktemp -d /opt/.hpcdesk-build.XXXXXX)
export TMPDIR="$scratch" HOME="$scratch"

cat > /etc/apt/sources.list <<EOF
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb $DEBIAN_SECURITY_MIRROR bookworm-security main
EOF
# Small image: no recommends, no docs/man pages/translations.
printf 'APT::Install-Recommends "0";\nAPT::Install-Suggests "0";\n' \
    > /etc/apt/apt.conf.d/90hpcdesk
cat > /etc/dpkg/dpkg.cfg.d/90hpcdesk-nodoc <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/lintian/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/help/*
path-exclude=/usr/share/qt5/translations/*
EOF

case $desktop in
    xfce) desktop_packages="xfce4-session xfwm4 xfce4-panel xfdesktop4 xfce4-settings xfconf
              thunar xfce4-terminal xfce4-appfinder mousepad adwaita-icon-theme" ;;
    # Plasma on X11 (startplasma-x11: ksmserver, kwin_x11, plasmashell) and the everyday apps
    # the selkies-project image ships: Dolphin, Konsole, KWrite. Debian's browsers (chromium,
    # firefox-esr) would add about as much as the whole desktop: left out.
    kde) desktop_packages="plasma-workspace plasma-desktop kwin-x11 breeze breeze-icon-theme
              kde-cli-tools kded5 kio dolphin konsole kwrite" ;;
    *) echo "build.sh: unknown desktop '$desktop' (xfce or kde)" >&2; exit 2 ;;
esac
apt-get update
# shellcheck disable=SC2086  # a word list
apt-get install -y \
    xserver-xorg-core xserver-xorg-video-dummy xauth x11-xserver-utils x11-utils \
    x11-xkb-utils xkb-data xterm xclip dbus dbus-x11 \
    libgl1 libegl1 libgles2 libglx-mesa0 libegl-mesa0 libgl1-mesa-dri mesa-utils \
    pulseaudio pulseaudio-utils \
    fonts-dejavu-core \
    python3 python3-venv \
    tigervnc-standalone-server python3-websockify \
    coturn \
    procps tzdata ca-certificates \
    $desktop_packages

# noVNC is a static web application; the Debian package depends on nodejs (~80 MB, only
# needed for its build tools), so unpack the package's files without its dependencies.
cd "$scratch"
apt-get download novnc
dpkg-deb -x novnc_*.deb "$scratch/novnc"
cp -a "$scratch/novnc/usr/share/novnc" /usr/share/novnc
mkdir -p /usr/share/doc/novnc
cp "$scratch/novnc/usr/share/doc/novnc/copyright" /usr/share/doc/novnc/copyright
cd /

# Selkies from PyPI, binary wheels only (no compiler in the image). pip trusts Debian's CAs
# plus the build host's local ones (the definition's %setup); the image's CA store stays
# Debian's. Byte-compiled here: the image is read-only at run time.
cat /etc/ssl/certs/ca-certificates.crt /opt/.hpcdesk-build-ca/*.crt \
    > "$scratch/build-ca.pem" 2>/dev/null || true
rm -rf /opt/.hpcdesk-build-ca
python3 -m venv /opt/hpcdesk/venv
PIP_CERT=$scratch/build-ca.pem /opt/hpcdesk/venv/bin/pip install --no-cache-dir \
    --disable-pip-version-check --index-url "$PIP_INDEX_URL" \
    --only-binary=:all: selkies==2.1.0
# Debian's own Python modules are compiled by their postinst; compile what is left too
# (a read-only image cannot cache byte code at run time).
python3 -m compileall -q /usr/lib/python3/dist-packages /opt/hpcdesk/venv >/dev/null || true

case $desktop in
xfce)
    # No panel first-run dialog (the default layout as the system-wide xfconf channel), no
    # compositing (cheaper to stream), no screen saver.
    xdg=/etc/xdg/xfce4/xfconf/xfce-perchannel-xml
    mkdir -p "$xdg"
    [ -f "$xdg/xfce4-panel.xml" ] || cp /etc/xdg/xfce4/panel/default.xml "$xdg/xfce4-panel.xml"
    [ -f "$xdg/xfwm4.xml" ] || cat > "$xdg/xfwm4.xml" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<channel name="xfwm4" version="1.0">
  <property name="general" type="empty">
    <property name="use_compositing" type="bool" value="false"/>
  </property>
</channel>
EOF
    rm -f /etc/xdg/autostart/xscreensaver.desktop /etc/xdg/autostart/light-locker.desktop \
          /etc/xdg/autostart/xfce4-power-manager.desktop
    echo "xfce4-session" > /opt/hpcdesk/session ;;
kde)
    # System-wide KDE defaults: no compositing (cheaper to stream; works on the dummy
    # driver), no screen locker, no file indexer, no splash, no session restore.
    cat > /etc/xdg/kwinrc <<'EOF'
[Compositing]
Enabled=false
EOF
    cat > /etc/xdg/kscreenlockerrc <<'EOF'
[Daemon]
Autolock=false
LockOnResume=false
EOF
    cat > /etc/xdg/baloofilerc <<'EOF'
[Basic Settings]
Indexing-Enabled=false
EOF
    cat > /etc/xdg/ksplashrc <<'EOF'
[KSplash]
Engine=none
Theme=None
EOF
    cat > /etc/xdg/ksmserverrc <<'EOF'
[General]
loginMode=emptySession
EOF
    cat > /etc/xdg/powermanagementprofilesrc <<'EOF'
[AC][DPMSControl]
idleTime=0
EOF
    rm -f /etc/xdg/autostart/org.kde.discover.notifier.desktop \
          /etc/xdg/autostart/pulseaudio.desktop /etc/xdg/autostart/xscreensaver.desktop
    echo "startplasma-x11" > /opt/hpcdesk/session ;;
esac
# The sound server is started per session by hpcdesk (issue 24), never by the desktop.
rm -f /etc/xdg/autostart/pulseaudio.desktop

# The entrypoint and what it uses (installed by %files beside this script).
mkdir -p /opt/hpcdesk/novnc /opt/hpcdesk/lib
for f in /usr/share/novnc/*; do ln -s "$f" "/opt/hpcdesk/novnc/${f##*/}"; done
install -m 0644 "$here/novnc-index.html" /opt/hpcdesk/novnc/index.html
install -m 0644 "$here/hpcdesk_wsauth.py" /opt/hpcdesk/lib/hpcdesk_wsauth.py
install -m 0755 "$here/entrypoint.sh" /opt/hpcdesk/entrypoint.sh
bash -n /opt/hpcdesk/entrypoint.sh
bash -n /opt/hpcdesk/entrypoint-lib.sh

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \
    "$scratch" "$here"

#!/bin/sh
# The %post both upstream images (glx-desktop.def, egl-desktop.def) share, installed by their
# %files and run as `sh /opt/hpcdesk/upstream-build.sh FLAVOR IMAGE_REFERENCE`: fail the build,
# not every desktop start, when an upstream tag lacks what the entrypoint runs (the optional
# parts only warn), then install the entrypoint.
set -eu
flavor=$1 ref=$2
case $flavor in
    glx) required="/usr/lib/xorg/Xorg nginx openssl selkies-gstreamer startplasma-x11 dbus-launch python3"
         optional="Xvnc kasmvncpasswd kasmxproxy pipewire turnserver" ;;
    egl) required="Xvfb vglrun nginx openssl selkies-gstreamer startplasma-x11 dbus-launch python3"
         optional="Xvnc kasmvncpasswd pipewire turnserver" ;;
    *) echo "upstream-build.sh: unknown flavour '$flavor'" >&2; exit 2 ;;
esac
for tool in $required; do
    command -v "$tool" >/dev/null 2>&1 || { echo "hpcdesk: $ref lacks $tool" >&2; exit 1; }
done
for tool in $optional; do
    command -v "$tool" >/dev/null 2>&1 ||
        echo "hpcdesk: warning: no $tool in $ref (KasmVNC, audio or TURN unavailable)" >&2
done
# /opt/hpcdesk/entrypoint.sh comes from images/upstream-entrypoint.sh (%files), with the
# functions it shares with the Debian images' entrypoint (images/entrypoint-lib.sh).
chmod 0755 /opt/hpcdesk/entrypoint.sh
bash -n /opt/hpcdesk/entrypoint.sh
bash -n /opt/hpcdesk/entrypoint-lib.sh
rm -f /opt/hpcdesk/upstream-build.sh

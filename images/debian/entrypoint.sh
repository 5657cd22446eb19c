#!/bin/bash
# hpcdesk desktop entrypoint of the Debian images (Xfce, KDE Plasma): Xorg (the dummy driver,
# or on a GPU node the host's NVIDIA X driver that the runtime binds in) or Xvnc, the desktop
# session (/opt/hpcdesk/session names it), Selkies or noVNC, all from the environment (see the
# image's %help and docs/images.md). Xorg runs with the xorg.conf and the X cookie file that
# hpcdesk wrote (HPCDESK_XORG_CONF, XAUTHORITY); nothing here generates either. Writes only
# below $TMPDIR (or /tmp) and $HOME. On SIGTERM/SIGINT/SIGHUP, or when any of its children
# ends, it stops every child and exits.
set -u
umask 077
# log, die, is_uint, alive, stop_pids, wait_x (images/entrypoint-lib.sh, installed by %files)
. "$(dirname "${BASH_SOURCE[0]}")/entrypoint-lib.sh" || exit 1

started_at=$EPOCHREALTIME   # start-up stamps for benchmarks/start_time.py
display=${DISPLAY:-}
case $display in :[0-9]*) ;; *) die "DISPLAY must be set to :N (got '${display}')";; esac
dnum=${display#:}; dnum=${dnum%%.*}
w=${DISPLAY_SIZEW:-1920}; h=${DISPLAY_SIZEH:-1080}
dpi=${DISPLAY_DPI:-96}; depth=${DISPLAY_CDEPTH:-24}
for v in w h dpi depth; do is_uint "${!v}" || die "bad value for $v: '${!v}'"; done
case $depth in 16|24) ;; *) die "DISPLAY_CDEPTH must be 16 or 24 (got $depth)";; esac
iface=${HPCDESK_INTERFACE:-selkies}
case $iface in selkies|vnc) ;; *) die "HPCDESK_INTERFACE must be selkies or vnc (got '$iface')";; esac
port=${HPCDESK_WEB_PORT:-${NGINX_PORT:-${SELKIES_PORT:-8080}}}
is_uint "$port" || die "bad web port '$port'"
addr=${HPCDESK_BIND_ADDR:-0.0.0.0}
user=${SELKIES_BASIC_AUTH_USER:-${USER:-user}}
pwfile=${HPCDESK_PASSWORD_FILE:-}
[ -n "$pwfile" ] && [ -r "$pwfile" ] || die "HPCDESK_PASSWORD_FILE must name a readable file (got '$pwfile')"
IFS= read -r password < "$pwfile" || true
password=${password%$'\r'}
[ -n "$password" ] || die "the password file $pwfile is empty"
# Token mode (hpcdesk's desktop.auth: token): Selkies' master token, from a file like the
# password; Selkies then runs without basic auth and every WebSocket needs a session token.
token=''
tokfile=${HPCDESK_MASTER_TOKEN_FILE:-}
if [ -n "$tokfile" ]; then
    [ "$iface" = selkies ] || die "HPCDESK_MASTER_TOKEN_FILE needs HPCDESK_INTERFACE=selkies"
    [ -r "$tokfile" ] || die "HPCDESK_MASTER_TOKEN_FILE must name a readable file (got '$tokfile')"
    IFS= read -r token < "$tokfile" || true
    token=${token%$'\r'}
    [ -n "$token" ] || die "the master token file $tokfile is empty"
fi
# Never hand secrets down through the generic variables.
unset PASSWD PASSWORD SELKIES_BASIC_AUTH_PASSWORD SELKIES_MASTER_TOKEN
# The desktop session: the image's (/opt/hpcdesk/session), or HPCDESK_DESKTOP_SESSION.
session=${HPCDESK_DESKTOP_SESSION:-}
[ -n "$session" ] || read -r session 2>/dev/null < /opt/hpcdesk/session || true
[ -n "$session" ] || die "no desktop session: set HPCDESK_DESKTOP_SESSION"
read -r -a session_cmd <<< "$session"

[ -n "${XAUTHORITY:-}" ] && [ -r "$XAUTHORITY" ] || die "XAUTHORITY must name the X cookie file hpcdesk wrote (got '${XAUTHORITY:-}')"
export XAUTHORITY
if [ "$iface" = selkies ]; then
    [ -n "${HPCDESK_XORG_CONF:-}" ] && [ -r "$HPCDESK_XORG_CONF" ] ||
        die "HPCDESK_XORG_CONF must name the xorg.conf hpcdesk wrote (got '${HPCDESK_XORG_CONF:-}')"
fi

base=${TMPDIR:-/tmp}
mkdir -p "$base" || die "cannot create $base"
work=$(mktemp -d "$base/hpcdesk.XXXXXXXX") || die "cannot create a work directory in $base"
if [ -z "${XDG_RUNTIME_DIR:-}" ] || [ ! -w "${XDG_RUNTIME_DIR}" ]; then
    export XDG_RUNTIME_DIR=$work/run
    mkdir -m 0700 "$XDG_RUNTIME_DIR"
fi
export HOME=${HOME:-$work/home}
mkdir -p "$HOME" 2>/dev/null || true
cd "$HOME" 2>/dev/null || cd "$work" || die "cannot enter $work"
log "display $display ${w}x${h} depth $depth dpi $dpi, $iface on $addr:$port, work dir $work"
# Socket directories X and ICE expect; a non-root server does not create them. Under
# --contain this /tmp is the container's own.
for d in /tmp/.X11-unix /tmp/.ICE-unix; do
    [ -d "$d" ] || mkdir -m 1777 "$d" 2>/dev/null || true
done

pids=()     # the X server first, then the web server, then the desktop session
cleanup() {  # the web server and the session first, the X server last
    trap - TERM INT HUP EXIT
    local i rev=()
    for (( i = ${#pids[@]} - 1; i >= 1; i-- )); do rev+=("${pids[i]}"); done
    [ ${#rev[@]} -gt 0 ] && stop_pids "${rev[@]}"
    [ ${#pids[@]} -gt 0 ] && stop_pids "${pids[0]}"
    wait 2>/dev/null
    rm -rf "$work"
}
on_signal() { log "received $1, stopping"; cleanup; exit $((128 + $2)); }
trap 'on_signal TERM 15' TERM
trap 'on_signal INT 2' INT
trap 'on_signal HUP 1' HUP
trap cleanup EXIT

mkfifo "$work/xready"
if [ "$iface" = selkies ]; then
    # Selkies first, even before the X server: its start (Python imports from the image) is
    # the longest step, so it runs while Xorg starts; it waits for the file made once X
    # takes clients (Selkies' app-ready file) before it touches the display.
    export SELKIES_APP_WAIT_READY=true SELKIES_APP_READY_FILE=$work/x-ready
    export SELKIES_ADDR=$addr SELKIES_PORT=$port SELKIES_BASIC_AUTH_USER=$user
    if [ -n "$token" ]; then
        export SELKIES_ENABLE_BASIC_AUTH=false
    else
        export SELKIES_ENABLE_BASIC_AUTH=true
    fi
    export SELKIES_AUDIO_ENABLED=${SELKIES_AUDIO_ENABLED:-false}
    # WebRTC only when asked for; switching modes in the UI only then. No ICE server unless
    # the caller's rtc file names the site's: never Selkies' public STUN/TURN defaults.
    export SELKIES_MODE=${SELKIES_MODE:-websockets}
    if [ "$SELKIES_MODE" = webrtc ]; then
        export SELKIES_ENABLE_DUAL_MODE=${SELKIES_ENABLE_DUAL_MODE:-true}
        # Selkies' webrtc mode dials itself on localhost:PORT.
        case $addr in 0.0.0.0|::|*127.0.0.1*) ;; *) export SELKIES_ADDR=$addr,127.0.0.1;; esac
    else
        export SELKIES_ENABLE_DUAL_MODE=${SELKIES_ENABLE_DUAL_MODE:-false}
    fi
    if [ -z "${SELKIES_RTC_CONFIG_JSON:-}" ]; then
        export SELKIES_RTC_CONFIG_JSON=$work/rtc.json
        printf '{"iceServers": [], "iceTransportPolicy": "all"}\n' > "$SELKIES_RTC_CONFIG_JSON"
    fi
    export SELKIES_ENABLE_CLOUDFLARE_TURN=false SELKIES_TURN_HOST=${SELKIES_TURN_HOST:-turn.invalid} \
           SELKIES_STUN_HOST=${SELKIES_STUN_HOST:-stun.invalid}
    # The upstream images' encoder names -> Selkies 2.x names.
    case ${SELKIES_ENCODER:-} in
        x264enc) export SELKIES_ENCODER=h264enc SELKIES_USE_CPU=true;;
        nvh264enc|vah264enc) export SELKIES_ENCODER=h264enc;;
    esac
    # The password (or the master token) reaches Selkies only through its own environment
    # (readable by the user and root only), never through argv.
    if [ -n "$token" ]; then
        SELKIES_MASTER_TOKEN=$token /opt/hpcdesk/venv/bin/selkies &
    else
        SELKIES_BASIC_AUTH_PASSWORD=$password /opt/hpcdesk/venv/bin/selkies &
    fi
    pids+=($!)
    log "web server started at $EPOCHREALTIME"
    /usr/lib/xorg/Xorg "$display" -noreset -novtswitch -sharevts -nolisten tcp \
        -config "$HPCDESK_XORG_CONF" -logfile "$work/Xorg.log" \
        -auth "$XAUTHORITY" -dpi "$dpi" -displayfd 3 \
        +extension RANDR +extension RENDER 3>"$work/xready" &
    pids=("$!" "${pids[@]}")   # the X server first: it is stopped last
    wait_x "$work/xready" "$!" Xorg 30 "$work/Xorg.log"
    : > "$SELKIES_APP_READY_FILE"
else
    /usr/bin/Xvnc "$display" -geometry "${w}x${h}" -depth "$depth" -dpi "$dpi" \
        -rfbunixpath "$work/vnc.sock" -rfbunixmode 0600 -rfbport -1 -SecurityTypes None \
        -AlwaysShared -desktop "hpcdesk $display" -nolisten tcp -auth "$XAUTHORITY" \
        -displayfd 3 3>"$work/xready" &
    pids+=($!)
    wait_x "$work/xready" "$!" Xvnc 30
    # HTTPS with the certificate hpcdesk made (or the site's), like the Selkies interface.
    tls_args=()
    if [ -n "${HPCDESK_TLS_CERT:-}" ] && [ -n "${HPCDESK_TLS_KEY:-}" ]; then
        tls_args=(--cert "$HPCDESK_TLS_CERT" --key "$HPCDESK_TLS_KEY" --ssl-only)
    fi
    HPCDESK_AUTH_USER=$user PYTHONPATH=/opt/hpcdesk/lib \
        python3 -m websockify --web /opt/hpcdesk/novnc --web-auth \
        --auth-plugin hpcdesk_wsauth.FileBasicAuth --auth-source "$pwfile" \
        --unix-target "$work/vnc.sock" --heartbeat 30 ${tls_args[@]+"${tls_args[@]}"} \
        "$addr:$port" &
    pids+=($!)
    log "web server started at $EPOCHREALTIME"
fi
unset password token
export DISPLAY=$display
log "X server took clients at $EPOCHREALTIME (entrypoint started at $started_at)"
# Off the start path: the screen size for the log, no screen saver.
{
    got=$(xdpyinfo 2>/dev/null | sed -n 's/^ *dimensions: *\([0-9]*x[0-9]*\) pixels.*/\1/p')
    log "X server ready on $display, screen $got"
    xset s off -dpms s noblank 2>/dev/null || true
} &

# The desktop session, with its own session bus, once the web server listens (at most 20 s):
# started together on a job's few CPUs, a desktop's own start (KDE Plasma: dozens of
# processes) delayed Selkies' start, and with it the link, by many seconds; the desktop
# appears in the browser while it starts. Only a TCP connect: nothing is sent.
probe=${addr%%,*}
case $probe in 0.0.0.0|::) probe=127.0.0.1;; esac
for (( i = 0; i < 200; i++ )); do
    alive "${pids[1]}" || break
    (exec 3<>"/dev/tcp/$probe/$port") 2>/dev/null && break
    sleep 0.1
done
log "web server listens at $EPOCHREALTIME; starting the desktop session"
dbus-run-session -- "${session_cmd[@]}" &
pids+=($!)
log "started: ${pids[*]}"

# Run until any child ends (or a signal arrives); then stop the others.
wait -n "${pids[@]}"
rc=$?
log "a desktop process ended (status $rc), stopping the others"
exit "$rc"

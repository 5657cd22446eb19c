#!/bin/bash
# hpcdesk entrypoint for the selkies-project NVIDIA desktop images under unprivileged Apptainer.
#
# The same script is installed by images/glx-desktop.def and images/egl-desktop.def; the
# flavour comes from HPCDESK_FLAVOR (set by the image's %environment). It replaces the
# image's supervisord and /etc/*entrypoint.sh, which need sudo, write into /etc, download the
# NVIDIA driver, disable X access control and use fixed /tmp paths. Here everything runs as
# the calling user and writes only into a private work directory below $TMPDIR (/tmp: private
# per session with `apptainer --contain --workdir`), $XDG_RUNTIME_DIR and the desktop's own
# files in $HOME. Secrets never appear on a command line: they reach the one process that
# needs them through its environment, a pipe or a 0600 file.
#
# X: hpcdesk writes the X cookie file (XAUTHORITY) and, for the GLX flavour, the xorg.conf
# for the job's GPU (HPCDESK_XORG_CONF) and binds them in read-only; this script generates
# neither and starts its X server with them.
#
# Order: contract checks -> X server (Xorg on the GPU | Xvfb | KasmVNC) -> D-Bus -> audio ->
# KDE -> TURN -> streamer (selkies-gstreamer | KasmVNC) on 127.0.0.1 -> nginx on the one public
# port (basic auth, TLS) once the streamer answers. SIGTERM/SIGINT/SIGHUP, or the end of any
# essential process, stops everything.
set -u
umask 077
# log, die, is_uint, alive, stop_pids, wait_x
# shellcheck source=entrypoint-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/entrypoint-lib.sh" || exit 1

XORG_MODULES=/usr/lib/xorg/modules
KASM_WWW=/usr/share/kasmvnc/www
GST_ENV=/opt/gstreamer/gst-env
# GLX + KasmVNC: KasmVNC's own X display is DISPLAY + this offset. hpcdesk leases displays
# below 1000 node-wide, so the pair is unique on the node.
KASM_DISPLAY_OFFSET=1000
X_TIMEOUT=60

pids=()          # every process started here
essential=()     # those whose end ends the desktop
declare -A pname=()
work=''
dbus_session_pid=''
last_pid=''
streamer_pid=''

is_true() { case ${1,,} in true | 1 | yes | on) return 0 ;; *) return 1 ;; esac; }

track() {  # NAME PID essential|optional
    pids+=("$2")
    pname[$2]=$1
    if [ "$3" = essential ]; then essential+=("$2"); fi
}

port_open() {  # HOST PORT: something accepts TCP connections there
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

internal_port() {  # PREFERRED: that port on 127.0.0.1 if nothing listens there, else a free one
    if is_uint "$1" && [ "$1" -gt 1023 ] && [ "$1" -lt 65536 ] && ! port_open 127.0.0.1 "$1"; then
        printf '%s\n' "$1"
        return 0
    fi
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_port() {  # PORT PID WHAT: until 127.0.0.1:PORT accepts connections
    local deadline=$((SECONDS + ${HPCDESK_START_TIMEOUT:-300}))
    until port_open 127.0.0.1 "$1"; do
        alive "$2" || die "$3 exited during start-up (see its messages above)"
        [ "$SECONDS" -lt "$deadline" ] || die "$3 did not listen on 127.0.0.1:$1 in time"
        sleep 0.2
    done
}

cleanup() {  # stop what this script started; hpcdesk's agent ends anything they left behind
    local rc=$?
    trap '' TERM INT HUP
    trap - EXIT
    local all=("${pids[@]}")
    if [ -n "$dbus_session_pid" ]; then all+=("$dbus_session_pid"); fi
    if [ ${#all[@]} -gt 0 ]; then stop_pids "${all[@]}"; fi
    wait 2>/dev/null
    if [ -n "$work" ]; then rm -rf "$work"; fi
    exit "$rc"
}

on_signal() {
    log "received SIG$1, stopping the desktop"
    exit $((128 + $2))
}

# --- the environment contract -------------------------------------------------------------

read_contract() {
    flavor=${HPCDESK_FLAVOR:-}
    case $flavor in glx | egl) ;; *) die "HPCDESK_FLAVOR must be glx or egl (got '$flavor')" ;; esac

    case ${DISPLAY:-} in
        :[0-9]*) ;;
        *) die "DISPLAY must be :N, a display number free on this node (got '${DISPLAY:-}')" ;;
    esac
    dnum=${DISPLAY#:}
    dnum=${dnum%%.*}
    is_uint "$dnum" || die "DISPLAY must be :N (got '$DISPLAY')"
    export DISPLAY=":$dnum"

    w=${DISPLAY_SIZEW:-1920} h=${DISPLAY_SIZEH:-1080} refresh=${DISPLAY_REFRESH:-60}
    dpi=${DISPLAY_DPI:-96} depth=${DISPLAY_CDEPTH:-24}
    local v
    for v in w h refresh dpi depth; do
        if ! is_uint "${!v}" || [ "${!v}" -eq 0 ]; then
            die "DISPLAY_* values must be positive integers ($v='${!v}')"
        fi
    done
    case $depth in 16 | 24 | 30) ;; *) die "DISPLAY_CDEPTH must be 16, 24 or 30 (got $depth)" ;; esac
    video_port=${VIDEO_PORT:-DFP}
    [[ ${video_port^^} =~ ^(DFP(-[0-9]+)?|DP-[0-9]+|NONE)$ ]] ||
        die "VIDEO_PORT must be DFP, DFP-N, DP-N or none (got '$video_port')"

    for v in SELKIES_VIDEO_BITRATE SELKIES_FRAMERATE SELKIES_AUDIO_BITRATE KASMVNC_THREADS; do
        if [ -n "${!v:-}" ] && ! is_uint "${!v}"; then die "$v must be an integer (got '${!v}')"; fi
    done
    case ${SELKIES_ENCODER:=x264enc} in
        nvh264enc | x264enc | vp8enc | vp9enc | vah264enc | nvh265enc | x265enc | av1enc) ;;
        *) die "SELKIES_ENCODER '$SELKIES_ENCODER' is not a selkies-gstreamer encoder" ;;
    esac
    export SELKIES_ENCODER

    web_port=${NGINX_PORT:-${HPCDESK_WEB_PORT:-}}
    if ! is_uint "$web_port" || [ "$web_port" -eq 0 ] || [ "$web_port" -gt 65535 ]; then
        die "NGINX_PORT must be the public web port (got '$web_port')"
    fi
    bind_addr=${HPCDESK_BIND_ADDR:-0.0.0.0}
    [[ $bind_addr =~ ^[0-9A-Fa-f.:]+$ ]] || die "HPCDESK_BIND_ADDR must be an IP address (got '$bind_addr')"

    if is_true "${KASMVNC_ENABLE:-false}" || [ "${HPCDESK_INTERFACE:-}" = vnc ]; then
        interface=kasmvnc
    else
        interface=selkies
    fi

    user=${SELKIES_BASIC_AUTH_USER:-$(id -un)}
    [[ $user =~ ^[A-Za-z0-9._@-]+$ ]] || die "SELKIES_BASIC_AUTH_USER '$user' is not a plain user name"
    if ! is_true "${SELKIES_ENABLE_BASIC_AUTH:-true}"; then
        log "SELKIES_ENABLE_BASIC_AUTH=false is ignored: hpcdesk desktops always require the password"
    fi
    # The password: a file (HPCDESK_PASSWORD_FILE), else the protected environment. It stays in
    # an unexported shell variable; the generic names are removed from the environment so that
    # the desktop's programs never inherit it.
    password=''
    if [ -n "${HPCDESK_PASSWORD_FILE:-}" ]; then
        [ -r "$HPCDESK_PASSWORD_FILE" ] || die "HPCDESK_PASSWORD_FILE $HPCDESK_PASSWORD_FILE is not readable"
        IFS= read -r password <"$HPCDESK_PASSWORD_FILE" || true
        password=${password%$'\r'}
    fi
    [ -n "$password" ] || password=${SELKIES_BASIC_AUTH_PASSWORD:-${PASSWD:-}}
    turn_password=${SELKIES_TURN_PASSWORD:-}
    turn_secret=${SELKIES_TURN_SHARED_SECRET:-}
    unset PASSWD SELKIES_BASIC_AUTH_PASSWORD SELKIES_TURN_PASSWORD SELKIES_TURN_SHARED_SECRET
    [ -n "$password" ] || die "no password: pass SELKIES_BASIC_AUTH_PASSWORD or PASSWD (protected environment)"
    [ "$password" != mypasswd ] || die "refusing the image's default password; pass the session's own"
    case $password in *$'\n'*) die "the password must be one line" ;; esac

    https=false
    if is_true "${SELKIES_ENABLE_HTTPS:-false}"; then
        https=true
        tls_cert=${SELKIES_HTTPS_CERT:-${HPCDESK_TLS_CERT:-}}
        tls_key=${SELKIES_HTTPS_KEY:-${HPCDESK_TLS_KEY:-$tls_cert}}
        if [ -z "$tls_cert" ] || [ ! -r "$tls_cert" ]; then
            die "SELKIES_HTTPS_CERT '$tls_cert' is not readable (bind it into the container)"
        fi
        [ -r "$tls_key" ] || die "SELKIES_HTTPS_KEY '$tls_key' is not readable (bind it into the container)"
    fi

    if [ -n "${TZ:-}" ]; then
        # Time zone from the environment only (no /etc/localtime); glibc reads TZ itself.
        [ -e "/usr/share/zoneinfo/$TZ" ] || log "warning: unknown time zone TZ=$TZ, clocks show UTC"
        export TZ
    fi
}

setup_dirs() {
    local base=${TMPDIR:-/tmp}
    work=$(mktemp -d "$base/hpcdesk.XXXXXXXX") || die "cannot create a work directory in $base"
    local run=${XDG_RUNTIME_DIR:-}
    if [ -n "$run" ] && { [ -d "$run" ] || mkdir -m 0700 "$run" 2>/dev/null; } &&
        [ -O "$run" ] && [ -w "$run" ]; then
        chmod 0700 "$run"
    else
        run=$work/run
        mkdir -m 0700 "$run"
    fi
    export XDG_RUNTIME_DIR=$run
    if [ -z "${HOME:-}" ] || [ ! -d "$HOME" ] || [ ! -w "$HOME" ]; then
        log "warning: HOME '${HOME:-}' is not writable, using a temporary home"
        export HOME=$work/home
        mkdir -p "$HOME"
    fi
    cd "$HOME" || cd "$work" || die "cannot enter $HOME"
    # Desktop session and audio paths below the private runtime directory (the image's ENV
    # points them at /tmp/runtime-ubuntu).
    export XDG_SESSION_ID=$dnum XDG_SESSION_TYPE=x11
    export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$XDG_RUNTIME_DIR/dbus-system-bus
    export PIPEWIRE_LATENCY=128/48000 PIPEWIRE_RUNTIME_DIR=$XDG_RUNTIME_DIR DISABLE_RTKIT=y
    export PULSE_RUNTIME_PATH=$XDG_RUNTIME_DIR/pulse
    export PULSE_SERVER=unix:$PULSE_RUNTIME_PATH/native
    export QT_LOGGING_RULES=${QT_LOGGING_RULES:-'*.debug=false;qt.qpa.*=false'}
    export PATH=${PATH:-/usr/local/bin:/usr/bin:/bin}
    # A GStreamer registry per session: never a stale one from another image in a shared HOME.
    export GST_REGISTRY=$work/gstreamer-registry.bin
}

# --- GPU ---------------------------------------------------------------------------------

select_gpu() {  # sets gpu_index, gpu_count: HPCDESK_GPU_UUID's GPU, else the first; fails without a GPU
    gpu_index='' gpu_count=0
    command -v nvidia-smi >/dev/null 2>&1 || return 1
    local list idx uuid want=${HPCDESK_GPU_UUID:-} pick=''
    list=$(nvidia-smi --query-gpu=index,uuid --format=csv,noheader 2>/dev/null) || return 1
    [ -n "$list" ] || return 1
    gpu_count=$(grep -c . <<<"$list")
    if [ -z "$want" ]; then
        case ${NVIDIA_VISIBLE_DEVICES:-all} in
            all | none | void | '') ;;
            *) want=${NVIDIA_VISIBLE_DEVICES%%,*} ;;
        esac
    fi
    while IFS=', ' read -r idx uuid; do
        [ -n "$uuid" ] || continue
        if [ -z "$want" ] || [ "$want" = "$idx" ] || [ "$want" = "$uuid" ]; then
            pick=$idx
            break
        fi
    done <<<"$list"
    [ -n "$pick" ] || die "GPU '$want' is not visible in the container; nvidia-smi lists: $(tr '\n' ';' <<<"$list")"
    gpu_index=$pick
}

driver_version() {  # the host driver's version, for messages
    if [ -n "${NVIDIA_DRIVER_VERSION:-}" ]; then
        printf '%s\n' "$NVIDIA_DRIVER_VERSION"
    elif [ -r /proc/driver/nvidia/version ]; then
        awk 'NR == 1 { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+\.[0-9.]+$/) { print $i; exit } }' \
            /proc/driver/nvidia/version
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1
    fi
}

check_glx_driver() {  # the host's NVIDIA X driver, bound into the image by hpcdesk
    local f missing=()
    for f in "$XORG_MODULES/drivers/nvidia_drv.so" "$XORG_MODULES/extensions/libglxserver_nvidia.so"; do
        [ -s "$f" ] || missing+=("$f")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "error: the NVIDIA X.Org driver is missing in the container: ${missing[*]}"
    log "  This image never downloads a driver. hpcdesk binds the node's own nvidia_drv.so and"
    local version
    version=$(driver_version)
    log "  libglxserver_nvidia.so when they are installed: install the X.Org components of the"
    log "  node's NVIDIA driver ${version:+$version }(the same version as its kernel module),"
    log "  or use the EGL flavour (image: egl), which needs no X driver on the node."
    return 1
}

have_nvidia_egl() {
    local d
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-} /.singularity.d/libs; do
        [ -e "$d/libEGL_nvidia.so.0" ] && return 0
    done
    ldconfig -p 2>/dev/null | grep -q 'libEGL_nvidia\.so\.0'
}

# --- X servers ---------------------------------------------------------------------------

start_x() {  # NAME ARGV...: start an X server with -displayfd, wait until it takes clients
    local name=$1 fifo
    shift
    fifo=$work/ready.$name
    mkfifo "$fifo"
    "$@" -displayfd 3 3>"$fifo" &
    local pid=$!
    track "$name" "$pid" essential
    last_pid=$pid
    wait_x "$fifo" "$pid" "$name" "$X_TIMEOUT" "$work/Xorg.log"
}

xorg_binary() {  # the real server, never the setuid wrapper
    if [ -x /usr/lib/xorg/Xorg ]; then
        printf '%s\n' /usr/lib/xorg/Xorg
    else
        command -v Xorg
    fi
}

console_args() {  # Xorg + NVIDIA open a VT; give it a harmless one in the private /dev
    if [ -r /dev/tty0 ] && [ -w /dev/tty0 ]; then return 0; fi
    local vt=7
    if [ ! -e /dev/tty$vt ]; then ln -s /dev/ptmx /dev/tty$vt 2>/dev/null || true; fi
    if [ -r /dev/tty$vt ] && [ -w /dev/tty$vt ]; then printf 'vt%s\n' "$vt"; fi
}

check_x_files() {  # the cookie file, and for Xorg the xorg.conf, that hpcdesk wrote
    [ -n "${XAUTHORITY:-}" ] && [ -r "$XAUTHORITY" ] ||
        die "XAUTHORITY must name the X cookie file hpcdesk wrote (got '${XAUTHORITY:-}')"
    export XAUTHORITY
    if [ "$flavor" = glx ]; then
        [ -n "${HPCDESK_XORG_CONF:-}" ] && [ -r "$HPCDESK_XORG_CONF" ] ||
            die "HPCDESK_XORG_CONF must name the xorg.conf hpcdesk wrote for this GPU (got '${HPCDESK_XORG_CONF:-}')"
    fi
}

start_xorg_gpu() {
    check_glx_driver || exit 1
    local xorg vt
    xorg=$(xorg_binary) || die "Xorg is missing in this image"
    log "Xorg on GPU index $gpu_index with $HPCDESK_XORG_CONF, depth $depth, $video_port"
    vt=$(console_args)
    # shellcheck disable=SC2086 # $vt is empty or one word
    start_x Xorg "$xorg" "$DISPLAY" $vt -config "$HPCDESK_XORG_CONF" -noreset -novtswitch -sharevts \
        -nolisten tcp -auth "$XAUTHORITY" -logfile "$work/Xorg.log" -dpi "$dpi" \
        +extension GLX +extension RANDR +extension RENDER +extension COMPOSITE \
        +extension DAMAGE +extension MIT-SHM +extension XFIXES +extension XTEST
}

start_xvfb() {
    local fbw=$w fbh=$h resize=''
    command -v Xvfb >/dev/null || die "Xvfb is missing in this image"
    if is_true "${SELKIES_ENABLE_RESIZE:-false}" && command -v selkies-gstreamer-resize >/dev/null; then
        # A large framebuffer that RANDR can shrink to whatever size the browser asks for.
        fbw=$((w > 8192 ? w : 8192)) fbh=$((h > 4096 ? h : 4096)) resize=yes
    fi
    start_x Xvfb Xvfb "$DISPLAY" -screen 0 "${fbw}x${fbh}x${depth}" -dpi "$dpi" -nolisten tcp \
        -noreset -auth "$XAUTHORITY" +iglx +render \
        +extension GLX +extension RANDR +extension RENDER +extension COMPOSITE \
        +extension DAMAGE +extension MIT-SHM +extension XFIXES +extension XTEST
    if [ -n "$resize" ]; then
        selkies-gstreamer-resize "${w}x${h}" >/dev/null 2>&1 || log "warning: could not resize the screen to ${w}x${h}"
    fi
}

kasm_display_free() {  # N: no socket, lock or abstract socket for :N
    [ ! -e "/tmp/.X11-unix/X$1" ] && [ ! -e "/tmp/.X$1-lock" ] &&
        ! grep -q "@/tmp/.X11-unix/X$1\$" /proc/net/unix 2>/dev/null
}

start_kasmvnc() {  # KasmVNC's Xvnc on 127.0.0.1:$backend_port with its own basic auth
    local xvnc kdisp kdepth=$depth args
    xvnc=$(command -v Xkasmvnc || command -v Xvnc) || die "KASMVNC_ENABLE=true but this image has no KasmVNC"
    command -v kasmvncpasswd >/dev/null || die "kasmvncpasswd is missing in this image"
    [ "$kdepth" = 30 ] && kdepth=24
    # The password file KasmVNC checks itself (the loopback port is reachable by every user
    # of the node); the password goes in on stdin.
    printf '%s\n%s\n' "$password" "$password" | kasmvncpasswd -u "$user" -ow "$work/kasmpasswd" >/dev/null ||
        die "kasmvncpasswd failed"
    args=(-geometry "${w}x${h}" -depth "$kdepth" -dpi "$dpi" -auth "$XAUTHORITY" -nolisten tcp
        -interface 127.0.0.1 -websocketPort "$backend_port" -httpd "$KASM_WWW"
        -KasmPasswordFile "$work/kasmpasswd" -SecurityTypes None -AlwaysShared
        -BlacklistTimeout 0 -FrameRate "$refresh" -RectThreads "${KASMVNC_THREADS:-0}")
    # Without -PublicIP, KasmVNC asks STUN servers on the internet and exits when it cannot.
    if "$xvnc" -help 2>&1 | grep -qi publicip; then args+=(-PublicIP "$(public_ip)"); fi
    if ! is_true "${SELKIES_ENABLE_RESIZE:-false}"; then args+=(-AcceptSetDesktopSize=0); fi
    if [ "$flavor" = egl ]; then
        start_x KasmVNC "$xvnc" "$DISPLAY" "${args[@]}"
        streamer_pid=$last_pid
        return 0
    fi
    # GLX: the desktop stays on the GPU's Xorg; kasmxproxy copies it into KasmVNC's display.
    kdisp=$((dnum + KASM_DISPLAY_OFFSET))
    kasm_display_free "$kdisp" || die "display :$kdisp for KasmVNC is taken"
    start_x KasmVNC "$xvnc" ":$kdisp" "${args[@]}"
    streamer_pid=$last_pid
    local proxy=(kasmxproxy -a "$DISPLAY" -v ":$kdisp" -f "$refresh")
    if is_true "${SELKIES_ENABLE_RESIZE:-false}"; then proxy+=(-r); fi
    "${proxy[@]}" &
    track kasmxproxy $! essential
}

public_ip() {
    if [ -n "${TURN_EXTERNAL_IP:-}" ]; then
        printf '%s\n' "$TURN_EXTERNAL_IP"
    elif [ "$bind_addr" != 0.0.0.0 ] && [ "$bind_addr" != :: ]; then
        printf '%s\n' "$bind_addr"
    else
        hostname -I 2>/dev/null | awk '{ print $1 }' | grep . || printf '127.0.0.1\n'
    fi
}

# --- session -----------------------------------------------------------------------------

start_dbus() {
    local out key val conf=$work/system-bus.conf
    # A private system bus (no sudo, no /run): KDE's helpers find one and stop complaining.
    if command -v dbus-daemon >/dev/null; then
        cat >"$conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$XDG_RUNTIME_DIR/dbus-system-bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
EOF
        dbus-daemon --config-file="$conf" --nofork --nopidfile --nosyslog &
        track dbus-system $! optional
    fi
    # The session bus: dbus-launch without DISPLAY, so that it writes nothing into HOME or
    # onto the X server; stopped by its PID at the end.
    command -v dbus-launch >/dev/null || die "dbus-launch is missing in this image"
    out=$(env -u DISPLAY dbus-launch) || die "dbus-launch failed"
    while IFS='=' read -r key val; do
        case $key in
            DBUS_SESSION_BUS_ADDRESS) export DBUS_SESSION_BUS_ADDRESS=$val ;;
            DBUS_SESSION_BUS_PID) dbus_session_pid=$val ;;
        esac
    done <<<"$out"
    [ -n "${DBUS_SESSION_BUS_ADDRESS:-}" ] || die "dbus-launch printed no bus address"
}

start_audio() {  # PipeWire + PulseAudio emulation for selkies' audio, if the image has them
    command -v pipewire >/dev/null || return 0
    mkdir -p "$PULSE_RUNTIME_PATH"
    pipewire &
    track pipewire $! optional
    local i
    for ((i = 0; i < 50; i++)); do
        [ -S "$XDG_RUNTIME_DIR/pipewire-0" ] && break
        sleep 0.1
    done
    if command -v wireplumber >/dev/null; then
        wireplumber &
        track wireplumber $! optional
    fi
    if command -v pipewire-pulse >/dev/null; then
        pipewire-pulse &
        track pipewire-pulse $! optional
    fi
}

start_desktop() {
    local session=(startplasma-x11)
    command -v startplasma-x11 >/dev/null || die "startplasma-x11 is missing in this image"
    if [ "$flavor" = egl ] && [ -n "$gpu_index" ] && command -v vglrun >/dev/null; then
        if have_nvidia_egl; then
            # OpenGL of every desktop program is rendered on the GPU through EGL.
            export VGL_DISPLAY=${VGL_DISPLAY:-egl} VGL_FPS=${VGL_FPS:-$refresh}
            if [ "$gpu_count" -gt 1 ] && [ "$VGL_DISPLAY" = egl ]; then
                log "warning: $gpu_count GPUs visible; VirtualGL uses the first EGL device (set VGL_DISPLAY)"
            fi
            session=(vglrun -d "$VGL_DISPLAY" +wm startplasma-x11)
        else
            log "warning: libEGL_nvidia.so.0 is not visible (run with --nv): OpenGL renders on the CPU"
        fi
    fi
    xset s off -dpms s noblank >/dev/null 2>&1 || true
    # What the upstream image adds for its desktop programs (games, LibreOffice): for them only.
    PATH=$PATH:/usr/local/games:/usr/games \
        LD_LIBRARY_PATH=/usr/lib/libreoffice/program${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
        "${session[@]}" &
    track desktop $! essential
    if command -v fcitx >/dev/null; then
        fcitx -D >/dev/null 2>&1 &
        track fcitx $! optional
    fi
}

# --- streaming ---------------------------------------------------------------------------

setup_turn() {  # WebRTC relay settings for selkies: the caller's (hpcdesk's agent always
    # hands its rtc file over, SELKIES_RTC_CONFIG_JSON), else no ICE server at all
    export SELKIES_RTC_CONFIG_JSON=${SELKIES_RTC_CONFIG_JSON:-$work/rtc.json}
    if [ -n "${SELKIES_TURN_REST_URI:-}" ] || [ -s "$SELKIES_RTC_CONFIG_JSON" ] ||
        { [ -n "${SELKIES_TURN_HOST:-}" ] && [ -n "${SELKIES_TURN_PORT:-}" ] &&
            { [ -n "$turn_secret" ] || { [ -n "${SELKIES_TURN_USERNAME:-}" ] && [ -n "$turn_password" ]; }; }; }; then
        log "TURN: using the configured server"
        return 0
    fi
    # No TURN server of its own: hpcdesk's in-job TURN runs beside the container
    # (hpcdesk/node/jobturn.py) and reaches Selkies through the agent's rtc file above.
    # No TURN: no ICE server at all, unless the caller names its own STUN server (never
    # selkies' or anybody's public default). WebRTC then needs a direct route from the
    # browser to this node; KasmVNC (KASMVNC_ENABLE=true) needs only the web port.
    if [ -n "${SELKIES_STUN_HOST:-}" ]; then
        printf '{"lifetimeDuration": "86400s", "iceServers": [{"urls": ["stun:%s:%s"]}]}\n' \
            "$SELKIES_STUN_HOST" "${SELKIES_STUN_PORT:-3478}" >"$SELKIES_RTC_CONFIG_JSON"
    else
        printf '{"lifetimeDuration": "86400s", "iceServers": []}\n' >"$SELKIES_RTC_CONFIG_JSON"
    fi
    log "TURN: none configured; WebRTC needs a direct route from the browser to this node"
}

start_selkies() {
    command -v selkies-gstreamer >/dev/null || die "selkies-gstreamer is missing in this image"
    setup_turn
    # selkies-gstreamer reads SELKIES_* from its environment. It listens on 127.0.0.1 only,
    # in plain HTTP (nginx terminates TLS), and checks the same basic auth as nginx: other
    # users of the node can reach the loopback port.
    export SELKIES_ENABLE_HTTPS=false SELKIES_ENABLE_BASIC_AUTH=true SELKIES_BASIC_AUTH_USER=$user
    export SELKIES_ENABLE_RESIZE=${SELKIES_ENABLE_RESIZE:-false}
    export SELKIES_JSON_CONFIG=$work/selkies_config.json SELKIES_APP_READY_FILE=$work/appready
    export SELKIES_JS_SOCKET_PATH=$XDG_RUNTIME_DIR SELKIES_WEBRTC_STATISTICS_DIR=$work
    export SELKIES_DATA_WEBSOCKET_PORT=${SELKIES_DATA_WEBSOCKET_PORT:-$(internal_port 0)}
    if is_uint "${SELKIES_METRICS_HTTP_PORT:-0}" && [ "${SELKIES_METRICS_HTTP_PORT:-0}" -gt 0 ]; then
        export SELKIES_ENABLE_METRICS_HTTP=true
    else
        export SELKIES_ENABLE_METRICS_HTTP=false
    fi
    # CUDA numbers GPUs in PCI order like nvidia-smi, so the encoder uses the desktop's GPU.
    export CUDA_DEVICE_ORDER=PCI_BUS_ID
    if [ -n "$gpu_index" ]; then export SELKIES_GPU_ID=${SELKIES_GPU_ID:-$gpu_index}; fi
    export GST_DEBUG=${GST_DEBUG:-*:2} GSTREAMER_PATH=${GSTREAMER_PATH:-/opt/gstreamer}
    log "selkies-gstreamer on 127.0.0.1:$backend_port, encoder $SELKIES_ENCODER," \
        "${SELKIES_VIDEO_BITRATE:-default} kbit/s, ${SELKIES_FRAMERATE:-60} fps," \
        "audio ${SELKIES_AUDIO_ENABLED:-true} (${SELKIES_AUDIO_BITRATE:-default} bit/s)"
    SELKIES_BASIC_AUTH_PASSWORD=$password SELKIES_TURN_PASSWORD=$turn_password \
        SELKIES_TURN_SHARED_SECRET=$turn_secret \
        bash -c 'if [ -r "$1" ]; then . "$1"; fi; shift; exec "$@"' hpcdesk-selkies "$GST_ENV" \
        selkies-gstreamer --addr=127.0.0.1 --port="$backend_port" "$@" &
    track selkies-gstreamer $! essential
    streamer_pid=$!
}

make_htpasswd() {  # FILE: "user:crypt(password)"; the password only ever on a pipe
    local hash=''
    hash=$(printf '%s\n' "$password" | openssl passwd -6 -stdin 2>/dev/null) ||
        hash=$(printf '%s\n' "$password" | openssl passwd -apr1 -stdin 2>/dev/null) ||
        hash=$(printf '%s\n' "$password" | python3 -c 'import crypt, sys
print(crypt.crypt(sys.stdin.readline().rstrip("\n"), crypt.mksalt(crypt.METHOD_SHA512)))' 2>/dev/null) ||
        hash=''
    [ -n "$hash" ] || return 1
    printf '%s:%s\n' "$user" "$hash" >"$1"
}

write_nginx_conf() {  # FILE BACKEND_PORT
    local d=$work/nginx listen=$bind_addr ssl='' tls='' who=''
    mkdir -p "$d"
    case $listen in *:*) listen="[$listen]" ;; esac
    if [ "$https" = true ]; then
        ssl=' ssl'
        tls="ssl_certificate \"$tls_cert\"; ssl_certificate_key \"$tls_key\"; ssl_protocols TLSv1.2 TLSv1.3;"
    fi
    # Workers keep the master's identity (only matters when started as root).
    if [ "$(id -u)" = 0 ]; then who="user root $(id -gn);"; fi
    cat >"$1" <<EOF
# Written by the hpcdesk entrypoint: the one public port, basic auth, optional TLS.
worker_processes 1;
daemon off;
pid "$d/nginx.pid";
error_log stderr warn;
$who
events { worker_connections 1024; }
http {
    access_log off;
    server_tokens off;
    client_body_temp_path "$d/client_body";
    proxy_temp_path "$d/proxy";
    fastcgi_temp_path "$d/fastcgi";
    uwsgi_temp_path "$d/uwsgi";
    scgi_temp_path "$d/scgi";
    map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
    server {
        listen $listen:$web_port$ssl;
        $tls
        auth_basic "hpcdesk";
        auth_basic_user_file "$work/htpasswd";
        client_max_body_size 0;
        location / {
            proxy_pass http://127.0.0.1:$2;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
EOF
}

start_nginx() {  # after the backend answers: the health check then means "ready"
    local nginx e=()
    nginx=$(command -v nginx) || die "nginx is missing in this image"
    make_htpasswd "$work/htpasswd" || die "cannot hash the password (openssl or python3 needed)"
    write_nginx_conf "$work/nginx.conf" "$backend_port"
    # -e (nginx >= 1.19.5): no attempt to open /var/log/nginx/error.log before the config.
    if "$nginx" -h 2>&1 | grep -q -- ' -e '; then e=(-e stderr); fi
    "$nginx" "${e[@]}" -p "$work/nginx/" -c "$work/nginx.conf" &
    track nginx $! essential
    local scheme=http
    [ "$https" = true ] && scheme=https
    log "web interface ($interface) on $scheme://$bind_addr:$web_port/ for user $user"
}

main() {
    trap cleanup EXIT
    trap 'on_signal TERM 15' TERM
    trap 'on_signal INT 2' INT
    trap 'on_signal HUP 1' HUP
    read_contract
    setup_dirs
    log "flavour $flavor, display $DISPLAY ${w}x${h}@${refresh} depth $depth dpi $dpi," \
        "interface $interface, NVIDIA ${NVIDIA_DRIVER_VERSION:-none} (${NVIDIA_DRIVER_CAPABILITIES:-no capabilities})"

    gpu_index='' gpu_count=0
    if ! select_gpu; then
        [ "$flavor" = glx ] && die "the GLX flavour needs an NVIDIA GPU (apptainer --nv, a GPU" \
            "in the job); for a desktop without GPU use the egl or debian image"
        log "no NVIDIA GPU visible: software rendering"
    fi
    check_x_files

    backend_port=$(internal_port "${SELKIES_PORT:-$((web_port + 1))}") || die "no free local port"
    if [ "$flavor" = glx ]; then
        start_xorg_gpu
        if [ "$interface" = kasmvnc ]; then start_kasmvnc; fi
    elif [ "$interface" = kasmvnc ]; then
        start_kasmvnc
    else
        start_xvfb
    fi

    start_dbus
    start_audio
    start_desktop
    if [ "$interface" = selkies ]; then
        start_selkies "$@"
        wait_port "$backend_port" "$streamer_pid" selkies-gstreamer
    else
        wait_port "$backend_port" "$streamer_pid" KasmVNC
    fi
    start_nginx

    local p rc
    while :; do
        wait -n
        rc=$?
        for p in "${essential[@]}"; do
            if ! alive "$p"; then
                log "${pname[$p]} (pid $p) ended, stopping the desktop"
                [ "${pname[$p]}" = desktop ] && [ "$rc" = 0 ] && exit 0
                exit 1
            fi
        done
    done
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi

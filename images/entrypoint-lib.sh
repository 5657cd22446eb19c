# shellcheck shell=bash
# Functions both hpcdesk image entrypoints use, sourced from beside them (/opt/hpcdesk/):
# messages, integer checks, whether a process still runs, stopping the processes an
# entrypoint started, and waiting for an X server's -displayfd readiness. Nothing here, nor in
# the entrypoints, generates X configuration: hpcdesk's node agent hands them the xorg.conf and
# the X cookie file.

log() { printf 'hpcdesk-entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
is_uint() { case $1 in '' | *[!0-9]*) return 1 ;; *) return 0 ;; esac; }

alive() {  # PID: running, not a zombie (exited children stay zombies until waited for)
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

stop_pids() {  # PID...: SIGTERM, up to 3 s for them to end, then SIGKILL what is left
    local p i left
    for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
    for ((i = 0; i < 30; i++)); do
        left=0
        for p in "$@"; do alive "$p" && left=1; done
        [ "$left" = 0 ] && return 0
        sleep 0.1
    done
    for p in "$@"; do kill -KILL "$p" 2>/dev/null; done
}

wait_x() {  # FIFO PID NAME TIMEOUT [LOG]: until X server PID (-displayfd 3 3>FIFO) takes clients
    local got=''
    if read -r -t "$4" got <"$1" && [ -n "$got" ]; then
        log "$3 ready on display :$got"
        return 0
    fi
    if [ -n "${5:-}" ] && [ -f "$5" ]; then grep -F '(EE)' "$5" >&2; fi
    if alive "$2"; then die "$3 did not accept clients within $4 s"; fi
    die "$3 exited during start-up (display in use? see its messages above)"
}

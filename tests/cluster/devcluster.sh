#!/usr/bin/env bash
# devcluster.sh - a real two-node Slurm cluster on one machine, for hpcdesk's
# development and integration tests.
#
#   devcluster.sh up                 create (or verify) the cluster
#   devcluster.sh down               remove everything `up` created
#   devcluster.sh status             show state; exit 0 only when fully up
#   devcluster.sh exec NODE CMD...   run CMD in NODE's network/mount/UTS namespaces
#
# Compute nodes gpu01/gpu02 are network namespaces on a bridge; each runs its
# own slurmd in a private mount namespace whose /tmp is node-local.
# Needs root. Works without systemd. Tested with Slurm 22.05 (Debian 12);
# written to also run Slurm 24.11 (Debian 13). See README.md next to it.
set -euo pipefail

DEV_USER=${HPCDESK_DEV_USER:-hpcuser}

readonly NODES=(gpu01 gpu02)
readonly BRIDGE=hpcd-br0
readonly CTL_NAME=hpcd-ctl
readonly CTL_IP=10.77.0.1
readonly NET_PREFIX=24
readonly CLUSTER_NAME=hpcdev
readonly GPUS_PER_NODE=2

readonly MARK=hpcdesk-devcluster
readonly RUN_DIR=/run/hpcdesk-devcluster
readonly LOG_DIR=/var/log/hpcdesk-devcluster
readonly LIB_DIR=/var/lib/hpcdesk-devcluster
readonly SPOOL_DIR=/var/spool/hpcdesk-devcluster
readonly STATE_DIR=$SPOOL_DIR/ctld
readonly SLURMD_SPOOL_BASE=/var/spool/slurmd
readonly SLURM_ETC=/etc/slurm
readonly HOSTS_FILE=/etc/hosts
readonly NETNS_DIR=/run/netns
readonly MUNGE_KEY=/etc/munge/munge.key
readonly UP_TIMEOUT=${HPCDESK_DEVCLUSTER_TIMEOUT:-60}

node_ip() {
    case $1 in
        gpu01) echo 10.77.0.11 ;;
        gpu02) echo 10.77.0.12 ;;
        *) die "unknown node '$1' (nodes: ${NODES[*]})" ;;
    esac
}

# Root-namespace end of a node's veth pair (the node end is called eth0).
veth_host() { echo "hpcd-$1"; }
veth_tmp() { echo "hpcd-$1-n"; }

log() { printf '[devcluster] %s\n' "$*" >&2; }
die() {
    printf '[devcluster] ERROR: %s\n' "$*" >&2
    exit 1
}

require_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root"
}

require_tools() {
    local t missing=()
    for t in ip nsenter unshare setsid mount slurmctld slurmd sinfo scontrol sbatch \
        munged munge unmunge runuser useradd mknod; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    if ((${#missing[@]})); then
        die "missing tools: ${missing[*]} (apt-get install -y slurm-wlm munge iproute2 util-linux)"
    fi
}

# "22.05.8" -> 2205
slurm_version_num() {
    local v
    v=$(slurmctld -V 2>/dev/null | awk '{print $2}')
    [[ $v =~ ^([0-9]+)\.([0-9]+) ]] || die "cannot parse 'slurmctld -V' output: $v"
    echo $((10#${BASH_REMATCH[1]} * 100 + 10#${BASH_REMATCH[2]}))
}

# ---------------------------------------------------------------- pid helpers

pid_file() { echo "$RUN_DIR/$1.pid"; }

# Print the recorded pid of daemon $1 if that process is alive and is still
# the program we started ($2 = expected /proc/PID/comm, as a prefix: Debian's
# /usr/sbin/slurmd is an alternatives link to slurmd-wlm, and Slurm 24.11
# re-executes itself on `scontrol reconfigure`, after which comm reads
# "slurmd-wlm", same pid).
live_pid() {
    local f pid comm
    f=$(pid_file "$1")
    [[ -r $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$2"* ]] || return 1
    # A dead daemon can stay a zombie for a while when PID 1 reaps lazily.
    is_zombie "$pid" && return 1
    echo "$pid"
}

# Send TERM to the pids, wait up to $1 seconds, then KILL what is left.
terminate_pids() {
    local wait_s=$1 pid i alive
    shift
    (($#)) || return 0
    kill -TERM "$@" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
        alive=0
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null && ! is_zombie "$pid"; then alive=1; fi
        done
        ((alive)) || return 0
        sleep 0.1
    done
    kill -KILL "$@" 2>/dev/null || true
    sleep 0.2
}

is_zombie() {
    local state
    state=$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null) || return 1
    [[ $state == Z ]]
}

# ------------------------------------------------------------------ munge

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    if munge_ok; then
        log "munge: already working"
        return 0
    fi
    if [[ ! -s $MUNGE_KEY ]]; then
        log "munge: creating $MUNGE_KEY"
        mkdir -p "$(dirname "$MUNGE_KEY")"
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$MUNGE_KEY" --force
        elif command -v create-munge-key >/dev/null 2>&1; then
            create-munge-key -f
        else
            dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
        fi
        if id munge >/dev/null 2>&1; then
            chown munge:munge "$MUNGE_KEY" "$(dirname "$MUNGE_KEY")"
        fi
        chmod 0400 "$MUNGE_KEY"
    fi
    local d
    for d in /run/munge /var/lib/munge; do
        if [[ ! -d $d ]]; then
            mkdir -p "$d"
            if id munge >/dev/null 2>&1; then chown munge:munge "$d"; fi
        fi
    done
    log "munge: starting munged --force"
    # --foreground: munged logs to stderr, and $! is munged itself.
    setsid munged --force --foreground </dev/null >"$LOG_DIR/munged.log" 2>&1 &
    echo $! >"$(pid_file munged)"
    local i
    for ((i = 0; i < 50; i++)); do
        munge_ok && return 0
        sleep 0.2
    done
    tail -n 20 "$LOG_DIR/munged.log" >&2 || true
    die "munged did not come up ('munge -n | unmunge' fails)"
}

# ---------------------------------------------------------------- network

nsnet() { nsenter --net="$NETNS_DIR/$1" "${@:2}"; }

setup_network() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge
    fi
    ip addr replace "$CTL_IP/$NET_PREFIX" dev "$BRIDGE"
    ip link set "$BRIDGE" up

    local n ip vh vt
    for n in "${NODES[@]}"; do
        ip=$(node_ip "$n")
        vh=$(veth_host "$n")
        vt=$(veth_tmp "$n")
        [[ -e $NETNS_DIR/$n ]] || ip netns add "$n"
        if ! nsnet "$n" ip link show eth0 >/dev/null 2>&1; then
            ip link del "$vh" 2>/dev/null || true
            ip link del "$vt" 2>/dev/null || true
            ip link add "$vh" type veth peer name "$vt"
            ip link set "$vt" netns "$n"
            nsnet "$n" ip link set "$vt" name eth0
        fi
        ip link set "$vh" master "$BRIDGE"
        ip link set "$vh" up
        nsnet "$n" ip link set lo up
        nsnet "$n" ip addr replace "$ip/$NET_PREFIX" dev eth0
        nsnet "$n" ip link set eth0 up
        nsnet "$n" ip route replace default via "$CTL_IP" dev eth0
        stat -L -c %i "$NETNS_DIR/$n" >"$RUN_DIR/netns-$n.ino"
    done

    # Both directions: root ns -> node and node -> controller address.
    for n in "${NODES[@]}"; do
        ip=$(node_ip "$n")
        wait_ping "" "$ip" || die "cannot reach $n ($ip) from the root namespace"
        wait_ping "$n" "$CTL_IP" || die "node $n cannot reach $CTL_IP"
    done
    log "network: $BRIDGE $CTL_IP/$NET_PREFIX, $(for n in "${NODES[@]}"; do printf '%s=%s ' "$n" "$(node_ip "$n")"; done)"
}

# wait_ping NS ADDR: NS empty = root namespace. Uses ping when present,
# otherwise a TCP connect (an immediate "refused" also proves reachability).
wait_ping() {
    local ns=$1 addr=$2 i
    local -a pre=()
    [[ -n $ns ]] && pre=(nsenter --net="$NETNS_DIR/$ns")
    for ((i = 0; i < 20; i++)); do
        if command -v ping >/dev/null 2>&1; then
            "${pre[@]}" ping -c 1 -W 1 "$addr" >/dev/null 2>&1 && return 0
        else
            local r
            r=$("${pre[@]}" timeout 2 bash -c "exec 3<>/dev/tcp/$addr/9 && echo ok" 2>&1 || true)
            [[ $r == ok || $r == *refused* ]] && return 0
        fi
        sleep 0.2
    done
    return 1
}

teardown_network() {
    local n vh
    for n in "${NODES[@]}"; do
        if [[ -e $NETNS_DIR/$n ]]; then
            ip netns del "$n" 2>/dev/null || {
                umount "$NETNS_DIR/$n" 2>/dev/null || true
                rm -f "$NETNS_DIR/$n"
            }
        fi
        vh=$(veth_host "$n")
        ip link del "$vh" 2>/dev/null || true
        ip link del "$(veth_tmp "$n")" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
}

# ------------------------------------------------------------- /etc/hosts

hosts_without_ours() { grep -v "# $MARK\$" "$HOSTS_FILE" || true; }

setup_hosts() {
    local tmp n
    tmp=$(mktemp)
    {
        hosts_without_ours
        printf '%s %s # %s\n' "$CTL_IP" "$CTL_NAME" "$MARK"
        for n in "${NODES[@]}"; do
            printf '%s %s # %s\n' "$(node_ip "$n")" "$n" "$MARK"
        done
    } >"$tmp"
    # Rewrite in place (cat, not mv): /etc/hosts may be a bind mount.
    cmp -s "$tmp" "$HOSTS_FILE" || cat "$tmp" >"$HOSTS_FILE"
    rm -f "$tmp"
}

teardown_hosts() {
    local tmp
    [[ -f $HOSTS_FILE ]] || return 0
    grep -q "# $MARK\$" "$HOSTS_FILE" || return 0
    tmp=$(mktemp)
    hosts_without_ours >"$tmp"
    cat "$tmp" >"$HOSTS_FILE"
    rm -f "$tmp"
}

# ------------------------------------------------------------ fake GPUs

fake_gpu() { echo "/dev/fakegpu-$1-$2"; }

setup_devices() {
    local n i d
    for n in "${NODES[@]}"; do
        for ((i = 0; i < GPUS_PER_NODE; i++)); do
            d=$(fake_gpu "$n" "$i")
            if [[ -e $d && ! -c $d ]]; then rm -f "$d"; fi
            [[ -c $d ]] || mknod -m 0666 "$d" c 1 3 # same numbers as /dev/null
        done
    done
}

teardown_devices() {
    local n i
    for n in "${NODES[@]}"; do
        for ((i = 0; i < GPUS_PER_NODE; i++)); do
            rm -f "$(fake_gpu "$n" "$i")"
        done
    done
}

# ------------------------------------------------------------ slurm config

render_slurm_conf() {
    local n
    cat <<EOF
# $MARK: generated by tests/cluster/devcluster.sh; 'devcluster.sh down' removes it.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$CTL_NAME($CTL_IP)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
GresTypes=gpu
MinJobAge=300
KillWait=10
InactiveLimit=0
SlurmdTimeout=60
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SLURMD_SPOOL_BASE/%n
SlurmctldPidFile=/run/slurmctld-$MARK.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
EOF
    for n in "${NODES[@]}"; do
        echo "NodeName=$n NodeAddr=$(node_ip "$n") NodeHostname=$n CPUs=8 RealMemory=8000 Gres=gpu:$GPUS_PER_NODE State=UNKNOWN"
    done
    echo "PartitionName=gpu Nodes=$(
        IFS=,
        echo "${NODES[*]}"
    ) Default=YES MaxTime=8:00:00 State=UP"
    echo "PartitionName=debug Nodes=gpu01 MaxTime=8:00:00 State=UP"
}

render_gres_conf() {
    local n
    echo "# $MARK: generated by tests/cluster/devcluster.sh; 'devcluster.sh down' removes it."
    for n in "${NODES[@]}"; do
        echo "NodeName=$n Name=gpu File=/dev/fakegpu-$n-[0-$((GPUS_PER_NODE - 1))]"
    done
}

# Slurm >= 24.05 can switch cgroups off entirely; without it slurmd may try to
# create systemd scopes / cgroup v2 trees, which a namespace node cannot do.
# 22.05 has no "disabled" value (and works here with autodetect), so no file.
render_cgroup_conf() {
    if (($(slurm_version_num) >= 2405)); then
        echo "# $MARK: generated by tests/cluster/devcluster.sh; 'devcluster.sh down' removes it."
        echo "CgroupPlugin=disabled"
    fi
}

# install_conf NAME CONTENT: write $SLURM_ETC/NAME, keeping a one-time backup of
# a foreign original. Empty CONTENT means "we want no such file".
# Returns 0 when the file changed.
install_conf() {
    local f=$SLURM_ETC/$1 content=$2 backup=$SLURM_ETC/$1.hpcdesk-orig
    if [[ -e $f ]] && ! grep -q "^# $MARK:" "$f" && [[ ! -e $backup ]]; then
        log "config: backing up existing $f to $backup"
        mv "$f" "$backup"
    fi
    if [[ -z $content ]]; then
        if [[ -e $f ]] && grep -q "^# $MARK:" "$f"; then
            rm -f "$f"
            return 0
        fi
        return 1
    fi
    if [[ -e $f ]] && [[ $(<"$f") == "$content" ]]; then
        return 1
    fi
    printf '%s\n' "$content" >"$f"
    chmod 0644 "$f"
    return 0
}

restore_conf() {
    local f=$SLURM_ETC/$1 backup=$SLURM_ETC/$1.hpcdesk-orig
    if [[ -e $f ]] && grep -q "^# $MARK:" "$f"; then
        rm -f "$f"
    fi
    if [[ -e $backup && ! -e $f ]]; then
        mv "$backup" "$f"
        log "config: restored $f"
    fi
}

setup_config() {
    local changed=1
    mkdir -p "$SLURM_ETC"
    install_conf slurm.conf "$(render_slurm_conf)" && changed=0
    install_conf gres.conf "$(render_gres_conf)" && changed=0
    install_conf cgroup.conf "$(render_cgroup_conf)" && changed=0
    return $changed
}

# ------------------------------------------------------------------ user

setup_user() {
    if ! id "$DEV_USER" >/dev/null 2>&1; then
        log "user: creating $DEV_USER"
        useradd -m -d "/home/$DEV_USER" -s /bin/bash "$DEV_USER"
    fi
    local home
    home=$(getent passwd "$DEV_USER" | cut -d: -f6)
    [[ -d $home ]] || die "home directory of $DEV_USER ($home) is missing"
}

# ------------------------------------------------------------ slurm daemons

start_slurmctld() {
    if live_pid slurmctld slurmctld >/dev/null; then
        log "slurmctld: already running (pid $(live_pid slurmctld slurmctld))"
        return 0
    fi
    mkdir -p "$STATE_DIR"
    chmod 0700 "$STATE_DIR"
    : >"$LOG_DIR/slurmctld.log"
    : >"$LOG_DIR/slurmctld.console"
    log "slurmctld: starting"
    # Own UTS namespace so that gethostname() matches SlurmctldHost.
    # shellcheck disable=SC2016 # $1 expands in the inner shell
    setsid unshare --uts sh -c 'hostname "$1" && exec slurmctld -D' sh "$CTL_NAME" \
        </dev/null >"$LOG_DIR/slurmctld.console" 2>&1 &
    echo $! >"$(pid_file slurmctld)"
}

start_slurmd() {
    local n=$1 tmpdir resolv pid
    if pid=$(live_pid "slurmd-$n" slurmd); then
        log "slurmd $n: already running (pid $pid)"
        return 0
    fi
    tmpdir=$LIB_DIR/$n/tmp
    resolv=$LIB_DIR/$n/resolv.conf
    mkdir -p "$tmpdir" "$SLURMD_SPOOL_BASE/$n"
    chmod 1777 "$tmpdir"
    # The node namespaces cannot reach the host's DNS server (no NAT), so every
    # lookup of a name/address missing from /etc/hosts would hang 2x5 s (Slurm
    # 24.11's slurmd reverse-resolves 0.0.0.0 at start). On the nodes, point
    # the resolver at the controller address: nothing answers on port 53 there
    # unless the host runs a DNS server, so lookups fail at once.
    cat >"$resolv" <<EOF
# $MARK: resolver of node $n (a network namespace without a route to the host's DNS)
nameserver $CTL_IP
options timeout:1 attempts:1
EOF
    chmod 0644 "$resolv"
    rm -f "/run/slurmd-$n.pid"
    : >"$LOG_DIR/slurmd-$n.log"
    : >"$LOG_DIR/slurmd-$n.console"
    log "slurmd $n: starting"
    # nsenter --net (not `ip netns exec`, which remounts /sys), then an own
    # mount + UTS namespace with a node-local /tmp. Propagation "slave": mounts
    # made later on the host still show up on the node, the node's /tmp bind
    # never leaks back. Every step execs, so $! ends up being slurmd's pid.
    # shellcheck disable=SC2016 # $1..$3 expand in the inner shell
    setsid nsenter --net="$NETNS_DIR/$n" \
        unshare --mount --uts --propagation slave \
        sh -c 'mount --bind "$1" /tmp &&
            { [ ! -e /etc/resolv.conf ] || mount --bind "$3" /etc/resolv.conf; } &&
            hostname "$2" && exec slurmd -D -N "$2"' \
        sh "$tmpdir" "$n" "$resolv" </dev/null >"$LOG_DIR/slurmd-$n.console" 2>&1 &
    pid=$!
    echo "$pid" >"$(pid_file "slurmd-$n")"
}

record_mnt_ns() {
    local n pid i
    for n in "${NODES[@]}"; do
        for ((i = 0; i < 50; i++)); do
            pid=$(live_pid "slurmd-$n" slurmd) && break
            sleep 0.1
        done
        [[ -n ${pid:-} ]] || fail_with_logs "slurmd on $n did not start"
        readlink "/proc/$pid/ns/mnt" >"$RUN_DIR/mntns-$n"
        pid=
    done
}

fail_with_logs() {
    local f
    printf '[devcluster] ERROR: %s\n' "$1" >&2
    for f in "$LOG_DIR"/slurmctld.log "$LOG_DIR"/slurmctld.console \
        "$LOG_DIR"/slurmd-*.log "$LOG_DIR"/slurmd-*.console; do
        [[ -s $f ]] || continue
        printf -- '----- tail %s\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
    sinfo -N -l >&2 2>/dev/null || true
    exit 1
}

# Node states from sinfo, one "NODE STATE" per line (long state names).
node_states() { sinfo -h -N -o '%N %T' 2>/dev/null | sort -u; }

wait_nodes_ready() {
    local deadline=$((SECONDS + UP_TIMEOUT)) states n st ready last_resume=0
    while :; do
        if ! live_pid slurmctld slurmctld >/dev/null; then
            fail_with_logs "slurmctld exited"
        fi
        for n in "${NODES[@]}"; do
            live_pid "slurmd-$n" slurmd >/dev/null || fail_with_logs "slurmd on $n exited"
        done
        states=$(node_states || true)
        ready=0
        for n in "${NODES[@]}"; do
            st=$(awk -v n="$n" '$1 == n {print $2; exit}' <<<"$states")
            case $st in
                idle | mixed | allocated | completing) ready=$((ready + 1)) ;;
                *drain* | down | fail*)
                    # Registered but drained/down (no trailing '*'): resume it.
                    if ((SECONDS - last_resume >= 3)); then
                        log "node $n is '$st': scontrol update state=resume"
                        scontrol update nodename="$n" state=resume 2>&1 | sed 's/^/[devcluster]   /' >&2 || true
                        last_resume=$SECONDS
                    fi
                    ;;
            esac
        done
        ((ready == ${#NODES[@]})) && return 0
        if ((SECONDS >= deadline)); then
            fail_with_logs "nodes not ready after ${UP_TIMEOUT}s: $(tr '\n' ' ' <<<"$states")"
        fi
        sleep 0.5
    done
}

# ------------------------------------------------------------------ verify

as_user() { runuser -l "$DEV_USER" -c "$1"; }

job_state() {
    scontrol -o show job "$1" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true
}

# Submit a 1-GPU job as the dev user to gpu02 and wait for it to finish.
# (Polls scontrol every 0.2 s instead of `sbatch --wait`, whose own polling
# backs off to several seconds; the job and the check are the same.)
verify_job() {
    local home out jobid state content deadline=$((SECONDS + 60))
    home=$(getent passwd "$DEV_USER" | cut -d: -f6)
    out=$home/.devcluster-verify.out
    rm -f "$out"
    jobid=$(as_user "sbatch --parsable --chdir=/ --gres=gpu:1 -p gpu -w gpu02 \
        -J devcluster-verify -o '$out' \
        --wrap 'echo \$SLURM_JOB_GPUS \$CUDA_VISIBLE_DEVICES; hostname -I'") ||
        fail_with_logs "sbatch as $DEV_USER failed: ${jobid:-}"
    jobid=${jobid%%;*}
    while :; do
        state=$(job_state "$jobid")
        case $state in
            PENDING | CONFIGURING | RUNNING | COMPLETING | "") ;;
            *) break ;;
        esac
        if ((SECONDS >= deadline)); then
            as_user "scancel $jobid" || true
            fail_with_logs "verification job $jobid still '$state' after 60s"
        fi
        sleep 0.2
    done
    content=$(cat "$out" 2>/dev/null || true)
    rm -f "$out"
    [[ $state == COMPLETED ]] || fail_with_logs "verification job $jobid ended '$state': $content"
    grep -q '10\.77\.0\.12' <<<"$content" ||
        fail_with_logs "verification job $jobid output lacks 10.77.0.12: $content"
    echo "job $jobid COMPLETED on gpu02: $(tr '\n' ' ' <<<"$content" | sed 's/ *$//')"
}

# ------------------------------------------------------------------ up

stop_slurm_daemons() {
    local pids=() pid n
    if pid=$(live_pid slurmctld slurmctld); then pids+=("$pid"); fi
    for n in "${NODES[@]}"; do
        if pid=$(live_pid "slurmd-$n" slurmd); then pids+=("$pid"); fi
    done
    terminate_pids 15 "${pids[@]}"
}

cmd_up() {
    require_root
    require_tools
    local t0=$SECONDS
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$LIB_DIR" "$SPOOL_DIR"
    chmod 0755 "$LOG_DIR"

    start_munge
    setup_network
    setup_hosts
    setup_devices
    setup_user
    if setup_config; then
        if live_pid slurmctld slurmctld >/dev/null ||
            live_pid slurmd-gpu01 slurmd >/dev/null || live_pid slurmd-gpu02 slurmd >/dev/null; then
            log "config: changed while daemons were running: restarting them"
            stop_slurm_daemons
        fi
    fi
    start_slurmctld
    local n
    for n in "${NODES[@]}"; do start_slurmd "$n"; done
    record_mnt_ns
    wait_nodes_ready
    log "nodes ready: $(node_states | tr '\n' ' ')"
    local v
    v=$(verify_job)
    echo "devcluster up: cluster=$CLUSTER_NAME slurm=$(slurmctld -V | awk '{print $2}')" \
        "ctl=$CTL_NAME($CTL_IP) nodes=gpu01(10.77.0.11),gpu02(10.77.0.12)" \
        "user=$DEV_USER verify-job=[$v] in $((SECONDS - t0))s"
}

# ------------------------------------------------------------------ down

# Inodes ("net:[N]"/"mnt:[N]") of the namespaces we own, current and recorded.
our_ns_ids() {
    local n ino
    for n in "${NODES[@]}"; do
        if [[ -e $NETNS_DIR/$n ]]; then
            ino=$(stat -L -c %i "$NETNS_DIR/$n" 2>/dev/null) && echo "net:[$ino]"
        fi
        if [[ -r $RUN_DIR/netns-$n.ino ]]; then echo "net:[$(<"$RUN_DIR/netns-$n.ino")]"; fi
        if [[ -r $RUN_DIR/mntns-$n ]]; then cat "$RUN_DIR/mntns-$n"; fi
    done | sort -u
}

# Pids of processes living in one of the namespaces listed in $1 (lines like
# "net:[4026532178]" / "mnt:[...]"), default: ours.
pids_in_our_ns() {
    local ids=${1-$(our_ns_ids)} id p net mnt
    local -A want=()
    for id in $ids; do want[$id]=1; done
    ((${#want[@]})) || return 0
    for p in /proc/[0-9]*; do
        net=$(readlink "$p/ns/net" 2>/dev/null) || continue
        mnt=$(readlink "$p/ns/mnt" 2>/dev/null) || mnt=none
        if [[ -n ${want[$net]:-} || -n ${want[$mnt]:-} ]]; then
            is_zombie "${p#/proc/}" || echo "${p#/proc/}"
        fi
    done
}

describe_pids() {
    local p
    for p in "$@"; do
        printf '  pid %s: %s\n' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null || echo '?')"
    done
}

cmd_down() {
    require_root
    local t0=$SECONDS pid n pids=()
    mkdir -p "$RUN_DIR"

    # 1. slurm daemons we started (by recorded pid, never by name).
    stop_slurm_daemons

    # 2. everything else inside the node namespaces (job steps, desktops...).
    mapfile -t pids < <(pids_in_our_ns)
    if ((${#pids[@]})); then
        log "killing ${#pids[@]} leftover process(es) in the node namespaces"
        describe_pids "${pids[@]}" >&2
        # slurmstepd ignores SIGTERM and has nothing to save once slurmd is gone.
        for pid in "${pids[@]}"; do
            [[ $(cat "/proc/$pid/comm" 2>/dev/null) == slurmstepd* ]] && kill -KILL "$pid" 2>/dev/null
        done
        terminate_pids 3 "${pids[@]}"
    fi

    # 3. munged, only if we started it.
    if pid=$(live_pid munged munged); then terminate_pids 5 "$pid"; fi

    # Namespace ids for the final check, taken before the namespaces go away.
    local ids
    ids=$(our_ns_ids)

    # 4. network, hosts, devices, config, state.
    teardown_network
    teardown_hosts
    teardown_devices
    restore_conf slurm.conf
    restore_conf gres.conf
    restore_conf cgroup.conf
    rm -rf "${STATE_DIR:?}" "$LIB_DIR"
    for n in "${NODES[@]}"; do
        rm -rf "${SLURMD_SPOOL_BASE:?}/$n"
        rm -f "/run/slurmd-$n.pid"
    done
    rm -f "/run/slurmctld-$MARK.pid"

    # 5. verify nothing of ours is left.
    local left=()
    for f in "$RUN_DIR"/*.pid; do
        [[ -e $f ]] || continue
        pid=$(<"$f")
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && ! is_zombie "$pid"; then
            left+=("process $pid from $(basename "$f") still alive")
        fi
    done
    for pid in $(pids_in_our_ns "$ids"); do
        left+=("process $pid in a node namespace: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)")
    done
    for n in "${NODES[@]}"; do
        [[ -e $NETNS_DIR/$n ]] && left+=("netns $n")
        ip link show "$(veth_host "$n")" >/dev/null 2>&1 && left+=("link $(veth_host "$n")")
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && left+=("bridge $BRIDGE")
    grep -q "# $MARK\$" "$HOSTS_FILE" 2>/dev/null && left+=("$HOSTS_FILE entries")
    if ((${#left[@]})); then
        printf '[devcluster] LEFT OVER: %s\n' "${left[@]}" >&2
        exit 1
    fi
    rm -rf "$RUN_DIR"
    echo "devcluster down: nothing left (processes, namespaces, links, hosts entries, devices, config) in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- status

cmd_status() {
    local ok=0 pid n st states
    if munge_ok; then
        echo "munge:     ok$(pid=$(live_pid munged munged) && echo " (pid $pid, ours)")"
    else
        echo "munge:     NOT WORKING"
        ok=1
    fi
    if pid=$(live_pid slurmctld slurmctld); then
        echo "slurmctld: running (pid $pid)"
    else
        echo "slurmctld: not running"
        ok=1
    fi
    for n in "${NODES[@]}"; do
        if pid=$(live_pid "slurmd-$n" slurmd); then
            echo "slurmd:    $n running (pid $pid, $(node_ip "$n"))"
        else
            echo "slurmd:    $n not running"
            ok=1
        fi
    done
    if ((ok == 0)); then
        sinfo || ok=1
        states=$(node_states || true)
        for n in "${NODES[@]}"; do
            st=$(awk -v n="$n" '$1 == n {print $2; exit}' <<<"$states")
            case $st in
                idle | mixed | allocated | completing) ;;
                *)
                    echo "node $n: ${st:-unknown}"
                    ok=1
                    ;;
            esac
        done
    fi
    if ((ok == 0)); then echo "devcluster: UP"; else echo "devcluster: NOT (fully) UP"; fi
    return $ok
}

# ------------------------------------------------------------------ exec

cmd_exec() {
    (($# >= 2)) || die "usage: $0 exec NODE CMD..."
    local n=$1 pid
    shift
    node_ip "$n" >/dev/null
    pid=$(live_pid "slurmd-$n" slurmd) || die "slurmd on $n is not running (devcluster.sh up)"
    # --root: the target's root directory too (matters when run in a chroot);
    # keep the current directory when the node sees it too (not a /tmp path).
    local wd=/
    [[ -d /proc/$pid/root$PWD ]] && wd=$PWD
    exec nsenter --target "$pid" --net --mount --uts --root --wd="$wd" -- "$@"
}

usage() {
    cat <<EOF
usage: $0 up|down|status|exec NODE CMD...
  up       create or verify the dev cluster (idempotent)
  down     remove everything 'up' created (idempotent)
  status   print daemons and sinfo; exit 0 only when fully up
  exec     run CMD in a node's network, mount (/tmp) and UTS namespaces
env: HPCDESK_DEV_USER (default hpcuser)
EOF
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
        up) cmd_up "$@" ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        exec) cmd_exec "$@" ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"

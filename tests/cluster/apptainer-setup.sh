#!/usr/bin/env bash
# Make a working, unprivileged `apptainer` command available at /usr/local/bin/apptainer (and
# `singularity` beside it) for the cluster tests. Idempotent; run as root. Everything it
# downloads or builds is cached under $HPCDESK_CACHE (/var/cache/hpcdesk), keyed by content.
#
# Debian 13 (trixie, glibc >= 2.38): the apptainer .deb from Debian sid installs directly;
#   it is fetched with `apt-get download` through a temporary sid sources list (nothing of
#   sid stays in the host's apt configuration) and installed with its trixie dependencies.
# Debian 12 (bookworm, glibc 2.36): that .deb needs glibc 2.38. It is installed into a
#   `debootstrap --variant=minbase trixie` root (with squashfuse, fakeroot, debootstrap, ...)
#   and /usr/local/bin/apptainer runs it from there, as the calling user, without any setuid
#   helper: `unshare --user --map-root-user --mount` (a user namespace owned by the caller),
#   bind-mount the host's directories (/home, /tmp, /proc, /dev, /sys, /run, /var, ...) into
#   the trixie root, pivot_root into it (a chroot is not enough: apptainer refuses "weak
#   chrooted" environments), then `unshare --user --map-user=UID --map-group=GID` back to the
#   caller's own ids and exec apptainer. Apptainer then makes its own nested user namespace
#   as for any unprivileged user. Every step is an exec, so the wrapper's PID is apptainer's:
#   arguments, environment, signals and the exit status pass straight through.
#   `apptainer build` runs as root of a user namespace that also maps the caller's
#   /etc/subuid range (what --fakeroot gives elsewhere), so debootstrap can chown.
# Root: where root's capability bounding set lacks CAP_SYS_RESOURCE (containers, CI sandboxes
#   such as this one), apptainer run by root fails ("Requesting capability set ... while
#   permitted capability set is ..."); both wrappers then run it as root of a user namespace
#   (with root's /etc/subuid range for builds), which works.
#
# Environment: HPCDESK_CACHE (/var/cache/hpcdesk), HPCDESK_APPTAINER_MODE (auto|native|
#   userns-root), HPCDESK_DEBIAN_MIRROR (the host's apt mirror), HPCDESK_DEV_USER (hpcuser:
#   created if missing, given a subordinate id range), HPCDESK_ROOT_SUBIDS (1: give root a
#   subordinate id range too, for builds as root), HPCDESK_APPTAINER_BINDIR (/usr/local/bin).
# Cost per call on Debian 12: ~60-90 ms for the namespace set-up (measured on 2 busy cores).
set -euo pipefail

CACHE=${HPCDESK_CACHE:-/var/cache/hpcdesk}
BINDIR=${HPCDESK_APPTAINER_BINDIR:-/usr/local/bin}
DEV_USER=${HPCDESK_DEV_USER:-hpcuser}
MODE=${HPCDESK_APPTAINER_MODE:-auto}

# What goes into the trixie root (Debian 12) or next to the native package (Debian 13).
# Changing this list (or RECIPE_REV) changes the cache key and rebuilds the root.
ROOT_SUITE=trixie
APPTAINER_SUITE=sid
HELPERS=(squashfuse fuse3 fuse2fs fuse-overlayfs gocryptfs fakeroot debootstrap uidmap
         squashfs-tools debian-archive-keyring ca-certificates)
RECIPE_REV=1
SESSIONDIR_MAX_MB=1024   # apptainer's default (64 MB) also caps --writable-tmpfs

log() { printf 'apptainer-setup: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and /usr/local/bin/apptainer)"
t_start=$(date +%s%N)
ARCH=$(dpkg --print-architecture)
KEY=$(printf '%s\n' "$ROOT_SUITE" "$APPTAINER_SUITE" "$ARCH" "$RECIPE_REV" "$SESSIONDIR_MAX_MB" \
      "${HELPERS[@]}" | sha256sum | cut -c1-16)
ABASE=$CACHE/apptainer
mkdir -p "$ABASE/debs"
chmod 0755 "$CACHE" "$ABASE"

exec 9>"$ABASE/.lock"
flock 9

debian_mirror() {  # the Debian mirror the host's apt uses
    local m=${HPCDESK_DEBIAN_MIRROR:-}
    if [ -z "$m" ]; then
        m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                /etc/apt/sources.list.d/*.sources 2>/dev/null \
            | grep -E '^[[:space:]]*(deb|URIs:)[[:space:]]' \
            | grep -oE 'https?://[^[:space:]]+/debian/?([[:space:]]|$)' | head -n1 | tr -d '[:space:]') || true
    fi
    m=${m%/}
    echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=$(debian_mirror)

host_pkgs() {  # install host packages that are missing (no apt-get update when none is)
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} = 0 ] && return 0
    log "installing on the host: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
        >/dev/null 2>&1 || {
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    }
}

# The apptainer .deb from sid, via a temporary sources list; cached in $ABASE/debs.
fetch_apptainer_deb() {
    local cached
    cached=$(ls -1 "$ABASE"/debs/apptainer_*_"$ARCH".deb 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$cached" ]; then echo "$cached"; return; fi
    local t=$ABASE/apt-$APPTAINER_SUITE
    rm -rf "$t"; mkdir -p "$t/lists/partial" "$t/archives/partial" "$t/parts"
    cat > "$t/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $APPTAINER_SUITE main
EOF
    local opts=(-o "Dir::Etc::SourceList=$t/sources.list" -o "Dir::Etc::SourceParts=$t/parts"
                -o "Dir::State::Lists=$t/lists" -o "Dir::Cache::Archives=$t/archives"
                -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
                -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root"
                # a frozen mirror snapshot may carry an expired sid Release: still signed
                -o "Acquire::Check-Valid-Until=false")
    log "fetching the apptainer package from Debian $APPTAINER_SUITE ($MIRROR)"
    apt-get "${opts[@]}" update -q >/dev/null || die "apt-get update of $APPTAINER_SUITE failed"
    (cd "$ABASE/debs" && apt-get "${opts[@]}" download -q apptainer >/dev/null) \
        || die "apt-get download apptainer from $APPTAINER_SUITE failed"
    rm -rf "$t"
    ls -1 "$ABASE"/debs/apptainer_*_"$ARCH".deb | sort -V | tail -n1
}

set_sessiondir_size() {  # $1: apptainer.conf
    sed -i -E "s/^[#[:space:]]*sessiondir max size = .*/sessiondir max size = $SESSIONDIR_MAX_MB/" "$1"
}

ensure_subids() {  # $1: user. A subordinate id range for apptainer --fakeroot (Debian 13) and
    # for `apptainer build` through the wrappers, so that debootstrap can chown.
    local f start
    for f in subuid subgid; do
        grep -qE "^($1|$(id -u "$1")):" "/etc/$f" 2>/dev/null && continue
        start=$(awk -F: 'BEGIN{m=100000} {e=$2+$3; if (e>m) m=e} END{print m}' "/etc/$f" 2>/dev/null || echo 100000)
        if [ $f = subuid ]; then usermod --add-subuids "$start-$((start + 65535))" "$1"
        else usermod --add-subgids "$start-$((start + 65535))" "$1"; fi
    done
}

ensure_dev_user() {
    if ! id "$DEV_USER" >/dev/null 2>&1; then
        log "creating the test user $DEV_USER"
        useradd -m -s /bin/bash "$DEV_USER"
    fi
    ensure_subids "$DEV_USER"
    # root too: `apptainer build` as root runs in a user namespace here (see the wrappers)
    [ "${HPCDESK_ROOT_SUBIDS:-1}" = 1 ] && ensure_subids root
    return 0
}

glibc=$(dpkg-query -W -f='${Version}' libc6 2>/dev/null || echo 0)
if [ "$MODE" = auto ]; then
    if dpkg --compare-versions "$glibc" ge 2.38; then MODE=native; else MODE=userns-root; fi
fi
log "host: Debian $(cat /etc/debian_version), glibc $glibc -> mode $MODE (cache key $KEY)"
ensure_dev_user

################################################################ Debian 13+: the package itself
if [ "$MODE" = native ]; then
    stamp=$ABASE/native-$KEY.done
    if [ ! -f "$stamp" ] || ! command -v /usr/bin/apptainer >/dev/null; then
        host_pkgs "${HELPERS[@]}"
        deb=$(fetch_apptainer_deb)
        log "installing $(basename "$deb")"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb" >/dev/null \
            || { apt-get update -q >/dev/null
                 DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb" >/dev/null; }
        set_sessiondir_size /etc/apptainer/apptainer.conf
        touch "$stamp"
    fi
    # Users run /usr/bin/apptainer directly (exec, nothing in between). Root gets a user
    # namespace only where its capability bounding set lacks CAP_SYS_RESOURCE (containers,
    # CI sandboxes: "Requesting capability set ... while permitted capability set is ...").
    for name in apptainer singularity; do
        rm -f "$BINDIR/$name.new"
        cat > "$BINDIR/$name.new" <<EOF
#!/bin/sh
# hpcdesk: Debian $APPTAINER_SUITE's apptainer, installed natively. Generated by
# tests/cluster/apptainer-setup.sh; see images/README.md.
while read -r _hd_k _hd_v _hd_r; do
    case \$_hd_k in
        Uid:) _hd_uid=\$_hd_v;;
        CapBnd:) _hd_bnd=\$_hd_v;;
    esac
done < /proc/self/status
_hd_skip= _hd_build=
for _hd_a do  # \`apptainer build\`: debootstrap needs chroot, from sbin (missing in users' PATH)
    if [ -n "\$_hd_skip" ]; then _hd_skip=; continue; fi
    case \$_hd_a in
        -c|--config) _hd_skip=1;;
        -*) ;;
        build) _hd_build=1; case ":\$PATH:" in *:/usr/sbin:*) ;; *) PATH=\$PATH:/usr/sbin:/sbin;; esac; break;;
        *) break;;
    esac
done
if [ "\$_hd_uid" = 0 ] && [ \$(( 0x\$_hd_bnd >> 24 & 1 )) = 0 ]; then
    # builds: also map root's subordinate ids (explicitly: util-linux 2.38's --map-auto
    # takes the first /etc/subuid line whoever it belongs to)
    _hd_su=\$(awk -F: '\$1 == "root" || \$1 == "0" {print \$2 ",1," \$3; exit}' /etc/subuid 2>/dev/null)
    _hd_sg=\$(awk -F: '\$1 == "root" || \$1 == "0" {print \$2 ",1," \$3; exit}' /etc/subgid 2>/dev/null)
    if [ "\$_hd_build" = 1 ] && [ -n "\$_hd_su" ] && [ -n "\$_hd_sg" ]; then
        exec /usr/bin/unshare --user --map-root-user --map-users="\$_hd_su" --map-groups="\$_hd_sg" --mount -- /usr/bin/$name "\$@"
    fi
    exec /usr/bin/unshare --user --map-root-user --mount -- /usr/bin/$name "\$@"
fi
exec /usr/bin/$name "\$@"
EOF
        chmod 0755 "$BINDIR/$name.new"
        mv -f "$BINDIR/$name.new" "$BINDIR/$name"
    done
################################################ Debian 12: a trixie root entered by the wrapper
else
    D=$ABASE/$KEY
    R=$D/root
    if [ ! -f "$D/complete" ]; then
        host_pkgs debootstrap util-linux uidmap   # uidmap: newuidmap for builds
        deb=$(fetch_apptainer_deb)
        tmp=$ABASE/.build-$KEY.$$
        rm -rf "$tmp"; mkdir -p "$tmp"
        # shellcheck disable=SC2064
        trap "umount -R '$tmp/root/proc' 2>/dev/null; rm -rf '$tmp'" EXIT
        # apptainer's own dependencies come from trixie: name them to debootstrap.
        deps=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed -E 's/\|.*//; s/\(.*\)//; s/[[:space:]]//g' \
               | grep -v '^$' | tr '\n' ',')
        include=$(printf '%s\n' ${deps//,/ } "${HELPERS[@]}" | sort -u | paste -sd, -)
        log "debootstrap $ROOT_SUITE (minbase) from $MIRROR"
        t0=$(date +%s)
        debootstrap --variant=minbase --include="$include" "$ROOT_SUITE" "$tmp/root" "$MIRROR" \
            > "$tmp/debootstrap.log" 2>&1 || { tail -n 20 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
        log "debootstrap took $(( $(date +%s) - t0 )) s"
        cp "$deb" "$tmp/root/tmp/"
        unshare --mount --fork sh -c '
            mount -t proc proc "$1/proc"
            chroot "$1" sh -c "DEBIAN_FRONTEND=noninteractive dpkg -i /tmp/$2 || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends -f; }"
        ' sh "$tmp/root" "$(basename "$deb")" > "$tmp/dpkg.log" 2>&1 \
            || { tail -n 20 "$tmp/dpkg.log" >&2; die "installing apptainer into the $ROOT_SUITE root failed"; }
        rm -f "$tmp/root/tmp/$(basename "$deb")"
        rr=$tmp/root
        set_sessiondir_size "$rr/etc/apptainer/apptainer.conf"
        # Files the wrapper binds the host's over must be plain files in the root (a symlink
        # would be followed from the host's side before pivot_root).
        for f in hosts resolv.conf hostname localtime passwd group; do
            rm -f "$rr/etc/$f"; : > "$rr/etc/$f"
        done
        cp /usr/share/zoneinfo/Etc/UTC "$rr/etc/localtime" 2>/dev/null || true
        # Empty subuid/subgid inside: newuidmap (setuid root) cannot work in the wrapper's user
        # namespace, so apptainer must not try it; builds get their id range from the wrapper.
        : > "$rr/etc/subuid"; : > "$rr/etc/subgid"
        mkdir -p "$rr/.hd"
        apt-get -o "Dir=$rr" clean 2>/dev/null || true
        rm -rf "$rr"/var/lib/apt/lists/* "$rr"/var/cache/apt/*.bin "$rr"/var/cache/apt/archives/*.deb
        dpkg-deb -f "$deb" Version > "$tmp/version"
        echo "$MIRROR" > "$tmp/mirror"
        touch "$tmp/complete"
        chmod 0755 "$tmp"
        rm -rf "$D"; mv "$tmp" "$D"
        trap - EXIT
    fi
    # Mount points for the host's top-level directories (again on every run: cheap, and picks
    # up directories added since), and the host's top-level symlinks.
    for p in /*; do
        n=${p#/}
        case $n in usr|etc|bin|sbin|lib|lib32|lib64|libx32|.hd) continue;; esac
        if [ -L "$p" ]; then
            [ -e "$R/$n" ] || [ -L "$R/$n" ] || cp -P "$p" "$R/$n"
        elif [ -d "$p" ] && [ ! -e "$R/$n" ]; then
            mkdir "$R/$n"
        fi
    done
    # apptainer's session directory lives under /var, which the wrapper takes from the host.
    mkdir -p /var/lib/apptainer/mnt/session
    chmod 0755 /var/lib/apptainer /var/lib/apptainer/mnt /var/lib/apptainer/mnt/session

    # Host tools by absolute path: the caller's PATH may lack /sbin, and the environment must
    # reach apptainer unchanged (so no PATH of our own).
    tool() { PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$1" || die "$1 not found on the host"; }
    cat > "$D/enter.sh.new" <<EOF
#!/bin/sh
# Generated by tests/cluster/apptainer-setup.sh. Runs as root of a new user namespace (mapped
# to the caller) in a new mount namespace, both made by $BINDIR/apptainer.
# \$1: run|build, \$2: apptainer|singularity, then apptainer's arguments.
_hd_R=$R
_hd_mount=$(tool mount) _hd_pivot=$(tool pivot_root) _hd_getent=$(tool getent)
_hd_cat=$(tool cat) _hd_grep=$(tool grep) _hd_mkdir=$(tool mkdir)
EOF
    cat >> "$D/enter.sh.new" <<'EOF'
_hd_mode=$1 _hd_prog=$2
shift 2
read _hd_x _hd_uid _hd_x < /proc/self/uid_map
read _hd_x _hd_gid _hd_x < /proc/self/gid_map
_hd_wd=$(pwd -P 2>/dev/null) || _hd_wd=/
_hd_fail() { echo "apptainer (hpcdesk wrapper): $*" >&2; exit 125; }
"$_hd_mount" --bind "$_hd_R" "$_hd_R" || _hd_fail "cannot bind $_hd_R"
for _hd_p in /*; do
    _hd_n=${_hd_p#/}
    case $_hd_n in usr|etc|bin|sbin|lib|lib32|lib64|libx32|.hd|'*') continue;; esac
    [ -d "$_hd_p" ] && [ ! -L "$_hd_p" ] || continue
    if [ -d "$_hd_R/$_hd_n" ] && [ ! -L "$_hd_R/$_hd_n" ]; then
        "$_hd_mount" --rbind "$_hd_p" "$_hd_R/$_hd_n" || _hd_fail "cannot bind $_hd_p"
    else
        echo "apptainer (hpcdesk wrapper): $_hd_p is not visible (re-run apptainer-setup.sh)" >&2
    fi
done
for _hd_f in hosts resolv.conf hostname localtime; do
    [ -f "/etc/$_hd_f" ] && "$_hd_mount" --bind "/etc/$_hd_f" "$_hd_R/etc/$_hd_f"
done
# the host's site additions (e.g. /usr/local/share/ca-certificates) and trusted CAs
"$_hd_mount" --rbind /usr/local "$_hd_R/usr/local" || _hd_fail "cannot bind /usr/local"
[ -d /etc/ssl/certs ] && "$_hd_mount" --bind /etc/ssl/certs "$_hd_R/etc/ssl/certs"
"$_hd_mount" -t tmpfs -o mode=0755,size=4m hpcdesk-apptainer "$_hd_R/.hd" || _hd_fail "cannot mount a tmpfs"
{ "$_hd_cat" /etc/passwd; "$_hd_grep" -q "^[^:]*:[^:]*:$_hd_uid:" /etc/passwd || "$_hd_getent" passwd "$_hd_uid"; } > "$_hd_R/.hd/passwd"
{ "$_hd_cat" /etc/group; "$_hd_grep" -q "^[^:]*:[^:]*:$_hd_gid:" /etc/group || "$_hd_getent" group "$_hd_gid"; } > "$_hd_R/.hd/group"
"$_hd_mount" --bind "$_hd_R/.hd/passwd" "$_hd_R/etc/passwd" && "$_hd_mount" --bind "$_hd_R/.hd/group" "$_hd_R/etc/group" \
    || _hd_fail "cannot bind passwd/group"
"$_hd_mkdir" "$_hd_R/.hd/old"
"$_hd_pivot" "$_hd_R" "$_hd_R/.hd/old" || _hd_fail "pivot_root into $_hd_R failed"
/usr/bin/umount -l /.hd/old && /usr/bin/rmdir /.hd/old
/usr/bin/umount -l "$_hd_R" 2>/dev/null   # the copy of the root that came along with the host's /var
[ -d "$_hd_wd" ] || _hd_wd=/
case $_hd_prog in singularity) _hd_prog=/usr/bin/singularity.apptainer;; *) _hd_prog=/usr/bin/apptainer;; esac
if [ "$_hd_mode" = build ] || [ "$_hd_uid" = 0 ]; then
    # root of this user namespace: apptainer sees uid 0 with namespaced capabilities
    exec /usr/bin/unshare --wd="$_hd_wd" -- "$_hd_prog" "$@"
fi
exec /usr/bin/unshare --user --map-user="$_hd_uid" --map-group="$_hd_gid" --wd="$_hd_wd" -- "$_hd_prog" "$@"
EOF
    chmod 0755 "$D/enter.sh.new"
    mv -f "$D/enter.sh.new" "$D/enter.sh"

    for name in apptainer singularity; do
        cat > "$BINDIR/$name.new" <<EOF
#!/bin/sh
# hpcdesk: apptainer $(cat "$D/version") (Debian $APPTAINER_SUITE) run from a $ROOT_SUITE root on
# this Debian $(cut -d. -f1 /etc/debian_version) host, unprivileged. Generated by
# tests/cluster/apptainer-setup.sh; see images/README.md.
_hd_mode=run _hd_skip=
for _hd_a do
    if [ -n "\$_hd_skip" ]; then _hd_skip=; continue; fi
    case \$_hd_a in
        -c|--config) _hd_skip=1;;
        -*) ;;
        build) _hd_mode=build; break;;
        *) break;;
    esac
done
if [ \$_hd_mode = build ]; then
    # debootstrap needs chroot, which lives in sbin (missing from users' PATH)
    case ":\$PATH:" in *:/usr/sbin:*) ;; *) PATH=\$PATH:/usr/sbin:/sbin;; esac
    # root of a user namespace that also maps the caller's subordinate ids (newuidmap)
    # (explicit ranges: util-linux 2.38's --map-auto takes the first /etc/subuid line,
    # whoever it belongs to)
    _hd_u=\$(id -un) _hd_i=\$(id -u)
    _hd_su=\$(awk -F: -v u="\$_hd_u" -v i="\$_hd_i" '\$1 == u || \$1 == i {print \$2 ",1," \$3; exit}' /etc/subuid 2>/dev/null)
    _hd_sg=\$(awk -F: -v u="\$_hd_u" -v i="\$_hd_i" '\$1 == u || \$1 == i {print \$2 ",1," \$3; exit}' /etc/subgid 2>/dev/null)
    if [ -n "\$_hd_su" ] && [ -n "\$_hd_sg" ]; then
        exec /usr/bin/unshare --user --map-root-user --map-users="\$_hd_su" --map-groups="\$_hd_sg" --mount -- /bin/sh $D/enter.sh build $name "\$@"
    fi
    echo "apptainer (hpcdesk wrapper): \$_hd_u has no /etc/subuid range; debootstrap builds need one" >&2
    exec /usr/bin/unshare --user --map-root-user --mount -- /bin/sh $D/enter.sh build $name "\$@"
fi
exec /usr/bin/unshare --user --map-root-user --mount -- /bin/sh $D/enter.sh run $name "\$@"
EOF
        chmod 0755 "$BINDIR/$name.new"
        mv -f "$BINDIR/$name.new" "$BINDIR/$name"
    done
fi

# Smoke test as the unprivileged user.
ver=$(runuser -u "$DEV_USER" -- "$BINDIR/apptainer" --version 2>&1) \
    || die "'apptainer --version' as $DEV_USER failed: $ver"
echo "$ver" > "$ABASE/version"
t_end=$(date +%s%N)
ms=$(( (t_end - t_start) / 1000000 ))
log "$ver at $BINDIR/apptainer (mode $MODE) ready in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"

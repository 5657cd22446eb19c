#!/usr/bin/env bash
# Build pyslurm for this machine's Slurm from the vendored release sources and install it into
# hpcdesk's virtual environment (the optional `scheduler.backend: pyslurm`).
#
#   scripts/build-pyslurm.sh VENV CACHE
#
# pyslurm must match the Slurm major release exactly (PyPI carries only the newest), so the
# source comes from $HPCDESK_PYSLURM_SRC (default: ../shared/vendor/pyslurm beside the
# checkout): pyslurm-22.5.x for Slurm 22.05 (Debian 12), pyslurm-24.11.x for 24.11 (Debian
# 13). The wheel is cached under CACHE/pyslurm/KEY, KEY hashing the source archive, the Slurm
# version, the Python version and the Cython pin, so the build (minutes) is paid once.
# Needs libslurm-dev (scripts/setup.sh installs it).
set -euo pipefail

VENV=$1
CACHE=$2
HERE=$(cd "$(dirname "$0")/.." && pwd)
SRC_DIR=${HPCDESK_PYSLURM_SRC:-$HERE/../shared/vendor/pyslurm}
CYTHON="cython==3.0.12"  # pyslurm 22.5/24.11 build with Cython 3.0.x (not 3.1)

log() { printf '[pyslurm] %s\n' "$*" >&2; }

# The Slurm release of the headers pyslurm is built against (no slurm.conf needed, unlike
# `sinfo -V`, which must find a configuration first).
header=/usr/include/slurm/slurm_version.h
num=$(awk '/#define SLURM_VERSION_NUMBER/ {print $3}' "$header" 2>/dev/null)
[[ $num =~ ^0x[0-9a-fA-F]+$ ]] || { log "cannot read SLURM_VERSION_NUMBER from $header" \
    "(apt-get install libslurm-dev)"; exit 1; }
major=$(((num >> 16) & 0xff)) minor=$(((num >> 8) & 0xff)) micro=$((num & 0xff))
slurm=$(printf '%d.%02d.%d' "$major" "$minor" "$micro")  # e.g. 22.05.8
series="$major.$minor"                                   # 22.05 -> 22.5, 24.11 -> 24.11
shopt -s nullglob
archives=("$SRC_DIR"/pyslurm-"$series".*.tar.gz)
if ((${#archives[@]} == 0)); then
    log "no pyslurm source for Slurm $slurm in $SRC_DIR (want pyslurm-$series.*.tar.gz):" \
        "the pyslurm backend stays unavailable; set HPCDESK_PYSLURM_SRC to a directory with it"
    exit 0
fi
archive=${archives[-1]}
py=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
key=$( { sha256sum "$archive" | cut -d' ' -f1; echo "$slurm $py $CYTHON"; } | sha256sum | cut -c1-16)

if [[ "$(cat "$VENV/.pyslurm-key" 2>/dev/null)" == "$key" ]]; then
    exit 0
fi
out=$CACHE/pyslurm/$key
wheels=("$out"/pyslurm-*.whl)
if ((${#wheels[@]} == 0)); then
    log "building $(basename "$archive") for Slurm $slurm, Python $py (several minutes, once)"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    tar -xzf "$archive" -C "$work"
    /usr/bin/python3 -m venv "$work/build-venv"
    PIP_CACHE_DIR="$CACHE/pip" "$work/build-venv/bin/pip" install -q --disable-pip-version-check \
        "$CYTHON" "setuptools<81" wheel
    mkdir -p "$out.partial"
    t0=$SECONDS
    (cd "$work"/pyslurm-*/ && SLURM_LIB_DIR=/usr/lib/$(gcc -print-multiarch) \
        SLURM_INCLUDE_DIR=/usr/include "$work/build-venv/bin/pip" wheel -q \
        --disable-pip-version-check --no-build-isolation --no-deps -w "$out.partial" . ) \
        >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log" >&2; log "build failed"; exit 1; }
    rm -rf "$out" && mv "$out.partial" "$out"
    log "built in $((SECONDS - t0)) s: $(basename "$out"/pyslurm-*.whl)"
    wheels=("$out"/pyslurm-*.whl)
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "${wheels[0]}"
echo "$key" >"$VENV/.pyslurm-key"
log "installed $(basename "${wheels[0]}") into $VENV"

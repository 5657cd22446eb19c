#!/usr/bin/env bash
# hpcdesk on a real NVIDIA GPU host: node checks (`doctor --node`) and a real NVENC probe.
#
#   tests/gpu/gpu_node_check.sh [--wheels DIR] [--out DIR] [--expect-no-nvenc] [--all-gpus]
#
#   --wheels DIR       pip install every wheel in DIR (offline: --no-index) into a fresh venv
#                      and run from there; a hpcdesk wheel in DIR is used, else this checkout.
#   --out DIR          also write the JSON results to DIR (node_checks.json, nvenc-*.json).
#   --expect-no-nvenc  exit 1 unless the datacenter-GPU expectations hold (H100/H200/A100):
#                      a decimal BusID, no active display, NVENC refused -> x264enc.
#   --all-gpus         probe NVENC on every GPU of the node, not only the allocated one.
#
# No internet needed. Every step has a time limit; the whole run takes well under 5 minutes.
# Outside a Slurm job the first GPU (by NVML) stands in for the allocation, named by UUID.
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PYTHON="${PYTHON:-python3}"
WHEELS=""
OUT=""
EXPECT_NO_NVENC=0
ALL_GPUS=0
STEP_TIMEOUT=120
PROBE_TIMEOUT=60

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="${2:?--wheels needs a directory}"; shift 2 ;;
    --out) OUT="${2:?--out needs a directory}"; shift 2 ;;
    --expect-no-nvenc) EXPECT_NO_NVENC=1; shift ;;
    --all-gpus) ALL_GPUS=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

section() { printf '\n===== %s =====\n' "$*"; }
bounded() { timeout --kill-after=10 "$@" </dev/null; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/hpcdesk-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
[ -n "$OUT" ] && mkdir -p "$OUT"

section "host"
echo "host: $(hostname)  date: $(date -u +%Y-%m-%dT%H:%M:%SZ)  kernel: $(uname -r)"
[ -r /proc/driver/nvidia/version ] && head -n1 /proc/driver/nvidia/version
if command -v nvidia-smi >/dev/null 2>&1; then
  bounded 30 nvidia-smi --query-gpu=index,name,pci.bus_id,uuid,display_mode,display_active \
    --format=csv || echo "nvidia-smi failed or timed out (rc=$?)"
else
  echo "nvidia-smi: not installed"
fi
env | grep -E '^(SLURM_(JOB|STEP)_GPUS|CUDA_VISIBLE_DEVICES|GPU_DEVICE_ORDINAL)=' || \
  echo "no Slurm GPU variables set"

section "python"
if [ -n "$WHEELS" ]; then
  VENV="$WORK/venv"
  if bounded 120 "$PYTHON" -m venv "$VENV" >/dev/null 2>&1 && \
      bounded 300 "$VENV/bin/pip" install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl
  then
    PYTHON="$VENV/bin/python"
  else
    # No venv/pip here (python3-venv missing): pure-Python wheels work unpacked on the path.
    echo "venv or pip unavailable: unpacking the wheels from $WHEELS instead"
    for whl in "$WHEELS"/*.whl; do
      bounded 60 "$PYTHON" -m zipfile -e "$whl" "$WORK/site" || echo "cannot unpack $whl"
    done
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
if ! "$PYTHON" -c 'import hpcdesk.node.node_checks' 2>/dev/null; then
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" - <<'EOF' || { echo "hpcdesk is not importable with this python"; exit 2; }
import sys, hpcdesk.node.node_checks as m
try:
    import pynvml
    binding = f"pynvml from {pynvml.__file__}"
except ImportError:
    binding = "pynvml NOT installed (pass --wheels with an nvidia-ml-py wheel)"
print(f"python {sys.version.split()[0]} ({sys.executable}); hpcdesk from {m.__file__}; {binding}")
EOF

# Outside a Slurm job, let the first GPU stand in for the allocation (by UUID, never index).
if [ -z "${SLURM_JOB_GPUS:-}${SLURM_STEP_GPUS:-}${CUDA_VISIBLE_DEVICES:-}${GPU_DEVICE_ORDINAL:-}" ]; then
  FIRST_UUID="$(bounded 60 "$PYTHON" - <<'EOF' 2>/dev/null
from hpcdesk.node.gpu import inventory
inv = inventory()
print(inv.devices[0].uuid if inv.devices else "")
EOF
)"
  if [ -n "$FIRST_UUID" ]; then
    echo "not in a Slurm GPU job: CUDA_VISIBLE_DEVICES=$FIRST_UUID stands in for the allocation"
    export CUDA_VISIBLE_DEVICES="$FIRST_UUID"
  fi
fi

section "node checks: python -m hpcdesk.node.node_checks --json"
bounded "$STEP_TIMEOUT" "$PYTHON" -m hpcdesk.node.node_checks --json >"$WORK/node_checks.json"
rc=$?
cat "$WORK/node_checks.json"
echo "(exit code $rc; 1 means at least one check failed, 124 a time-out)"
[ -n "$OUT" ] && cp "$WORK/node_checks.json" "$OUT/"

section "NVENC probe: python -m hpcdesk.node.nvenc --subprocess --json"
BUS_IDS="$(bounded 60 "$PYTHON" - "$ALL_GPUS" <<'EOF' 2>/dev/null
import os, sys
from hpcdesk.node.gpu import inventory, resolve_allocation, scan_dev_nodes
inv = inventory()
devices = inv.devices if sys.argv[1] == "1" else []
if not devices:
    try:
        devices = resolve_allocation(os.environ, inv.devices, scan_dev_nodes())
    except ValueError:
        devices = []
print(" ".join(d.pci_bus_id for d in devices))
EOF
)"
if [ -z "$BUS_IDS" ]; then
  echo "no NVIDIA GPU to probe; the probe without a GPU name says:"
  bounded "$PROBE_TIMEOUT" "$PYTHON" -m hpcdesk.node.nvenc --subprocess --json \
    --timeout "$((PROBE_TIMEOUT - 10))" | tee "$WORK/nvenc-none.json"
fi
for bus in $BUS_IDS; do
  echo "--- $bus"
  bounded "$PROBE_TIMEOUT" "$PYTHON" -m hpcdesk.node.nvenc --subprocess --json \
    --timeout "$((PROBE_TIMEOUT - 10))" --pci-bus-id "$bus" | tee "$WORK/nvenc-$bus.json" \
    || echo "probe for $bus failed or timed out (rc=$?)"
done
[ -n "$OUT" ] && cp "$WORK"/nvenc-*.json "$OUT/" 2>/dev/null

section "verdict"
"$PYTHON" - "$WORK" "$EXPECT_NO_NVENC" <<'EOF'
import glob, json, os, re, sys
work, expect = sys.argv[1], sys.argv[2] == "1"
try:
    checks = {c["name"]: c for c in json.load(open(os.path.join(work, "node_checks.json")))["checks"]}
except (OSError, ValueError, KeyError) as exc:
    print(f"node checks produced no JSON ({exc})")
    sys.exit(1 if expect else 0)
for c in checks.values():
    print(f"[{c['status']:>4}] {c['name']}: {c['detail']}")
probes = []
for path in sorted(glob.glob(os.path.join(work, "nvenc-*.json"))):
    try:
        probes.append(json.loads(open(path).read().strip().splitlines()[-1]))
    except (OSError, ValueError, IndexError):
        pass
for p in probes:
    print(f"NVENC probe: available={p['available']} status={p['status']} step={p['step']}: {p['reason']}")
if not expect:
    sys.exit(0)
problems = []
displays = [c for n, c in checks.items() if n.startswith("display[")]
if not displays:
    problems.append("no display[...] check: no GPU was resolved")
for c in displays:
    if not re.search(r"BusID PCI:\d+(@\d+)?:\d+:\d+: no active display", c["detail"]):
        problems.append(f"{c['name']}: expected a decimal BusID and no active display")
nvenc = checks.get("nvenc", {})
if not nvenc.get("detail", "").startswith("no NVENC -> x264enc"):
    problems.append("nvenc: expected 'no NVENC -> x264enc'")
if not checks.get("encoder", {}).get("detail", "").startswith("no NVENC -> x264enc"):
    problems.append("encoder: expected x264enc because NVENC is refused")
if not probes or any(p["available"] for p in probes):
    problems.append("the NVENC probe should have failed on this GPU")
print("EXPECTATIONS: " + ("all met" if not problems else "NOT met: " + "; ".join(problems)))
sys.exit(1 if problems else 0)
EOF

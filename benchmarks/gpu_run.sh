#!/usr/bin/env bash
# The GPU check on an air-gapped node, in one call (benchmarks/gpu_bundle.py copies this file to .gpu/run.sh):
#
#   bash .gpu/run.sh                 # on the GPU node: under 8 minutes on one GPU, nothing downloaded
#   bash .gpu/run.sh --cpu-smoke     # anywhere: the same phases, tiny model, on CPU
#   bash .gpu/run.sh --cpu-smoke --hang tests   # test only: that phase hangs; its timeout ends it, the rest go on
#
# Unpacks the bundle beside itself (.gpu/work: inside the working tree, which the device tool carries; never /tmp),
# puts the bundle's tree first on PYTHONPATH (the image's torch, transformers, ... stay), and runs each phase of
# benchmarks/gpu_check.py in its own process under its own timeout. Every phase writes its JSON to $OUT the moment it
# ends (compute phases after every row), so a hang or a kill loses only the phase it hit; phases.tsv says how each
# ended. Results: $OUT (default .gpu/out). Python: $PYTHON, else python3.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${OUT:-$HERE/out}"
PY="${PYTHON:-python3}"
SMOKE=()
HANG=""
SCALES="1 4 16"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) SMOKE=(--cpu-smoke); shift ;;
    --hang) HANG="$2"; shift 2 ;;
    --scales) SCALES="$2"; shift 2 ;;
    *) echo "run.sh: error: unknown argument '$1' (--cpu-smoke, --hang PHASE, --scales '1 4 16')" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
T0=$(date +%s)
WORK="$HERE/work"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 \
  RAY_USAGE_STATS_ENABLED=0 PIP_NO_INDEX=1 PYTHONDONTWRITEBYTECODE=
# unpack once per bundle (the stamp is the manifest's hash)
STAMP="$(sha256sum "$HERE/manifest.json" | cut -c1-16)"
if [ "$(cat "$WORK/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  rm -rf "$WORK" && mkdir -p "$WORK/site" "$WORK/project"
  "$PY" -c "import sys, tarfile
for src, dest in (('site.tar.xz', 'site'), ('project.tar.gz', 'project')):
    with tarfile.open(sys.argv[1] + '/' + src) as t:
        t.extractall(sys.argv[2] + '/' + dest, filter='data')" "$HERE" "$WORK" || { echo "run.sh: error: unpacking failed" >&2; exit 1; }
  echo "$STAMP" > "$WORK/.stamp"
fi
echo -e "phase\trc\tseconds\tlimit_s" > "$OUT/phases.tsv"
echo "unpack	0	$(( $(date +%s) - T0 ))	-" >> "$OUT/phases.tsv"
export PYTHONPATH="$WORK/project:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
cd "$WORK/project"

(nvidia-smi || echo "nvidia-smi: not available") > "$OUT/nvidia-smi.txt" 2>&1
"$PY" -m pip list > "$OUT/pip-list.txt" 2>&1
cp "$HERE/manifest.json" "$OUT/bundle-manifest.json"

# Whole-call budget: the device tool allows 10 minutes a command; the check keeps under 8 (benchmarks/results/gpu.md).
# A phase gets its own limit or what is left before the deadline (less the report's 20 s), whichever is smaller; with
# under 15 s left it is skipped, in one line. The CPU smoke run gets more: a small shared CPU is slower than a GPU.
if [ ${#SMOKE[@]} -gt 0 ]; then BUDGET=900; SLACK=2; else BUDGET=460; SLACK=1; fi
DEADLINE=$(( T0 + BUDGET ))

# phase NAME LIMIT_S ARGS...: gpu_check.py ARGS under `timeout`; its log beside its JSON in $OUT
phase() {
  local name="$1" limit=$(( $2 * SLACK )); shift 2
  local extra=() t1 rc left
  if [ "$name" = "$HANG" ]; then extra=(--hang); limit=20; fi
  left=$(( DEADLINE - $(date +%s) - 20 ))
  if [ "$name" != report ] && [ "$left" -lt 15 ]; then
    echo -e "$name\tskipped\t0\t$left" >> "$OUT/phases.tsv"
    echo "run.sh: $name: skipped: ${left} s left of the ${BUDGET} s budget"
    return
  fi
  if [ "$name" != report ] && [ "$left" -lt "$limit" ]; then limit=$left; fi
  t1=$(date +%s)
  timeout -k 10 "$limit" "$PY" benchmarks/gpu_check.py --out "$OUT" "${SMOKE[@]}" "$@" "${extra[@]}" > "$OUT/$name.log" 2>&1
  rc=$?
  echo -e "$name\t$rc\t$(( $(date +%s) - t1 ))\t$limit" >> "$OUT/phases.tsv"
  echo "run.sh: $name: rc $rc in $(( $(date +%s) - t1 )) s (limit $limit s)"
}

# The realistic episode, the GPU tests and the meta-step first; the larger episodes of the MFU sweep (tokens per call
# x4, x16) last, where a slow row costs nothing else.
phase device 30 --phase device
phase ceilings 40 --phase ceilings
phase compute_x1 90 --phase compute --episode-scale 1
phase tests 90 --phase tests
phase meta_step 120 --phase meta_step
# Ray's daemons share the driver's fate; should a killed meta-step leave any, they must not share the GPU with the sweep
[ "$(tail -1 "$OUT/phases.tsv" | cut -f2)" = 0 ] || "$PY" -m ray.scripts.scripts stop --force > "$OUT/ray-stop.log" 2>&1
for s in $SCALES; do
  [ "$s" = 1 ] || phase "compute_x$s" 100 --phase compute --episode-scale "$s"
done
phase report 20 --phase report
echo "run.sh: done in $(( $(date +%s) - T0 )) s; results in $OUT"

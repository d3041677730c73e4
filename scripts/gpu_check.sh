#!/usr/bin/env bash
# Issue 23's GPU run, as one script: from the repository root,
#
#     PYTHONPATH=src OUT=/some/folder bash scripts/gpu_check.sh          # on the GPU machine (<= ~5 minutes)
#     PYTHONPATH=src OUT=/tmp/dry bash scripts/gpu_check.sh --dry        # dry run on CPU: tiny shapes, same steps
#
# Steps, in order of importance, each with its own timeout (capped by what is left of TOTAL_S, default 295 s); a
# step that fails or times out does not stop the others.  STEPS="a1 c d3" runs a subset (for a rerun).
#   a1 the CUDA tests (tests/test_gpu_path.py without the member grid: sync-debug "error" mode eager + compiled,
#      a training step in a CUDA graph, profiler launch counts, one launch / no host op per forward, bad index)
#   a2 every member against the float64 reference on the triton backend (float64 / float32 / bf16, mean / sum)
#   b  host time per call at 8x10 and 64x1000 against F.cross_entropy / BCE (scripts/gpu_measure.py host)
#   c  bandwidth at 65536x4000, 16384x32000 softmax and 1000000x80 sigmoid, fp32 and bf16 (gpu_measure.py bandwidth)
#   d  polyfocal bench --device cuda: d1 default shapes, d2 large shapes, d3 --matrix (+ the 8192x128256 bf16 cell)
#   e  the existing suites' triton reference grids, as far as they get in the time left
# Files in $OUT (8): summary.txt (everything printed), tests.log, host.json, bandwidth.json, bench-default.json,
# bench-large.json, matrix.json, triton-configs.json (the launch configurations tuning chose, reused by later steps).
set -u
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
OUT=${OUT:-/tmp/polyfocal-gpu-check}
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-295}
STEPS=${STEPS:-"a1 a2 b c d1 d2 d3 e"}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-src}
export POLYFOCAL_TRITON_CONFIGS="$OUT/triton-configs.json"
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
touch "$OUT/tests.log"

say() { echo "$@" | tee -a "$SUMMARY"; }

# step NAME BUDGET_S LOG CMD...: run with timeout min(BUDGET_S, what is left), keep going on failure
step() {
    local name=$1 budget=$2 log=$3
    shift 3
    case " $STEPS " in *" ${name%%-*} "*) ;; *) return ;; esac
    local left=$((TOTAL_S - ($(date +%s) - START)))
    local limit=$((budget < left ? budget : left))
    if [ "$limit" -lt 5 ]; then
        say "== $name: skipped (no time left of TOTAL_S=$TOTAL_S)"
        return
    fi
    say "== $name (timeout ${limit}s)"
    local t0 rc
    t0=$(date +%s)
    if [ "$log" = "-" ]; then
        timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$SUMMARY"
        rc=${PIPESTATUS[0]}
    else
        echo "== $name" >> "$log"
        local before
        before=$(wc -l < "$log")
        timeout -k 5 "$limit" "$@" >> "$log" 2>&1
        rc=$?
        tail -n +$((before + 1)) "$log" | grep -v '^[.sFEx]* *\[ *[0-9]*%\]$' | tail -n 40 | tee -a "$SUMMARY"
    fi
    say "== $name: rc=$rc in $(($(date +%s) - t0))s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
}

say "polyfocal GPU check $(date -u +%FT%TZ) dry=$DRY steps=$STEPS"
if [ "$DRY" = 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
fi
$PY -c "import torch, polyfocal; import triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'polyfocal', polyfocal.__file__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$SUMMARY"

if [ "$DRY" = 1 ]; then
    DEV=cpu
    BW=(--tiny --rounds 3 --calls 5)
    HOSTARGS=(--rounds 3 --calls 10)
    SHAPES_DEFAULT=(--softmax-shape 64,10 --sigmoid-shape 64,8 --repeats 2 --variants ce,focal,sigmoid-focal)
    SHAPES_LARGE=(--softmax-shape 128,40 --sigmoid-shape 256,8 --repeats 2 --variants ce,sigmoid-focal)
    MATRIX=(--budget 0.05 --no-memory --matrix-threads 1)
    export TRITON_INTERPRET=1
else
    DEV=cuda
    BW=(--rounds 5 --calls 5)
    HOSTARGS=(--rounds 7 --calls 200)
    SHAPES_DEFAULT=(--repeats 10)
    SHAPES_LARGE=(--softmax-shape 65536,4000 --sigmoid-shape 1000000,80 --repeats 5)
    MATRIX=(--budget 0.15)
fi
PYTEST=(-m pytest -q -p no:randomly -p no:cacheprovider --maxfail=15)

# (a) the tests (no tuning there: the default configurations; compilation dominates)
step a1-cuda-tests 85 "$OUT/tests.log" env POLYFOCAL_TRITON_TUNE=0 $PY "${PYTEST[@]}" tests/test_gpu_path.py \
    -k "not every_member and not sm90"
step a2-member-reference 50 "$OUT/tests.log" env POLYFOCAL_TRITON_TUNE=0 $PY "${PYTEST[@]}" tests/test_gpu_path.py \
    -k "every_member"
# (b) host time per call
step b-host-time 30 - $PY scripts/gpu_measure.py host --device $DEV "${HOSTARGS[@]}" --json "$OUT/host.json"
# (c) bandwidth at large shapes (tunes the large keys first)
step c-bandwidth 60 - $PY scripts/gpu_measure.py bandwidth --device $DEV "${BW[@]}" --json "$OUT/bandwidth.json"
# (d) the bench: default shapes, large shapes, the matrix
step d1-bench-default 20 - $PY -m polyfocal bench --device $DEV "${SHAPES_DEFAULT[@]}" --json "$OUT/bench-default.json"
step d2-bench-large 25 - $PY -m polyfocal bench --device $DEV "${SHAPES_LARGE[@]}" --json "$OUT/bench-large.json"
step d3-bench-matrix 60 - $PY -m polyfocal bench --matrix --device $DEV "${MATRIX[@]}" --json "$OUT/matrix.json"
# (e) the existing triton reference grids, with what is left
step e-reference-grids 120 "$OUT/tests.log" env POLYFOCAL_TRITON_TUNE=0 $PY "${PYTEST[@]}" tests/test_kernels.py \
    tests/test_longtail.py tests/test_detection.py tests/test_correctness.py -k "triton"

say "== total $(($(date +%s) - START))s; files in $OUT:"
ls -la "$OUT" | tee -a "$SUMMARY"

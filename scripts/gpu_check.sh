#!/usr/bin/env bash
# Issue 23's GPU run, as one script: from the repository root,
#
#     PYTHONPATH=src OUT=/some/folder bash scripts/gpu_check.sh          # on the GPU machine (<= ~5 minutes)
#     PYTHONPATH=src OUT=/tmp/dry bash scripts/gpu_check.sh --dry        # dry run on CPU: tiny shapes, same steps
#
# Steps, in order of importance, each with its own timeout (the later ones get what is left of TOTAL_S); a step
# that fails or times out does not stop the others:
#   a1 the tests that need CUDA (tests/test_gpu_path.py: sync-debug "error" mode eager + compiled, a training
#      step in a CUDA graph, launch counts, every member against the float64 reference on the triton backend)
#   a2 the triton-backend reference grids of the existing suites (as many as fit, partial output kept)
#   b  host time per call at 8x10 and 64x1000 against F.cross_entropy / BCE (scripts/gpu_measure.py host)
#   c  bandwidth at 65536x4000, 16384x32000 softmax and 1000000x80 sigmoid, fp32 and bf16 (gpu_measure.py bandwidth)
#   d  polyfocal bench --device cuda: default shapes, large shapes, --matrix (with the 8192x128256 bf16 cell)
# Files written to $OUT (at most 8): summary.txt (everything printed), tests.log, host.json, bandwidth.json,
# bench-default.json, bench-large.json, matrix.json.
set -u
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
OUT=${OUT:-/tmp/polyfocal-gpu-check}
PY=${PYTHON:-python3}
TOTAL_S=${TOTAL_S:-295}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-src}
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
: > "$OUT/tests.log"

say() { echo "$@" | tee -a "$SUMMARY"; }

# step NAME BUDGET_S LOG CMD...: run with timeout min(BUDGET_S, what is left), keep going on failure
step() {
    local name=$1 budget=$2 log=$3
    shift 3
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
        tail -n +$((before + 1)) "$log" | grep -v '^\.*s*\.* *\[ *[0-9]*%\]$' | tail -n 40 | tee -a "$SUMMARY"
    fi
    say "== $name: rc=$rc in $(($(date +%s) - t0))s$([ "$rc" = 124 ] && echo ' (TIMED OUT)')"
}

say "polyfocal GPU check $(date -u +%FT%TZ) dry=$DRY"
if [ "$DRY" = 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
fi
$PY -c "import torch, polyfocal; import triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'polyfocal', polyfocal.__file__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$SUMMARY"

if [ "$DRY" = 1 ]; then
    DEV=cpu
    TINY=(--tiny --rounds 3 --calls 5)
    HOSTARGS=(--rounds 3 --calls 10)
    SHAPES_DEFAULT=(--softmax-shape 64,10 --sigmoid-shape 64,8 --repeats 2 --variants ce,focal,sigmoid-focal)
    SHAPES_LARGE=(--softmax-shape 128,40 --sigmoid-shape 256,8 --repeats 2 --variants ce,sigmoid-focal)
    MATRIX=(--budget 0.05 --no-memory --matrix-threads 1)
    export TRITON_INTERPRET=1
else
    DEV=cuda
    TINY=(--rounds 5 --calls 10)
    HOSTARGS=(--rounds 7 --calls 200)
    SHAPES_DEFAULT=(--repeats 10)
    SHAPES_LARGE=(--softmax-shape 65536,4000 --sigmoid-shape 1000000,80 --repeats 5)
    MATRIX=(--budget 0.25)
fi

# (a1) the CUDA tests (no tuning: the defaults; compilation dominates)
step a1-cuda-tests 110 "$OUT/tests.log" env POLYFOCAL_TRITON_TUNE=0 $PY -m pytest -q -p no:randomly -p no:cacheprovider \
    --maxfail=15 tests/test_gpu_path.py
# (a2) the existing triton reference grids, as far as they get
step a2-reference-grids 50 "$OUT/tests.log" env POLYFOCAL_TRITON_TUNE=0 $PY -m pytest -q -p no:randomly \
    -p no:cacheprovider --maxfail=15 tests/test_kernels.py tests/test_longtail.py tests/test_detection.py \
    tests/test_correctness.py -k "triton and (reference or check_class_indices or nan)"
# (b) host time per call
step b-host-time 35 - $PY scripts/gpu_measure.py host --device $DEV "${HOSTARGS[@]}" --json "$OUT/host.json"
# (c) bandwidth at large shapes
if [ "$DRY" = 1 ]; then
    step c-bandwidth 60 - $PY scripts/gpu_measure.py bandwidth --device $DEV "${TINY[@]}" --json "$OUT/bandwidth.json"
else
    step c-bandwidth 75 - $PY scripts/gpu_measure.py bandwidth --device $DEV --rounds 5 --calls 5 \
        --json "$OUT/bandwidth.json"
fi
# (d) the bench: default shapes, large shapes, the matrix
step d1-bench-default 30 - $PY -m polyfocal bench --device $DEV "${SHAPES_DEFAULT[@]}" --json "$OUT/bench-default.json"
step d2-bench-large 35 - $PY -m polyfocal bench --device $DEV "${SHAPES_LARGE[@]}" --json "$OUT/bench-large.json"
step d3-bench-matrix 60 - $PY -m polyfocal bench --matrix --device $DEV "${MATRIX[@]}" --json "$OUT/matrix.json"

say "== total $(($(date +%s) - START))s; files in $OUT:"
ls -la "$OUT" | tee -a "$SUMMARY"

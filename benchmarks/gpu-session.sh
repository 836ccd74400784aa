#!/usr/bin/env bash
# Every GPU check of issues 4, 5 and 6 in one run (at most 9 minutes), for a session lent a device.
#
# The device image has torch, onnx, CUDA and cuDNN but only the CPU onnxruntime, and it reaches no network. So,
# on the development machine first (both folders are ignored by git):
#   pip download onnxruntime-gpu --python-version 3.12 --only-binary=:all: --no-deps -d .gpu-wheels/ort
#   split -b 52000000 .gpu-wheels/ort/onnxruntime_gpu-*.whl .gpu-wheels/part-
#   pip download pyarrow fitsio click rich --python-version 3.12 --only-binary=:all: --no-deps -d .gpu-wheels/deps
# then device calls back to back (the machine stays warm between them), one wheel part per call:
#   carry [".gpu-wheels/part-aa"]    command: cat .gpu-wheels/part-aa >> /tmp/ort.whl
#   ... the other parts ...
#   carry [".gpu-wheels/deps"]       command: GALTOOLS_DEPS=.gpu-wheels/deps bash benchmarks/gpu-session.sh
# (the image may already have the deps: the script lists what is missing before it starts).
# What comes back under $OUT: session.log (one line per check with its exit status), one log per check, and
# RESULTS.md (benchmarks/RESULTS.md with the rows this run appended): copy the new rows into the repository.
set -uo pipefail
out=${OUT:-gpu-session-out}
mkdir -p "$out"
site=/tmp/galtools-site
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"

note() { echo "$*" | tee -a "$out/session.log"; }

# check NAME SECONDS COMMAND...: run one check with a time limit; its output goes to $out/NAME.log
check() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    local status=$?
    note "$name: exit $status in $((SECONDS - start)) s$([ $status = 124 ] && echo ' (time limit)')"
    tail -n 4 "$out/$name.log" | sed 's/^/    /' | tee -a "$out/session.log"
}

note "galtools GPU session $(date -u +%FT%TZ) on $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$out/session.log"

# -- what the image lacks: onnxruntime-gpu (carried in parts) and, if missing, the I/O libraries
mkdir -p "$site"
if [ -s /tmp/ort.whl ]; then
    cp /tmp/ort.whl /tmp/onnxruntime_gpu-0-cp312-cp312-linux_x86_64.whl
    check install-onnxruntime-gpu 120 python -m pip install --no-deps --no-index --target "$site" \
        /tmp/onnxruntime_gpu-0-cp312-cp312-linux_x86_64.whl
fi
if [ -n "${GALTOOLS_DEPS:-}" ] && [ -d "$GALTOOLS_DEPS" ]; then
    check install-deps 120 python -m pip install --no-deps --no-index --target "$site" "$GALTOOLS_DEPS"/*.whl
fi
python - <<'EOF' 2>&1 | tee -a "$out/session.log"
import importlib
missing = []
for name in ("numpy", "pyarrow", "fitsio", "click", "rich", "PIL", "onnx", "onnxruntime", "torch"):
    try:
        importlib.import_module(name)
    except ImportError as error:
        missing.append(f"{name} ({error})")
print("missing: " + ", ".join(missing) if missing else "every dependency imports")
import onnxruntime
if hasattr(onnxruntime, "preload_dlls"):
    onnxruntime.preload_dlls()      # finds the CUDA and cuDNN libraries that torch brings
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
EOF

# The limits add up to 540 s, inside one 600 s device call; GALTOOLS_COMPILE=1 (a second call) adds --compile.
# -- issue 5: gal-train on the GPU (bf16, channels_last, split-BN, --compile) and its throughput goal
check gpu-tests 150 python -m pytest -q -p no:cacheprovider -k "gpu or cuda" \
    tests/test_train_cli.py tests/test_embed.py tests/test_augment.py
check bench-train-paper 120 python benchmarks/bench_train.py --paper
# -- issue 4: the augmentation chain against a resnet50-hayat MoCo step (goal: under 5%)
check bench-augment-cuda 60 python benchmarks/bench_augment.py --device cuda
# -- issue 6: gal-embed file to file, fp32 and fp16 with I/O binding, against ONNX Runtime alone (goal: 90%)
check bench-embed-gpu 150 python benchmarks/bench_embed.py --skip-cpu
if [ "${GALTOOLS_COMPILE:-0}" = 1 ]; then
    check bench-train-paper-compiled 300 python benchmarks/bench_train.py --paper --compile
fi

cp benchmarks/RESULTS.md "$out/RESULTS.md"
note "done in $SECONDS s"

#!/usr/bin/env bash
# The GPU tests and GPU benchmarks, on any machine with an NVIDIA GPU and galtools installed with its extras
# (onnxruntime-gpu for gal-embed's CUDA provider). Run from the repository root:
#
#   bash benchmarks/gpu.sh                  # tests, then benchmarks; about 10 minutes on one recent GPU
#   ONLY=compile bash benchmarks/gpu.sh     # only gal-train with --compile (slow to warm up)
#   OUT=gpu-results PY=.venv/bin/python bash benchmarks/gpu.sh
#
# Each benchmark appends its rows (date, machine, baseline from the same run) to benchmarks/RESULTS.md.
# $OUT (default gpu-results/) receives gpu.log (each check, its exit status and time, the last lines of its output)
# and one full log per check.
set -uo pipefail
PY=${PY:-python3}
out=${OUT:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

note() { echo "$*" | tee -a "$out/gpu.log"; }

# check NAME SECONDS COMMAND...: one check under a time limit, its whole output in $out/NAME.log
check() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" > "$out/$name.log" 2>&1
    local status=$?
    note "$name: exit $status in $((SECONDS - start)) s$([ $status = 124 ] && echo ' (time limit)')"
    tail -n 6 "$out/$name.log" | sed 's/^/    /' | tee -a "$out/gpu.log"
}

if ! command -v nvidia-smi > /dev/null || ! nvidia-smi > /dev/null 2>&1; then
    echo "gpu.sh: no usable NVIDIA GPU here (nvidia-smi fails)" >&2
    exit 69
fi
note "galtools GPU checks $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
"$PY" - <<'PYTHON' 2>&1 | tee -a "$out/gpu.log"
import onnxruntime as ort
import torch

print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "- onnxruntime", ort.__version__,
      "providers", ort.get_available_providers())
PYTHON

if [ "${ONLY:-}" = compile ]; then
    check bench-train-paper-compiled 600 "$PY" benchmarks/bench_train.py --paper --compile
    note "done in $SECONDS s"
    exit 0
fi
# gal-train on the GPU (bf16, channels_last, split-BN, --compile), gal-embed's CUDA provider, augmentations on CUDA
check gpu-tests 300 "$PY" -m pytest -q -p no:cacheprovider -k "gpu or cuda" \
    tests/test_train_cli.py tests/test_embed.py tests/test_augment.py
# gal-train's throughput against a bare training step
check bench-train-paper 300 "$PY" benchmarks/bench_train.py --paper
# the augmentation chain against a resnet50-hayat MoCo step
check bench-augment-cuda 120 "$PY" benchmarks/bench_augment.py --device cuda
# gal-embed file to file with --precision fp16 against ONNX Runtime alone with I/O binding
check bench-embed-gpu 300 "$PY" benchmarks/bench_embed.py --skip-cpu --gpu yes --repeats 2 --gpu-parts 4 --gpu-n 8192
note "done in $SECONDS s"

#!/usr/bin/env bash
# Every GPU check of issues 4, 5 and 6 in one device call (at most 9 minutes), for a session lent a GPU.
#
# The device image (see ../.library/device/KINDS.md) has python3 3.12, torch with CUDA 13, onnx, pyarrow, pytest,
# but the CPU onnxruntime and no fitsio, and it reaches no network.  On the development machine first (the folder
# is ignored by git):
#   pip download onnxruntime-gpu fitsio --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .gpu-wheels/all
#   mkdir -p .gpu-wheels/meta .gpu-wheels/deps && mv .gpu-wheels/all/fitsio-*.whl .gpu-wheels/deps/
#   (cd .gpu-wheels/all && ls onnxruntime_gpu-*.whl > ../meta/ort.name && sha256sum onnxruntime_gpu-*.whl > ../meta/ort.sha256)
#   split -b 52000000 .gpu-wheels/all/onnxruntime_gpu-*.whl .gpu-wheels/part-
# Then device calls back to back (a machine idle for 30 s is given back, and /tmp with it), one part per call:
#   carry [".gpu-wheels/part-aa"]   command: mkdir -p /tmp/ort-parts && cp .gpu-wheels/part-aa /tmp/ort-parts/
#   ... the other parts (copying again is harmless) ...
#   carry [".gpu-wheels/meta", ".gpu-wheels/deps"]   command: bash benchmarks/gpu-session.sh   (timeout_s 600)
# and, only if time is left, a second call: ONLY=compile bash benchmarks/gpu-session.sh (bench_train --compile).
# Back under $OUT: session.log (each check, its exit status and time, the last lines of its output), logs.tgz (every
# check's whole output) and RESULTS.md (benchmarks/RESULTS.md with this run's rows): copy the new rows into the
# repository's benchmarks/RESULTS.md.
set -uo pipefail
PY=${PY:-python3}
out=${OUT:-gpu-session-out}
logs=/tmp/galtools-gpu-logs      # outside $OUT: at most 8 files come back, so the logs travel as one logs.tgz
mkdir -p "$out" "$logs"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1

note() { echo "$*" | tee -a "$out/session.log"; }

# check NAME SECONDS COMMAND...: one check under a time limit; RESULTS.md and the logs are saved after each, so a
# call stopped at its limit still brings back what the finished checks measured
check() {
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout -k 10 "$limit" "$@" > "$logs/$name.log" 2>&1
    local status=$?
    note "$name: exit $status in $((SECONDS - start)) s$([ $status = 124 ] && echo ' (time limit)')"
    tail -n 6 "$logs/$name.log" | sed 's/^/    /' | tee -a "$out/session.log"
    cp benchmarks/RESULTS.md "$out/RESULTS.md"
    tar -czf "$out/logs.tgz" -C "$logs" .
}

note "galtools GPU session $(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"

# -- onnxruntime-gpu and fitsio, installed into the interpreter itself: the tests and benchmarks start gal-train and
#    gal-embed as subprocesses with PYTHONPATH set to the repository, so a --target folder would not reach them
if [ -f .gpu-wheels/meta/ort.name ] && ls /tmp/ort-parts/part-* > /dev/null 2>&1; then
    wheel=/tmp/$(cat .gpu-wheels/meta/ort.name)
    cat /tmp/ort-parts/part-* > "$wheel"
    (cd /tmp && sha256sum -c "$OLDPWD/.gpu-wheels/meta/ort.sha256") 2>&1 | tee -a "$out/session.log"
    # the CPU build first: both own the onnxruntime/ folder, and removing it afterwards would break the GPU build
    check install-onnxruntime-gpu 120 bash -c "$PY -m pip uninstall -y onnxruntime; \
        $PY -m pip install --no-deps --no-index --no-cache-dir '$wheel'"
fi
if ls .gpu-wheels/deps/*.whl > /dev/null 2>&1; then
    check install-deps 60 "$PY" -m pip install --no-deps --no-index --no-cache-dir .gpu-wheels/deps/*.whl
fi
# The CUDA provider has no search path of its own; gal-embed also calls onnxruntime.preload_dlls().
nvidia_libs=$("$PY" -c 'import nvidia; print(list(nvidia.__path__)[0])' 2> /dev/null)
if [ -n "$nvidia_libs" ]; then
    export LD_LIBRARY_PATH="$nvidia_libs/cu13/lib:$nvidia_libs/cudnn/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

# -- preflight, in a process without torch (as gal-embed runs): every import, and a real CUDA session
"$PY" - <<'EOF' 2>&1 | tee -a "$out/session.log"
import importlib
for name in ("numpy", "pyarrow", "fitsio", "click", "rich", "PIL", "onnx", "matplotlib", "pytest"):
    try:
        importlib.import_module(name)
    except ImportError as error:
        print("MISSING", name, error)
import onnxruntime as ort
from onnx import TensorProto, helper

weights = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 3, 3], [1.0] * 9)
graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weights])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 9
if hasattr(ort, "preload_dlls"):
    ort.preload_dlls()
session = ort.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print("onnxruntime", ort.__version__, "from", ort.__file__, "- session providers:", session.get_providers())
EOF

if [ "${ONLY:-}" = compile ]; then
    check bench-train-paper-compiled 420 "$PY" benchmarks/bench_train.py --paper --compile
    note "done in $SECONDS s"
    exit 0
fi
# The limits add up to 480 s after the installs.
# -- issue 5: gal-train on the GPU (bf16, channels_last, split-BN, --compile), and its throughput goal
check gpu-tests 150 "$PY" -m pytest -q -p no:cacheprovider -k "gpu or cuda" \
    tests/test_train_cli.py tests/test_embed.py tests/test_augment.py
check bench-train-paper 120 "$PY" benchmarks/bench_train.py --paper
# -- issue 4: the augmentation chain against a resnet50-hayat MoCo step (goal: under 5%)
check bench-augment-cuda 60 "$PY" benchmarks/bench_augment.py --device cuda
# -- issue 6: gal-embed file to file with --precision fp16 against ONNX Runtime alone with I/O binding (goal: 90%)
check bench-embed-gpu 150 "$PY" benchmarks/bench_embed.py --skip-cpu --gpu yes --repeats 2 --gpu-parts 4 --gpu-n 8192
note "done in $SECONDS s"

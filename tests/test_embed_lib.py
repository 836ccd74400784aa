"""gal-embed's parts: devices and threads, the pipeline's order, errors and memory bound, batching, preprocessing."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from conftest import ROOT
from galtools.embed.inputs import NONFINITE_PIXELS, InputPlan, Preparer
from galtools.embed.pipeline import Pipeline
from galtools.device import Device
from galtools.embed.providers import KINDS, captured_output, cpu_allocation, failure_reason
from galtools.embed.table import fixed_batches
from galtools.errors import BadData, UsageProblem


# ------------------------------------------------------------------------------------------------ devices, threads

@pytest.mark.parametrize("text, kind, index, gpu", [("auto", "auto", None, 0), ("cpu", "cpu", None, 0),
                                                    ("cuda", "cuda", None, 0), ("cuda:3", "cuda", 3, 3),
                                                    ("GPU:1", "cuda", 1, 1), ("tensorrt:2", "tensorrt", 2, 2)])
def test_device_parse(text, kind, index, gpu):
    device = Device.parse(text, KINDS)
    assert (device.kind, device.index, device.gpu) == (kind, index, gpu)
    assert str(device) == text.lower().replace("gpu", "cuda")   # messages name the device as it was asked for


@pytest.mark.parametrize("text", ["tpu", "cuda:x", "cpu:1", "cuda:-1", ""])
def test_device_parse_refuses(text):
    with pytest.raises(UsageProblem):
        Device.parse(text, KINDS)


def test_gal_embed_and_torch_tools_share_one_device_type():
    """gal-embed's devices are galtools.device's (with TensorRT added), not a type of its own."""
    import galtools.device
    from galtools.embed import encoder, providers

    assert encoder.Device is providers.Device is galtools.device.Device
    assert not hasattr(galtools.device, "DeviceSpec")
    with pytest.raises(UsageProblem):
        Device.parse("tensorrt")          # torch's tools have no TensorRT


def test_cpu_allocation_is_the_affinity_capped_by_slurm():
    allowed = len(os.sched_getaffinity(0))
    assert cpu_allocation({}) == allowed
    assert cpu_allocation({"SLURM_CPUS_PER_TASK": "1"}) == 1
    assert cpu_allocation({"SLURM_CPUS_PER_TASK": str(allowed + 64)}) == allowed   # never more than the mask
    assert cpu_allocation({"SLURM_CPUS_PER_TASK": "lots"}) == allowed


def test_failure_reason_finds_the_cause_in_onnxruntime_logs():
    log = ("\x1b[0;93m2026-01-01 [W:onnxruntime:Default, onnxruntime_pybind_state.cc:856 operator()] No registered "
           "plugin EP device found for 'CUDAExecutionProvider' with device_id=0\x1b[m\n"
           "\x1b[1;31m2026-01-01 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] ... : FAIL : Failed "
           "to load library /x/libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared "
           "object file: No such file or directory\n")
    assert failure_reason(log) == "libcublasLt.so.13: cannot open shared object file: No such file or directory"
    assert failure_reason("nothing useful") == ""


def test_captured_output_takes_c_level_stderr_and_python_stdout():
    with captured_output() as text:
        os.write(2, b"from C++ [E:onnxruntime] Failed to create CUDAExecutionProvider\n")
        print("EP Error from the Python fallback")
    assert "Failed to create CUDAExecutionProvider" in text[0]
    assert "EP Error" in text[0]


# ------------------------------------------------------------------------------------------------ pipeline

def test_pipeline_keeps_order_and_overlaps_stages():
    written, seen_threads = [], set()

    def produce():
        for i in range(50):
            seen_threads.add(threading.current_thread().name)
            yield i

    def write(item):
        seen_threads.add(threading.current_thread().name)
        written.append(item)

    Pipeline(produce(), write).run(lambda i: i * i)
    assert written == [i * i for i in range(50)]
    assert seen_threads == {"gal-embed-read", "gal-embed-write"}


def test_pipeline_reads_ahead_by_a_bounded_amount():
    produced = []
    release = threading.Event()

    def produce():
        for i in range(100):
            produced.append(i)
            yield i

    def slow(item):
        if item == 0:
            release.wait(2)
        return item

    runner = threading.Thread(target=lambda: Pipeline(produce(), lambda r: None, prepare_depth=2).run(slow))
    runner.start()
    time.sleep(0.5)
    ahead = len(produced)
    release.set()
    runner.join(10)
    # item 0 being processed, 2 in the queue, 1 made and waiting to be put: memory is bounded by the depth
    assert ahead <= 4
    assert len(produced) == 100


@pytest.mark.parametrize("stage", ["produce", "process", "write"])
def test_pipeline_raises_the_first_error_in_the_caller(stage):
    def produce():
        for i in range(20):
            if stage == "produce" and i == 5:
                raise BadData("bad row 5")
            yield i

    def process(item):
        if stage == "process" and item == 5:
            raise BadData("bad row 5")
        return item

    def write(item):
        if stage == "write" and item == 5:
            raise BadData("bad row 5")

    start = time.perf_counter()
    with pytest.raises(BadData, match="bad row 5"):
        Pipeline(produce(), write).run(process)
    assert time.perf_counter() - start < 3    # the other stages stopped instead of waiting out their timeouts


def test_fixed_batches_keep_rows_and_order():
    sizes = [3, 10, 1, 0, 7, 25, 2]
    start, batches = 0, []
    for size in sizes:
        batches.append(pa.record_batch({"x": pa.array(np.arange(start, start + size))}))
        start += size
    out = list(fixed_batches(batches, 8))
    assert [b.num_rows for b in out] == [8, 8, 8, 8, 8, 8]
    assert np.concatenate([b.column("x").to_numpy() for b in out]).tolist() == list(range(48))
    assert [b.num_rows for b in fixed_batches(batches, 100)] == [48]
    assert list(fixed_batches([], 4)) == []


# ------------------------------------------------------------------------------------------------ preprocessing

class _Model:
    def __init__(self, bands, size, preprocess):
        self.bands, self.input_size, self.preprocess = tuple(bands), size, preprocess


def _preprocess(bands):
    from galtools.preprocess import Preprocess

    rng = np.random.default_rng(0)
    return Preprocess.fit(rng.normal(size=(10, len(bands), 16, 16)).astype(np.float32) * 3, bands)


def test_plan_selects_bands_by_name_and_crops_the_centre():
    pre = _preprocess(["g", "r", "i"])
    plan = InputPlan.for_table(_Model(["g", "r", "i"], 4, pre), ["i", "u", "g", "r"], (4, 9, 8), "t", "m")
    images = np.arange(2 * 4 * 9 * 8, dtype=np.float32).reshape(2, 4, 9, 8)
    chosen = plan.select(images)
    # bands g,r,i are planes 2,3,0; rows (9-4)//2 = 2 .. 6, columns (8-4)//2 = 2 .. 6
    assert np.array_equal(chosen, images[:, [2, 3, 0], 2:6, 2:6])
    out = np.empty((2, 3, 4, 4), np.float32)
    plan.prepare_into(images, out)
    scale, mean, std = (np.array(v, np.float32)[None, :, None, None] for v in (pre.scale, pre.mean, pre.std))
    assert np.array_equal(out, ((np.arcsinh(chosen / scale) - mean) / std).astype(np.float32))


def test_parallel_preparation_is_bitwise_the_serial_one():
    pre = _preprocess(["u", "g", "r"])
    plan = InputPlan.for_table(_Model(["u", "g", "r"], 20, pre), ["r", "g", "u"], (3, 24, 24), "t", "m")
    images = np.random.default_rng(1).normal(size=(300, 3, 24, 24)).astype(np.float32) * 10
    images[123, 1, 5, 5] = np.nan
    serial, serial_finite = Preparer(plan, 1)(images)
    parallel_preparer = Preparer(plan, 4)
    try:
        parallel, parallel_finite = parallel_preparer(images)
    finally:
        parallel_preparer.close()
    assert np.array_equal(parallel, serial, equal_nan=True)
    assert np.array_equal(parallel_finite, serial_finite)
    assert np.nonzero(~parallel_finite)[0].tolist() == [123]


def test_non_finite_pixels_name_the_objects():
    from galtools.io.tensor import check_finite

    with pytest.raises(BadData, match="object_id 12"):
        check_finite(np.array([True, True, False, True]), NONFINITE_PIXELS, [10, 11, 12, 13])
    with pytest.raises(BadData, match="row 0"):
        check_finite(np.array([False]), NONFINITE_PIXELS, None)
    check_finite(np.ones(3, bool), NONFINITE_PIXELS, None)
    with pytest.raises(BadData) as caught:
        check_finite(np.array([False] * 7 + [True]), "rows hold NaN", list("abcdefgh"), "drop them")
    assert caught.value.one_line() == "7 rows hold NaN (object_id a, b, c, d, e, ...) (drop them)"


# ------------------------------------------------------------------------------------------------ memory

def _peak_rss_mb(model_path: str, rows: int, tmp_path) -> float:
    """gal-embed's peak resident memory when an Arrow stream of ``rows`` 6x64x64 cutouts is piped into it."""
    from galtools.io import tensor_column

    schema = pa.schema([("object_id", pa.int64()), ("image", pa.fixed_shape_tensor(pa.float32(), (6, 64, 64)))],
                       metadata={"galtools.bands": "y,z,i,r,g,u"})
    command = [sys.executable, "-m", "galtools.cli.embed", "-", "--model", model_path, "-b", "32", "--overwrite",
               "-o", str(tmp_path / f"mem{rows}.parquet")]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    block = np.random.default_rng(0).normal(size=(100, 6, 64, 64)).astype(np.float32)
    with pa.ipc.new_stream(proc.stdin, schema) as writer:
        for start in range(0, rows, 100):
            ids = pa.array(np.arange(start, start + 100, dtype=np.int64))
            writer.write_batch(pa.record_batch([ids, tensor_column(block)], schema=schema))
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, proc.stderr.read().decode()
    return usage.ru_maxrss / 1024


@pytest.mark.slow
def test_memory_is_bounded_by_the_batch_not_the_input(tmp_path):
    from test_embed import MODEL_BANDS, export_contract_model, galaxy_cutouts

    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess

    model_path = str(tmp_path / "m.onnx")
    export_contract_model(model_path, build_encoder("tiny", 5).eval(),
                          Preprocess.fit(galaxy_cutouts(8, 5, 32, 32), MODEL_BANDS), 32)
    small = _peak_rss_mb(model_path, 200, tmp_path)
    large = _peak_rss_mb(model_path, 1600, tmp_path)   # 1400 more rows = 138 MB more input
    assert large - small < 60, (small, large)

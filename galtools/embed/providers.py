"""Where the encoder runs: ``--device auto|cpu|cuda[:N]|tensorrt[:N]`` -> an ONNX Runtime session on the providers
asked for, checked after creation (ONNX Runtime silently falls back to the CPU when a GPU provider cannot start).

Threads come from the CPU allocation of this process (its affinity mask, ``SLURM_CPUS_PER_TASK``), not from the
machine's core count: on a shared node the machine has 128 cores and the job may own 8.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import tempfile
from dataclasses import dataclass

from galtools.device import Device
from galtools.errors import BadData, DeviceUnavailable
from galtools.io.files import put_in_place, temporary_beside

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DEVICE_HINT = "run on a node with a working NVIDIA GPU and CUDA libraries, or pass --device cpu"


KINDS = ("auto", "cpu", "cuda", "tensorrt")   # gal-embed's --device: galtools.device's, and ONNX Runtime's TensorRT


def cpu_allocation(environ=None) -> int:
    """CPUs this process may use: its affinity mask, capped by Slurm's ``--cpus-per-task`` when set."""
    environ = os.environ if environ is None else environ
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):   # macOS and Windows have no affinity mask: the machine is the allocation
        allowed = os.cpu_count() or 1
    slurm = str(environ.get("SLURM_CPUS_PER_TASK", "")).strip()
    if slurm.isdigit() and int(slurm) > 0:
        allowed = min(allowed, int(slurm))
    return max(1, allowed)


def cuda_device_count() -> tuple[int, str]:
    """(number of GPUs the NVIDIA driver sees, why none when 0), without CUDA toolkits: the driver's libcuda only."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0, "no NVIDIA driver on this machine (libcuda.so.1 not found)"
    status = libcuda.cuInit(0)
    if status != 0:
        return 0, f"the NVIDIA driver could not start (cuInit error {status}; no GPU visible, see CUDA_VISIBLE_DEVICES)"
    count = ctypes.c_int(0)
    status = libcuda.cuDeviceGetCount(ctypes.byref(count))
    if status != 0 or count.value == 0:
        return 0, "the NVIDIA driver sees no GPU (check CUDA_VISIBLE_DEVICES and the job's GPU request)"
    return count.value, ""


@contextlib.contextmanager
def captured_output():
    """Collect what ONNX Runtime prints while a session starts: its C++ log goes to file descriptor 2 and its Python
    fallback notice to stdout, which may be our output pipe. Yields a list that holds the text afterwards."""
    text: list[str] = []
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log_file, contextlib.redirect_stdout(io.StringIO()) as python_out:
        os.dup2(log_file.fileno(), 2)
        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log_file.seek(0)
            text.append(log_file.read().decode("utf-8", "replace") + python_out.getvalue())


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def failure_reason(log_text: str) -> str:
    """The line of ONNX Runtime's log that says why a provider did not start, shortened to its cause."""
    lines = [_ANSI.sub("", line).strip() for line in log_text.splitlines()]
    for pattern in (r"Failed to load library .*?with error: (.*)", r"(Failed to create \w+)", r"(CUDA failure .*)",
                    r"(Please install TensorRT libraries)", r"\] (.*(?:error|Error|failure).*)"):
        for line in lines:
            found = re.search(pattern, line)
            if found:
                return found.group(1).strip().rstrip(".")[:200]
    return ""


def provider_list(device: Device, cache_dir: str, batch_size: int, input_shape: tuple[int, int, int],
                  fp16: bool) -> list:
    """ONNX Runtime's provider list for a device, fastest first, always ending with the CPU."""
    if device.kind == "cpu":
        return [CPU]
    # fp32 means IEEE fp32: TF32 convolutions (ONNX Runtime's default on Ampere and later) would cost the 1e-4
    # agreement with the torch encoder; fp16 is the fast option.
    cuda = (CUDA, {"device_id": str(device.gpu), "cudnn_conv_algo_search": "EXHAUSTIVE",
                   "do_copy_in_default_stream": "1", "use_tf32": "1" if fp16 else "0"})
    if device.kind != "tensorrt":
        return [cuda, CPU]
    bands, height, width = input_shape
    shape = lambda n: f"image:{n}x{bands}x{height}x{width}"  # noqa: E731
    engine_cache = os.path.join(cache_dir, "tensorrt")
    os.makedirs(engine_cache, exist_ok=True)     # TensorRT creates only the last level of the path itself
    trt = (TENSORRT, {"device_id": str(device.gpu), "trt_fp16_enable": "1" if fp16 else "0",
                      "trt_engine_cache_enable": "1", "trt_engine_cache_path": engine_cache,
                      "trt_profile_min_shapes": shape(1), "trt_profile_opt_shapes": shape(batch_size),
                      "trt_profile_max_shapes": shape(batch_size)})
    return [trt, cuda, CPU]


def session_options(threads: int, on_gpu: bool, verbose: bool, config: dict | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 2 if verbose else 3
    # On a GPU the CPU threads only feed it; on the CPU they do the work. Spinning threads would steal the cores
    # that read and preprocess the next batch, so they sleep between runs.
    options.intra_op_num_threads = 1 if on_gpu else threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return options


def _optimized_graph(model, options, optimized):
    """ONNX Runtime's optimised graph of ``model`` for this CPU (layouts, fusions) is kept as the cache entry
    ``optimized`` (galtools.embed.cache.CacheEntry): a later session loads it with the optimisers off, once it is
    checked against its record.  Returns (what to load, the temporary file the optimised graph is written to now,
    or None)."""
    import onnxruntime as ort

    if optimized is None:
        return model, None
    if optimized.usable():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return optimized.path, None
    try:
        os.makedirs(os.path.dirname(optimized.path), exist_ok=True)
        tmp = temporary_beside(optimized.path, ".onnx")
    except OSError:   # a read-only cache: optimise in memory, every time
        return model, None
    options.optimized_model_filepath = tmp
    return model, tmp


def _keep_optimized(saving: str, optimized, loaded: bool) -> None:
    """The optimised graph ONNX Runtime wrote to ``saving`` becomes the cache entry, with its record; the record is
    written first, so that a reader never finds the new file under an old record that it would accept."""
    from galtools.embed.model import file_sha256

    with contextlib.suppress(OSError):
        if loaded and os.path.getsize(saving) > 0:
            optimized.record(file_sha256(saving))
            put_in_place(saving, optimized.path)   # atomic: concurrent array tasks each write a whole file
        else:
            os.unlink(saving)
    with contextlib.suppress(OSError):
        os.unlink(saving)


def create_session(model, device: Device, threads: int, cache_dir: str, batch_size: int,
                   input_shape: tuple[int, int, int], fp16: bool, verbose: bool = False, config: dict | None = None,
                   optimized=None):
    """An InferenceSession on ``device`` (``model``: a path or serialized bytes), checked to really use it.
    ``config``: session configuration entries; ``optimized``: the cache entry (galtools.embed.cache.CacheEntry) of
    the CPU's optimised graph (CPU only).

    Raises DeviceUnavailable (69) with ONNX Runtime's own reason when a GPU provider was asked for and did not start,
    BadData (65) when the model itself cannot be loaded.
    """
    import onnxruntime as ort

    providers = provider_list(device, cache_dir, batch_size, input_shape, fp16)
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    if wanted != CPU and wanted not in ort.get_available_providers():
        raise DeviceUnavailable(f"--device {device}: this ONNX Runtime build has no {wanted} "
                                f"(it has {', '.join(ort.get_available_providers())})",
                                "install onnxruntime-gpu instead of onnxruntime, or pass --device cpu")
    options = session_options(threads, device.is_gpu, verbose, config)
    model, saving = _optimized_graph(model, options, optimized if device.kind == "cpu" else None)
    with captured_output() as log_text:
        if device.is_gpu and hasattr(ort, "preload_dlls"):
            # gal-embed does not import torch, so nothing has loaded the CUDA and cuDNN libraries that the CUDA
            # provider needs (it has no search path of its own); onnxruntime-gpu finds those of the nvidia-* pip
            # packages beside it.  It prints what it loads: captured, so an Arrow stream on stdout stays clean.
            with contextlib.suppress(Exception):   # a library it cannot load: the session below says why
                ort.preload_dlls()
        try:
            session = ort.InferenceSession(model, sess_options=options, providers=providers)
            error = None
        except Exception as exc:   # ONNX Runtime raises its own exception types for every failure
            session, error = None, exc
    if saving is not None:
        _keep_optimized(saving, optimized, error is None)
    if verbose and log_text[0].strip():
        import sys

        sys.stderr.write(log_text[0])
    if error is not None:
        if device.is_gpu and _loads_on_cpu(model):
            raise DeviceUnavailable(f"--device {device}: ONNX Runtime could not start {wanted} "
                                    f"({_one_line(error)})", DEVICE_HINT)
        raise BadData(f"the model cannot be loaded by ONNX Runtime: {_one_line(error)}",
                      "the file is damaged or not an ONNX model; re-export it with 'gal-train export'")
    got = session.get_providers()
    if wanted not in got:
        reason = failure_reason(log_text[0]) or "no reason given by ONNX Runtime"
        raise DeviceUnavailable(f"--device {device}: {wanted} is not in the session's providers "
                                f"({', '.join(got)}): {reason}", DEVICE_HINT)
    return session


def _loads_on_cpu(model) -> bool:
    import onnxruntime as ort

    try:
        with captured_output():
            ort.InferenceSession(model, providers=[CPU])
        return True
    except Exception:
        return False


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return text[:240]

"""Loading ``encoder.onnx`` for embedding: file checks, device and precision, the session, its runner."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from galtools.embed import fp16 as fp16_cache
from galtools.embed.model import ModelInfo, check_model_file, describe, file_sha256
from galtools.embed.providers import (CPU, CUDA, TENSORRT, Device, cpu_allocation, create_session,
                                      cuda_device_count, DEVICE_HINT)
from galtools.embed.runner import make_runner
from galtools.errors import BadData, DeviceUnavailable, UsageProblem

PRECISIONS = ("fp32", "fp16")
_log = logging.getLogger("galtools")


@dataclass
class EmbedSettings:
    device: str = "auto"
    precision: str = "fp32"
    batch_size: int = 256
    threads: int | None = None       # None: the CPU allocation
    cache_dir: str | None = None     # None: $GALTOOLS_CACHE_DIR or ~/.cache/galtools
    verbose: bool = False


@dataclass
class Encoder:
    """A model ready to embed: what it is (``info``), where it runs, and how batches reach it."""

    info: ModelInfo
    session: object
    runner: object
    device: Device
    provider: str
    precision: str
    threads: int
    prepare_workers: int
    notes: list = field(default_factory=list)

    @property
    def on_gpu(self) -> bool:
        return self.device.is_gpu


def _resolve_device(device: Device) -> Device:
    """``auto`` -> a GPU when the driver sees one and this ONNX Runtime can use it, else the CPU; an explicit GPU
    request is checked against the driver here, with its reason, before ONNX Runtime tries (and silently falls back)."""
    import onnxruntime as ort

    if device.kind == "cpu":
        return device
    if device.kind == "auto":
        if CUDA not in ort.get_available_providers():
            return Device("cpu")
        count, _ = cuda_device_count()
        return Device("cuda", 0) if count > 0 else Device("cpu")
    count, reason = cuda_device_count()
    if count == 0:
        raise DeviceUnavailable(f"--device {device}: no usable GPU: {reason}", DEVICE_HINT)
    if device.index >= count:
        raise DeviceUnavailable(f"--device {device}: there is no GPU {device.index}; the driver sees {count} "
                                f"(numbered 0-{count - 1})", "pick one of those, or check CUDA_VISIBLE_DEVICES")
    return device


def _model_source(path: str, sha256: str, device: Device, precision: str, cache_dir: str):
    """The model ONNX Runtime loads: the file itself, or (fp16 on CUDA/CPU) its cached fp16 conversion.
    TensorRT makes its own fp16 engine from the fp32 graph."""
    if precision == "fp32" or device.kind == "tensorrt":
        return path
    return fp16_cache.fp16_model(path, sha256, cache_dir, log=_log)


def _input_shape_of(path: str, sha256: str, threads: int) -> tuple[int, int, int]:
    """(bands, S, S) from a CPU session: TensorRT needs the shapes of its optimisation profile up front."""
    info = describe(create_session(path, Device("cpu"), threads, "", 1, (1, 1, 1), False), path, sha256)
    return len(info.bands), info.input_size, info.input_size


def _session(source, device, threads, cache_dir, settings, input_shape, precision):
    return create_session(source, device, threads, cache_dir, settings.batch_size, input_shape,
                          precision == "fp16", settings.verbose)


def load_encoder(path: str, settings: EmbedSettings) -> Encoder:
    """Open ``path`` on the device and precision asked for. Exit codes: 66 missing model, 65 corrupt model or one
    that breaks the encoder contract, 69 a GPU asked for and not usable."""
    if settings.precision not in PRECISIONS:
        raise UsageProblem(f"--precision {settings.precision!r} is not one of {', '.join(PRECISIONS)}")
    if settings.batch_size < 1:
        raise UsageProblem("--batch-size must be at least 1")
    check_model_file(path)
    requested = Device.parse(settings.device)
    device = _resolve_device(requested)
    threads = settings.threads or cpu_allocation()
    cache_dir = settings.cache_dir or fp16_cache.cache_dir()
    sha256 = file_sha256(path)
    notes = []

    input_shape = _input_shape_of(path, sha256, threads) if device.kind == "tensorrt" else (1, 1, 1)
    try:
        source = _model_source(path, sha256, device, settings.precision, cache_dir)
        session = _open_with_cache_retry(source, path, sha256, device, threads, cache_dir, settings, input_shape)
    except DeviceUnavailable as exc:
        if requested.kind != "auto":
            raise
        notes.append(f"GPU not usable ({exc.what}); running on the CPU")
        device = Device("cpu")
        source = _model_source(path, sha256, device, settings.precision, cache_dir)
        session = _open_with_cache_retry(source, path, sha256, device, threads, cache_dir, settings, input_shape)
    info = describe(session, path, sha256)
    provider = session.get_providers()[0]
    if settings.precision == "fp16" and provider == CPU:
        notes.append("fp16 on the CPU is for checking results, not for speed (the CPU computes it slowly)")
    batch_shape = (settings.batch_size, len(info.bands), info.input_size, info.input_size)
    runner = make_runner(session, device.index if device.is_gpu else None, batch_shape)
    # On the CPU, ONNX Runtime's threads do the work and one reading thread keeps up; on a GPU node the cores are
    # free to prepare batches (minus the threads that run the GPU and write).
    workers = max(1, threads - 2) if device.is_gpu else 1
    return Encoder(info=info, session=session, runner=runner, device=device, provider=provider,
                   precision=settings.precision, threads=threads, prepare_workers=workers, notes=notes)


def _open_with_cache_retry(source, path, sha256, device, threads, cache_dir, settings, input_shape):
    """A cached fp16 file that no longer loads (a different ONNX Runtime, a damaged disk) is converted again."""
    try:
        return _session(source, device, threads, cache_dir, settings, input_shape, settings.precision)
    except BadData:
        if not isinstance(source, str) or source == path:
            raise
        _log.warning(f"the cached fp16 model {source} does not load; converting again")
        os.unlink(source)
        source = _model_source(path, sha256, device, settings.precision, cache_dir)
        return _session(source, device, threads, cache_dir, settings, input_shape, settings.precision)


__all__ = ["CPU", "CUDA", "TENSORRT", "EmbedSettings", "Encoder", "load_encoder"]

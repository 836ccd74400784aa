"""Loading ``encoder.onnx`` for embedding: file checks, device and precision, the session, its runner."""
from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from galtools.device import Device
from galtools.embed import precision as precisions
from galtools.embed.model import ModelInfo, check_model_file, describe, file_sha256
from galtools.embed.precision import PRECISIONS
from galtools.embed.providers import (CPU, CUDA, DEVICE_HINT, KINDS, TENSORRT, cpu_allocation, create_session,
                                      cuda_device_count)
from galtools.embed.runner import make_runner
from galtools.errors import BadData, DeviceUnavailable, GalError, UsageProblem
from galtools.io import meta

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
    requested: str = ""              # the --precision asked for ("auto" may become fp32 or int8)
    pending: object = None           # a PrecisionChoice still to be made on the table's first cutouts
    parity: object = None            # the precision.Parity it passed, for int8/bf16
    auto: dict | None = None         # what --precision auto measured (or found cached)
    calibration: dict | None = None  # int8: the cutouts its activation ranges were calibrated on (rule, checksum)

    def precision_metadata(self) -> dict:
        """Output metadata naming the precision used and, for int8/bf16, its parity figures."""
        metadata = {meta.EMBED_PRECISION: self.precision}
        if self.requested and self.requested != self.precision:
            metadata[meta.EMBED_PRECISION_REQUESTED] = self.requested
        if self.parity is not None:
            metadata[meta.EMBED_PARITY] = self.parity.to_json()
        if self.auto is not None:
            metadata[meta.EMBED_AUTO] = json.dumps(self.auto, separators=(",", ":"), sort_keys=True)
        if self.precision == "int8" and self.calibration is not None:
            metadata[meta.EMBED_CALIBRATION] = json.dumps(self.calibration, separators=(",", ":"),
                                                                sort_keys=True)
        return metadata

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
    if device.gpu >= count:
        raise DeviceUnavailable(f"--device {device}: there is no GPU {device.gpu}; the driver sees {count} "
                                f"(numbered 0-{count - 1})", "pick one of those, or check CUDA_VISIBLE_DEVICES")
    return device


def _model_source(path: str, sha256: str, device: Device, precision: str, cache_dir: str):
    """The model ONNX Runtime loads first: the file itself, or (fp16 on CUDA/CPU) its cached fp16 conversion.
    TensorRT makes its own fp16 engine from the fp32 graph; int8, bf16 and auto start from fp32 (their reference)."""
    if precision != "fp16" or device.kind == "tensorrt":
        return path
    return precisions.fp16_model(path, sha256, cache_dir, log=_log)


def _input_shape_of(path: str, sha256: str, threads: int) -> tuple[int, int, int]:
    """(bands, S, S) from a CPU session: TensorRT needs the shapes of its optimisation profile up front."""
    info = describe(create_session(path, Device("cpu"), threads, "", 1, (1, 1, 1), False), path, sha256)
    return len(info.bands), info.input_size, info.input_size


def _optimized(source, sha256: str, cache_dir: str, precision: str, calibration: str | None = None):
    """The cache entry of the CPU's optimised graph of a model file (none for a conversion held in memory)."""
    if not isinstance(source, str):
        return None
    if precision == "int8":
        tag = precisions.int8_cache_tag(calibration)
    else:
        tag = {"fp16": precisions.CONVERSION_TAG}.get(precision, precision)
    return precisions.optimized_entry(sha256, cache_dir, tag, calibration)


def _session(source, device, threads, cache_dir, settings, input_shape, precision, sha256="", calibration=None):
    config = {precisions.BF16_CONFIG: "1"} if precision == "bf16" else None
    optimized = _optimized(source, sha256, cache_dir, precision, calibration) if sha256 else None
    return create_session(source, device, threads, cache_dir, settings.batch_size, input_shape,
                          precision == "fp16", settings.verbose, config=config, optimized=optimized)


def load_encoder(path: str, settings: EmbedSettings) -> Encoder:
    """Open ``path`` on the device and precision asked for. Exit codes: 66 missing model, 65 corrupt model or one
    that breaks the encoder contract, 69 a GPU asked for and not usable or a precision this CPU cannot compute.

    int8, bf16 and auto open the fp32 model (their reference) and leave ``encoder.pending``: the choice is made on
    the table's first cutouts by ``embed_table`` (``PrecisionChoice.settle``)."""
    if settings.precision not in PRECISIONS:
        raise UsageProblem(f"--precision {settings.precision!r} is not one of {', '.join(PRECISIONS)}")
    if settings.batch_size < 1:
        raise UsageProblem("--batch-size must be at least 1")
    check_model_file(path)
    requested = Device.parse(settings.device, KINDS)
    wanted = settings.precision
    if wanted in precisions.CHECKED:
        if requested.is_gpu:
            raise UsageProblem(f"--precision {wanted} is for CPUs, not --device {requested}",
                               "use --precision fp16 on a GPU, or --device cpu")
        requested = Device("cpu")
        if wanted == "bf16":
            usable, why = precisions.bf16_support()
            if not usable:
                raise DeviceUnavailable(f"--precision bf16 is not available here: {why}",
                                        "use --precision int8, fp32 or auto")
    device = _resolve_device(requested)
    threads = settings.threads or cpu_allocation()
    cache_dir = settings.cache_dir or precisions.cache_dir()
    sha256 = file_sha256(path)
    notes = []
    first = "fp16" if wanted == "fp16" else "fp32"

    input_shape = _input_shape_of(path, sha256, threads) if device.kind == "tensorrt" else (1, 1, 1)

    def open_as(precision, target, sample=None):
        calibration = precisions.calibration_checksum(sample) if precision == "int8" else None
        make = lambda: _candidate_source(path, sha256, target, precision, cache_dir, sample, calibration)  # noqa: E731
        return _open(make, path, sha256, target, threads, cache_dir, settings, input_shape, precision, calibration)

    try:
        session = open_as(first, device)
    except DeviceUnavailable as exc:
        if requested.kind != "auto":
            raise
        notes.append(f"GPU not usable ({exc.what}); running on the CPU")
        device = Device("cpu")
        session = open_as(first, device)
    info = describe(session, path, sha256)
    provider = session.get_providers()[0]
    if wanted == "fp16" and provider == CPU:
        notes.append("fp16 on the CPU is for checking results, not for speed (the CPU computes it slowly)")
    batch_shape = (settings.batch_size, len(info.bands), info.input_size, info.input_size)
    runner = make_runner(session, device.gpu if device.is_gpu else None, batch_shape)
    # On the CPU, ONNX Runtime's threads do the work and one reading thread keeps up; on a GPU node the cores are
    # free to prepare batches (minus the threads that run the GPU and write).
    workers = max(1, threads - 2) if device.is_gpu else 1
    encoder = Encoder(info=info, session=session, runner=runner, device=device, provider=provider,
                      precision=first, threads=threads, prepare_workers=workers, notes=notes, requested=wanted)
    if wanted in precisions.CHECKED or wanted == "auto":
        PrecisionChoice.plan(encoder, settings, sha256, cache_dir, lambda p, sample: open_as(p, device, sample))
    return encoder


def _candidate_source(path, sha256, device, precision, cache_dir, sample, calibration=None):
    if precision == "int8":
        return precisions.int8_model(path, sha256, sample, cache_dir, log=_log, calibration_sha256=calibration)
    if precision == "bf16":
        return path                   # the fp32 graph; the session computes its products in bf16
    return _model_source(path, sha256, device, precision, cache_dir)


def _open(make_source, path, sha256, device, threads, cache_dir, settings, input_shape, precision, calibration=None):
    """A session on ``make_source()``; a cached file (a conversion, an optimised graph) that matches its record but
    no longer loads (another ONNX Runtime) is made again."""
    source = make_source()
    try:
        return _session(source, device, threads, cache_dir, settings, input_shape, precision, sha256, calibration)
    except BadData:
        optimized = _optimized(source, sha256, cache_dir, precision, calibration) if device.kind == "cpu" else None
        cached = [source if isinstance(source, str) and source != path else None,
                  optimized.path if optimized is not None else None]
        stale = [p for p in cached if p and os.path.isfile(p)]
        if not stale:
            raise
        for name in stale:
            _log.warning(f"the cached model {name} does not load; making it again")
            os.unlink(name)
        source = make_source()
        return _session(source, device, threads, cache_dir, settings, input_shape, precision, sha256, calibration)


def _embed_all(session, sample: np.ndarray, batch_size: int) -> np.ndarray:
    from galtools.embed.model import INPUT_NAME, OUTPUT_NAME

    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(sample[lo:lo + batch_size])})[0]
                           for lo in range(0, len(sample), batch_size)])


class PrecisionChoice:
    """int8, bf16 or auto, decided on the first ``SAMPLE_ROWS`` cutouts of the table: int8's calibration, the parity
    check against fp32, and (auto, when nothing was measured on this machine before) the timing of each candidate."""

    def __init__(self, encoder: Encoder, settings: EmbedSettings, candidates: list, open_as, auto_file=None,
                 cached_choice=None):
        self.encoder, self.settings, self.candidates, self.open_as = encoder, settings, candidates, open_as
        self.auto_file, self.cached_choice = auto_file, cached_choice

    @classmethod
    def plan(cls, encoder: Encoder, settings: EmbedSettings, sha256: str, cache_dir: str, open_as) -> None:
        wanted = encoder.requested
        if wanted != "auto":
            encoder.pending = cls(encoder, settings, [wanted], open_as)
            return
        if encoder.device.is_gpu:
            lower = ["fp16"]
        else:
            lower = ["int8"] + (["bf16"] if precisions.bf16_support()[0] else [])
        auto_file = precisions.auto_path(sha256, cache_dir, str(encoder.device), encoder.threads, settings.batch_size)
        choice = precisions.read_auto_choice(auto_file)
        if choice is None or choice["precision"] not in ["fp32"] + lower:
            encoder.pending = cls(encoder, settings, lower, open_as, auto_file)
            return
        encoder.auto = dict(choice, cached=True)
        _log.debug(f"--precision auto: {choice['precision']}, as measured before on this machine ({auto_file})")
        if choice["precision"] == "fp16":    # unchecked at run time, as with --precision fp16
            encoder.precision = "fp16"
            _use(encoder, open_as("fp16", None), settings)
        elif choice["precision"] != "fp32":  # checked again on this table; fp32 if it fails here
            encoder.pending = cls(encoder, settings, [choice["precision"]], open_as, cached_choice=choice)

    def settle(self, batches: Iterator, preparer, table_name: str) -> Iterator:
        """Take the first cutouts of ``batches`` (record batches), decide, and give back all the batches."""
        from galtools.embed.inputs import FILL_HINT, NONFINITE_PIXELS
        from galtools.io import images_of
        from galtools.io.tensor import check_finite

        held, rows = [], 0
        for batch in batches:
            held.append(batch)
            rows += batch.num_rows
            if rows >= precisions.SAMPLE_ROWS:
                break
        prepared = []
        for batch in held:
            images, finite = preparer(images_of(batch))
            if not finite.all():
                ids = batch.column("object_id").to_pylist() if "object_id" in batch.schema.names else None
                check_finite(finite, NONFINITE_PIXELS, ids, FILL_HINT)
            prepared.append(images)
        self.decide(np.concatenate(prepared)[:precisions.SAMPLE_ROWS] if prepared else None, table_name)
        self.encoder.pending = None
        return itertools.chain(held, batches)

    def decide(self, sample, table_name: str) -> None:
        encoder, batch = self.encoder, self.settings.batch_size
        explicit = encoder.requested in precisions.CHECKED
        if sample is None or len(sample) == 0:
            encoder.notes.append(f"no cutouts to check --precision {encoder.requested} on: nothing was embedded")
            return
        source = f"the first {len(sample)} cutouts of {table_name}"
        reference = _embed_all(encoder.session, sample, batch)
        tried = {}
        calibration = sample[::2]                              # int8: calibrated on every other cutout
        encoder.calibration = {"rule": precisions.CALIBRATION_RULE, "rows": len(calibration),
                               "sha256": precisions.calibration_checksum(calibration)}
        for precision in self.candidates:
            try:
                session = self.open_as(precision, calibration)
            except GalError as exc:
                if explicit:
                    raise
                _log.info(f"--precision auto: {precision} not usable ({exc.one_line()})")
                continue
            tried[precision] = (session, precisions.parity(precision, reference,
                                                           _embed_all(session, sample, batch)))
        if explicit:
            session, result = tried[encoder.requested]
            if not result.passed:
                raise precisions.refuse(result, source)
            return self._take(encoder.requested, session, result)
        for precision, (_, result) in tried.items():
            _log.info(f"--precision auto: parity {result.summary()}: {'passed' if result.passed else 'failed'}")
        passing = {p: v for p, v in tried.items() if v[1].passed}
        if self.cached_choice is not None:
            encoder.auto = dict(self.cached_choice, cached=True)
            if not passing:
                why = f"fails the parity check ({tried[self.candidates[0]][1].summary()})" if tried else "is not usable"
                encoder.notes.append(f"--precision auto: {self.candidates[0]} {why} on this table; using fp32")
                return
            precision, (session, result) = next(iter(passing.items()))
            return self._take(precision, session, result)
        rates = _rates({"fp32": encoder.session, **{p: s for p, (s, _) in tried.items()}},
                       sample[:batch])
        best = max(["fp32", *passing], key=lambda p: rates[p])
        choice = {"precision": best, "images_per_second": {p: round(r, 1) for p, r in rates.items()},
                  "parity": {p: json.loads(r.to_json()) for p, (_, r) in tried.items()}, "rows": len(sample),
                  "cpu": precisions.cpu_description()["model"], "threads": encoder.threads, "batch_size": batch}
        precisions.write_auto_choice(self.auto_file, choice, _log)
        encoder.auto = dict(choice, cached=False)
        _log.info(f"--precision auto: {best} ({', '.join(f'{p} {r:,.0f}' for p, r in rates.items())} images/s "
                  f"on {len(sample[:batch])} cutouts)")
        if best != "fp32":
            self._take(best, *passing[best])

    def _take(self, precision, session, result) -> None:
        self.encoder.precision, self.encoder.parity = precision, result
        _use(self.encoder, session, self.settings)


def _use(encoder: Encoder, session, settings: EmbedSettings) -> None:
    info = encoder.info
    batch_shape = (settings.batch_size, len(info.bands), info.input_size, info.input_size)
    encoder.session = session
    encoder.runner = make_runner(session, encoder.device.gpu if encoder.device.is_gpu else None, batch_shape)
    encoder.provider = session.get_providers()[0]


def _rates(sessions: dict, batch: np.ndarray, repeats: int = 3) -> dict:
    """images/s of each session on one batch: best of ``repeats``, the sessions taking turns (so that other load on
    the machine hits them alike), after one warm-up run each."""
    from galtools.embed.model import INPUT_NAME, OUTPUT_NAME

    feed = {INPUT_NAME: np.ascontiguousarray(batch)}
    best = {}
    for session in sessions.values():
        session.run([OUTPUT_NAME], feed)
    for _ in range(repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run([OUTPUT_NAME], feed)
            seconds = time.perf_counter() - start
            best[name] = min(best.get(name, np.inf), seconds)
    return {name: len(batch) / max(seconds, 1e-9) for name, seconds in best.items()}


__all__ = ["CPU", "CUDA", "TENSORRT", "EmbedSettings", "Encoder", "load_encoder"]

"""``--precision``: the arithmetic gal-embed runs the encoder in, and the check that makes a lower one safe to use.

fp32   the exported graph as it is.
fp16   a float16 copy of the graph (ONNX Runtime's converter, ``onnxruntime.transformers.float16``, which needs the
       ``onnx`` package), made once and cached by the model's sha256; the input ``image`` and output ``embedding``
       stay float32 (Cast nodes at the edges).  It pays on GPUs; a CPU computes it slowly.
int8   ONNX Runtime's static quantization (QDQ: int8 weights per output channel, uint8 activations whose ranges are
       calibrated on every other cutout of the first ``SAMPLE_ROWS`` of the input table, after preprocessing), made
       once per model and calibration sample and cached like fp16.  The sample's checksum is part of the cache key
       and is recorded in the output (``galtools.embed.calibration``), so the same command on the same input gives
       the same int8 model whatever ran before.  It pays on CPUs with VNNI or AMX int8 instructions.
bf16   the fp32 graph with bfloat16 matrix products, where the CPU and ONNX Runtime have such kernels (ONNX Runtime's
       ARM64 fastmath GEMM on CPUs with BF16); refused elsewhere (exit 69).
auto   the fastest, measured on this machine, of fp32 and the lower precisions that pass the parity check; the
       choice is cached per model, CPU, ONNX Runtime version, threads and batch size.

int8 and bf16 are used only after a parity check against fp32 on the first ``SAMPLE_ROWS`` cutouts of the table:
the cosine similarity of every embedding to its fp32 counterpart >= ``COSINE_FLOOR`` and the kNN overlap@10 (the
share of each cutout's 10 nearest neighbours by cosine among the sample that both precisions agree on) >=
``OVERLAP_FLOOR``.  A precision that fails is refused (``PrecisionRefused``, exit 65); under auto it is skipped.

Converted models live in ``$GALTOOLS_CACHE_DIR/onnx`` (default ``~/.cache/galtools``), written atomically, so that
the array tasks of one Slurm job convert at most once each and never read half a file.  Each has a record of what it
was made from (galtools.embed.cache): a file that does not match its record, the model's sha256 or the calibration
sample is never used, but made again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

from galtools.embed.cache import CacheEntry, write_atomically
from galtools.errors import BadData, GalError

CACHE_ENV = "GALTOOLS_CACHE_DIR"
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "auto")
CHECKED = ("bf16", "int8")            # the precisions used only after the parity check
CONVERSION_TAG = "fp16-v1"            # change when a conversion changes, so that old cached files are not reused
INT8_TAG = "int8-v1"
AUTO_TAG = "auto-v1"
COSINE_FLOOR = 0.99
OVERLAP_FLOOR = 0.9
NEIGHBOURS = 10
SAMPLE_ROWS = 256                     # cutouts for calibration, the parity check and auto's timing
CALIBRATION_BATCH = 32
BF16_CONFIG = "mlas.enable_gemm_fastmath_arm64_bfloat16"


class PrecisionRefused(BadData):
    """A lower precision that does not reproduce the fp32 embeddings closely enough on this model (exit 65)."""


def cache_dir(environ=None) -> str:
    """``$GALTOOLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/galtools``, else ``~/.cache/galtools``."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        return environ[CACHE_ENV]
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "galtools")


def cached_path(sha256: str, folder: str, tag: str = CONVERSION_TAG) -> str:
    return os.path.join(folder, "onnx", f"{sha256}.{tag}.onnx")


def _load_onnx(model_bytes: bytes, path_for_messages: str, precision: str):
    try:
        import onnx
    except ImportError as exc:
        raise GalError(f"--precision {precision} needs the 'onnx' package to convert {path_for_messages} once "
                       f"({exc.name} is not installed)",
                       "pip install onnx (the converted model is cached, later runs do not need it), "
                       "or use --precision fp32") from None
    try:
        return onnx.load_from_string(model_bytes)
    except Exception as exc:   # protobuf's DecodeError and friends: the file is not an ONNX model
        raise BadData(f"{path_for_messages}: not a readable ONNX model ({' '.join(str(exc).split())[:120]})",
                      "the file is damaged; re-export it with 'gal-train export'") from None


# ------------------------------------------------------------------------------------------------------------ fp16

def convert_to_fp16(model_bytes: bytes, path_for_messages: str) -> bytes:
    """The fp16 graph of a serialized fp32 model, inputs and outputs kept float32."""
    model = _load_onnx(model_bytes, path_for_messages, "fp16")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    return converted.SerializeToString()


def fp16_model(model_path: str, sha256: str, folder: str | None = None, log=None):
    """A path to the cached fp16 model of ``model_path`` (made now if needed), or its bytes when the cache cannot
    be written."""
    folder = cache_dir() if folder is None else folder
    entry = CacheEntry(cached_path(sha256, folder), sha256, CONVERSION_TAG)
    if entry.usable(log, "fp16"):
        return entry.path
    with open(model_path, "rb") as handle:
        converted = convert_to_fp16(handle.read(), model_path)
    return entry.store(converted, log, "fp16")


# ------------------------------------------------------------------------------------------------------------ int8

def int8_tag(cpu=None) -> str:
    """CPUs without VNNI multiply uint8 by int8 in 16-bit sums that can saturate: there the weights keep 7 bits
    (ONNX Runtime's ``reduce_range``), a different model, so a different cache name."""
    cpu = cpu_description() if cpu is None else cpu
    reduce = cpu["arch"] in ("x86_64", "amd64") and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & set(cpu["flags"]))
    return INT8_TAG + ("-r7" if reduce else "")


def quantize_int8(model_bytes: bytes, sample: np.ndarray, path_for_messages: str, reduce_range: bool = False) -> bytes:
    """ONNX Runtime's static QDQ quantization of a serialized fp32 encoder, activation ranges calibrated on
    ``sample`` (preprocessed cutouts, float32 (n, bands, S, S))."""
    _load_onnx(model_bytes, path_for_messages, "int8")   # the onnx package is there and the file is a model
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from galtools.embed.model import INPUT_NAME

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._batches = iter([{INPUT_NAME: np.ascontiguousarray(sample[lo:lo + CALIBRATION_BATCH])}
                                  for lo in range(0, len(sample), CALIBRATION_BATCH)])

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="galtools-int8-") as folder:
        source, prepared, target = (os.path.join(folder, name) for name in ("in.onnx", "pre.onnx", "int8.onnx"))
        with open(source, "wb") as handle:
            handle.write(model_bytes)
        # shape inference and ONNX Runtime's basic fusions first, as ONNX Runtime's quantization guide asks
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        with open(target, "rb") as handle:
            return handle.read()


CALIBRATION_RULE = f"every other cutout of the first {SAMPLE_ROWS} of the input, preprocessed"


def calibration_checksum(sample: np.ndarray) -> str:
    """sha256 of the calibration cutouts (float32, C order, their shape included): what an int8 model is keyed by."""
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    digest = hashlib.sha256(f"float32{list(sample.shape)}".encode())
    digest.update(sample.tobytes())
    return digest.hexdigest()


def int8_cache_tag(calibration_sha256: str, cpu=None) -> str:
    """The int8 conversion's name in the cache: the CPU's variant and the calibration sample."""
    return f"{int8_tag(cpu)}.cal-{calibration_sha256[:16]}"


def int8_model(model_path: str, sha256: str, sample: np.ndarray, folder: str | None = None, log=None,
               calibration_sha256: str | None = None):
    """A path to the cached int8 model of ``model_path`` calibrated on ``sample`` (made now if there is none), or its
    bytes when the cache cannot be written."""
    folder = cache_dir() if folder is None else folder
    calibration = calibration_sha256 or calibration_checksum(sample)
    tag = int8_tag()
    entry = CacheEntry(cached_path(sha256, folder, int8_cache_tag(calibration)), sha256, tag, calibration)
    if entry.usable(log, "int8"):
        return entry.path
    if log:
        log.info(f"quantizing the model to int8, calibrated on {len(sample)} cutouts (once; then cached)")
    with open(model_path, "rb") as handle:
        converted = quantize_int8(handle.read(), sample, model_path, reduce_range=tag.endswith("-r7"))
    return entry.store(converted, log, "int8")


INT8_FAST = ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "asimddp")   # int8 dot products in hardware
HINT_ROWS = 10_000       # fp32 runs at least this long on such a CPU end with a hint about --precision auto


def int8_hint(cpu=None) -> str | None:
    """A one-line hint for an fp32 run on a CPU with int8 dot-product instructions, or None."""
    cpu = cpu_description() if cpu is None else cpu
    fast = [flag for flag in INT8_FAST if flag in cpu["flags"]]
    if not fast:
        return None
    return (f"this CPU has int8 dot products ({fast[0]}): --precision auto measures int8 against fp32 here and uses "
            "it when it is faster and passes the parity check (several times faster on such CPUs)")


# ------------------------------------------------------------------------------------------------------------ bf16

def bf16_support(cpu=None) -> tuple[bool, str]:
    """(whether this CPU and ONNX Runtime compute bf16 matrix products, why not)."""
    cpu = cpu_description() if cpu is None else cpu
    if cpu["arch"] not in ("aarch64", "arm64"):
        return False, (f"ONNX Runtime's CPU provider has bf16 kernels only on ARM64 (fastmath GEMM), this is "
                       f"{cpu['arch']} ({cpu['model']})")
    if "bf16" not in cpu["flags"]:
        return False, f"this ARM64 CPU ({cpu['model']}) has no BF16 instructions"
    return True, ""


# ------------------------------------------------------------------------------------------------------------ CPU

VECTOR_EXTENSIONS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2")


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """{'model', 'arch', 'flags'} of this CPU: its name and the vector extensions that matter to the kernels."""
    model, flags = platform.processor() or "unknown CPU", set()
    with contextlib.suppress(OSError):   # no /proc/cpuinfo (macOS, Windows): the name only
        with open(cpuinfo) as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and model in ("unknown CPU", platform.processor()):
                    model = " ".join(value.split())
                elif key in ("flags", "features") and not flags:
                    flags = set(value.split())
    return {"model": model, "arch": platform.machine().lower(),
            "flags": [f for f in VECTOR_EXTENSIONS if f in flags]}


def cpu_key(cpu=None) -> str:
    """A short name for what an optimised graph or a measured choice depends on: CPU, extensions, ONNX Runtime."""
    import onnxruntime as ort

    cpu = cpu_description() if cpu is None else cpu
    text = json.dumps([cpu["model"], cpu["arch"], cpu["flags"], ort.__version__])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def optimized_entry(sha256: str, folder: str, precision_tag: str, calibration_sha256: str | None = None) -> CacheEntry:
    """Where ONNX Runtime's optimised graph of a model (layouts and fusions for this CPU) is kept, and what it must
    have been made from."""
    kind = f"{precision_tag}.opt-{cpu_key()}"
    return CacheEntry(os.path.join(folder, "onnx", f"{sha256}.{kind}.onnx"), sha256, kind, calibration_sha256)


# ------------------------------------------------------------------------------------------------------------ parity

@dataclass(frozen=True)
class Parity:
    """How closely a lower precision reproduces the fp32 embeddings of the same cutouts."""

    precision: str
    rows: int
    cosine_min: float
    cosine_median: float
    overlap: float          # mean share of the k nearest neighbours (cosine, within the sample) both agree on
    k: int

    @property
    def passed(self) -> bool:
        return self.cosine_min >= COSINE_FLOOR and self.overlap >= OVERLAP_FLOOR

    def figures(self) -> str:
        return (f"cosine min {self.cosine_min:.4f} (>= {COSINE_FLOOR}), kNN overlap@{self.k} {self.overlap:.3f} "
                f"(>= {OVERLAP_FLOOR})")

    def summary(self) -> str:
        return f"{self.precision} against fp32 on {self.rows} cutouts: {self.figures()}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float64)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-300)


def knn_sets(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k nearest other rows by cosine similarity (exact; ties broken by index)."""
    unit = _unit(embeddings)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    return np.argsort(-similarity, axis=1, kind="stable")[:, :k]


def parity(precision: str, reference: np.ndarray, candidate: np.ndarray, k: int = NEIGHBOURS) -> Parity:
    """Cosine per embedding and kNN overlap@k of ``candidate`` against the fp32 ``reference`` (same rows)."""
    if reference.shape != candidate.shape or len(reference) == 0:
        raise ValueError(f"parity needs two equal, non-empty sets of embeddings ({reference.shape}, {candidate.shape})")
    cosine = (_unit(reference) * _unit(candidate)).sum(axis=1)
    cosine = np.where(np.isfinite(cosine), cosine, -1.0)
    k = min(k, len(reference) - 1)
    if k < 1:
        overlap = 1.0
    else:
        a, b = knn_sets(reference, k), knn_sets(candidate, k)
        overlap = float(np.mean([len(set(a[i]) & set(b[i])) for i in range(len(a))]) / k)
    return Parity(precision, len(reference), float(cosine.min()), float(np.median(cosine)), overlap, k)


def refuse(result: Parity, source: str) -> PrecisionRefused:
    return PrecisionRefused(f"--precision {result.precision} fails the parity check against fp32 on {source}: "
                            f"{result.figures()}",
                            "use --precision fp32, or auto, which takes fp32 when nothing faster passes")


# ------------------------------------------------------------------------------------------------------------ auto

def auto_path(sha256: str, folder: str, device: str, threads: int, batch_size: int) -> str:
    name = f"{sha256}.{AUTO_TAG}.{cpu_key()}.{device}.t{threads}.b{batch_size}.json"
    return os.path.join(folder, "auto", name)


def read_auto_choice(path: str) -> dict | None:
    """A choice measured before for this model and machine, or None (missing or unreadable: measure again)."""
    try:
        with open(path) as handle:
            choice = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(choice, dict) or choice.get("precision") not in PRECISIONS[:4]:
        return None
    return choice


def write_auto_choice(path: str, choice: dict, log=None) -> None:
    data = json.dumps(choice, indent=1, sort_keys=True).encode()
    try:
        write_atomically(path, data)
    except OSError:
        if log:
            log.debug(f"cannot cache the --precision auto choice in {os.path.dirname(path)}; it is measured again "
                      "next time")

"""``--precision fp16``: a float16 copy of the fp32 encoder, made once and cached by the model's sha256.

The weights and activations become float16; the graph's input ``image`` and output ``embedding`` stay float32
(Cast nodes at the edges), so the caller feeds and receives exactly what the fp32 model takes and gives.  The
conversion is ONNX Runtime's own (``onnxruntime.transformers.float16``, which needs the ``onnx`` package); it runs
on the first fp16 use of a model and the result is kept in the user cache, so later runs (and every Slurm array
task after the first) only load it.
"""
from __future__ import annotations

import os
import tempfile

from galtools.errors import BadData, GalError

CACHE_ENV = "GALTOOLS_CACHE_DIR"
CONVERSION_TAG = "fp16-v1"   # change when the conversion changes, so that old cached files are not reused


def cache_dir(environ=None) -> str:
    """``$GALTOOLS_CACHE_DIR``, else ``$XDG_CACHE_HOME/galtools``, else ``~/.cache/galtools``."""
    environ = os.environ if environ is None else environ
    if environ.get(CACHE_ENV):
        return environ[CACHE_ENV]
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "galtools")


def cached_path(sha256: str, folder: str) -> str:
    return os.path.join(folder, "onnx", f"{sha256}.{CONVERSION_TAG}.onnx")


def convert_to_fp16(model_bytes: bytes, path_for_messages: str) -> bytes:
    """The fp16 graph of a serialized fp32 model, inputs and outputs kept float32."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:
        raise GalError(f"--precision fp16 needs the 'onnx' package to convert {path_for_messages} once "
                       f"({exc.name} is not installed)",
                       "pip install onnx (the converted model is cached, later runs do not need it), "
                       "or use --precision fp32") from None
    try:
        model = onnx.load_from_string(model_bytes)
    except Exception as exc:   # protobuf's DecodeError and friends: the file is not an ONNX model
        raise BadData(f"{path_for_messages}: not a readable ONNX model ({' '.join(str(exc).split())[:120]})",
                      "the file is damaged; re-export it with 'gal-train export'") from None
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    return converted.SerializeToString()


def fp16_model(model_path: str, sha256: str, folder: str | None = None, log=None):
    """A path to the cached fp16 model of ``model_path`` (made now if needed), or its bytes when the cache cannot
    be written (read-only home on a cluster): the run still works, it just converts again next time."""
    folder = cache_dir() if folder is None else folder
    target = cached_path(sha256, folder)
    if os.path.isfile(target):
        if log:
            log.debug(f"using the cached fp16 model {target}")
        return target
    with open(model_path, "rb") as handle:
        converted = convert_to_fp16(handle.read(), model_path)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".fp16-", suffix=".onnx.tmp", dir=os.path.dirname(target))
        with os.fdopen(handle, "wb") as out:
            out.write(converted)
        os.replace(tmp, target)   # atomic: array tasks converting at once each write a whole file, last one wins
    except OSError as exc:
        if log:
            log.warning(f"cannot cache the fp16 model in {os.path.dirname(target)} ({exc.strerror}); "
                        f"set {CACHE_ENV} to a writable folder to convert only once")
        if "tmp" in locals() and os.path.exists(tmp):
            os.unlink(tmp)
        return converted
    if log:
        log.info(f"converted the model to fp16, cached as {target}")
    return target

"""Cached conversions of a model (fp16, int8, ONNX Runtime's optimised graphs), keyed and checked by what they were
made from.

Each cached file ``NAME.onnx`` has a record ``NAME.onnx.json`` beside it::

    {"source_sha256": the encoder.onnx it was made from, "kind": the conversion (and its version),
     "calibration_sha256": int8 only, the checksum of the cutouts it was calibrated on,
     "sha256": the cached file's own checksum}

A cached file is used only when its record exists, names the model, conversion and calibration asked for, and the
file's checksum is the recorded one; otherwise it is not used and is made again (replaced where the cache can be
written, in memory where it cannot).  So a file copied under another model's name, one made from other calibration
cutouts, a stale or damaged file, or one without a record never runs: what a model computes does not depend on what
the cache holds.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from galtools.embed.model import file_sha256
from galtools.io.files import write_bytes

RECORD_SUFFIX = ".json"
_log = logging.getLogger("galtools")


def _bytes_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def write_atomically(target: str, data: bytes) -> None:
    """``data`` to ``target`` through a temporary file in the same folder (array tasks writing at once each write a
    whole file; the last one wins).  Raises OSError when the folder cannot be written."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    write_bytes(target, data)


@dataclass(frozen=True)
class CacheEntry:
    """A cached file and what it must have been made from."""

    path: str
    source_sha256: str
    kind: str
    calibration_sha256: str | None = None

    @property
    def record_path(self) -> str:
        return self.path + RECORD_SUFFIX

    def expected(self) -> dict:
        record = {"source_sha256": self.source_sha256, "kind": self.kind}
        if self.calibration_sha256 is not None:
            record["calibration_sha256"] = self.calibration_sha256
        return record

    def problem(self) -> str | None:
        """Why the cached file may not be used (None: it may), or "missing"."""
        if not os.path.isfile(self.path):
            return "missing"
        try:
            with open(self.record_path) as handle:
                record = json.load(handle)
        except FileNotFoundError:
            return "has no record of what it was made from"
        except (OSError, ValueError):
            return "has an unreadable record"
        if not isinstance(record, dict):
            return "has an unreadable record"
        for key, wanted in self.expected().items():
            if record.get(key) != wanted:
                return f"was made from {key.replace('_', ' ')} {str(record.get(key))[:16]}, not {wanted[:16]}"
        if file_sha256(self.path) != record.get("sha256"):
            return "is not the file its record describes (changed since it was made)"
        return None

    def usable(self, log=None, what: str = "optimised") -> bool:
        """Whether the cached file exists and is what this entry asks for.  An unusable one is left for ``store``
        to replace atomically (removing it could remove another task's conversion between its file and its
        record)."""
        problem = self.problem()
        if problem is None:
            (log or _log).debug(f"using the cached {what} model {self.path} (checked against its record)")
            return True
        if problem != "missing":
            (log or _log).warning(f"the cached {what} model {self.path} {problem}: not used, made again")
        return False

    def record(self, sha256: str | None = None) -> None:
        """Write the record of the file now at ``path`` (its checksum computed unless given).  Raises OSError."""
        record = dict(self.expected(), sha256=sha256 or file_sha256(self.path))
        write_atomically(self.record_path, json.dumps(record, indent=1, sort_keys=True).encode())

    def store(self, data: bytes, log=None, what: str = "converted"):
        """Keep ``data`` as this entry (file, then record); returns the path, or ``data`` itself when the cache
        cannot be written (a read-only or shared cache: the run still works, it converts again next time)."""
        try:
            write_atomically(self.path, data)
            self.record(_bytes_sha256(data))
        except OSError as exc:   # what is there stays (it may be another task's conversion), unused unless it matches
            if log:
                log.warning(f"cannot cache the {what} model in {os.path.dirname(self.path)} ({exc.strerror}); "
                            "set GALTOOLS_CACHE_DIR to a writable folder to convert only once")
            return data
        if log:
            log.info(f"converted the model to {what}, cached as {self.path}")
        return self.path

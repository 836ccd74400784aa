"""Where a table comes from: a path, stdin (``-``), a folder or a glob of parts; and what format its bytes are."""
from __future__ import annotations

import contextlib
import glob
import io
import os
import re
import shutil
import sys
import tempfile

from galtools.errors import BadData, InputMissing

FITS, PARQUET, ARROW_FILE, ARROW_STREAM, HDF5 = "fits", "parquet", "arrow-file", "arrow-stream", "hdf5"
TABLE_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".parquet", ".pq", ".arrow", ".feather", ".arrows",
                  ".h5", ".hdf5", ".hdf")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"   # at offset 0, or 512, 1024, 2048, ... after a user block
_GLOB_CHARS = set("*?[")


def table_format(head: bytes) -> str | None:
    """The table format the first bytes of a file announce, or None for anything else (text, CSV, ...)."""
    if head.startswith(b"SIMPLE  =") or head.startswith(b"\x1f\x8b"):
        return FITS
    if head.startswith(b"PAR1"):
        return PARQUET
    if head.startswith(b"ARROW1"):
        return ARROW_FILE
    if head.startswith(b"\xff\xff\xff\xff"):
        return ARROW_STREAM
    if head.startswith(HDF5_SIGNATURE):
        return HDF5
    return None


_FORMAT_BY_SUFFIX = ((".fits", "FITS"), (".fit", "FITS"), (".fits.gz", "FITS"), (".fit.gz", "FITS"),
                     (".parquet", "Parquet"), (".pq", "Parquet"), (".arrow", "Arrow"), (".feather", "Arrow"),
                     (".arrows", "Arrow stream"), (".h5", "HDF5"), (".hdf5", "HDF5"), (".hdf", "HDF5"))


def named_format(name: str) -> str | None:
    """The table format a file's name announces (``x.parquet``: Parquet), or None."""
    lower = name.lower()
    return next((fmt for suffix, fmt in sorted(_FORMAT_BY_SUFFIX, key=lambda p: -len(p[0]))
                 if lower.endswith(suffix)), None)


def sniff(head: bytes, name: str) -> str:
    """The table format from the first bytes of a file."""
    named = named_format(name)
    if not head:
        if named:
            raise BadData(f"{name}: the file is empty (0 bytes), not a {named} table",
                          "the job writing it probably failed; re-create it")
        raise BadData(f"{name}: the input is empty", "check that the command writing it succeeded")
    fmt = table_format(head)
    if fmt is not None:
        return fmt
    shown = head[:12].decode("latin-1").encode("unicode_escape").decode()
    if named:
        raise BadData(f"{name}: not a {named} file, though named so (it starts with '{shown}')",
                      "the file is damaged or mislabelled; re-create it")
    raise BadData(f"{name}: not a FITS, Parquet or Arrow table, nor HDF5 (it starts with '{shown}')",
                  "give a file written by galtools, or make one with gal-pack")


def sniff_path(path: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(16)
        try:
            return sniff(head, path)
        except BadData:
            if head and _has_hdf5_userblock(handle):
                return HDF5
            raise


def _has_hdf5_userblock(handle) -> bool:
    """HDF5 puts its signature after a user block of 512, 1024, 2048, ... bytes when the file has one."""
    size = os.fstat(handle.fileno()).st_size
    offset = 512
    while offset + len(HDF5_SIGNATURE) <= size:
        handle.seek(offset)
        if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return True
        offset *= 2
    return False


_NUMBERED_PART = re.compile(r"^(?P<stem>.*?)(?P<index>\d+)-of-(?P<count>\d+)(?P<tail>\.[^/]*)?$")


def check_numbered_parts(source: str, parts: list[str]) -> None:
    """Parts named ``...-i-of-n...`` (what ``{shard}`` in -o makes) must all be there: a folder or glob missing
    one would read as a whole table without it. BadData naming the first missing part."""
    groups: dict[tuple, set] = {}
    widths: dict[tuple, int] = {}
    for path in parts:
        match = _NUMBERED_PART.match(os.path.basename(path))
        if match is None:
            continue
        key = (os.path.dirname(path), match["stem"], int(match["count"]), match["tail"] or "")
        groups.setdefault(key, set()).add(int(match["index"]))
        widths[key] = len(match["index"])
    for (folder, stem, count, tail), present in groups.items():
        missing = [i for i in range(count) if i not in present]
        if missing:
            first = os.path.join(folder, f"{stem}{missing[0]:0{widths[(folder, stem, count, tail)]}d}-of-{count}{tail}")
            raise BadData(f"{source}: {len(missing)} of {count} parts missing (first: {first})",
                          f"wait for or re-run the missing shard(s) (--shard {missing[0]}/{count}); "
                          "a table read without them would lack their rows")


def expand_parts(source: str) -> list[str]:
    """The files a source names: itself, the table files in a folder, or the matches of a glob, in sorted order.
    Numbered parts (``part-3-of-8``) must be complete (see check_numbered_parts)."""
    if os.path.isdir(source):
        parts = sorted(os.path.join(source, name) for name in os.listdir(source)
                       if name.lower().endswith(TABLE_SUFFIXES) and not name.startswith("."))
        if not parts:
            raise InputMissing(f"{source}: folder holds no table files", f"expected files ending {', '.join(TABLE_SUFFIXES[:6])}")
        check_numbered_parts(source, parts)
        return parts
    if _GLOB_CHARS & set(source) and not os.path.exists(source):
        parts = sorted(glob.glob(source))
        if not parts:
            raise InputMissing(f"{source}: no file matches", "check the pattern (quote it so the shell passes it unchanged)")
        check_numbered_parts(source, parts)
        return parts
    # A CFITSIO extended name (file.fits[CATALOG][col > 3]) names a file that exists without its brackets.
    base = source.split("[", 1)[0]
    if not os.path.exists(base):
        raise InputMissing(f"{source}: no such file", "check the path")
    if os.path.isfile(base) and not os.access(base, os.R_OK):
        raise InputMissing(f"{source}: permission denied", "check the file's permissions")
    return [source]


class _PrefixedStdin(io.RawIOBase):
    """stdin with the bytes already read for sniffing put back in front."""

    def __init__(self, prefix: bytes, raw):
        self._prefix = prefix
        self._raw = raw

    def readable(self):
        return True

    def readinto(self, buffer):
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        data = self._raw.read1(len(buffer)) if hasattr(self._raw, "read1") else self._raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def open_stdin() -> tuple[str, object]:
    """Sniff stdin. Returns (format, stream) for an Arrow stream, else (format, path of a spooled temporary copy).

    Parquet and FITS need random access, so they are copied to a temporary file first (silently).
    """
    raw = sys.stdin.buffer
    head = b""
    while len(head) < 16:
        chunk = raw.read1(16 - len(head)) if hasattr(raw, "read1") else raw.read(16 - len(head))
        if not chunk:
            break
        head += chunk
    fmt = sniff(head, "stdin")
    stream = io.BufferedReader(_PrefixedStdin(head, raw), buffer_size=1 << 20)
    if fmt == ARROW_STREAM:
        return fmt, stream
    suffix = {FITS: ".fits", PARQUET: ".parquet", HDF5: ".h5"}.get(fmt, ".arrow")
    return fmt, spool_to_file(stream, suffix)


def spool_to_file(stream, suffix: str) -> str:
    handle = tempfile.NamedTemporaryFile(prefix="galtools-stdin-", suffix=suffix, delete=False)
    with handle:
        shutil.copyfileobj(stream, handle, length=1 << 22)
    _SPOOLED.append(handle.name)
    return handle.name


_SPOOLED: list[str] = []


def remove_spooled() -> None:
    while _SPOOLED:
        with contextlib.suppress(OSError):
            os.unlink(_SPOOLED.pop())


import atexit  # noqa: E402  (registered once the helpers above exist)

atexit.register(remove_spooled)

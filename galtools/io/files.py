"""Atomic writing, the one way every file galtools makes is put in place: written to a temporary file beside its
name, then renamed onto it (``temporary_beside`` and ``put_in_place``; the table outputs of galtools.io.output do
the same over their own lifetime).

    atomic_file(path)          # figures, model heads, ONNX models, indexes, checkpoints: OutputError (74) on failure
    replacing(path)            # the same, OSError left to the caller (a cache that falls back when read-only)
    write_bytes(path, data)    # bytes through ``replacing``
    atomic_folder(path)        # a folder made whole beside its name, then put in its place (gal-view export)
    durable=True               # a file rewritten in place (a labels file): flushed to disk, its mode kept
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile

from galtools.errors import OutputError


NO_SPACE = tuple(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)


def mount_point(path: str) -> str:
    """The mount point of the file system holding ``path`` (or its nearest existing folder)."""
    current = os.path.abspath(path)
    while not os.path.exists(current):
        current = os.path.dirname(current)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current


def is_no_space(exc: BaseException, folder: str | None = None) -> bool:
    """Whether an error means a full disk or quota: by errno, by the text a library copied the errno into
    (pyarrow, fitsio), or, for a library error with neither, by the free space left where it was writing."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in NO_SPACE:
        return True
    text = str(exc)
    if any(os.strerror(code) in text for code in NO_SPACE) or any(f"errno {code}]" in text.lower() for code in NO_SPACE):
        return True
    if exc.errno is None and folder is not None:
        try:
            info = os.statvfs(folder)
        except OSError:
            return False
        return info.f_bavail * info.f_frsize < (1 << 20) or (info.f_files > 0 and info.f_favail == 0)
    return False


def write_failure(exc: OSError, path: str, folder: str | None = None, device: str | None = None) -> OutputError:
    """The one-line error for a failed write of ``path``: a full disk names the file system (or ``device``, for a
    pipe or a device written into), exit 74 either way."""
    folder = folder or os.path.dirname(os.path.abspath(path))
    if is_no_space(exc, None if device else folder):
        return OutputError(f"no space left on {device or mount_point(folder)} while writing {path}",
                           "free some space, raise the quota, or write elsewhere; the partial output was removed")
    detail = exc.strerror or " ".join(str(exc).split())[:120]
    return OutputError(f"cannot write {path}: {detail}", "check free space and permissions")


def usual_mode(path: str) -> None:
    """Give a file made by mkstemp (private, 0600) the mode the user's umask gives new files."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def temporary_beside(path: str, suffix: str | None = None) -> str:
    """A new, empty, private file in ``path``'s folder (so that renaming it onto ``path`` is atomic), named
    ``.NAME.XXXXXXXX.tmpSUFFIX`` (``suffix``: ``path``'s extension unless given).  Raises OSError."""
    folder, name = os.path.split(os.path.abspath(path))
    suffix = os.path.splitext(name)[1] if suffix is None else suffix
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(handle)
    return temporary


def put_in_place(temporary: str, path: str, durable: bool = False) -> None:
    """Rename ``temporary`` onto ``path`` in one step, with the mode the umask gives new files.  ``durable`` (a
    file rewritten in place, whose loss a crash must not cause): the file keeps the mode of the one it replaces,
    and the data and then the folder are flushed to disk, so that the new file exists whole once this returns.
    Raises OSError."""
    if not durable:
        usual_mode(temporary)
        os.replace(temporary, path)
        return
    with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())
    if os.path.exists(path):
        os.chmod(temporary, os.stat(path).st_mode & 0o777)
    else:
        usual_mode(temporary)
    os.replace(temporary, path)
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextlib.contextmanager
def replacing(path: str, durable: bool = False, suffix: str | None = None):
    """Yield a temporary path beside ``path``, put in place (:func:`put_in_place`) when the block succeeds and
    removed whatever happens otherwise.  OSError goes to the caller as it is: for a writer with its own fallback
    (a read-only cache) or message; the tools' files use :func:`atomic_file`."""
    temporary = temporary_beside(path, suffix)
    try:
        yield temporary
        put_in_place(temporary, path, durable)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextlib.contextmanager
def atomic_file(path: str, durable: bool = False):
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` when the block succeeds and
    remove it when it fails, so a killed or failed run never leaves a half-written file.  A failed write is
    OutputError (74), naming the file system when it is full.

        check_output_path(path, overwrite)      # before the work
        with atomic_file(path) as temporary:
            figure.savefig(temporary)
    """
    begun = False
    try:
        with replacing(path, durable) as temporary:
            begun = True
            yield temporary
    except OSError as exc:
        if not begun and not is_no_space(exc):
            raise OutputError(f"cannot write in {os.path.dirname(os.path.abspath(path))}: {exc.strerror}",
                              "check that it exists and is writable") from None
        raise write_failure(exc, path) from None


@contextlib.contextmanager
def atomic_folder(path: str):
    """Yield a new folder beside ``path`` to fill; when the block succeeds it takes the place of ``path`` (a folder
    already there is moved aside first, then removed), and when it fails it is removed.  OutputError (74)."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        building = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    except OSError as exc:
        raise OutputError(f"cannot write in {parent} ({exc.strerror})", "check the permissions") from None
    try:
        yield building
        os.chmod(building, 0o755)
        if os.path.exists(path):
            old = path + f".old-{os.getpid()}"
            os.replace(path, old)
            os.replace(building, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})", "check the disk and permissions") from None
    finally:
        if os.path.exists(building):
            shutil.rmtree(building, ignore_errors=True)


def write_bytes(path: str, data: bytes, durable: bool = False) -> None:
    """``data`` as the file ``path``, written through :func:`replacing` (OSError to the caller)."""
    with replacing(path, durable) as temporary, open(temporary, "wb") as handle:
        handle.write(data)

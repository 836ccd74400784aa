"""Atomic writing of the non-table files the tools make (PNG figures, model heads, ONNX models, indexes)."""
from __future__ import annotations

import contextlib
import errno
import os
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


@contextlib.contextmanager
def atomic_file(path: str):
    """Yield a temporary path beside ``path`` (same suffix); rename it onto ``path`` when the block succeeds and
    remove it when it fails, so a killed or failed run never leaves a half-written file.

        check_output_path(path, overwrite)      # before the work
        with atomic_file(path) as temporary:
            figure.savefig(temporary)
    """
    folder, name = os.path.split(os.path.abspath(path))
    suffix = os.path.splitext(name)[1]
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{suffix}", dir=folder)
    except OSError as exc:
        if is_no_space(exc):
            raise write_failure(exc, path) from None
        raise OutputError(f"cannot write in {folder}: {exc.strerror}", "check that it exists and is writable") from None
    os.close(handle)
    try:
        yield temporary
        usual_mode(temporary)
        os.replace(temporary, path)
    except OSError as exc:
        raise write_failure(exc, path) from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)

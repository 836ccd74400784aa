"""Atomic writing of the non-table files the tools make (PNG figures, model heads, ONNX models, indexes)."""
from __future__ import annotations

import contextlib
import os
import tempfile

from galtools.errors import OutputError


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
        raise OutputError(f"cannot write in {folder}: {exc.strerror}", "check that it exists and is writable") from None
    os.close(handle)
    try:
        yield temporary
        usual_mode(temporary)
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", "check free space and permissions") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)

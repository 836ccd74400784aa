"""Writing PNG figures the galtools way: refuse to clobber without --overwrite, fail early on a missing folder,
write to a temporary file and rename, so a failed plot leaves nothing behind."""
from __future__ import annotations

import os
import tempfile

from galtools.errors import GalError, OutputError


def check_figure_path(path: str, overwrite: bool) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {path}: folder {os.path.dirname(path) or '.'} does not exist",
                          "create it first (mkdir -p)")
    if os.path.exists(path) and not overwrite:
        raise GalError(f"{path} already exists", "pass --overwrite to replace it")


def save_atomically(path: str, write) -> None:
    """``write(temporary_path)`` then rename onto ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".png", dir=folder)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}", "check free space and permissions") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)

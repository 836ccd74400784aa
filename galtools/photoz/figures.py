"""PNG figures of the head tools (gal-photoz, gal-classify): checked before the work, written atomically.

Thin wrappers over galtools.io's ``check_output_path`` and ``atomic_file``, kept because gal-classify uses them.
"""
from __future__ import annotations

from galtools.io import atomic_file, check_output_path


def check_figure_path(path: str, overwrite: bool) -> None:
    """Refuse an existing file without --overwrite (exit 1) and a missing folder (exit 74), before any work."""
    check_output_path(path, overwrite)


def save_atomically(path: str, write) -> None:
    """``write(temporary_path)``, then rename it onto ``path``; nothing is left behind on failure."""
    with atomic_file(path) as temporary:
        write(temporary)

"""Errors every galtools command reports the same way.

A library function raises one of these; the CLI layer (galtools.cli.command) turns it into the single line
``gal-xxx: error: <what> (<hint>)`` on stderr and the exit code below.  The codes follow sysexits(3) so that
Makefiles and Slurm scripts can tell bad data from a missing file from a missing GPU.
"""
from __future__ import annotations

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_DATAERR = 65      # NaNs where not allowed, wrong band count, dimension mismatch, stale index
EXIT_NOINPUT = 66      # an input file is missing or unreadable
EXIT_UNAVAILABLE = 69  # the requested device (e.g. --device cuda) is not usable
EXIT_IOERR = 74        # cannot write an output (missing folder, disk full, permission)
EXIT_TEMPFAIL = 75     # interrupted on purpose (SIGTERM/SIGUSR1): checkpoint written, requeue me
EXIT_SIGNAL_BASE = 128  # killed by signal N: 128 + N (SIGHUP 129, SIGINT 130, SIGTERM 143), as a shell reports it


def brief(text: object, limit: int = 100) -> str:
    """Another library's message on one line, cut at a word boundary (with an ellipsis) when longer than ``limit``."""
    words = " ".join(str(text).split())
    if len(words) <= limit:
        return words
    cut = words[:limit].rsplit(" ", 1)[0] if " " in words[:limit] else words[:limit]
    return cut.rstrip(" ,;:.(") + " ..."


_CONTROL = "".join(chr(c) for c in (*range(0x20), *range(0x7f, 0xa0)))
_ESCAPES = {ord(c): repr(c)[1:-1] if c not in "\n\t" else c for c in _CONTROL}
_ESCAPES_ALL = {ord(c): repr(c)[1:-1] for c in _CONTROL}


def printable(text: object, keep_lines: bool = False) -> str:
    """``text`` safe for a terminal: C0 and C1 control characters (ESC, CR, BEL, CSI, ...) written as Python escapes
    (``\\x1b``), so that a file name or a byte read from a bad input cannot move the cursor, retitle or clear the
    terminal. ``keep_lines`` keeps newlines and tabs (for log records of several lines)."""
    return str(text).translate(_ESCAPES if keep_lines else _ESCAPES_ALL)


class GalError(Exception):
    """A problem the user can fix: ``what`` names it, ``hint`` says how to fix it."""

    exit_code = EXIT_FAILURE

    def __init__(self, what: str, hint: str | None = None):
        super().__init__(what)
        self.what = what
        self.hint = hint

    def one_line(self) -> str:
        text = self.what if not self.hint else f"{self.what} ({self.hint})"
        return " ".join(text.split())  # one line, whatever the message held


class UsageProblem(GalError):
    exit_code = EXIT_USAGE


class BadData(GalError):
    exit_code = EXIT_DATAERR


class InputMissing(GalError):
    exit_code = EXIT_NOINPUT


class DeviceUnavailable(GalError):
    exit_code = EXIT_UNAVAILABLE


class OutputError(GalError):
    exit_code = EXIT_IOERR


class Requeue(GalError):
    exit_code = EXIT_TEMPFAIL


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt (so every ``with`` removes what it was writing,
    and no ``except Exception`` swallows it), then the command exits 128 + the signal number."""

    def __init__(self, signum: int, name: str):
        super().__init__(name)
        self.signum = signum
        self.name = name

    @property
    def exit_code(self) -> int:
        return EXIT_SIGNAL_BASE + self.signum

"""Running a galtools command: every way a run can end turned into one stderr line and a documented exit code
(errors.py's table), and what the run knows of itself (its tool's name, -q and -v).

Kept light on imports (click only); galtools.cli.common re-exports what commands use from here.
"""
from __future__ import annotations

import logging
import os
import sys

import click

from galtools.cli.ending import exit_past_busy_threads, install_stop_signals, no_space_line
from galtools.errors import EXIT_IOERR, EXIT_USAGE, GalError, Terminated, printable

log = logging.getLogger("galtools")
state = {"quiet": False, "verbose": 0, "tool": "galtools"}


def _wants_traceback(args) -> bool:
    args = sys.argv[1:] if args is None else list(args)
    return any(a in ("-v", "--verbose", "-vv") for a in args)


def _say_error(tool: str, text: str) -> None:
    try:
        sys.stderr.write(f"{tool}: error: {printable(text)}\n")   # no escape sequence from a bad input reaches the terminal
        sys.stderr.flush()
    except (OSError, ValueError):   # stderr itself is gone (a closed pipe or terminal): nowhere left to report
        return


def _silence_stdout() -> None:
    """After a closed pipe (``| head``), point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):   # no real stdout (e.g. under CliRunner): nothing to silence
        return


_BEFORE_START = "stopped by SIGINT (Ctrl-C) before it started; nothing was written"

# click 8.2 raises NoArgsIsHelpError for a bare group; click 8.1 prints the overview itself and exits 0.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def run_main(command: click.BaseCommand, tool: str, args=None, **extra) -> None:
    """Run a click command, turning every way it can end into one stderr line and a documented exit code."""
    state["tool"] = tool
    install_stop_signals()
    try:
        code = command.main(args=args, prog_name=tool, standalone_mode=False, **extra)
        code = code if isinstance(code, int) else 0
        sys.stdout.flush()
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort as exc:   # click's: Ctrl-C while parsing the options, or end of input
        if isinstance(exc.__cause__, EOFError):
            _say_error(tool, "aborted: the input ended")
            code = 1
        else:
            _say_error(tool, _BEFORE_START)
            code = 130
    except _NO_ARGS_IS_HELP as exc:   # a bare group (click >= 8.2): its overview, as a usage error
        sys.stderr.write(exc.ctx.get_help() + "\n")
        code = EXIT_USAGE
    except click.ClickException as exc:
        _say_error(tool, f"{' '.join(exc.format_message().split())} (see '{tool} --help')")
        code = exc.exit_code if exc.exit_code else EXIT_USAGE
    except GalError as exc:
        if _wants_traceback(args):
            _print_traceback()
        _say_error(tool, exc.one_line())
        code = exc.exit_code
    except (BrokenPipeError, PipeClosed):
        _silence_stdout()
        code = 0
    except KeyboardInterrupt:   # before the command started (while parsing its options)
        _say_error(tool, _BEFORE_START)
        exit_past_busy_threads(130)
        code = 130
    except Terminated as exc:
        how = " (Ctrl-C)" if exc.name == "SIGINT" else ""
        _say_error(tool, f"stopped by {exc.name}{how}; the partial output was removed")
        exit_past_busy_threads(exc.exit_code)
        code = exc.exit_code
    except MemoryError:
        _say_error(tool, "out of memory (use a smaller --batch-size, or --shard the input)")
        code = 1
    except OSError as exc:
        from galtools.io.files import is_no_space

        if not is_no_space(exc):
            _internal_error(tool, exc, args)
            code = 1
        else:
            _say_error(tool, no_space_line(exc))
            _silence_stdout()   # what is still buffered for stdout cannot go anywhere either
            code = EXIT_IOERR
    except Exception as exc:  # a bug: say so in one line, traceback on -v
        _internal_error(tool, exc, args)
        code = 1
    sys.exit(code)


def _print_traceback() -> None:
    """-v: the traceback, its lines kept and the control characters of the messages in it escaped."""
    import traceback

    try:
        sys.stderr.write(printable(traceback.format_exc(), keep_lines=True))
    except (BrokenPipeError, ValueError):
        return


def _internal_error(tool: str, exc: BaseException, args) -> None:
    """A bug: say so in one line, traceback on -v."""
    if _wants_traceback(args):
        _print_traceback()
    _say_error(tool, f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                     "(rerun with -v for the traceback, and please report it)")


class PipeClosed(Exception):
    """A closed stdout pipe, carried past click, which would otherwise turn EPIPE into exit 1."""


def is_quiet() -> bool:
    return state["quiet"]


def is_verbose() -> bool:
    return state["verbose"] > 0


def tool_name() -> str:
    """The running tool's name (gal-knn, ...): from the command being invoked, else the one run_main ran."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        return getattr(ctx.find_root().command, "tool_name", None) or state["tool"]
    return state["tool"]

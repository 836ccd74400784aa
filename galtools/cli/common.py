"""What every galtools command shares: options, help with an example, errors and exit codes, progress, pipes.

Kept light on imports (click only): ``gal-xxx --help`` must start fast and never import torch, pyarrow or rich.
"""
from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading

import click

from galtools import __version__
from galtools.errors import EXIT_IOERR, EXIT_USAGE, GalError, Terminated

log = logging.getLogger("galtools")
_state = {"quiet": False, "verbose": 0, "tool": "galtools"}


# ----------------------------------------------------------------------------------------------- error handling

def _wants_traceback(args) -> bool:
    args = sys.argv[1:] if args is None else list(args)
    return any(a in ("-v", "--verbose", "-vv") for a in args)


def _say_error(tool: str, text: str) -> None:
    try:
        sys.stderr.write(f"{tool}: error: {text}\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):   # stderr itself is gone: nowhere left to report
        return


def _silence_stdout() -> None:
    """After a closed pipe (``| head``), point stdout at /dev/null so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):   # no real stdout (e.g. under CliRunner): nothing to silence
        return


STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


_HANDLER_PID: list[int] = []   # the process that installed the handlers (forked workers inherit them)


def _on_stop_signal(signum, frame) -> None:
    if _HANDLER_PID and os.getpid() != _HANDLER_PID[0]:   # a forked worker: die as it would have by default
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    for other in STOP_SIGNALS:            # a second signal must not interrupt the clean-up of the first
        signal.signal(other, signal.SIG_IGN)
    raise Terminated(signum, signal.Signals(signum).name)


def _install_stop_signals() -> None:
    """SIGTERM (Slurm's time limit, preemption, kill) and SIGHUP (a closed terminal) unwind the command as Ctrl-C
    does, so every output being written is removed. A signal the parent ignores (nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        return
    _HANDLER_PID[:] = [os.getpid()]
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _on_stop_signal)


def _no_space_line(exc: OSError) -> str:
    """A full disk met outside an output table (stdout on /dev/full, a library's own file)."""
    from galtools.io.files import mount_point

    if getattr(exc, "filename", None):
        return f"no space left on {mount_point(str(exc.filename))} while writing {exc.filename} (free some space, or write elsewhere)"
    return "no space left on device while writing standard output (free some space, or write elsewhere)"


def run_main(command: click.BaseCommand, tool: str, args=None, **extra) -> None:
    """Run a click command, turning every way it can end into one stderr line and a documented exit code."""
    _state["tool"] = tool
    _install_stop_signals()
    try:
        code = command.main(args=args, prog_name=tool, standalone_mode=False, **extra)
        code = code if isinstance(code, int) else 0
        sys.stdout.flush()
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        _say_error(tool, "aborted")
        code = 130
    except click.exceptions.NoArgsIsHelpError as exc:   # a bare group: its overview, as a usage error
        sys.stderr.write(exc.ctx.get_help() + "\n")
        code = EXIT_USAGE
    except click.ClickException as exc:
        _say_error(tool, f"{' '.join(exc.format_message().split())} (see '{tool} --help')")
        code = exc.exit_code if exc.exit_code else EXIT_USAGE
    except GalError as exc:
        if _wants_traceback(args):
            import traceback

            traceback.print_exc()
        _say_error(tool, exc.one_line())
        code = exc.exit_code
    except (BrokenPipeError, _PipeClosed):
        _silence_stdout()
        code = 0
    except KeyboardInterrupt:
        _say_error(tool, "interrupted")
        _exit_past_busy_threads(130)
        code = 130
    except Terminated as exc:
        _say_error(tool, f"stopped by {exc.name}; nothing half-written was left behind")
        _exit_past_busy_threads(exc.exit_code)
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
            _say_error(tool, _no_space_line(exc))
            _silence_stdout()   # what is still buffered for stdout cannot go anywhere either
            code = EXIT_IOERR
    except Exception as exc:  # a bug: say so in one line, traceback on -v
        _internal_error(tool, exc, args)
        code = 1
    sys.exit(code)


def _exit_past_busy_threads(code: int) -> None:
    """After an interruption, a reader thread may still be blocked on stdin holding its lock, and the interpreter
    would abort at shutdown (SIGABRT) instead of exiting with ``code``. Run the exit handlers (they remove
    spooled copies of stdin) and leave at once. Without such threads, the caller exits normally."""
    others = [t for t in threading.enumerate() if t is not threading.current_thread() and t.is_alive()]
    if not others or threading.current_thread() is not threading.main_thread():
        return
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):   # a closed or full stream: nothing more can be said on it
            continue
    os._exit(code)


def _internal_error(tool: str, exc: BaseException, args) -> None:
    """A bug: say so in one line, traceback on -v."""
    if _wants_traceback(args):
        import traceback

        traceback.print_exc()
    _say_error(tool, f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
                     "(rerun with -v for the traceback, and please report it)")


class _PipeClosed(Exception):
    """A closed stdout pipe, carried past click, which would otherwise turn EPIPE into exit 1."""


class _GalMixin:
    tool_name = "galtools"

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise _PipeClosed() from exc

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        if standalone_mode:
            run_main(self, self.tool_name, args, **extra)
        return super().main(args=args, prog_name=prog_name or self.tool_name, standalone_mode=False, **extra)


class GalCommand(_GalMixin, click.Command):
    """A click command with galtools' error handling."""


class GalGroup(_GalMixin, click.Group):
    """A click group with galtools' error handling."""


def _configure(quiet: bool, verbose: int) -> None:
    _state["quiet"], _state["verbose"] = quiet, verbose
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    log.setLevel(level)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"{_state['tool']}: %(message)s"))
        log.addHandler(handler)
    log.propagate = False


def _verbosity_options(func):
    @click.option("-q", "--quiet", is_flag=True, help="Print errors only: no progress, no summaries.")
    @click.option("-v", "--verbose", count=True, help="More detail, and tracebacks on errors.")
    @functools.wraps(func)
    def wrapper(*args, quiet=False, verbose=0, **kwargs):
        _configure(quiet, verbose)
        return func(*args, **kwargs)

    return wrapper


def _epilog(example: str) -> str:
    lines = [line for line in example.strip().splitlines()]
    return "\b\nExample:\n" + "\n".join(f"  {line}" for line in lines)


def galtools_command(tool: str, example: str, **settings):
    """Make a click command for ``tool`` with -q/-v/--version, an example in its help, and galtools error handling."""
    def decorator(func):
        func = _verbosity_options(func)
        func = click.version_option(__version__, "--version", prog_name=tool, message="%(prog)s %(version)s")(func)
        command = click.command(tool, cls=GalCommand, epilog=_epilog(example),
                                context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
                                **settings)(func)
        command.tool_name = tool
        return command

    return decorator


def galtools_group(tool: str, example: str, **settings):
    """Like galtools_command for a tool with sub-commands (``gal-knn index``, ``gal-photoz fit``); ``cls`` may name a
    GalGroup subclass (e.g. one with an implied default sub-command)."""
    def decorator(func):
        func = _verbosity_options(func)
        func = click.version_option(__version__, "--version", prog_name=tool, message="%(prog)s %(version)s")(func)
        group = click.group(tool, cls=settings.pop("cls", GalGroup), epilog=_epilog(example),
                            context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
                            **settings)(func)
        group.tool_name = tool
        return group

    return decorator


def subcommand(group: click.Group, name: str, example: str, **settings):
    """A sub-command with an example in its help and its own -q/-v."""
    def decorator(func):
        func = _verbosity_options(func)
        return group.command(name, epilog=_epilog(example),
                             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
                             **settings)(func)

    return decorator


# ------------------------------------------------------------------------------------------------------- options

def input_argument(name: str = "input", required: bool = True, nargs: int = 1):
    """A table input: a path, '-' for stdin, a folder or a quoted glob of parts. Passed unchanged to open_table
    (so CFITSIO extended names like 'file.fits[CATALOG]' keep working)."""
    return click.argument(name, metavar=name.upper(), required=required, nargs=nargs)


def output_options(default: str = "-"):
    def decorator(func):
        func = click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")(func)
        func = click.option("--format", "fmt", type=click.Choice(["fits", "parquet", "arrow", "arrow-stream", "csv", "tsv"]),
                            default=None, help="Output format (default: from the extension; Arrow stream on stdout, "
                            "a pipe or a device). csv/tsv: plain tables only, no image or vector columns.")(func)
        func = click.option("-o", "--output", default=default, show_default=True, metavar="OUTPUT",
                            help="Output table (.fits, .parquet, .arrow, .csv, .tsv) or '-' for an Arrow stream on "
                                 "stdout. A FIFO or a device (/dev/null) is written into, never replaced.")(func)
        return func

    return decorator


def shard_option(func):
    return click.option("--shard", default=None, metavar="I/N",
                        help="Process the I-th of N contiguous slices (from 0). Default: the Slurm array task, "
                             "if any. '{shard}' in -o is replaced by the part number.")(func)


def resolve_shard(text: str | None):
    """The shard to process: --shard, else the Slurm array task, else None (everything)."""
    from galtools.io.shard import Shard

    return Shard.parse(text) if text else Shard.from_slurm()


def device_option(func):
    return click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
                        help="Where to compute; 'cuda' without a usable GPU exits 69.")(func)


def seed_option(func):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed (outputs are deterministic for a seed).")(func)


# ------------------------------------------------------------------------------------------------------ progress

def progress_enabled() -> bool:
    return not _state["quiet"] and sys.stderr.isatty()


class NullProgress:
    """The progress bar when there is none to show (quiet, not a terminal, or not the main process)."""

    def __init__(self, *args, **kwargs):
        """Accepts progress_bar's arguments and ignores them."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, amount: int = 1) -> None:
        """Nothing to draw."""


class _RichProgress:
    def __init__(self, total, description):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                                  transient=False)
        self._total, self._description = total, description

    def __enter__(self):
        self._progress.__enter__()
        self._task = self._progress.add_task(self._description, total=self._total)
        return self

    def __exit__(self, *exc):
        return self._progress.__exit__(*exc)

    def advance(self, amount: int = 1) -> None:
        self._progress.advance(self._task, amount)


def progress_bar(total: int | None, description: str):
    """``with progress_bar(n, "embedding") as bar: bar.advance(k)``: rich on a terminal's stderr, else nothing."""
    return _RichProgress(total, description) if progress_enabled() else NullProgress()


def progress(iterable, total: int | None = None, description: str = "working"):
    """Wrap an iterable with a progress bar (stderr, terminal only)."""
    if not progress_enabled():
        yield from iterable
        return
    with _RichProgress(total, description) as bar:
        for item in iterable:
            yield item
            bar.advance(1)


def is_quiet() -> bool:
    return _state["quiet"]


def is_verbose() -> bool:
    return _state["verbose"] > 0

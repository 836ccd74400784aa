"""How a galtools command is made and run: -q/-v/--version, help with an example, sub-commands (with an implied
default), and every way a run can end turned into one stderr line and a documented exit code.

Kept light on imports (click only); galtools.cli.common re-exports what commands use from here.
"""
from __future__ import annotations

import functools
import logging
import os
import sys

import click

from galtools import __version__
from galtools.cli.ending import exit_past_busy_threads, install_stop_signals, no_space_line
from galtools.errors import EXIT_IOERR, EXIT_USAGE, GalError, Terminated, printable

log = logging.getLogger("galtools")
_state = {"quiet": False, "verbose": 0, "tool": "galtools"}


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
    _state["tool"] = tool
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
    except (BrokenPipeError, _PipeClosed):
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


class _PipeClosed(Exception):
    """A closed stdout pipe, carried past click, which would otherwise turn EPIPE into exit 1."""


class _GalMixin:
    tool_name = "galtools"

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise _PipeClosed() from exc
        except KeyboardInterrupt:   # Ctrl-C: past click (which would say only "Aborted!"), as SIGTERM is told
            import signal

            raise Terminated(signal.SIGINT, "SIGINT") from None

    def main(self, args=None, prog_name=None, standalone_mode=True, **extra):
        if standalone_mode:
            run_main(self, self.tool_name, args, **extra)
        return super().main(args=args, prog_name=prog_name or self.tool_name, standalone_mode=False, **extra)


class GalCommand(_GalMixin, click.Command):
    """A click command with galtools' error handling."""


class GalGroup(_GalMixin, click.Group):
    """A click group with galtools' error handling.

    ``default_command`` (set by ``galtools_group(..., default=NAME)``) names the sub-command implied when the first
    argument after the group's own options (-h, --version, -q, -v) is not a sub-command name: ``gal-knn EMB --query
    ID`` is ``gal-knn search EMB --query ID``, ``gal-train CUTOUTS --out RUN`` is ``gal-train fit CUTOUTS --out
    RUN``. The group's options alone stay the group's; a bare command prints the overview as a usage error (exit 2).
    """

    default_command: str | None = None
    _GROUP_WORDS = ("-h", "--help", "--version", "-q", "--quiet", "-v", "-vv", "--verbose")

    def parse_args(self, ctx, args):
        if self.default_command and args:
            # past the group's own options, a sub-command name or else the default's arguments
            first = next((i for i, a in enumerate(args) if a not in self._GROUP_WORDS), None)
            if first is not None and args[first] not in self.commands:
                args = [self.default_command, *args]
        return super().parse_args(ctx, args)


class _SafeFormatter(logging.Formatter):
    """Log lines with control characters escaped (see errors.printable): warnings quote inputs too."""

    def format(self, record):
        return printable(super().format(record), keep_lines=True)


def _configure(quiet: bool, verbose: int) -> None:
    _state["quiet"], _state["verbose"] = quiet, verbose
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    log.setLevel(level)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_SafeFormatter(f"{_state['tool']}: %(message)s"))
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


def galtools_group(tool: str, example: str, default: str | None = None, **settings):
    """Like galtools_command for a tool with sub-commands (``gal-knn index``, ``gal-photoz fit``); ``default`` names
    the sub-command implied when none is named (see GalGroup)."""
    def decorator(func):
        func = _verbosity_options(func)
        func = click.version_option(__version__, "--version", prog_name=tool, message="%(prog)s %(version)s")(func)
        group = click.group(tool, cls=settings.pop("cls", GalGroup), epilog=_epilog(example),
                            context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
                            **settings)(func)
        group.tool_name = tool
        group.default_command = default
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


def is_quiet() -> bool:
    return _state["quiet"]


def is_verbose() -> bool:
    return _state["verbose"] > 0


def tool_name() -> str:
    """The running tool's name (gal-knn, ...): from the command being invoked, else the one run_main ran."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        return getattr(ctx.find_root().command, "tool_name", None) or _state["tool"]
    return _state["tool"]

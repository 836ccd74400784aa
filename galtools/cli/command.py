"""How a galtools command is made: -q/-v/--version, help with an example, sub-commands (with an implied default);
galtools.cli.run runs it (one stderr line and a documented exit code for every way a run can end).

Kept light on imports (click only); galtools.cli.common re-exports what commands use from here.
"""
from __future__ import annotations

import functools
import logging
import sys

import click

from galtools import __version__
from galtools.cli.run import PipeClosed, is_quiet, is_verbose, log, run_main, state, tool_name  # noqa: F401
from galtools.errors import Terminated, printable


class _GalMixin:
    tool_name = "galtools"

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError as exc:
            raise PipeClosed() from exc
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
    state["quiet"], state["verbose"] = quiet, verbose
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO
    log.setLevel(level)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_SafeFormatter(f"{state['tool']}: %(message)s"))
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



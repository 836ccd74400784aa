"""What every galtools command shares: options, help with an example, errors and exit codes, progress, pipes.

Kept light on imports (click only): ``gal-xxx --help`` must start fast and never import torch, pyarrow or rich.
"""
from __future__ import annotations

import sys

import click

from galtools.cli.command import (GalCommand, GalGroup, galtools_command, galtools_group, is_quiet,  # noqa: F401
                                  is_verbose, log, run_main, subcommand, tool_name)
from galtools.cli.writing import Writing, prepare_output, resolve_shard  # noqa: F401
from galtools.progress import NullProgress, RichProgress  # noqa: F401


# ------------------------------------------------------------------------------------------------------- options

def input_argument(name: str = "input", required: bool = True, nargs: int = 1):
    """A table input: a path, '-' for stdin, a folder or a quoted glob of parts. Passed unchanged to open_table
    (so CFITSIO extended names like 'file.fits[CATALOG]' keep working)."""
    return click.argument(name, metavar=name.upper(), required=required, nargs=nargs)


def format_option(func):
    """--format of an output table (fmt=None: from the extension, an Arrow stream on stdout)."""
    return click.option("--format", "fmt",
                        type=click.Choice(["fits", "parquet", "arrow", "arrow-stream", "csv", "tsv"]), default=None,
                        help="Output format (default: from the extension; Arrow stream on stdout, a pipe or a "
                             "device). csv/tsv: plain tables only, no image or vector columns.")(func)


def output_options(default: str = "-"):
    """-o/--output OUTPUT, --format and --overwrite of a command writing a table."""
    def decorator(func):
        func = click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")(func)
        func = format_option(func)
        func = click.option("-o", "--output", default=default, show_default=True, metavar="OUTPUT",
                            help="Output table (.fits, .parquet, .arrow, .csv, .tsv) or '-' for an Arrow stream on "
                                 "stdout. A FIFO or a device (/dev/null) is written into, never replaced.")(func)
        return func

    return decorator


def model_output_options(metavar: str = "MODEL", help: str = "The model file to write.", required: bool = True):
    """-o/--output FILE and --overwrite of a command writing a model or an index (not a table: no --format)."""
    def decorator(func):
        func = click.option("--overwrite", is_flag=True, help=f"Replace {metavar} if it exists.")(func)
        func = click.option("-o", "--output", required=required, default=None, metavar=metavar, help=help)(func)
        return func

    return decorator


def montage_options(what: str, count_option: str, most: int, default: int, count_help: str):
    """--montage PNG (``what`` it draws; from a terminal without -o, only the montage is made) and the option
    ``count_option`` saying how many objects it draws."""
    def decorator(func):
        func = click.option(count_option, type=click.IntRange(1, most), default=default, show_default=True,
                            help=count_help)(func)
        return click.option("--montage", metavar="PNG", help=f"Also draw {what}. From a terminal without -o, only the "
                            "montage is made.")(func)

    return decorator


def shard_option(func):
    return click.option("--shard", default=None, metavar="I/N",
                        help="Process the I-th of N contiguous slices (from 0). Default: the Slurm array task, "
                             "if any. '{shard}' in -o is replaced by the part number.")(func)


def device_option(func):
    return click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
                        help="Where to compute; 'cuda' without a usable GPU exits 69.")(func)


def seed_option(func):
    return click.option("--seed", type=int, default=0, show_default=True, help="Random seed (outputs are deterministic for a seed).")(func)


# ------------------------------------------------------------------------------------------------------ progress

def progress_enabled() -> bool:
    return not is_quiet() and sys.stderr.isatty()


def progress_bar(total: int | None, description: str):
    """``with progress_bar(n, "embedding") as bar: bar.advance(k)``: rich on a terminal's stderr, else nothing."""
    return RichProgress(total, description) if progress_enabled() else NullProgress()


def progress(iterable, total: int | None = None, description: str = "working"):
    """Wrap an iterable with a progress bar (stderr, terminal only)."""
    if not progress_enabled():
        yield from iterable
        return
    with RichProgress(total, description) as bar:
        for item in iterable:
            yield item
            bar.advance(1)

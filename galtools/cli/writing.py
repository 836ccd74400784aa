"""The prologue of every command that writes: the shard, the output path and its checks, before any work, and a
:class:`Writing` that opens the output with the tool's name and this run in its history.

Kept light on imports (click only); galtools.cli.common re-exports what commands use from here.
"""
from __future__ import annotations

import os
import sys

import click

from galtools.cli.command import tool_name


def resolve_shard(text: str | None, slurm: bool = True):
    """The shard to process: --shard, else (``slurm``) the Slurm array task, else None (everything)."""
    from galtools.io.shard import Shard

    if text:
        return Shard.parse(text)
    return Shard.from_slurm() if slurm else None


class Writing:
    """What a writing command settled before any work (see :func:`prepare_output`)."""

    def __init__(self, path, fmt, overwrite, shard, table, tool, source=None, catalogue=False):
        self.path, self.fmt, self.overwrite, self.shard, self.table, self.tool = path, fmt, overwrite, shard, table, tool
        self.source = source          # the input, when a HATS catalogue input may make a HATS catalogue output
        self.catalogue = catalogue    # whether the output is a HATS catalogue (a folder), not a table file

    @property
    def name(self) -> str:
        """The output as messages name it."""
        return "stdout" if self.path == "-" else self.path

    def open(self, metadata: dict | None = None, seed=None):
        """``open_output`` of the table, with the tool's name and this run in the history."""
        from galtools.io import open_output

        return open_output(self.path, overwrite=self.overwrite, fmt=self.fmt, metadata=metadata, tool=self.tool,
                           seed=seed, source=self.source, shard=self.shard)


def prepare_output(output: str, fmt: str | None, overwrite: bool, shard: str | None = None, *, pictures=(),
                   slurm: bool = True, terminal: str | None = None, table: bool = True, source: str | None = None
                   ) -> Writing:
    """The prologue every writing command repeats, before any work (so a clash costs nothing):

    1. the shard: ``--shard I/N``, else (``slurm``) the Slurm array task, else None;
    2. ``{shard}`` in the output path replaced by the part number;
    3. the output checked (exists without --overwrite, no such folder, binary to a terminal), and each of
       ``pictures`` (PNG paths given, None for those not asked for) too;
    4. a :class:`Writing` whose ``open(metadata, seed)`` is ``open_output`` with the tool's name.

    ``terminal`` says when no table is written because stdout is a terminal and no --format was given:
    ``"dash"`` when -o is '-' (the command shows something readable instead), ``"default"`` only when -o was not
    given at all (the command draws only its pictures); ``Writing.table`` is then False. None: always a table.
    ``table=False``: the command writes no table this time (nothing to check).
    ``source``: the input, when a HATS catalogue given with a folder as OUTPUT makes a HATS catalogue there
    (galtools.io.hats: every task of an array writes its partitions into the same folder; no ``{shard}``).
    """
    from galtools.io import check_output_path

    catalogue = table and source is not None and _hats_output(source, output, fmt, overwrite)
    part = resolve_shard(shard, slurm=slurm)
    if part is not None and "{shard}" in output:
        output = part.format_path(output)
        _make_parts_folder(output)
    if table and terminal and output == "-" and fmt is None and sys.stdout.isatty():
        ctx = click.get_current_context(silent=True)
        defaulted = ctx is not None and ctx.get_parameter_source("output") == click.core.ParameterSource.DEFAULT
        table = not (terminal == "dash" or defaulted)
    if table and not catalogue:
        check_output_path(output, overwrite)
    for picture in pictures:
        if picture:
            check_output_path(picture, overwrite)
    return Writing(output, fmt, overwrite, part, table, tool_name(), source, catalogue)


def _hats_output(source: str, output: str, fmt: str | None, overwrite: bool) -> bool:
    """Whether OUTPUT is to be a HATS catalogue (checked, before any work, when it is)."""
    from galtools.errors import UsageProblem
    from galtools.io import hats

    if not hats.wants_catalogue(source, output, fmt):
        return False
    if "{shard}" in output:
        raise UsageProblem(f"-o {output}: a HATS catalogue is one folder that every task writes its partitions into",
                           "drop '{shard}' from the folder name")
    hats.check_catalogue_output(source, output, overwrite, tool_name())
    return True


def _make_parts_folder(path: str) -> None:
    """The folder of a templated part (``-o 'emb/part-{shard}.parquet'``) is made if missing: the tasks of an
    array share it, and the first to start should not fail the others (only templated parts: elsewhere a missing
    folder is more likely a typo, exit 74)."""
    from galtools.errors import OutputError

    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot make the folder {folder} for the parts ({exc.strerror})",
                              "check the path and its permissions") from None

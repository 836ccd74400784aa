"""Progress bars for libraries and commands alike: rich on a terminal's stderr, or nothing.

The library never decides whether to draw (that is the command line's -q and the terminal's business): it takes
a bar factory, ``NullProgress`` by default.  Commands pass ``galtools.cli.common.progress_bar``.
"""
from __future__ import annotations


class NullProgress:
    """The progress bar when there is none to show (quiet, not a terminal, or not the main process)."""

    def __init__(self, *args, **kwargs):
        """Accepts RichProgress's arguments and ignores them."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, amount: int = 1) -> None:
        """Nothing to draw."""


class RichProgress:
    """A rich progress bar on stderr: ``with RichProgress(n, "embedding") as bar: bar.advance(k)``."""

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

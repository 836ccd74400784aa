"""The neighbor table on a terminal: readable, whole column names, one section per query.

Rule for the columns: scalar columns in table order, each as wide as its whole name or its widest value; they are
taken from the left while they fit the terminal's width, and the ones left out are named below the table (never
cut to "neigh…"). Floats get 4 decimals.
"""
from __future__ import annotations

import sys

import pyarrow as pa

PADDING = 2   # rich's space between columns with box=None


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _scalar_columns(table: pa.Table) -> list[str]:
    return [c for c in table.column_names
            if not (pa.types.is_nested(table.schema.field(c).type)
                    or isinstance(table.schema.field(c).type, pa.ExtensionType))]


def fitting_columns(names: list[str], cells: dict, width: int) -> tuple[list[str], list[str]]:
    """(shown, left out): columns from the left, each needing max(len(name), widest cell), while they fit."""
    shown, used = [], 0
    for name in names:
        need = max([len(name)] + [len(c) for c in cells[name]]) + (PADDING if shown else 0)
        if shown and used + need > width:
            break
        shown.append(name)
        used += need
    return shown, names[len(shown):]


def print_neighbors(table: pa.Table | None, total_rows: int, file=None, limit: int | None = None) -> None:
    """Print the first rows of a neighbor table; ``total_rows`` is how many there were in all."""
    from rich.console import Console
    from rich.table import Table as RichTable

    console = Console(file=file or sys.stdout)
    if table is None or table.num_rows == 0:
        console.print("no neighbors")
        return
    names = _scalar_columns(table)
    rows = table.select(names).to_pylist()
    cells = {name: [format_cell(row[name]) for row in rows] for name in names}
    shown, left_out = fitting_columns(names, cells, console.width)
    rich_table = RichTable(show_header=True, header_style="bold", box=None, pad_edge=False)
    for name in shown:
        rich_table.add_column(name, justify="right" if name in ("rank", "similarity") else "left", no_wrap=True,
                              min_width=len(name))
    previous = None
    for i, row in enumerate(rows):
        if previous is not None and row["query_id"] != previous:
            rich_table.add_section()
        previous = row["query_id"]
        rich_table.add_row(*[cells[name][i] for name in shown])
    console.print(rich_table)
    if left_out:
        console.print(f"not shown (too wide for the terminal): {', '.join(left_out)}; write them all with -o FILE",
                      style="dim")
    if total_rows > table.num_rows:
        console.print(f"... first {table.num_rows} neighbors shown; write them all with -o FILE", style="dim")

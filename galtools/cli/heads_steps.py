"""Steps shared by the commands over galtools.heads (gal-photoz, gal-classify, gal-ood): outputs checked before any
work, a curve or an evaluation run and shown, predictions written through the output the command opened.

Each step is one library call between the command's inputs and outputs; imports are lazy (``--help`` stays light).
"""
from __future__ import annotations

import json

import click

from galtools.cli.common import log, prepare_output, progress_bar


def check_outputs(overwrite: bool, *paths) -> None:
    from galtools.io import check_output_path

    for path in paths:
        if path:
            check_output_path(path, overwrite)


def draw(path: str | None, plot, *args) -> None:
    """``plot(*args, temporary)`` into ``path``, atomically (nothing when ``path`` is None)."""
    if path:
        from galtools.io import atomic_file

        with atomic_file(path, named=True) as temporary:   # named: matplotlib picks the format by extension
            plot(*args, temporary)


def curve_prologue(curve: dict):
    """Check the curve's options and outputs before any work: (the fractions, the -o table's Writing, whose
    ``table`` is False without -o)."""
    from galtools.errors import UsageProblem
    from galtools.heads.curve import parse_fractions

    fractions = parse_fractions(curve["fractions"])
    if not 0 < curve["test_fraction"] < 1:
        raise UsageProblem(f"--test-fraction must be between 0 and 1, got {curve['test_fraction']}")
    writing = prepare_output(curve["output"] or "-", curve["fmt"], curve["overwrite"], slurm=False,
                             pictures=[curve["plot"]], table=bool(curve["output"]))
    return fractions, writing


def emit_curve(rows: list[dict], curve: dict, writing, text: str, header: dict, seed: int, plot) -> None:
    """Print the curve (a table, or JSON with ``header``), write it with -o, draw it with --plot."""
    if curve["output"] != "-":                 # otherwise stdout carries the table
        click.echo(json.dumps({**header, "test_fraction": curve["test_fraction"], "rows": rows}, indent=2)
                   if curve["as_json"] else text)
    if writing.table:
        import pyarrow as pa

        with writing.open(seed=seed) as out:
            out.write(pa.Table.from_pylist(rows))
    draw(curve["plot"], plot, rows)


def score_prologue(model_path: str, tool: str, kinds, output: str | None, fmt, overwrite: bool, shard,
                   pictures=(), source: str | None = None):
    """Load the model file, then settle the output of 'predict'/'score' before any work: (head, Writing).
    ``output`` None: no table is written (``Writing.table`` False), the shard still applies. ``source``: the
    input, when a HATS catalogue input and a folder OUTPUT make a HATS catalogue."""
    from galtools.heads import load_head

    head = load_head(model_path, tool, kinds)
    return head, prepare_output(output or "-", fmt, overwrite, shard, pictures=pictures, table=output is not None,
                                source=source)


def run_curve(settings_of, emb: str, task_options: dict, training: dict, network: dict, curve: dict) -> None:
    """``TOOL curve``: its outputs checked, the curve computed (galtools.finetune.task.curve_command), shown."""
    from galtools.finetune.task import curve_command

    fractions, writing = curve_prologue(curve)
    task, settings, rows = curve_command(settings_of, emb, task_options, training, network, fractions,
                                         curve["test_fraction"])
    emit_curve(rows, curve, writing, task.format_curve(rows), {**task.curve_header(), "seed": settings.seed},
               settings.seed, task.plot_curve)


def run_eval(task, pred: str, options: dict, as_json: bool, plot: str | None, overwrite: bool) -> None:
    """``TOOL eval``: the report of ``task.evaluate(pred, **options)`` as text or JSON, and its plot."""
    check_outputs(overwrite, plot)
    evaluation = task.evaluate(pred, **options)
    click.echo(json.dumps(evaluation.report, indent=2) if as_json else evaluation.text())
    draw(plot, evaluation.plot)


def write_predictions(emb: str, writing, predict, what: str) -> None:
    """``predict(table, name, open_output, progress)`` on the input opened (its shard), writing through
    ``writing.open``."""
    from galtools.io import display_name, open_table

    with open_table(emb, shard=writing.shard) as table, progress_bar(None, what) as bar:
        rows = predict(table, display_name(emb), writing.open, bar.advance)
    log.debug(f"{rows} predictions written")

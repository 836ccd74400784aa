"""``gal-ood eval`` and ``gal-ood rank``: how well scores separate anomalies, and ranking objects like labelled
positives (added to gal-ood's group by :func:`add_commands`)."""
from __future__ import annotations

import json

import click

from galtools.cli.common import input_argument, log, output_options, prepare_output, seed_option, subcommand
from galtools.cli.heads_options import check_outputs, draw, report_options
from galtools.cli.ood_show import draw_proposed, montage_count, print_proposed

EVAL_EXAMPLE = """gal-ood eval scored.parquet --truth is_anomaly --json
gal-ood eval both.parquet --error-column abs_dz --plot trust.png"""

COMMANDS = click.Group("ood")   # only a holder: add_commands moves its commands into gal-ood's group


def add_commands(group: click.Group) -> None:
    """Add gal-ood eval and gal-ood rank to ``group``."""
    for name, command in COMMANDS.commands.items():
        group.add_command(command, name)


# -------------------------------------------------------------------------------------------------------- eval

@subcommand(COMMANDS, "eval", example=EVAL_EXAMPLE)
@input_argument("scored")
@click.option("--truth", default=None, metavar="COLUMN", help="Boolean (or 0/1) column: 1 for an anomaly.")
@click.option("--error-column", default=None, metavar="COLUMN",
              help="An error per object (e.g. abs_dz from 'gal-photoz predict --truth'): the trust curve.")
@click.option("--score-column", default=None, metavar="COLUMN",
              help="Score to rank by (default: ood_raw, else ood_score; ood_raw keeps ordering objects beyond "
                   "the reference's range, where ood_score is 1 for all).")
@click.option("--bins", type=click.IntRange(1), default=10, show_default=True,
              help="Equal-count score bins of the trust curve.")
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="False-positive rate at which the true-positive rate is reported.")
@report_options("Score distributions of anomalies and normal objects; the trust curve.")
def evaluate(scored, truth, error_column, score_column, bins, fpr, as_json, plot, overwrite):
    """How well the scores of SCORED (from 'gal-ood score') separate anomalies (--truth) and how the error of
    a prediction grows with strangeness (--error-column; with 'trusted' present, trusted vs untrusted too).

    \b
    AUROC      P(anomaly scores above a normal object), ties counted one half
    AP         average precision: sum over thresholds of (recall step) x precision
    TPR@FPR    the largest fraction of anomalies caught while flagging at most --fpr of normal objects
    """
    from galtools.errors import UsageProblem
    from galtools.ood.evaluate import evaluate as evaluate_scores
    from galtools.ood.evaluate import format_detection, format_trust, plot_evaluation, read_scores

    if not truth and not error_column:
        raise UsageProblem("nothing to evaluate", "give --truth COLUMN (anomalies) and/or --error-column COLUMN")
    check_outputs(overwrite, plot)
    arrays, score_column, threshold = read_scores(scored, truth, error_column, score_column)
    report = evaluate_scores(arrays, bins, fpr)
    report["score_column"] = score_column
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        parts = []
        if "detection" in report:
            parts.append(format_detection(report["detection"], score_column))
        if "trust" in report:
            parts.append(format_trust(report["trust"], error_column, score_column))
        click.echo("\n\n".join(parts))
    draw(plot, lambda temporary: plot_evaluation(arrays, report, temporary, score_column, error_column, threshold))


# -------------------------------------------------------------------------------------------------------- rank

RANK_EXAMPLE = """gal-ood rank emb.parquet --labels labels.csv -o ranked.parquet
gal-ood rank emb.parquet --labels labels.csv --propose 20 --montage next.png --images cutouts.arrow
echo "1234,1,$(date -u +%FT%T)" >> labels.csv   # a yes; then rank again"""


@subcommand(COMMANDS, "rank", example=RANK_EXAMPLE)
@input_argument("emb")
@click.option("--labels", "labels_path", required=True, metavar="LABELS",
              help="Table (CSV, Parquet, ...) of object_id, label (1/0, yes/no) and optionally time.")
@click.option("--method", type=click.Choice(["auto", "similarity", "linear", "prior"]), default="auto",
              show_default=True, help="auto: similarity + linear model + isolation-forest prior, weighted by the "
              "number of positives, half of it label spreading over the nearest-neighbor graph; or one of the "
              "first three alone (linear alone needs labelled negatives).")
@click.option("--propose", type=click.IntRange(0), default=0, metavar="N",
              help="Propose the N unlabelled objects to label next (column 'proposed': 1..N); printed as a table "
                   "when -o is not given.")
@click.option("--explore", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Acquisition: score + EXPLORE x the spread of an ensemble of linear models (0: the best "
                   "scores only).")
@click.option("--steer", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="--method auto: share of the choice of --propose given to an RBF-kernel model of the labels, "
                   "which finds wanted objects no hyperplane separates (0: off; the score is the same either way).")
@click.option("--montage", metavar="PNG", help="Draw the proposed objects (--propose N, default 16) from --images.")
@click.option("--images", metavar="CUTOUTS", help="Cutout table holding the pictures for --montage.")
@seed_option
@output_options(default=None)
def rank(emb, labels_path, method, propose, explore, steer, montage, images, seed, output, fmt, overwrite):
    """Rank every object of EMB (an embedding table) by how likely it is to be what the positive LABELS are.

    Writes one row per object, best first: score, rank (1 = best), proposed (1..N: the order in which to label
    the next ones; null for the others), label (as labelled, null if not), nearest_positive_id and
    nearest_positive_similarity (cosine: why the object ranks where it does), the parts of the score (linear,
    prior, spread) and EMB's plain columns.

    \b
    LABELS is a log that a person, a script or 'gal-view --labels' appends to: one object may be labelled
    again; the label with the latest time counts, and two different labels without a later time are refused.
    Unknown object_ids, labels other than 1/0 yes/no true/false, and no positive label (unless --method prior)
    exit 65.

    With a handful of positives the score leans on similarity to them and on how unusual an object is; as labels
    grow, on the linear model. The linear model takes unlabelled objects as negatives, so positives alone work.
    EMB is held in memory (N x D x 4 bytes). Needs scikit-learn.
    """
    from galtools.io import display_name, open_table
    from galtools.ood.labels import read_labels
    from galtools.ood.rank import RankSettings, rank_table

    propose, output = montage_count(montage, images, propose, output)
    settings = RankSettings(method=method, propose=propose, explore=explore, steer=steer,
                            seed=seed or 0).validate()
    writing = prepare_output(output or "-", fmt, overwrite, pictures=[montage], slurm=False,
                             table=output is not None)
    labels = read_labels(labels_path, display_name(labels_path))
    name = display_name(emb)
    with open_table(emb) as table:
        if writing.table:
            with writing.open(metadata=table.metadata, seed=seed) as out:
                summary = rank_table(table, labels, out, settings, name)
        else:
            from galtools.io import CollectingSink

            out = CollectingSink()
            summary = rank_table(table, labels, out, settings, name)
            print_proposed(out.table(), to_stderr=False)
    log.info(f"{summary['objects']} objects ranked ({method}) from {summary['positives']} positive and "
             f"{summary['negatives']} negative labels; {summary['proposed']} proposed")
    if montage:
        draw_proposed(summary, images, montage)

"""gal-ood: which predictions to trust, and which objects are anomalies (distance to the labelled reference)."""
from __future__ import annotations

import json

import click

from galtools.cli.common import (galtools_group, input_argument, log, output_options, prepare_output, progress_bar,
                                 seed_option, shard_option, subcommand)
from galtools.cli.heads_options import check_outputs, draw, model_option, model_output, report_options, score_prologue

EXAMPLE = """gal-ood fit labelled-emb.parquet -k 10 -o ood.model
gal-ood score survey-emb.parquet --model ood.model -o scored.parquet
gal-ood score survey-emb.parquet --model ood.model --top 20 --montage strange.png --images cutouts.fits
gal-ood eval scored.parquet --truth is_anomaly --error-column abs_dz --plot ood.png"""

FIT_EXAMPLE = """gal-ood fit labelled-emb.parquet -o ood.model                    # k-th neighbor cosine distance
gal-ood fit labelled-emb.parquet --method gmm --pca 32 --components 8 -o gmm.model
gal-ood fit labelled-emb.parquet --search hnsw -k 50 -o big.model"""

SCORE_EXAMPLE = """gal-ood score emb.parquet --model ood.model -o scored.parquet
gal-ood score survey_emb/ --model ood.model --shard 3/16 -o survey_ood/        # HATS catalogue in and out
gal-photoz predict emb.parquet --model photoz.model --truth z_spec | gal-ood score - --model ood.model -o both.parquet
gal-ood score emb.parquet --model ood.model --top 16 --montage strange.png --images cutouts.fits"""

EVAL_EXAMPLE = """gal-ood eval scored.parquet --truth is_anomaly --json
gal-ood eval both.parquet --error-column abs_dz --plot trust.png"""

TOP_COLUMNS = ("object_id", "ood_score", "ood_raw", "trusted", "nearest_reference_id", "nearest_reference_distance")
MONTAGE_COLUMNS = 8
DEFAULT_MONTAGE_COUNT = 16


@galtools_group("gal-ood", example=EXAMPLE)
def cli():
    """Out-of-distribution scores: how unlike a labelled reference set each object is.

    \b
    gal-ood fit REFERENCE -o MODEL     learn the reference (k-th neighbor distance, or --method gmm/iforest),
                                       calibrated on held-out reference rows
    gal-ood score TARGET --model M     ood_score (a percentile of the reference), trusted, nearest reference
    gal-ood eval SCORED                AUROC / average precision / TPR at 5% FPR; the trust curve of an error
    gal-ood rank EMB --labels LABELS   rank objects like the labelled positives; --propose the next to label

    Objects far from every labelled one get predictions that should not be trusted; the same scores rank
    anomalies. Scoring needs numpy (and faiss-cpu for --search flat/ivf/hnsw); fitting gmm/iforest needs
    scikit-learn.
    """


# --------------------------------------------------------------------------------------------------------- fit

@subcommand(cli, "fit", example=FIT_EXAMPLE)
@input_argument("reference")
@click.option("--method", type=click.Choice(["knn", "gmm", "iforest"]), default="knn", show_default=True,
              help="knn: cosine distance to the k-th nearest reference row; gmm: -log density of a Gaussian "
                   "mixture on a PCA projection; iforest: isolation-forest score on the same projection.")
@click.option("-k", "k", type=int, default=10, show_default=True, help="Which neighbor's distance (knn).")
@click.option("--search", type=click.Choice(["exact", "flat", "ivf", "hnsw"]), default="exact", show_default=True,
              help="How neighbors are found (gal-knn's backends): exact blocked search, or a FAISS index.")
@click.option("--calibration-fraction", type=float, default=0.2, show_default=True,
              help="Reference rows held out of the fit to calibrate the scores on.")
@click.option("--pca", type=int, default=32, show_default=True, help="PCA components (gmm, iforest).")
@click.option("--components", type=int, default=8, show_default=True, help="Gaussian mixture components (gmm).")
@click.option("--trees", type=int, default=200, show_default=True, help="Isolation-forest trees (iforest).")
@seed_option
@model_output
def fit(reference, method, k, search, calibration_fraction, pca, components, trees, seed, output, overwrite):
    """Learn the reference distribution from REFERENCE (e.g. the labelled objects' embeddings).

    A fraction of the reference rows is held out; the statistic of those rows calibrates the scores, so that
    ood_score is the fraction of in-distribution objects less strange than a given one. The model keeps the
    other reference rows (their unit vectors and object_ids) and the encoder's sha256.
    """
    from galtools.heads import check_head_output
    from galtools.io import check_unique_ids, display_name, open_table
    from galtools.ood.fit import OodSettings, fit_reference
    from galtools.search.table import load_embeddings

    settings = OodSettings(method=method, k=k, search=search, calibration_fraction=calibration_fraction, pca=pca,
                           components=components, trees=trees, seed=seed).validate()
    check_head_output(output, overwrite)
    name = display_name(reference)
    with open_table(reference) as table:
        embeddings = load_embeddings(table, name=name)
    check_unique_ids(embeddings.ids, name)
    model = fit_reference(embeddings.vectors, embeddings.ids, settings, embeddings.model_sha256, source=name)
    model.save(output, overwrite=overwrite)


# ------------------------------------------------------------------------------------------------------- score

@subcommand(cli, "score", example=SCORE_EXAMPLE)
@input_argument("target")
@model_option("gal-ood")
@click.option("--coverage", type=float, default=0.95, show_default=True,
              help="trusted = ood_score < COVERAGE: this fraction of in-distribution objects is trusted.")
@click.option("--top", type=click.IntRange(0), default=0, metavar="N",
              help="Print the N strangest objects as a table (on stdout unless it carries the scored table).")
@click.option("--show", "show_columns", multiple=True, metavar="COLUMN", help="Extra column in the --top table.")
@click.option("--montage", metavar="PNG", help="Draw the strangest objects (--top N, default 16) from --images.")
@click.option("--images", metavar="CUTOUTS", help="Cutout table holding the pictures for --montage.")
@shard_option
@output_options(default=None)
def score(target, model_path, coverage, top, show_columns, montage, images, shard, output, fmt, overwrite):
    """Score every row of TARGET (an embedding table, or '-') against the model's reference.

    Adds ood_score (0-1: the fraction of held-out reference rows less strange than this object), ood_raw (the
    statistic itself: k-th neighbor cosine distance, -log density or isolation score; it keeps ordering objects
    beyond the reference's range), trusted (ood_score < --coverage), nearest_reference_id and
    nearest_reference_distance (cosine); other columns are carried. With --top N and no -o, only the table of
    the N strangest is printed (with -o -, it goes to stderr). A HATS catalogue TARGET (e.g. gal-embed's) with a
    folder as OUTPUT makes a HATS catalogue with the same partitions, as gal-embed does.
    """
    from galtools.errors import UsageProblem
    from galtools.ood.model import KINDS, TOOL, OodModel
    from galtools.ood.score import score_table

    if not 0 < coverage < 1:
        raise UsageProblem(f"--coverage must be between 0 and 1, got {coverage}")
    top, output = _montage_count(montage, images, top, output)
    head, writing = score_prologue(model_path, TOOL, KINDS, output, fmt, overwrite, shard, pictures=[montage],
                                   source=target)
    counts = {}
    with progress_bar(None, "scoring") as bar:
        rows, strangest = score_table(target, OodModel.from_head(head), head, writing.path if writing.table else None,
                                      coverage=coverage, fmt=fmt, overwrite=overwrite, shard=writing.shard, top=top,
                                      progress=bar.advance, counts=counts)
    untrusted = counts["untrusted"]
    summary = (f"{rows} objects scored, {untrusted} ({100 * untrusted / max(rows, 1):.1f}%) not trusted "
               f"(ood_score >= {coverage:g})")
    if writing.table and writing.path != "-":   # a file: say what it holds (stdout carries the table itself)
        log.info(f"wrote {writing.name}: {summary}")
    else:
        log.debug(summary)
    if top:
        _print_top(strangest, show_columns, to_stderr=output == "-")   # stdout may carry the scored table
    if montage:
        _draw_montage(strangest, images, montage)


def _montage_count(montage, images, count, output):
    """(how many objects are listed or drawn, the output): --montage needs --images and draws 16 unless told;
    a list without -o goes to the terminal instead of a table on stdout."""
    from galtools.errors import UsageProblem

    if montage and not images:
        raise UsageProblem("--montage needs --images", "the cutout table holding the pictures")
    if montage:
        count = count or DEFAULT_MONTAGE_COUNT
    if output is None:
        output = None if count else "-"
    return count, output


def _print_top(strangest, show_columns, to_stderr=False):
    from galtools.ood.score import format_top

    click.echo(format_top(strangest, TOP_COLUMNS, show_columns), err=to_stderr)


def _draw_montage(strangest, images, path):
    from galtools.errors import BadData
    from galtools.ood.montage import images_for
    from galtools.viz import rgb_composite, save_montage

    if strangest is None or strangest.num_rows == 0:
        raise BadData("nothing to draw: no objects were scored", "check the input")
    ids = strangest.column("object_id").to_pylist()
    pictures, bands = images_for(images, ids)
    rgb = rgb_composite(pictures, bands)
    scores = strangest.column("ood_score").to_pylist()
    raws = strangest.column("ood_raw").to_pylist()
    captions = [f"{i}\nscore {s:.3f}\nraw {r:.3g}" for i, s, r in zip(ids, scores, raws)]
    grid = [list(rgb[i:i + MONTAGE_COLUMNS]) for i in range(0, len(rgb), MONTAGE_COLUMNS)]
    caption_grid = [captions[i:i + MONTAGE_COLUMNS] for i in range(0, len(captions), MONTAGE_COLUMNS)]
    save_montage(grid, path, captions=caption_grid, title=f"the {len(ids)} strangest objects, strangest first")


# -------------------------------------------------------------------------------------------------------- eval

@subcommand(cli, "eval", example=EVAL_EXAMPLE)
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
PROPOSED_COLUMNS = ("object_id", "score", "spread", "nearest_positive_id", "nearest_positive_similarity")


@subcommand(cli, "rank", example=RANK_EXAMPLE)
@input_argument("emb")
@click.option("--labels", "labels_path", required=True, metavar="LABELS",
              help="Table (CSV, Parquet, ...) of object_id, label (1/0, yes/no) and optionally time.")
@click.option("--method", type=click.Choice(["auto", "similarity", "linear", "prior"]), default="auto",
              show_default=True, help="auto: similarity + linear model + isolation-forest prior, weighted by the "
              "number of positives; or one of them alone (linear alone needs labelled negatives).")
@click.option("--propose", type=click.IntRange(0), default=0, metavar="N",
              help="Propose the N unlabelled objects to label next (column 'proposed': 1..N); printed as a table "
                   "when -o is not given.")
@click.option("--explore", type=click.FloatRange(0), default=1.0, show_default=True,
              help="Acquisition: score + EXPLORE x the spread of an ensemble of linear models (0: the best "
                   "scores only).")
@click.option("--montage", metavar="PNG", help="Draw the proposed objects (--propose N, default 16) from --images.")
@click.option("--images", metavar="CUTOUTS", help="Cutout table holding the pictures for --montage.")
@seed_option
@output_options(default=None)
def rank(emb, labels_path, method, propose, explore, montage, images, seed, output, fmt, overwrite):
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

    propose, output = _montage_count(montage, images, propose, output)
    settings = RankSettings(method=method, propose=propose, explore=explore, seed=seed or 0).validate()
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
            _print_proposed(out.table(), to_stderr=False)
    log.info(f"{summary['objects']} objects ranked ({method}) from {summary['positives']} positive and "
             f"{summary['negatives']} negative labels; {summary['proposed']} proposed")
    if montage:
        _draw_proposed(summary, images, montage)


def _print_proposed(ranked, to_stderr=False):
    import pyarrow.compute as pc

    from galtools.ood.score import format_top

    proposed = ranked.filter(pc.is_valid(ranked.column("proposed")))
    proposed = proposed.take(pc.sort_indices(proposed, sort_keys=[("proposed", "ascending")]))
    click.echo(format_top(proposed, PROPOSED_COLUMNS), err=to_stderr)


def _draw_proposed(summary, images, path):
    from galtools.errors import BadData
    from galtools.ood.montage import draw_objects

    ids = summary["proposed_ids"]
    if not ids:
        raise BadData("nothing to draw: every object is labelled already", "label another table")
    captions = [f"{i}\nnext #{n}" for n, i in enumerate(ids, start=1)]
    draw_objects(images, ids, captions, path, title=f"the {len(ids)} objects to label next, in order")


main = cli

if __name__ == "__main__":
    main()

"""gal-classify: morphology from the representation (a linear probe or small MLP on frozen embeddings), with hard
labels or crowd vote fractions, its metrics and the label-efficiency curve."""
from __future__ import annotations

import json

import click

from galtools.cli.common import (galtools_group, input_argument, log, output_options, progress_bar, seed_option,
                                 shard_option, subcommand)

EXAMPLE = """gal-classify fit emb.parquet --label morph_class -o morph.model
gal-classify predict emb.parquet --model morph.model -o pred.parquet
gal-classify eval pred.parquet --plot morph.png
gal-classify curve emb.parquet --label morph_class --fractions 0.01,0.1,1 --plot curve.png"""

FIT_EXAMPLE = """gal-classify fit emb.parquet --label morph_class -o morph.model
gal-classify fit gz.parquet --label gz1_label --classes elliptical,spiral=spiral_clockwise+spiral_anticlockwise,edge_on,merger -o gz.model
gal-classify fit gz2.parquet --soft-labels smooth=p_smooth,disk=p_features,artifact=p_star -o gz2.model"""

PREDICT_EXAMPLE = """gal-classify predict emb.parquet --model morph.model -o pred.parquet
gal-classify predict emb.parquet --model morph.model --keep-embedding | gal-map - --color predicted_class -o map.parquet"""

EVAL_EXAMPLE = """gal-classify eval pred.parquet
gal-classify eval pred.parquet --confident 0.8 --json --plot morph.png"""

CURVE_EXAMPLE = """gal-classify curve emb.parquet --label morph_class --fractions 0.01,0.03,0.1,0.3,1 --plot curve.png
gal-classify curve gz2.parquet --soft-labels p_smooth,p_features --json -o curve.parquet"""

LABEL_HELP = {
    "label": "Column of class labels, one per row (strings or integers; null rows are not used).",
    "soft": "Vote-fraction columns, one per class: COL1,COL2,... or NAME=COL (NAME=COL1+COL2 adds answers). "
            "Fractions are renormalised per row; rows without votes are not used.",
    "classes": "With --label: the classes to learn, in order: NAME or NAME=VALUE1+VALUE2 (merges values); rows "
               "with other values are not used. Default: every value seen.",
}


@galtools_group("gal-classify", example=EXAMPLE)
def cli():
    """Galaxy morphology from embeddings: a classifier on the frozen representation (Hayat et al. 2021).

    \b
    gal-classify fit EMB -o MODEL      train on --label COLUMN or on vote fractions (--soft-labels)
    gal-classify predict EMB --model M predicted_class, predicted_prob and prob_<class> per object
    gal-classify eval PRED             accuracy, balanced accuracy, per-class precision/recall, confusion
                                       matrix, calibration; with votes also the confident rows' accuracy
    gal-classify curve EMB             accuracy against the number of labels

    Fitting needs torch; predicting and evaluating need numpy only.
    """


def _settings(hidden, val_fraction, max_epochs, patience, batch_size, lr, weight_decay, seed):
    from galtools.classify.fit import ClassifySettings

    return ClassifySettings(hidden=hidden, val_fraction=val_fraction, max_epochs=max_epochs, patience=patience,
                            batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed).validate()


def _training_options(func):
    options = [
        click.option("--label", default=None, metavar="COLUMN", help=LABEL_HELP["label"]),
        click.option("--soft-labels", default=None, metavar="COL1,COL2,...", help=LABEL_HELP["soft"]),
        click.option("--classes", default=None, metavar="LIST", help=LABEL_HELP["classes"]),
        click.option("--hidden", type=int, default=None, metavar="N",
                     help="One hidden layer of N units (an MLP) instead of a linear probe."),
        click.option("--val-fraction", type=float, default=0.1, show_default=True,
                     help="Labelled rows held out for early stopping."),
        click.option("--max-epochs", type=int, default=100, show_default=True, help="Upper limit on passes."),
        click.option("--patience", type=int, default=6, show_default=True,
                     help="Stop after this many validation checks without improvement."),
        click.option("--batch-size", type=int, default=512, show_default=True),
        click.option("--lr", type=float, default=1e-2, show_default=True, help="AdamW learning rate (cut on plateaus)."),
        click.option("--weight-decay", type=float, default=1e-4, show_default=True),
        seed_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


# --------------------------------------------------------------------------------------------------------- fit

@subcommand(cli, "fit", example=FIT_EXAMPLE)
@input_argument("emb")
@_training_options
@click.option("-o", "--output", required=True, metavar="MODEL", help="Model file to write (.model, an npz).")
@click.option("--overwrite", is_flag=True, help="Replace MODEL if it exists.")
def fit(emb, label, soft_labels, classes, hidden, val_fraction, max_epochs, patience, batch_size, lr, weight_decay,
        seed, output, overwrite):
    """Train a classifier on the labelled rows of EMB (an embedding table from gal-embed, or '-').

    Cross-entropy against the labels, or against the vote fractions as soft targets (-sum_c t_c log q_c; a hard
    label is the one-hot case); AdamW with the learning rate cut on plateaus, early stopping on a held-out
    validation split, the best weights kept. The model file records the classes, where their labels came from,
    the seed, the losses and the encoder's sha256 (embeddings of another encoder are refused later).
    """
    from galtools.classify.fit import fit_table
    from galtools.classify.labels import label_spec
    from galtools.heads import check_head_output

    spec = label_spec(label, soft_labels, classes)
    settings = _settings(hidden, val_fraction, max_epochs, patience, batch_size, lr, weight_decay, seed)
    check_head_output(output, overwrite)
    model = fit_table(emb, spec, settings)
    model.info["source"] = "stdin" if emb == "-" else emb
    model.save(output, overwrite=overwrite)
    record = model.info["training"]
    log.info(f"wrote {output}: {model.kind}, {len(model.classes)} classes, {model.info['n_train']} training rows, "
             f"best validation loss {record['best_val_loss']:.4f} after {record['best_check']} of "
             f"{record['checks']} checks")


# ----------------------------------------------------------------------------------------------------- predict

@subcommand(cli, "predict", example=PREDICT_EXAMPLE)
@input_argument("emb")
@click.option("--model", "model_path", required=True, metavar="MODEL", help="A model from 'gal-classify fit'.")
@click.option("--keep-embedding", is_flag=True, help="Carry the embedding column through (e.g. for gal-map).")
@shard_option
@output_options()
def predict(emb, model_path, keep_embedding, shard, output, fmt, overwrite):
    """Predict the class of every row of EMB (an embedding table from gal-embed, or '-').

    Adds predicted_class (the most probable class), predicted_prob (its probability) and prob_<class> for each
    class; the other columns (labels included, so that 'eval' can use them) are carried through.
    """
    from galtools.classify.model import KINDS, TOOL, ClassifierModel
    from galtools.classify.predict import predict_table
    from galtools.cli.common import resolve_shard
    from galtools.heads import load_head
    from galtools.io import check_output_path

    head = load_head(model_path, TOOL, KINDS)
    model = ClassifierModel.from_head(head)
    selected = resolve_shard(shard)
    if selected is not None and "{shard}" in output:
        output = selected.format_path(output)
    check_output_path(output, overwrite)

    def check(dim, sha, name):
        head.check_embeddings(dim, sha, name, log)

    with progress_bar(None, "classifying") as bar:
        rows = predict_table(emb, model, check, output, fmt=fmt, overwrite=overwrite, keep_embedding=keep_embedding,
                             shard=selected, progress=bar.advance)
    log.debug(f"{rows} predictions written")


# -------------------------------------------------------------------------------------------------------- eval

@subcommand(cli, "eval", example=EVAL_EXAMPLE)
@input_argument("pred")
@click.option("--label", default=None, metavar="COLUMN",
              help="Truth column (default: the one the model was fitted on).")
@click.option("--soft-labels", default=None, metavar="NAME=COL,...",
              help="Vote-fraction columns as truth, one per class of the model (default: the model's own).")
@click.option("--confident", type=float, default=0.8, show_default=True,
              help="With votes: also report on rows whose winning vote fraction exceeds this.")
@click.option("--calibration-bins", type=click.IntRange(2), default=10, show_default=True,
              help="Bins of the top-class probability for the calibration curve.")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--plot", metavar="PNG", help="Draw the confusion matrix and the calibration curve.")
@click.option("--overwrite", is_flag=True, help="Replace PNG if it exists.")
def evaluate(pred, label, soft_labels, confident, calibration_bins, as_json, plot, overwrite):
    """Metrics of the predictions in PRED (a table from 'gal-classify predict', or '-') against the truth:

    \b
    accuracy, balanced accuracy (mean recall over the classes present), per-class precision and recall,
    the confusion matrix, the log loss and the calibration of the top-class probability (ECE).
    With vote fractions the truth is the majority vote, and the rows whose winning fraction exceeds
    --confident are also scored on their own. Rows without a usable truth are skipped (and counted).
    """
    from galtools.classify.evaluate import evaluate as evaluate_predictions
    from galtools.classify.evaluate import format_report, plot_report, read_predictions
    from galtools.io import atomic_file, check_output_path

    if plot:
        check_output_path(plot, overwrite)
    report = evaluate_predictions(read_predictions(pred, label, soft_labels), confident, calibration_bins)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    if plot:
        with atomic_file(plot) as path:
            plot_report(report, path)


# ------------------------------------------------------------------------------------------------------- curve

@subcommand(cli, "curve", example=CURVE_EXAMPLE)
@input_argument("emb")
@_training_options
@click.option("--fractions", default="0.01,0.03,0.1,0.3,1", show_default=True,
              help="Fractions of the training pool to train on (nested subsets).")
@click.option("--test-fraction", type=float, default=0.2, show_default=True,
              help="Labelled rows set aside once as the common test set.")
@click.option("--json", "as_json", is_flag=True, help="Print the curve as JSON instead of a table.")
@click.option("--plot", metavar="PNG", help="Draw accuracy and balanced accuracy against the number of labels.")
@click.option("-o", "--output", default=None, metavar="TABLE", help="Also write the curve as a table (.parquet ...).")
@click.option("--format", "fmt", type=click.Choice(["fits", "parquet", "arrow", "arrow-stream", "csv", "tsv"]),
              default=None, help="Format of -o (default: from the extension).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def curve(emb, label, soft_labels, classes, hidden, val_fraction, max_epochs, patience, batch_size, lr,
          weight_decay, seed, fractions, test_fraction, as_json, plot, output, fmt, overwrite):
    """The label-efficiency curve: accuracy and balanced accuracy of the classifier (and of predicting the most
    frequent class) against the number of labels, on one fixed test set, from nested random subsets.

    The labelled rows of EMB are held in memory.
    """
    from galtools.classify.curve import format_curve, label_curve, plot_curve
    from galtools.classify.fit import read_labelled
    from galtools.classify.labels import label_spec
    from galtools.io import atomic_file, check_output_path
    from galtools.photoz.curve import parse_fractions

    spec = label_spec(label, soft_labels, classes)
    settings = _settings(hidden, val_fraction, max_epochs, patience, batch_size, lr, weight_decay, seed)
    wanted = parse_fractions(fractions)
    if not 0 < test_fraction < 1:
        from galtools.errors import UsageProblem

        raise UsageProblem(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    if plot:
        check_output_path(plot, overwrite)
    if output:
        check_output_path(output, overwrite)
    rows = read_labelled(emb, spec)
    points = label_curve(rows, wanted, settings, test_fraction)
    if output == "-":
        pass                       # stdout carries the table
    elif as_json:
        click.echo(json.dumps({"classes": list(rows.labels.classes), "seed": seed, "test_fraction": test_fraction,
                               "rows": points}, indent=2))
    else:
        click.echo(format_curve(points))
    if output:
        import pyarrow as pa

        from galtools.io import open_output

        with open_output(output, overwrite=overwrite, fmt=fmt, tool="gal-classify", seed=seed) as out:
            out.write(pa.Table.from_pylist(points))
    if plot:
        with atomic_file(plot) as path:
            plot_curve(points, path)


main = cli

if __name__ == "__main__":
    main()

"""gal-classify: morphology from the representation (a linear probe or small MLP on frozen embeddings), with hard
labels or crowd vote fractions, its metrics and the label-efficiency curve."""
from __future__ import annotations

import json

import click

from galtools.cli.common import (galtools_group, input_argument, log, output_options, progress_bar, shard_option,
                                 subcommand)
from galtools.cli.heads_options import (curve_options, curve_prologue, draw, emit_curve, model_option, model_output,
                                        network_options, option_group, report_options, score_prologue,
                                        training_options)

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
gal-classify curve emb.parquet --label morph_class --images cutouts.fits --checkpoint run/last.pt --plot curve.png
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


@option_group("label_options")
def _label_options():
    return [click.option("--label", default=None, metavar="COLUMN", help=LABEL_HELP["label"]),
            click.option("--soft-labels", default=None, metavar="COL1,COL2,...", help=LABEL_HELP["soft"]),
            click.option("--classes", default=None, metavar="LIST", help=LABEL_HELP["classes"])]


def _spec_and_settings(label_options, training):
    from galtools.classify.fit import ClassifySettings
    from galtools.classify.labels import label_spec

    spec = label_spec(label_options["label"], label_options["soft_labels"], label_options["classes"])
    return spec, ClassifySettings(**training).validate()


# --------------------------------------------------------------------------------------------------------- fit

@subcommand(cli, "fit", example=FIT_EXAMPLE)
@input_argument("emb")
@_label_options
@training_options()
@model_output
def fit(emb, label_options, training, output, overwrite):
    """Train a classifier on the labelled rows of EMB (an embedding table from gal-embed, or '-').

    Cross-entropy against the labels, or against the vote fractions as soft targets (-sum_c t_c log q_c; a hard
    label is the one-hot case); AdamW with the learning rate cut on plateaus, early stopping on a held-out
    validation split, the best weights kept. The model file records the classes, where their labels came from,
    the seed, the losses, whether the run stopped by patience or at --max-epochs, and the encoder's sha256
    (embeddings of another encoder are refused later).
    """
    from galtools.classify.fit import fit_table
    from galtools.heads import check_head_output
    from galtools.heads.train import describe_run
    from galtools.io import display_name

    spec, settings = _spec_and_settings(label_options, training)
    check_head_output(output, overwrite)
    model = fit_table(emb, spec, settings)
    model.info["source"] = display_name(emb)
    model.save(output, overwrite=overwrite)
    log.info(f"wrote {output}: {model.kind}, {len(model.classes)} classes, {model.info['n_train']} training rows, "
             f"{describe_run(model.info['training'])}")


# ----------------------------------------------------------------------------------------------------- predict

@subcommand(cli, "predict", example=PREDICT_EXAMPLE)
@input_argument("emb")
@model_option("gal-classify")
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

    head, writing = score_prologue(model_path, TOOL, KINDS, output, fmt, overwrite, shard)
    with progress_bar(None, "classifying") as bar:
        rows = predict_table(emb, ClassifierModel.from_head(head), head, writing.path, fmt=fmt, overwrite=overwrite,
                             keep_embedding=keep_embedding, shard=writing.shard, progress=bar.advance)
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
@report_options("Draw the confusion matrix and the calibration curve.")
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
    from galtools.cli.heads_options import check_outputs

    check_outputs(overwrite, plot)
    report = evaluate_predictions(read_predictions(pred, label, soft_labels), confident, calibration_bins)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
    draw(plot, plot_report, report)


# ------------------------------------------------------------------------------------------------------- curve

@subcommand(cli, "curve", example=CURVE_EXAMPLE)
@input_argument("emb")
@_label_options
@training_options()
@network_options
@curve_options("Draw accuracy and balanced accuracy against the number of labels.")
def curve(emb, label_options, training, network, curve):
    """The label-efficiency curve: accuracy and balanced accuracy of the classifier (and of predicting the most
    frequent class) against the number of labels, on one fixed test set, from nested random subsets.

    With --images and --checkpoint, also the baselines on the same subsets and test set: the classifier on the
    pixels (PCA fitted without labels, its number of components chosen by validation loss) and on the encoder with
    random weights, the encoder fine-tuned and the same network from scratch (batch 64, lr 1e-3). Every arm stops
    by the same rule; the 'stopped' column says whether by patience or at --max-epochs (then it had not
    converged). The labelled rows are held in memory.
    """
    from galtools.classify.curve import format_classify_curve, label_curve, plot_classify_curve
    from galtools.classify.fit import read_labelled

    spec, settings = _spec_and_settings(label_options, training)
    fractions, writing = curve_prologue(curve)
    images = _network_inputs(emb, network, training) if network["images"] or network["checkpoint"] else None
    rows = read_labelled(emb, spec, with_ids=images is not None)
    if images is not None:
        from galtools.finetune import cutouts_for, load_checkpoint

        source = load_checkpoint(network["checkpoint"])
        images = (cutouts_for(network["images"], rows.ids, source.bands), source, images)
    points = label_curve(rows, fractions, settings, curve["test_fraction"], images)
    emit_curve(points, curve, writing, format_classify_curve(points), {"classes": list(rows.labels.classes),
               "seed": settings.seed}, settings.seed, plot_classify_curve)


def _network_inputs(emb, network, training):
    """The NetworkSettings of the curve's network arms (after checking --images and --checkpoint)."""
    from galtools.classify.fit import ClassifySettings
    from galtools.errors import UsageProblem
    from galtools.finetune import DEFAULT_AUGMENT, NETWORK_DEFAULTS, NetworkSettings

    if not (network["images"] and network["checkpoint"]):
        raise UsageProblem("the curve on cutouts needs both --images and --checkpoint", "give both, or neither")
    if emb == "-":
        raise UsageProblem("the curve on cutouts reads EMB twice: give a file, not '-'")
    return NetworkSettings(fit=ClassifySettings(**{**training, **NETWORK_DEFAULTS}),
                           backbone_lr_factor=network["backbone_lr_factor"],
                           augment=network["augment_spec"] or DEFAULT_AUGMENT, device=network["device"]).validate()


main = cli

if __name__ == "__main__":
    main()

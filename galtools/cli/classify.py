"""gal-classify: morphology from the representation (a linear probe or small MLP on frozen embeddings), with hard
labels or crowd vote fractions, its metrics and the label-efficiency curve."""
from __future__ import annotations

import click

from galtools.cli.classify_options import (CURVE_EXAMPLE, EVAL_EXAMPLE, EXAMPLE, FIT_EXAMPLE, PREDICT_EXAMPLE,
                                           eval_options, label_options)
from galtools.cli.common import galtools_group, input_argument, output_options, shard_option, subcommand
from galtools.cli.heads_options import (curve_options, model_option, model_output, network_options, report_options,
                                        training_options)
from galtools.cli.heads_steps import run_curve, run_eval, score_prologue, write_predictions


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


# --------------------------------------------------------------------------------------------------------- fit

@subcommand(cli, "fit", example=FIT_EXAMPLE)
@input_argument("emb")
@label_options
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
    from galtools.classify.fit import settings_of
    from galtools.finetune.task import fit_command

    fit_command(settings_of, emb, output, overwrite, label_options, training)


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
    model = ClassifierModel.from_head(head)
    write_predictions(emb, writing, lambda table, name, out, progress: predict_table(
        table, name, model, head, out, keep_embedding=keep_embedding, progress=progress), "classifying")


# -------------------------------------------------------------------------------------------------------- eval

@subcommand(cli, "eval", example=EVAL_EXAMPLE)
@input_argument("pred")
@eval_options
@report_options("Draw the confusion matrix and the calibration curve.")
def evaluate(pred, options, as_json, plot, overwrite):
    """Metrics of the predictions in PRED (a table from 'gal-classify predict', or '-') against the truth:

    \b
    accuracy, balanced accuracy (mean recall over the classes present), per-class precision and recall,
    the confusion matrix, the log loss and the calibration of the top-class probability (ECE).
    With vote fractions the truth is the majority vote, and the rows whose winning fraction exceeds
    --confident are also scored on their own. Rows without a usable truth are skipped (and counted).
    """
    from galtools.classify.task import MorphologyTask

    run_eval(MorphologyTask(), pred, options, as_json, plot, overwrite)


# ------------------------------------------------------------------------------------------------------- curve

@subcommand(cli, "curve", example=CURVE_EXAMPLE)
@input_argument("emb")
@label_options
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
    from galtools.classify.fit import settings_of

    run_curve(settings_of, emb, label_options, training, network, curve)


main = cli

if __name__ == "__main__":
    main()

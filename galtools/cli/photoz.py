"""gal-photoz: photometric redshifts from the representation (a classifier over redshift bins), with the
literature's metrics and the label-efficiency curve."""
from __future__ import annotations

from galtools.cli.common import galtools_group, input_argument, output_options, shard_option, subcommand
from galtools.cli.heads_options import curve_options, model_option, model_output, network_options, report_options
from galtools.cli.heads_steps import run_curve, run_eval, score_prologue, write_predictions
from galtools.cli.photoz_options import (CURVE_EXAMPLE, EVAL_EXAMPLE, EXAMPLE, FIT_EXAMPLE, PREDICT_EXAMPLE,
                                         eval_options, fit_options, predict_options, training, z_options)

@galtools_group("gal-photoz", example=EXAMPLE)
def cli():
    """Photometric redshifts from embeddings: a classifier over redshift bins (Hayat et al. 2021).

    \b
    gal-photoz fit EMB -o MODEL        train a linear probe (or --hidden N MLP) on rows with a z_spec
    gal-photoz predict EMB --model M   z_phot, z_phot_mode, z_phot_std and the binned pdf z_pdf per object
    gal-photoz eval PRED --truth Z     bias, sigma_MAD, outlier fraction eta; in bins of z and magnitude
    gal-photoz curve EMB               sigma_MAD and eta against the number of labels

    Fitting needs torch; predicting needs numpy only.
    """


# --------------------------------------------------------------------------------------------------------- fit

@subcommand(cli, "fit", example=FIT_EXAMPLE)
@input_argument("emb")
@z_options
@training
@fit_options
@network_options
@model_output
def fit(emb, z_options, training, mode, network, output, overwrite):
    """Train a photo-z model on the rows of EMB that have a redshift.

    By default a linear probe (or --hidden N MLP) on EMB's embeddings: cross-entropy over --bins equal bins in
    [0, --zmax], AdamW with the learning rate cut on plateaus, early stopping on a held-out validation split;
    the best weights are kept. The model file records the seed, the counts, the losses, whether the run stopped
    by patience or at --max-epochs, and the encoder's sha256 (predictions on embeddings of another encoder are
    refused).

    With --finetune (or --from-scratch) the network of --checkpoint is trained on images instead, by the same
    stopping rule: EMB's labelled object_ids are looked up in --images (or EMB is itself a cutout table with the
    redshift column); the model file then carries the trained encoder, and 'gal-photoz predict CUTOUTS' runs it.
    """
    from galtools.finetune.task import fit_command
    from galtools.photoz.fit import settings_of

    fit_command(settings_of, emb, output, overwrite, {**z_options, "stream": mode["stream"]}, training, network,
                mode["finetune"], mode["from_scratch"])


# ----------------------------------------------------------------------------------------------------- predict

@subcommand(cli, "predict", example=PREDICT_EXAMPLE)
@input_argument("emb")
@model_option("gal-photoz")
@predict_options
@shard_option
@output_options()
def predict(emb, model_path, options, shard, output, fmt, overwrite):
    """Predict redshifts for every row of EMB (an embedding table from gal-embed, or '-'; or a cutout table, embedded
    on the way by the model's fine-tuned encoder or --encoder, as gal-embed does).

    Adds z_phot (the pdf's mean over the bin centres), z_phot_mode (the most probable bin's centre), z_phot_std
    (the pdf's standard deviation) and z_pdf (the bin probabilities, fixed_size_list<float32>[n_bins]); the other
    columns (the embedding too, unless --drop-embedding) are carried through.
    """
    from galtools.io import check_unique_ids
    from galtools.photoz.model import KINDS, TOOL, PhotozModel
    from galtools.photoz.predict import predict_table

    head, writing = score_prologue(model_path, TOOL, KINDS, output, fmt, overwrite, shard)
    if options["truth"]:   # metrics against the truth would count a repeated object twice
        check_unique_ids(emb)
    model = PhotozModel.from_head(head)
    write_predictions(emb, writing, lambda table, name, out, progress: predict_table(
        table, name, model, head, out, with_pdf=not options["no_pdf"], keep_embedding=not options["drop_embedding"],
        truth=options["truth"], encoder=options["encoder"], device=options["device"], progress=progress,
        strict=options["strict"]), "predicting")


# -------------------------------------------------------------------------------------------------------- eval

@subcommand(cli, "eval", example=EVAL_EXAMPLE)
@input_argument("pred")
@eval_options
@report_options("Draw z_phot against z_spec (density, outlier bounds) and the dz histogram.")
def evaluate(pred, options, as_json, plot, overwrite):
    """Metrics of predictions against true redshifts, with dz = (z_phot - z_spec) / (1 + z_spec):

    \b
    bias       median(dz)
    sigma_MAD  1.4826 x median(|dz - median(dz)|)
    eta        percentage of objects with |dz| > 0.05
    Rows without a prediction or a truth are skipped (and counted).
    """
    from galtools.photoz.task import PhotozTask

    run_eval(PhotozTask(), pred, options, as_json, plot, overwrite)


# ------------------------------------------------------------------------------------------------------- curve

@subcommand(cli, "curve", example=CURVE_EXAMPLE)
@input_argument("emb")
@z_options
@training
@network_options
@curve_options("Draw sigma_MAD and eta against the number of labels.")
def curve(emb, z_options, training, network, curve):
    """The label-efficiency curve: sigma_MAD and eta of the linear probe (and of predicting the training median)
    against the number of labels, on one fixed test set, from nested random subsets of the labelled rows.

    With --images and --checkpoint, also the baselines on the same subsets and test set: the same probe on the
    pixels (PCA fitted without labels, its number of components chosen by validation loss) and on the encoder with
    random weights, the encoder fine-tuned end to end and the same network trained from scratch: the label-efficiency
    experiment of Hayat et al. 2021.
    --batch-size and --lr apply to the probes; the networks use 64 and 1e-3. Every arm stops by the same rule;
    'stopped' says whether by patience or at --max-epochs (not converged). Labelled rows are held in memory.
    """
    from galtools.photoz.fit import settings_of

    run_curve(settings_of, emb, z_options, training, network, curve)


main = cli

if __name__ == "__main__":
    main()

"""gal-photoz: photometric redshifts from the representation (a classifier over redshift bins), with the
literature's metrics and the label-efficiency curve."""
from __future__ import annotations

import json

import click

from galtools.cli.common import (galtools_group, input_argument, log, output_options, progress_bar,
                                 shard_option, subcommand)
from galtools.cli.heads_options import (check_outputs, curve_options, curve_prologue, draw, emit_curve, model_option,
                                        model_output, network_options, option_group, report_options, score_prologue,
                                        training_options)

EXAMPLE = """gal-photoz fit emb.parquet --z-column z_spec -o photoz.model
gal-photoz predict emb.parquet --model photoz.model -o pred.parquet
gal-photoz eval pred.parquet --truth z_spec --mag r_mag --plot photoz.png
gal-photoz curve emb.parquet --z-column z_spec --fractions 0.01,0.03,0.1,0.3,1 --plot curve.png"""

FIT_EXAMPLE = """gal-photoz fit emb.parquet --z-column z_spec -o photoz.model
gal-photoz fit emb.parquet --hidden 256 --bins 180 --zmax 0.4 --seed 1 -o photoz-mlp.model
gal-photoz fit emb.parquet --finetune --checkpoint run/last.pt --images cutouts.fits -o finetuned.model
gal-photoz fit cutouts.fits --from-scratch --checkpoint run/last.pt --device cuda -o scratch.model"""

PREDICT_EXAMPLE = """gal-photoz predict emb.parquet --model photoz.model -o pred.parquet
gal-photoz predict emb.parquet --model photoz.model --truth z_spec | gal-ood score - --model ood.model -o both.pq
gal-embed cutouts.fits --model encoder.onnx | gal-photoz predict - --model photoz.model --no-pdf | gal-info -"""

EVAL_EXAMPLE = """gal-photoz eval pred.parquet --truth z_spec
gal-photoz eval pred.parquet --truth z_spec --mag r_mag --json --plot photoz.png"""

CURVE_EXAMPLE = """gal-photoz curve emb.parquet --z-column z_spec --fractions 0.01,0.03,0.1,0.3,1 --plot curve.png
gal-photoz curve emb.parquet --images cutouts.fits --checkpoint run/last.pt --device cuda --plot curve.png
gal-photoz curve emb.parquet --json -o curve.parquet"""


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


@option_group("z_options")
def _z_options():
    return [click.option("--z-column", default="z_spec", show_default=True, help="Column of spectroscopic redshifts "
                         "(rows where it is NaN or null are not used)."),
            click.option("--bins", type=int, default=180, show_default=True, help="Number of redshift bins."),
            click.option("--zmax", type=float, default=0.4, show_default=True, help="Upper end of the bins. More "
                         "than 1% of the labels at or above it is an error naming the --zmax that covers them."),
            click.option("--clip-labels", is_flag=True, help="Put labels at or above --zmax in the last bin, "
                         "however many there are (with a warning)."),
            click.option("--label-smoothing", type=float, default=0.0, show_default=True, metavar="BINS",
                         help="Spread each label over a Gaussian of this many bins (0: one-hot, as Hayat et al. 2021). "
                              "With a few thousand labels, 2 helps (docs/heads.md).")]


_training = training_options(batch_size=None, lr=None, batch_help="Rows per step (default: 512 for the probe, 64 on "
                             "images).", lr_help="AdamW learning rate of the head (default: 1e-2 for the probe; 1e-3 "
                             "on images; cut on plateaus).")


# --------------------------------------------------------------------------------------------------------- fit

@subcommand(cli, "fit", example=FIT_EXAMPLE)
@input_argument("emb")
@_z_options
@_training
@click.option("--stream/--in-memory", "stream", default=None,
              help="Re-read EMB on every pass instead of holding the labelled rows in memory "
                   "(default: stream when they exceed 2 GiB).")
@click.option("--finetune", is_flag=True, help="Fine-tune the encoder of --checkpoint end to end on the cutouts.")
@click.option("--from-scratch", is_flag=True, help="Train the same network from random weights (the supervised "
              "baseline).")
@network_options
@model_output
def fit(emb, z_options, training, stream, finetune, from_scratch, network, output, overwrite):
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
    from galtools.errors import UsageProblem
    from galtools.heads import check_head_output
    from galtools.heads.train import describe_run
    from galtools.io import display_name
    from galtools.photoz.finetune import fit_settings, network_settings

    on_images = finetune or from_scratch
    if finetune and from_scratch:
        raise UsageProblem("--finetune and --from-scratch exclude each other", "choose one")
    if on_images and not network["checkpoint"]:
        raise UsageProblem("--finetune and --from-scratch need --checkpoint", "a gal-train checkpoint, RUN/last.pt")
    if not on_images and (network["checkpoint"] or network["images"]):
        raise UsageProblem("--checkpoint and --images are for --finetune or --from-scratch", "add one of them")
    settings = fit_settings(training, {**z_options, "stream": stream}, on_images)
    check_head_output(output, overwrite)
    if on_images:
        from galtools.photoz.finetune import fit_network

        model = fit_network(emb, network["images"] or emb, network["checkpoint"], z_options["z_column"],
                            network_settings(settings, network, from_scratch))
    else:
        from galtools.photoz.fit import fit_table

        model = fit_table(emb, z_options["z_column"], settings)
    log.info(f"{model.kind}: {model.info['n_train']} training rows, {describe_run(model.info['training'])}")
    model.info["source"] = display_name(emb)
    from galtools.photoz.fit import training_fingerprints

    model.training_ids = training_fingerprints(emb, z_options["z_column"])   # eval warns on these rows
    model.save(output, overwrite=overwrite)


# ----------------------------------------------------------------------------------------------------- predict

@subcommand(cli, "predict", example=PREDICT_EXAMPLE)
@input_argument("emb")
@model_option("gal-photoz")
@click.option("--no-pdf", is_flag=True, help="Leave out the z_pdf column (n_bins floats per object).")
@click.option("--drop-embedding", is_flag=True,
              help="Leave out the embedding column (kept by default, so the output can go on to gal-ood).")
@click.option("--truth", default=None, metavar="COLUMN",
              help="Also add dz = (z_phot - COLUMN) / (1 + COLUMN) and abs_dz (e.g. for gal-ood eval --error-column).")
@click.option("--encoder", metavar="ONNX", help="For a cutout table: the encoder.onnx whose embeddings the model "
              "was fitted on (a fine-tuned model carries its own).")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
              help="Where the encoder runs, for a cutout table.")
@click.option("--strict", is_flag=True, help="For a cutout table: stop (exit 65) when its pixel scale is more than "
              "10% from the encoder's or its flux unit differs, instead of warning.")
@shard_option
@output_options()
def predict(emb, model_path, no_pdf, drop_embedding, truth, encoder, device, strict, shard, output, fmt, overwrite):
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
    if truth:   # metrics against the truth would count a repeated object twice
        check_unique_ids(emb)
    with progress_bar(None, "predicting") as bar:
        rows = predict_table(emb, PhotozModel.from_head(head), head, writing.path, fmt=fmt, overwrite=overwrite,
                             with_pdf=not no_pdf, keep_embedding=not drop_embedding, truth=truth,
                             shard=writing.shard, encoder=encoder, device=device, progress=bar.advance, strict=strict)
    log.debug(f"{rows} predictions written")


# -------------------------------------------------------------------------------------------------------- eval

@subcommand(cli, "eval", example=EVAL_EXAMPLE)
@input_argument("pred")
@click.option("--truth", default="z_spec", show_default=True, help="Column of true (spectroscopic) redshifts.")
@click.option("--pred-column", default="z_phot", show_default=True, help="Column of predicted redshifts.")
@click.option("--mag", "mag_column", default=None, metavar="COLUMN", help="Also report in bins of this magnitude.")
@click.option("--mag-bins", type=click.IntRange(1), default=5, show_default=True,
              help="Number of magnitude bins (equal counts).")
@click.option("--z-bins", type=click.IntRange(1), default=8, show_default=True,
              help="Number of equal-width z_spec bins over [0, zmax].")
@report_options("Draw z_phot against z_spec (density, outlier bounds) and the dz histogram.")
def evaluate(pred, truth, pred_column, mag_column, mag_bins, z_bins, as_json, plot, overwrite):
    """Metrics of predictions against true redshifts, with dz = (z_phot - z_spec) / (1 + z_spec):

    \b
    bias       median(dz)
    sigma_MAD  1.4826 x median(|dz - median(dz)|)
    eta        percentage of objects with |dz| > 0.05
    Rows without a prediction or a truth are skipped (and counted).
    """
    from galtools.photoz.evaluate import evaluate_table, format_report, plot_report

    check_outputs(overwrite, plot)
    arrays, report, zmax = evaluate_table(pred, truth, pred_column, mag_column, z_bins, mag_bins)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report, mag_column))
    draw(plot, lambda path: plot_report(arrays["pred_column"], arrays["truth"], report, path, zmax))


# ------------------------------------------------------------------------------------------------------- curve

@subcommand(cli, "curve", example=CURVE_EXAMPLE)
@input_argument("emb")
@_z_options
@_training
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
    from galtools.errors import UsageProblem
    from galtools.photoz.curve import format_photoz_curve, photoz_curve, plot_photoz_curve, probe_arms, split_for
    from galtools.photoz.finetune import fit_settings, network_settings
    from galtools.photoz.fit import read_labelled_table

    settings = fit_settings(training, z_options)
    fractions, writing = curve_prologue(curve)
    images, checkpoint = network["images"], network["checkpoint"]
    if bool(images) != bool(checkpoint):
        raise UsageProblem("the fine-tuning curve needs both --images and --checkpoint", "give both, or neither")
    if images and emb == "-":
        raise UsageProblem("the fine-tuning curve reads EMB twice: give a file, not '-'")
    if images:
        on_images = network_settings(fit_settings(training, z_options, on_images=True, probe=False), network)
    x, z, model_sha256, ids = read_labelled_table(emb, z_options["z_column"], settings.n_bins, bool(images))
    split = split_for(z, fractions, settings, curve["test_fraction"])
    arms = probe_arms(x, z, settings, model_sha256)
    if images:
        from galtools.photoz.curve import baseline_arms, network_arms
        from galtools.finetune import LabelledCutouts, cutouts_for, load_checkpoint

        source = load_checkpoint(checkpoint)
        data = LabelledCutouts(cutouts_for(images, ids, source.bands), z, ids)
        arms += baseline_arms(data, source, x.shape[1], settings) + network_arms(data, source, on_images)
    rows = photoz_curve(z, split, arms)
    emit_curve(rows, curve, writing, format_photoz_curve(rows), {"z_column": z_options["z_column"],
               "seed": settings.seed}, settings.seed, plot_photoz_curve)


main = cli

if __name__ == "__main__":
    main()

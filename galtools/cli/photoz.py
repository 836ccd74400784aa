"""gal-photoz: photometric redshifts from the representation (a classifier over redshift bins), with the
literature's metrics and the label-efficiency curve."""
from __future__ import annotations

import json

import click

from galtools.cli.common import (galtools_group, input_argument, log, output_options, progress_bar, seed_option,
                                 shard_option, subcommand)

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


# Defaults that differ between the probe on embeddings and training on images.
PROBE_DEFAULTS = {"batch_size": 512, "lr": 1e-2}
NETWORK_DEFAULTS = {"batch_size": 64, "lr": 1e-3}


def _fit_settings(bins, zmax, hidden, label_smoothing, val_fraction, max_epochs, patience, batch_size, lr,
                  weight_decay, seed, stream, on_images=False, clip_labels=False):
    from galtools.photoz.fit import FitSettings

    defaults = NETWORK_DEFAULTS if on_images else PROBE_DEFAULTS
    return FitSettings(n_bins=bins, zmax=zmax, hidden=hidden, val_fraction=val_fraction, max_epochs=max_epochs,
                       patience=patience, batch_size=batch_size or defaults["batch_size"], lr=lr or defaults["lr"],
                       weight_decay=weight_decay, seed=seed, stream=stream,
                       label_smoothing=label_smoothing, clip_labels=clip_labels).validate()


def _training_options(func):
    options = [
        click.option("--z-column", default="z_spec", show_default=True, help="Column of spectroscopic redshifts "
                     "(rows where it is NaN or null are not used)."),
        click.option("--bins", type=int, default=180, show_default=True, help="Number of redshift bins."),
        click.option("--zmax", type=float, default=0.4, show_default=True,
                     help="Upper end of the bins. More than 1% of the labels at or above it is an error "
                          "naming the --zmax that covers them."),
        click.option("--clip-labels", is_flag=True, help="Put labels at or above --zmax in the last bin, however "
                     "many there are (with a warning)."),
        click.option("--hidden", type=int, default=None, metavar="N",
                     help="One hidden layer of N units (an MLP) instead of a linear head."),
        click.option("--label-smoothing", type=float, default=0.0, show_default=True, metavar="BINS",
                     help="Spread each label over a Gaussian of this many bins (0: one-hot, as the paper). With "
                          "about 3,300 labels on gal-sim, 2 lowered sigma_MAD from 0.032-0.034 to 0.029."),
        click.option("--val-fraction", type=float, default=0.1, show_default=True,
                     help="Labelled rows held out for early stopping."),
        click.option("--max-epochs", type=int, default=100, show_default=True, help="Upper limit on passes."),
        click.option("--patience", type=int, default=6, show_default=True,
                     help="Stop after this many validation checks without improvement."),
        click.option("--batch-size", type=int, default=None,
                     help="Rows per step (default: 512 for the probe, 64 on images)."),
        click.option("--lr", type=float, default=None,
                     help="AdamW learning rate of the head (default: 1e-2 for the probe, cut on plateaus; 1e-3 on "
                          "images)."),
        click.option("--weight-decay", type=float, default=1e-4, show_default=True),
        seed_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _network_options(func):
    options = [
        click.option("--checkpoint", metavar="CKPT", help="A gal-train checkpoint (RUN/last.pt): its encoder, bands, "
                     "input size and preprocessing."),
        click.option("--images", metavar="CUTOUTS", help="The cutout table the embeddings were made from (matched "
                     "by object_id)."),
        click.option("--backbone-lr-factor", type=float, default=0.1, show_default=True,
                     help="Fine-tuning: the encoder's learning rate as a fraction of the head's."),
        click.option("--augment", "augment_spec", default=None, metavar="SPEC",
                     help="Augmentations of the training views (galtools.augment spec; default "
                          "'rotate,flip,jitter:max_shift=2', which leave a redshift unchanged)."),
        click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
                     help="Where to train the network; 'cuda' without a usable GPU exits 69."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _network_settings(fit_settings, backbone_lr_factor, augment_spec, device, from_scratch=False):
    from galtools.photoz.finetune import DEFAULT_AUGMENT, FinetuneSettings

    return FinetuneSettings(fit=fit_settings, backbone_lr_factor=backbone_lr_factor,
                            augment=augment_spec or DEFAULT_AUGMENT, from_scratch=from_scratch,
                            device=device).validate()


# --------------------------------------------------------------------------------------------------------- fit

@subcommand(cli, "fit", example=FIT_EXAMPLE)
@input_argument("emb")
@_training_options
@click.option("--stream/--in-memory", "stream", default=None,
              help="Re-read EMB on every pass instead of holding the labelled rows in memory "
                   "(default: stream when they exceed 2 GiB).")
@click.option("--finetune", is_flag=True, help="Fine-tune the encoder of --checkpoint end to end on the cutouts.")
@click.option("--from-scratch", is_flag=True, help="Train the same network from random weights (the supervised "
              "baseline).")
@_network_options
@click.option("-o", "--output", required=True, metavar="MODEL", help="Model file to write (.model, an npz).")
@click.option("--overwrite", is_flag=True, help="Replace MODEL if it exists.")
def fit(emb, z_column, bins, zmax, hidden, label_smoothing, val_fraction, max_epochs, patience, batch_size, lr,
        weight_decay, seed, stream, finetune, from_scratch, checkpoint, images, backbone_lr_factor, augment_spec,
        device, output, overwrite, clip_labels=False):
    """Train a photo-z model on the rows of EMB that have a redshift.

    By default a linear probe (or --hidden N MLP) on EMB's embeddings: cross-entropy over --bins equal bins in
    [0, --zmax], AdamW with the learning rate cut on plateaus, early stopping on a held-out validation split;
    the best weights are kept. The model file records the seed, the counts, the losses and the encoder's sha256
    (predictions on embeddings of another encoder are refused).

    With --finetune (or --from-scratch) the network of --checkpoint is trained on images instead: EMB's
    labelled object_ids are looked up in --images (or EMB is itself a cutout table with the redshift column);
    the model file then carries the trained encoder, and 'gal-photoz predict CUTOUTS' runs it.
    """
    from galtools.errors import UsageProblem
    from galtools.heads import check_head_output

    on_images = finetune or from_scratch
    if finetune and from_scratch:
        raise UsageProblem("--finetune and --from-scratch exclude each other", "choose one")
    if on_images and not checkpoint:
        raise UsageProblem("--finetune and --from-scratch need --checkpoint", "a gal-train checkpoint, RUN/last.pt")
    if not on_images and (checkpoint or images):
        raise UsageProblem("--checkpoint and --images are for --finetune or --from-scratch", "add one of them")
    settings = _fit_settings(bins, zmax, hidden, label_smoothing, val_fraction, max_epochs, patience, batch_size, lr,
                             weight_decay, seed, stream, on_images, clip_labels=clip_labels)
    check_head_output(output, overwrite)
    if on_images:
        model = _fit_network(emb, images, z_column, checkpoint,
                             _network_settings(settings, backbone_lr_factor, augment_spec, device, from_scratch))
    else:
        from galtools.photoz.fit import fit_table

        model = fit_table(emb, z_column, settings)
        record = model.info["training"]
        log.info(f"{model.kind}: {model.info['n_train']} training rows, best validation loss "
                 f"{record['best_val_loss']:.4f} after {record['best_check']} of {record['checks']} checks")
    model.info["source"] = "stdin" if emb == "-" else emb
    model.save(output, overwrite=overwrite)


def _fit_network(emb, images, z_column, checkpoint, settings):
    from galtools.errors import UsageProblem
    from galtools.photoz.finetune import export_network, load_checkpoint, read_labelled_cutouts, train_network

    if emb == "-" or images == "-":
        raise UsageProblem("training on images reads its inputs twice: give files, not '-'")
    source = load_checkpoint(checkpoint)
    data = read_labelled_cutouts(emb, images or emb, z_column, source.bands, settings.fit.n_bins)
    log.info(f"{'training from scratch' if settings.from_scratch else 'fine-tuning'} {source.arch} on "
             f"{len(data.z)} labelled cutouts")
    network, record = train_network(data, source, settings)
    log.info(f"best validation loss {record['best_val_loss']:.4f} after {record['best_epoch']} of "
             f"{record['epochs']} epochs")
    return export_network(network, settings, record, z_column)


# ----------------------------------------------------------------------------------------------------- predict

@subcommand(cli, "predict", example=PREDICT_EXAMPLE)
@input_argument("emb")
@click.option("--model", "model_path", required=True, metavar="MODEL", help="A model from 'gal-photoz fit'.")
@click.option("--no-pdf", is_flag=True, help="Leave out the z_pdf column (n_bins floats per object).")
@click.option("--drop-embedding", is_flag=True,
              help="Leave out the embedding column (kept by default, so the output can go on to gal-ood).")
@click.option("--truth", default=None, metavar="COLUMN",
              help="Also add dz = (z_phot - COLUMN) / (1 + COLUMN) and abs_dz (e.g. for gal-ood eval --error-column).")
@click.option("--encoder", metavar="ONNX", help="For a cutout table: the encoder.onnx whose embeddings the model "
              "was fitted on (a fine-tuned model carries its own).")
@click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
              help="Where the encoder runs, for a cutout table.")
@shard_option
@output_options()
def predict(emb, model_path, no_pdf, drop_embedding, truth, encoder, device, shard, output, fmt, overwrite):
    """Predict redshifts for every row of EMB (an embedding table from gal-embed, or '-'; or a cutout table, embedded
    on the way by the model's fine-tuned encoder or --encoder, as gal-embed does).

    Adds z_phot (the pdf's mean over the bin centres), z_phot_mode (the most probable bin's centre), z_phot_std
    (the pdf's standard deviation) and z_pdf (the bin probabilities, fixed_size_list<float32>[n_bins]); the other
    columns (the embedding too, unless --drop-embedding) are carried through.
    """
    from galtools.cli.common import resolve_shard
    from galtools.heads import load_head
    from galtools.io import check_output_path
    from galtools.photoz.model import KINDS, TOOL, PhotozModel
    from galtools.photoz.predict import predict_table

    head = load_head(model_path, TOOL, KINDS)
    model = PhotozModel.from_head(head)
    selected = resolve_shard(shard)
    if selected is not None and "{shard}" in output:
        output = selected.format_path(output)
    check_output_path(output, overwrite)
    if truth:   # metrics against the truth would count a repeated object twice
        from galtools.io import check_unique_ids

        check_unique_ids(emb)

    def check(dim, sha, name):
        head.check_embeddings(dim, sha, name, log)

    with progress_bar(None, "predicting") as bar:
        rows = predict_table(emb, model, check, output, fmt=fmt, overwrite=overwrite, with_pdf=not no_pdf,
                             keep_embedding=not drop_embedding, truth=truth, shard=selected, encoder=encoder,
                             device=device, progress=bar.advance)
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
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option("--plot", metavar="PNG", help="Draw z_phot against z_spec (density, outlier bounds) and the dz histogram.")
@click.option("--overwrite", is_flag=True, help="Replace PNG if it exists.")
def evaluate(pred, truth, pred_column, mag_column, mag_bins, z_bins, as_json, plot, overwrite):
    """Metrics of predictions against true redshifts, with dz = (z_phot - z_spec) / (1 + z_spec):

    \b
    bias       median(dz)
    sigma_MAD  1.4826 x median(|dz - median(dz)|)
    eta        percentage of objects with |dz| > 0.05
    Rows without a prediction or a truth are skipped (and counted).
    """
    import numpy as np

    from galtools.photoz.evaluate import evaluate as evaluate_predictions
    from galtools.photoz.evaluate import format_report, plot_report, read_columns
    from galtools.io import atomic_file, check_output_path
    from galtools.photoz.predict import bins_of

    if plot:
        check_output_path(plot, overwrite)
    arrays, metadata = read_columns(pred, {"pred_column": pred_column, "truth": truth, "mag": mag_column})
    bins = bins_of(metadata)
    usable_truth = arrays["truth"][np.isfinite(arrays["truth"])]
    zmax = bins[1] if bins else (float(usable_truth.max()) if usable_truth.size else 1.0)
    report = evaluate_predictions(arrays["pred_column"], arrays["truth"], arrays.get("mag"),
                                  z_edges=np.linspace(0.0, zmax, z_bins + 1), mag_bins=mag_bins)
    if mag_column:
        report["magnitude_column"] = mag_column
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_report(report, mag_column))
    if plot:
        with atomic_file(plot) as temporary:
            plot_report(arrays["pred_column"], arrays["truth"], report, temporary, zmax)


# ------------------------------------------------------------------------------------------------------- curve

@subcommand(cli, "curve", example=CURVE_EXAMPLE)
@input_argument("emb")
@_training_options
@click.option("--fractions", default="0.01,0.03,0.1,0.3,1", show_default=True,
              help="Fractions of the training pool to train on (nested subsets).")
@click.option("--test-fraction", type=float, default=0.2, show_default=True,
              help="Labelled rows set aside once as the common test set.")
@_network_options
@click.option("--json", "as_json", is_flag=True, help="Print the curve as JSON instead of a table.")
@click.option("--plot", metavar="PNG", help="Draw sigma_MAD and eta against the number of labels.")
@click.option("-o", "--output", default=None, metavar="TABLE", help="Also write the curve as a table (.parquet ...).")
@click.option("--format", "fmt", type=click.Choice(["fits", "parquet", "arrow", "arrow-stream", "csv", "tsv"]),
              default=None, help="Format of -o (default: from the extension).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def curve(emb, z_column, bins, zmax, hidden, label_smoothing, val_fraction, max_epochs, patience, batch_size, lr,
          weight_decay, seed, fractions, test_fraction, checkpoint, images, backbone_lr_factor, augment_spec, device,
          as_json, plot, output, fmt, overwrite, clip_labels=False):
    """The label-efficiency curve: sigma_MAD and eta of the linear probe (and of predicting the training median)
    against the number of labels, on one fixed test set, from nested random subsets of the labelled rows.

    With --images and --checkpoint, also the encoder fine-tuned end to end and the same network trained from
    scratch, on the same subsets and test set: the experiment behind "pre-training is worth 2-4x more labels".
    --batch-size and --lr then apply to the probe; the networks use 64 and 1e-3. The labelled rows of EMB (and
    their cutouts) are held in memory.
    """
    from galtools.io import atomic_file, check_output_path
    from galtools.photoz.curve import format_curve, linear_probe_curve, parse_fractions, plot_curve
    from galtools.photoz.fit import read_labelled

    settings = _fit_settings(bins, zmax, hidden, label_smoothing, val_fraction, max_epochs, patience, batch_size, lr,
                             weight_decay, seed, None, clip_labels=clip_labels)
    wanted = parse_fractions(fractions)
    if plot:
        check_output_path(plot, overwrite)
    if output:
        check_output_path(output, overwrite)
    from galtools.errors import UsageProblem

    if bool(images) != bool(checkpoint):
        raise UsageProblem("the fine-tuning curve needs both --images and --checkpoint", "give both, or neither")
    if images and emb == "-":
        raise UsageProblem("the fine-tuning curve reads EMB twice: give a file, not '-'")
    network_settings = None
    if images:
        network_settings = _network_settings(
            _fit_settings(bins, zmax, hidden, label_smoothing, val_fraction, max_epochs, patience, None, None,
                          weight_decay, seed, None, on_images=True, clip_labels=clip_labels), backbone_lr_factor, augment_spec, device)
    ids: list = []
    x, z, model_sha256 = read_labelled(emb, z_column, settings.n_bins, ids=ids if images else None)
    rows, split = linear_probe_curve(x, z, wanted, settings, test_fraction, model_sha256)
    if images:
        from galtools.photoz.curve import network_curve
        from galtools.photoz.finetune import LabelledCutouts, cutouts_for, load_checkpoint

        source = load_checkpoint(checkpoint)
        data = LabelledCutouts(cutouts_for(images, ids, source.bands), z, ids)
        rows += network_curve(data, split, source, network_settings)
    if output == "-":
        pass                       # stdout carries the table
    elif as_json:
        click.echo(json.dumps({"z_column": z_column, "seed": seed, "test_fraction": test_fraction, "rows": rows},
                              indent=2))
    else:
        click.echo(format_curve(rows))
    if output:
        _write_curve_table(rows, output, fmt, overwrite, seed)
    if plot:
        with atomic_file(plot) as temporary:
            plot_curve(rows, temporary)


def _write_curve_table(rows, output, fmt, overwrite, seed):
    import pyarrow as pa

    from galtools.io import open_output

    with open_output(output, overwrite=overwrite, fmt=fmt, tool="gal-photoz", seed=seed) as out:
        out.write(pa.Table.from_pylist(rows))


main = cli

if __name__ == "__main__":
    main()

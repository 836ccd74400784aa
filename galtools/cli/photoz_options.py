"""The options and examples of gal-photoz (galtools/cli/photoz.py), each group passed on as one dict."""
from __future__ import annotations

import click

from galtools.cli.heads_options import option_group, training_options

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


@option_group("z_options")
def z_options():
    return [click.option("--z-column", default="z_spec", show_default=True, help="Column of spectroscopic redshifts "
                         "(rows where it is NaN or null are not used)."),
            click.option("--bins", type=int, default=180, show_default=True, help="Number of redshift bins."),
            click.option("--zmax", type=float, default=0.4, show_default=True, help="Upper end of the bins. More "
                         "than 1% of the labels at or above it is an error naming the --zmax that covers them."),
            click.option("--clip-labels", is_flag=True, help="Put labels at or above --zmax in the last bin, "
                         "however many there are (with a warning)."),
            click.option("--label-smoothing", type=float, default=0.0, show_default=True, metavar="BINS",
                         help="Spread each label over a Gaussian of this many bins (0: one-hot, as Hayat et al. "
                              "2021). With a few thousand labels, 2 helps (docs/heads.md).")]


training = training_options(batch_size=None, lr=None, batch_help="Rows per step (default: 512 for the probe, 64 on "
                             "images).", lr_help="AdamW learning rate of the head (default: 1e-2 for the probe; 1e-3 "
                             "on images; cut on plateaus).")


@option_group("mode")
def fit_options():
    return [click.option("--stream/--in-memory", "stream", default=None,
                         help="Re-read EMB on every pass instead of holding the labelled rows in memory "
                              "(default: stream when they exceed 2 GiB)."),
            click.option("--finetune", is_flag=True,
                         help="Fine-tune the encoder of --checkpoint end to end on the cutouts."),
            click.option("--from-scratch", is_flag=True,
                         help="Train the same network from random weights (the supervised baseline).")]


@option_group("options")
def predict_options():
    return [click.option("--no-pdf", is_flag=True, help="Leave out the z_pdf column (n_bins floats per object)."),
            click.option("--drop-embedding", is_flag=True,
                         help="Leave out the embedding column (kept by default, so the output can go on to gal-ood)."),
            click.option("--truth", default=None, metavar="COLUMN",
                         help="Also add dz = (z_phot - COLUMN) / (1 + COLUMN) and abs_dz (e.g. for gal-ood eval "
                              "--error-column)."),
            click.option("--encoder", metavar="ONNX", help="For a cutout table: the encoder.onnx whose embeddings "
                         "the model was fitted on (a fine-tuned model carries its own)."),
            click.option("--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
                         help="Where the encoder runs, for a cutout table."),
            click.option("--strict", is_flag=True, help="For a cutout table: stop (exit 65) when its pixel scale is "
                         "more than 10% from the encoder's or its flux unit differs, instead of warning.")]


@option_group("options")
def eval_options():
    return [click.option("--truth", default="z_spec", show_default=True,
                         help="Column of true (spectroscopic) redshifts."),
            click.option("--pred-column", default="z_phot", show_default=True, help="Column of predicted redshifts."),
            click.option("--mag", "mag_column", default=None, metavar="COLUMN",
                         help="Also report in bins of this magnitude."),
            click.option("--mag-bins", type=click.IntRange(1), default=5, show_default=True,
                         help="Number of magnitude bins (equal counts)."),
            click.option("--z-bins", type=click.IntRange(1), default=8, show_default=True,
                         help="Number of equal-width z_spec bins over [0, zmax].")]

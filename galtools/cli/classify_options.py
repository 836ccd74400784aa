"""The options and examples of gal-classify (galtools/cli/classify.py), each group passed on as one dict."""
from __future__ import annotations

import click

from galtools.cli.heads_options import option_group

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


@option_group("label_options")
def label_options():
    return [click.option("--label", default=None, metavar="COLUMN", help=LABEL_HELP["label"]),
            click.option("--soft-labels", default=None, metavar="COL1,COL2,...", help=LABEL_HELP["soft"]),
            click.option("--classes", default=None, metavar="LIST", help=LABEL_HELP["classes"])]


@option_group("options")
def eval_options():
    return [click.option("--label", default=None, metavar="COLUMN",
                         help="Truth column (default: the one the model was fitted on)."),
            click.option("--soft-labels", default=None, metavar="NAME=COL,...",
                         help="Vote-fraction columns as truth, one per class of the model (default: the model's "
                              "own)."),
            click.option("--confident", type=float, default=0.8, show_default=True,
                         help="With votes: also report on rows whose winning vote fraction exceeds this."),
            click.option("--calibration-bins", type=click.IntRange(2), default=10, show_default=True,
                         help="Bins of the top-class probability for the calibration curve.")]

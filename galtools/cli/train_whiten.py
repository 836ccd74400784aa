"""``gal-train whiten``: a label-free whitening of the embeddings, fitted on cutouts and baked into encoder.onnx."""
from __future__ import annotations

import os

import click

from galtools.cli.common import device_option, input_argument, log, model_output_options, progress_bar, subcommand

EXAMPLE = """gal-train whiten runs/small survey.parquet -o runs/small/encoder-whitened.onnx
gal-embed survey.parquet --model runs/small/encoder-whitened.onnx -o emb.parquet
gal-train whiten encoder.onnx sample.fits --dim 64 --shrink 1 -o encoder-w64.onnx"""


def add_whiten_command(group: click.Group) -> None:
    @subcommand(group, "whiten", example=EXAMPLE)
    @click.argument("encoder", metavar="ENCODER")
    @input_argument("cutouts")
    @model_output_options("ONNX", help="The whitened encoder.onnx to write.")
    @click.option("--dim", type=click.IntRange(1), default=None, metavar="D",
                  help="Keep the D leading principal directions (default: all, nothing is lost).")
    @click.option("--shrink", type=click.FloatRange(0), default=3.0, show_default=True, metavar="S",
                  help="Added to every eigenvalue, in units of their mean: 0 is full whitening (noise directions "
                       "grow as much as signal), larger tends to plain centring.")
    @device_option
    def whiten(encoder, cutouts, output, overwrite, dim, shrink, device):
        """Fit a PCA whitening of ENCODER's embeddings of CUTOUTS (no labels) and write ENCODER with it appended.

        ENCODER is an encoder.onnx or a gal-train run folder (its encoder.onnx); CUTOUTS is the survey (or a fair
        sample of it) that will be searched. The output's embedding is (x - mean) @ V diag(lambda + shrink *
        mean(lambda))^(-1/2), two more graph nodes whose parameters and fit (table, rows, shrink, eigenvalues) are
        stored in the file, so gal-embed, gal-knn and gal-view use it as they use any encoder. Cosine neighbours of
        whitened embeddings are less dominated by the directions every galaxy shares. The fit keeps only sums
        (constant memory). An encoder that is already whitened is refused (exit 65); the output is checked
        against numpy with ONNX Runtime before it is kept.
        """
        from galtools.embed import EmbedSettings, load_encoder
        from galtools.embed.whiten import whiten_encoder
        from galtools.io import check_output_path, open_table

        check_output_path(output, overwrite)                # before any work
        path = os.path.join(encoder, "encoder.onnx") if os.path.isdir(encoder) else encoder
        model = load_encoder(path, EmbedSettings(device=device, precision="fp32"))
        with open_table(cutouts) as table, progress_bar(table.num_rows, "embedding") as bar:
            result = whiten_encoder(model, table, output, dim=dim, shrink=shrink, overwrite=overwrite,
                                    on_rows=bar.advance)
        log.info(f"wrote {output}: whitening of {result['input_dim']} -> {result['dim']} dimensions fitted on "
                 f"{result['rows']} cutouts (shrink {result['shrink']:g}, {100 * result['variance_kept']:.1f}% of the "
                 f"variance kept), ONNX Runtime matches numpy to {result['parity']:.1e}")

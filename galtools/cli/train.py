"""gal-train: MoCo v2 (or SimCLR) contrastive pre-training on cutout tables, exported as encoder.onnx.

    gal-train CUTOUTS... --out RUN/          train (the default sub-command, 'fit', need not be named)
    gal-train export RUN/last.pt -o encoder.onnx

torch is imported inside the commands, so --help stays fast.
"""
from __future__ import annotations

import click

from galtools.cli.common import galtools_group, log, subcommand

EXAMPLE = """gal-train cutouts.fits --out runs/moco --preset paper
gal-train sim.parquet --out runs/small --preset small --device cpu
gal-train tiny.parquet --out runs/try --preset small --crop 32 --steps 200 --device cpu
torchrun --nproc-per-node 4 -m galtools.cli.train cutouts.fits --out runs/moco --resume
gal-train export runs/moco/last.pt -o encoder.onnx
gal-train import moco_resnet50.ckpt --arch resnet50 --bands g,r,z --input-size 152 --preprocess ls.fits -o encoder.onnx"""


@galtools_group("gal-train", example=EXAMPLE, default="fit")
def cli():
    """Self-supervised pre-training of a galaxy encoder (MoCo v2 by default, as Hayat et al. 2021).

    \b
    gal-train CUTOUTS... --out RUN/     train; 'gal-train fit --help' lists every option
    gal-train export CHECKPOINT -o F    write a checkpoint's encoder as ONNX
    gal-train import CHECKPOINT -o F    convert a published PyTorch ResNet checkpoint to encoder.onnx
    gal-train whiten RUN/ CUTOUTS -o F  append a label-free whitening of the embeddings (for search)

    RUN/ receives checkpoints (RUN/last.pt, RUN/checkpoints/), metrics.jsonl, training.png and encoder.onnx.
    Exit 75 means "stopped on SIGTERM/SIGUSR1/SIGHUP with a checkpoint written: run again with --resume".
    """


@subcommand(cli, "export", example="gal-train export runs/moco/last.pt -o encoder.onnx\n"
                                   "gal-train export runs/moco/last.pt -o encoder-tta.onnx --tta 8")
@click.argument("checkpoint", metavar="CHECKPOINT")
@click.option("-o", "--output", required=True, metavar="ONNX", help="The encoder.onnx to write.")
@click.option("--tta", type=click.Choice(["1", "4", "8"]), default="1", show_default=True,
              help="Embed the mean over the cutout's 4 quarter turns, or over those and their mirror images (8; "
                   "mirror images erase the handedness of spirals), inside the ONNX graph: 4 or 8 times the "
                   "inference cost.")
@click.option("--overwrite", is_flag=True, help="Replace ONNX if it exists.")
def export(checkpoint, output, tta, overwrite):
    """Write the encoder of a gal-train CHECKPOINT as ONNX (input 'image', output 'embedding', dynamic batch),
    after checking ONNX Runtime against torch on batches of 1 and 37."""
    from galtools.train.export import export_checkpoint

    result = export_checkpoint(checkpoint, output, overwrite=overwrite, tta=int(tta))
    log.info(f"wrote {output}: step {result['step']}, {result['embedding_dim']}-d embedding, "
             f"ONNX Runtime matches torch to {result['parity']:.1e}")


from galtools.cli.train_fit import add_fit_command  # noqa: E402  (its own module: 'gal-train fit')
from galtools.cli.train_import import add_import_command  # noqa: E402  (its own module: 'gal-train import')

add_fit_command(cli)
add_import_command(cli)

from galtools.cli.train_whiten import add_whiten_command  # noqa: E402  (its own module: 'gal-train whiten')

add_whiten_command(cli)

main = cli

if __name__ == "__main__":
    main()

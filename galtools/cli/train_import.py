"""``gal-train import``: a published PyTorch ResNet checkpoint as gal-embed's encoder.onnx."""
from __future__ import annotations

import click

from galtools.cli.common import log, subcommand

EXAMPLE = """gal-train import moco_resnet50.ckpt --arch resnet50 --bands g,r,z --input-size 152 --preprocess ls.fits -o encoder.onnx
gal-train import resnet18.pt --arch resnet18 --bands g,r,i --input-size 64 --preprocess pre.json --pixscale 0.396 -o enc.onnx
gal-train import zoo.pt --arch resnet50 --bands g,r,z --input-size 224 --scaling clip:lo=0 --scaling log:offset=1 -o z.onnx"""


def add_import_command(group: click.Group) -> None:
    @subcommand(group, "import", example=EXAMPLE)
    @click.argument("checkpoint", metavar="CHECKPOINT")
    @click.option("-o", "--output", required=True, metavar="ONNX", help="The encoder.onnx to write.")
    @click.option("--arch", required=True, metavar="ARCH",
                  help="The ResNet: resnet18, resnet34 or resnet50 (torchvision's), or their -hayat variants.")
    @click.option("--bands", required=True, metavar="B1,B2,...",
                  help="The bands of the model's input planes, in order.")
    @click.option("--input-size", type=click.IntRange(8), required=True, metavar="S",
                  help="The cutout size in pixels the model was trained at (gal-embed centre-crops to it).")
    @click.option("--preprocess", default=None, metavar="JSON|CUTOUTS",
                  help="galtools' arcsinh preprocessing: its parameters (a JSON file), or a cutout table to fit them "
                  "on. Or give --scaling.")
    @click.option("--scaling", multiple=True, metavar="STEP",
                  help="The model's own input scaling, one step per option, applied in order: "
                  "linear:scale=S:offset=O (x*S+O), clip:lo=L:hi=H, arcsinh:scale=S (asinh(x/S)), "
                  "log:offset=O:base=B (log_B(x+O), B default e), or identity. Each value: one for all bands or "
                  "one per band (B1,B2,...). Recorded in the ONNX file; gal-embed applies exactly it.")
    @click.option("--keep-head", is_flag=True, help="Keep the projection 'fc' (the embedding is its output) "
                  "instead of dropping it (the embedding is the pooled backbone).")
    @click.option("--prefix", default=None, metavar="PREFIX",
                  help="The key prefix of the ResNet to import (default: encoder_q. if present, else the only one).")
    @click.option("--pixscale", type=click.FloatRange(min=0, min_open=True), default=None,
                  help="Pixel scale (arcsec) the model was trained at; gal-embed compares tables with it.")
    @click.option("--flux-unit", default=None, help="Pixel unit the model was trained on; gal-embed compares it.")
    @click.option("--overwrite", is_flag=True, help="Replace ONNX if it exists.")
    def import_(checkpoint, output, arch, bands, input_size, preprocess, scaling, keep_head, prefix, pixscale,
                flux_unit, overwrite):
        """Convert a published PyTorch ResNet CHECKPOINT into an encoder.onnx for gal-embed.

        CHECKPOINT holds a torchvision-style ResNet: a plain state dict or a Lightning checkpoint, with or without
        the prefixes encoder_q. (MoCo's query encoder is taken over encoder_k.), module. or model.  The projection
        'fc' is dropped unless --keep-head; ONNX Runtime is checked against torch to 1e-4 before the file is kept.
        The input scaling gal-embed applies to raw pixels is the model's own (--scaling steps) or galtools' arcsinh
        preprocessing (--preprocess); exactly one of them.

        Nothing in the checkpoint is run: tensors are read with torch's weights-only loader, or an unpickler
        that accepts only tensor storage and plain containers; any other object is refused (exit 65).
        """
        from galtools.train.importer import import_checkpoint

        names = [b.strip() for b in bands.split(",") if b.strip()]
        result = import_checkpoint(checkpoint, output, arch, names, input_size, preprocess, keep_head=keep_head,
                                   prefix=prefix, pixscale=pixscale, flux_unit=flux_unit, overwrite=overwrite,
                                   scaling=list(scaling))
        log.info(f"wrote {output}: {arch} under '{result['prefix']}', {result['embedding_dim']}-d embedding"
                 f"{' (fc dropped)' if result['dropped_head'] else ''}, input scaling: {result['scaling']}, "
                 f"ONNX Runtime matches torch to {result['parity']:.1e}")

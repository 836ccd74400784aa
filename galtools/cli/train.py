"""gal-train: MoCo v2 (or SimCLR) contrastive pre-training on cutout tables, exported as encoder.onnx.

    gal-train CUTOUTS... --out RUN/          train (the default sub-command, 'fit', need not be named)
    gal-train export RUN/last.pt -o encoder.onnx

torch is imported inside the commands, so --help stays fast.
"""
from __future__ import annotations

import click

from galtools.cli.common import device_option, galtools_group, log, progress_bar, seed_option, subcommand

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

    RUN/ receives checkpoints (RUN/last.pt, RUN/checkpoints/), metrics.jsonl, training.png and encoder.onnx.
    Exit 75 means "stopped on SIGTERM/SIGUSR1/SIGHUP with a checkpoint written: run again with --resume".
    """


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be positive")
    return value


@subcommand(cli, "fit", example="gal-train cutouts.fits --out runs/moco --preset paper\n"
                                "gal-train sim.parquet --out runs/small --preset small --steps 300\n"
                                "gal-train a.fits b.fits --out runs/ab --steps 20000 --monitor-label morph_class")
@click.argument("cutouts", nargs=-1, metavar="CUTOUTS...")
@click.option("-o", "--out", required=True, metavar="RUN", help="Run folder (created): checkpoints, metrics, "
              "training.png, encoder.onnx.")
@click.option("--preset", type=click.Choice(["small", "paper"]), default=None,
              help="Settings that go together; options given as well override them one by one. small: the best "
                   "measured recipe for up to ~10^4 cutouts on a CPU (tiny encoder, --pool gem, 48 px "
                   "views, batch 64, lr 0.3, queue of a quarter of the cutouts, key momentum 0.99, 1200 steps, "
                   "--ops auto, --tta 8); paper: Hayat et al. 2021 (resnet50-hayat, average pooling, 64 px, "
                   "batch 256, lr 0.03, K 65536, m 0.999, T 0.2, 200 epochs, every augmentation). The run records "
                   "the resolved settings.")
@click.option("--method", type=click.Choice(["moco", "simclr"]), default="moco", show_default=True,
              help="MoCo v2 (queue of keys, momentum encoder) or SimCLR (NT-Xent over the batch).")
@click.option("--arch", default="resnet50-hayat", show_default=True,
              help="Encoder: resnet50-hayat (7x7 stride-1 stem, no max-pool, for 64x64), resnet18/34/50[-hayat], tiny.")
@click.option("--width", type=float, default=1.0, show_default=True, help="Channel width multiplier.")
@click.option("--pool", type=click.Choice(["avg", "gem", "max"]), default="avg", show_default=True,
              help="Global pooling of the last feature maps into the representation: the mean (Hayat et al.'s), the "
                   "generalised mean (mean of x^3)^(1/3), or the maximum.")
@click.option("--crop", type=int, default=64, show_default=True, help="Size S of the SxS views the encoder sees "
              "(the augmentations' output size; gal-embed centre-crops to it).")
@click.option("--ops", default="", metavar="SPEC", help="Augmentations (gal-augment's spec); default: "
              "rotate,jitter,psf,redden,noise. auto: rotate,jitter,noise, and for 8-bit display images (gal-pack "
              "of JPEG/PNG composites) also gain (a brightness and colour jitter); recorded resolved.")
@click.option("--pixscale", type=float, default=None, help="Pixel scale in arcsec (default: the table's metadata).")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Global batch (split over processes).")
@click.option("--lr", type=float, default=0.03, show_default=True, help="Learning rate per 256 images "
              "(scaled linearly with --batch-size).")
@click.option("--epochs", type=float, default=None, help="Length of the run in epochs (default 200) ...")
@click.option("--steps", type=int, default=None, help="... or in optimizer steps (0: no training; the untrained "
              "encoder is exported, a random-weights baseline).")
@click.option("--warmup-steps", type=int, default=None, help="Linear warm-up before the cosine decay "
              "(default 5% of the run).")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--sgd-momentum", type=float, default=0.9, show_default=True)
@click.option("--dim", type=int, default=128, show_default=True, help="Output size of the projection head.")
@click.option("--queue-size", type=int, default=65536, show_default=True, help="MoCo queue length K (0: a quarter "
              "of the training cutouts in whole batches, at most 4096).")
@click.option("--key-momentum", type=float, default=0.999, show_default=True, help="MoCo key-encoder momentum m.")
@click.option("--temperature", type=float, default=0.2, show_default=True, help="InfoNCE / NT-Xent temperature.")
@click.option("--bn-splits", type=int, default=0, show_default=True, help="Batch-norm groups on one process "
              "(0: 8 for MoCo on one process; under DDP the keys are shuffled across processes instead).")
@device_option
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on a GPU, and on a CPU with bf16 units (AMX, AVX-512 BF16); fp32 "
                   "elsewhere. The run records what ran; encoder.onnx is fp32 either way.")
@click.option("--channels-last/--no-channels-last", default=None, help="Memory format (default: on a GPU).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the encoders.")
@click.option("--deterministic", is_flag=True, help="Deterministic algorithms only (exact resume on CPU).")
@seed_option
@click.option("--checkpoint-every", type=int, default=1000, show_default=True, help="Steps between checkpoints.")
@click.option("--keep-checkpoints", type=int, default=3, show_default=True, help="Step checkpoints to keep.")
@click.option("--log-every", type=int, default=10, show_default=True, help="Steps between metrics records.")
@click.option("--monitor-label", default=None, metavar="COLUMN", help="Class column for a kNN accuracy on a "
              "held-out subset each epoch (the subset is not trained on).")
@click.option("--monitor-size", type=int, default=1000, show_default=True, help="Held-out objects (at most a "
              "fifth of the labelled ones).")
@click.option("--loader-threads", type=int, default=4, show_default=True, help="Threads reading batches ahead.")
@click.option("--resume", is_flag=False, flag_value="auto", default=None, metavar="[CHECKPOINT]",
              help="Continue from RUN/last.pt (if there is one), or from CHECKPOINT.")
@click.option("--stop-after", type=int, default=None, callback=_positive, metavar="N",
              help="Stop after N steps of this call with a checkpoint (exit 75), e.g. for short queue slots.")
@click.option("--overwrite", is_flag=True, help="Start again in a RUN/ that holds a run.")
@click.option("--no-export", is_flag=True, help="Do not write RUN/encoder.onnx at the end.")
@click.option("--tta", type=click.Choice(["1", "4", "8"]), default="1", show_default=True,
              help="RUN/encoder.onnx embeds the mean over the cutout's 4 quarter turns, or over those and their "
                   "mirror images (8), inside the graph (see 'gal-train export --tta').")
def fit(cutouts, out, preset, method, arch, width, pool, crop, ops, pixscale, batch_size, lr, epochs, steps, warmup_steps,
        weight_decay, sgd_momentum, dim, queue_size, key_momentum, temperature, bn_splits, device, precision,
        channels_last, compile_, deterministic, seed, checkpoint_every, keep_checkpoints, log_every, monitor_label,
        monitor_size, loader_threads, resume, stop_after, overwrite, no_export, tta):
    """Train an encoder on CUTOUTS (FITS, Parquet or Arrow tables with the same bands).

    Run it the same way on one process or under torchrun/srun (DDP; NCCL on GPUs, gloo on CPUs); one process
    writes RUN/.  On SIGTERM, SIGUSR1 or SIGHUP (a closed terminal) a checkpoint is written and the command
    exits 75: run it again with --resume to continue exactly where it stopped.
    """
    from galtools.train.config import TrainConfig, resolve_preset
    from galtools.train.loop import train

    if not cutouts:
        raise click.UsageError("give at least one cutout table")
    ctx = click.get_current_context()
    given = {"arch": arch, "width": width, "pool": pool, "method": method, "dim": dim, "queue_size": queue_size,
             "key_momentum": key_momentum, "temperature": temperature, "batch_size": batch_size, "lr": lr,
             "momentum": sgd_momentum, "weight_decay": weight_decay, "epochs": epochs, "steps": steps, "crop": crop,
             "ops": ops, "tta": int(tta)}
    option_of = {"momentum": "sgd_momentum"}
    explicit = {key for key in given if ctx.get_parameter_source(option_of.get(key, key))
                not in (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)}
    settings = resolve_preset(preset, given, explicit)
    config = TrainConfig(
        inputs=list(cutouts), out=out, bn_splits=bn_splits, warmup_steps=warmup_steps, **settings,
        pixscale=pixscale, loader_threads=loader_threads, seed=seed, device=device,
        precision=precision, channels_last=channels_last, compile=compile_, deterministic=deterministic,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, log_every=log_every,
        monitor_label=monitor_label, monitor_size=monitor_size, export=not no_export)
    result = train(config, resume=resume, overwrite=overwrite, progress=progress_bar, log=log,
                   stop_after=stop_after)
    if result["is_main"] and result.get("last_loss") is not None:
        log.info(f"done: {result['steps']} steps, final loss {result['last_loss']:.4f}")


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


from galtools.cli.train_import import add_import_command  # noqa: E402  (its own module: 'gal-train import')

add_import_command(cli)

main = cli

if __name__ == "__main__":
    main()

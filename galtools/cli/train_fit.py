"""``gal-train fit`` (the default sub-command): its options take their defaults from TrainConfig, and the help
of --preset and --ops is written from the presets and the default augmentations of galtools.train.config."""
from __future__ import annotations

import click

from galtools.cli.common import device_option, log, progress_bar, seed_option, subcommand
from galtools.train.config import (AUTO_OPS_FLUX, DEFAULT_EPOCHS, DEFAULT_SPEC, DISPLAY_OPS, METHODS, OPTION_OF, POOLS,
                                   PRESET_PURPOSES, PRESETS, REFERENCE_BATCH, TrainConfig, preset_settings)

DEFAULTS = TrainConfig.defaults()


def _positive(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter("must be positive")
    return value


def preset_help() -> str:
    """--preset's help: each preset's purpose and the options in which it differs from their defaults."""
    described = [f"{name} ({PRESET_PURPOSES[name]}): {' '.join(preset_settings(name))}" for name in PRESETS]
    return ("Settings that go together, each the options' defaults but for those it names; options given as well "
            "override them one by one. " + "; ".join(described) + ". The run records the resolved settings.")


def add_fit_command(group: click.Group) -> None:
    @subcommand(group, "fit", example="gal-train cutouts.fits --out runs/moco --preset paper\n"
                                    "gal-train sim.parquet --out runs/small --preset small --steps 300\n"
                                    "gal-train a.fits b.fits --out runs/ab --steps 20000 --monitor-label morph_class")
    @click.argument("cutouts", nargs=-1, metavar="CUTOUTS...")
    @click.option("-o", "--out", required=True, metavar="RUN", help="Run folder (created): checkpoints, metrics, "
                  "training.png, encoder.onnx.")
    @click.option("--preset", type=click.Choice(list(PRESETS)), default=None, help=preset_help())
    @click.option("--method", type=click.Choice(list(METHODS)), default=DEFAULTS["method"], show_default=True,
                  help="MoCo v2 (queue of keys, momentum encoder) or SimCLR (NT-Xent over the batch).")
    @click.option("--arch", default=DEFAULTS["arch"], show_default=True,
                  help="Encoder: resnet50-hayat (7x7 stride-1 stem, no max-pool, for 64x64), resnet18/34/50[-hayat], tiny.")
    @click.option("--width", type=float, default=DEFAULTS["width"], show_default=True, help="Channel width multiplier.")
    @click.option("--pool", type=click.Choice(list(POOLS)), default=DEFAULTS["pool"], show_default=True,
                  help="Global pooling of the last feature maps into the representation: the mean (Hayat et al.'s), "
                       "the generalised mean (mean of x^3)^(1/3), or the maximum.")
    @click.option("--crop", type=int, default=DEFAULTS["crop"], show_default=True, help="Size S of the SxS views the encoder sees "
                  "(the augmentations' output size; gal-embed centre-crops to it).")
    @click.option("--ops", default=DEFAULTS["ops"], metavar="SPEC", help=f"Augmentations (gal-augment's spec); "
                  f"default: {DEFAULT_SPEC}. auto: {AUTO_OPS_FLUX}, and for 8-bit display images (gal-pack of JPEG/PNG "
                  f"composites) also {DISPLAY_OPS} (a brightness and colour jitter); recorded resolved.")
    @click.option("--pixscale", type=float, default=None, help="Pixel scale in arcsec (default: the table's metadata).")
    @click.option("--batch-size", type=int, default=DEFAULTS["batch_size"], show_default=True, help="Global batch (split over processes).")
    @click.option("--lr", type=float, default=DEFAULTS["lr"], show_default=True, help=f"Learning rate per {REFERENCE_BATCH} images "
                  "(scaled linearly with --batch-size).")
    @click.option("--epochs", type=float, default=None, help=f"Length of the run in epochs (default {DEFAULT_EPOCHS}) ...")
    @click.option("--steps", type=int, default=None, help="... or in optimizer steps (0: no training; the untrained "
                  "encoder is exported, a random-weights baseline).")
    @click.option("--warmup-steps", type=int, default=None, help="Linear warm-up before the cosine decay "
                  "(default 5% of the run).")
    @click.option("--weight-decay", type=float, default=DEFAULTS["weight_decay"], show_default=True)
    @click.option("--sgd-momentum", type=float, default=DEFAULTS["momentum"], show_default=True)
    @click.option("--dim", type=int, default=DEFAULTS["dim"], show_default=True, help="Output size of the projection head.")
    @click.option("--queue-size", type=int, default=DEFAULTS["queue_size"], show_default=True, help="MoCo queue length K (0: a quarter "
                  "of the training cutouts in whole batches, at most 4096).")
    @click.option("--key-momentum", type=float, default=DEFAULTS["key_momentum"], show_default=True, help="MoCo key-encoder momentum m.")
    @click.option("--temperature", type=float, default=DEFAULTS["temperature"], show_default=True, help="InfoNCE / NT-Xent temperature.")
    @click.option("--bn-splits", type=int, default=DEFAULTS["bn_splits"], show_default=True, help="Batch-norm groups on one process "
                  "(0: 8 for MoCo on one process; under DDP the keys are shuffled across processes instead).")
    @device_option
    @click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=DEFAULTS["precision"], show_default=True,
                  help="auto: bf16 autocast on a GPU, and on a CPU with bf16 units (AMX, AVX-512 BF16); fp32 "
                       "elsewhere. The run records what ran; encoder.onnx is fp32 either way.")
    @click.option("--channels-last/--no-channels-last", default=None, help="Memory format (default: on a GPU).")
    @click.option("--compile", "compile_", is_flag=True, help="torch.compile the encoders.")
    @click.option("--deterministic", is_flag=True, help="Deterministic algorithms only (exact resume on CPU).")
    @seed_option
    @click.option("--checkpoint-every", type=int, default=DEFAULTS["checkpoint_every"], show_default=True, help="Steps between checkpoints.")
    @click.option("--keep-checkpoints", type=int, default=DEFAULTS["keep_checkpoints"], show_default=True, help="Step checkpoints to keep.")
    @click.option("--log-every", type=int, default=DEFAULTS["log_every"], show_default=True, help="Steps between metrics records.")
    @click.option("--monitor-label", default=None, metavar="COLUMN", help="Class column for a kNN accuracy on a "
                  "held-out subset each epoch (the subset is not trained on).")
    @click.option("--monitor-size", type=int, default=DEFAULTS["monitor_size"], show_default=True, help="Held-out objects (at most a "
                  "fifth of the labelled ones).")
    @click.option("--loader-threads", type=int, default=DEFAULTS["loader_threads"], show_default=True, help="Threads reading batches ahead.")
    @click.option("--resume", is_flag=False, flag_value="auto", default=None, metavar="[CHECKPOINT]",
                  help="Continue from RUN/last.pt (if there is one), or from CHECKPOINT.")
    @click.option("--stop-after", type=int, default=None, callback=_positive, metavar="N",
                  help="Stop after N steps of this call with a checkpoint (exit 75), e.g. for short queue slots.")
    @click.option("--overwrite", is_flag=True, help="Start again in a RUN/ that holds a run.")
    @click.option("--no-export", is_flag=True, help="Do not write RUN/encoder.onnx at the end.")
    @click.option("--tta", type=click.Choice(["1", "4", "8"]), default=str(DEFAULTS["tta"]), show_default=True,
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
        from galtools.train.config import resolve_config
        from galtools.train.loop import train

        if not cutouts:
            raise click.UsageError("give at least one cutout table")
        ctx = click.get_current_context()
        given = {"arch": arch, "width": width, "pool": pool, "method": method, "dim": dim, "queue_size": queue_size,
                 "key_momentum": key_momentum, "temperature": temperature, "batch_size": batch_size, "lr": lr,
                 "momentum": sgd_momentum, "weight_decay": weight_decay, "epochs": epochs, "steps": steps, "crop": crop,
                 "ops": ops, "tta": int(tta)}
        explicit = {key for key in given if ctx.get_parameter_source(OPTION_OF.get(key, key))
                    not in (click.core.ParameterSource.DEFAULT, click.core.ParameterSource.DEFAULT_MAP)}
        config = resolve_config(dict(
            given, inputs=cutouts, out=out, bn_splits=bn_splits, warmup_steps=warmup_steps, pixscale=pixscale,
            loader_threads=loader_threads, seed=seed, device=device, precision=precision, channels_last=channels_last,
            compile=compile_, deterministic=deterministic, checkpoint_every=checkpoint_every,
            keep_checkpoints=keep_checkpoints, log_every=log_every, monitor_label=monitor_label,
            monitor_size=monitor_size, export=not no_export), preset, explicit)
        result = train(config, resume=resume, overwrite=overwrite, progress=progress_bar, log=log,
                       stop_after=stop_after)
        if result["is_main"] and result.get("last_loss") is not None:
            log.info(f"done: {result['steps']} steps, final loss {result['last_loss']:.4f}")

"""Options and steps shared by the commands over galtools.heads: gal-photoz, gal-classify and gal-ood.

Kept light on imports (click only), like cli/common: ``--help`` never imports torch, pyarrow or numpy. The steps
the commands share (checking outputs, running a curve or an evaluation, writing predictions) are in
cli/heads_steps.py.

    @training_options(batch_size=512, lr=1e-2)     # --hidden ... --seed, passed on as ``training`` (a dict)
    @model_output                                  # -o MODEL (required), --overwrite (cli.common's)
    @model_option("gal-photoz")                    # --model MODEL
    @curve_options("Draw sigma_MAD ...")           # --fractions ... --overwrite
"""
from __future__ import annotations

import functools

import click

from galtools.cli.common import format_option, model_output_options, seed_option
from galtools.cli.heads_steps import check_outputs, draw, score_prologue  # noqa: F401  (gal-ood's steps)

TRAINING = ("hidden", "val_fraction", "max_epochs", "patience", "batch_size", "lr", "weight_decay", "seed")
CURVE = ("fractions", "test_fraction", "as_json", "plot", "output", "fmt", "overwrite")


def _apply(func, options):
    for option in reversed(options):
        func = option(func)
    return func


def _gather(names, into):
    """Pass the options ``names`` to the command as one dict argument ``into``."""
    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            kwargs[into] = {name: kwargs.pop(name) for name in names}
            return func(*args, **kwargs)

        return wrapper

    return decorator


def option_group(into: str):
    """Decorate a function returning click options: the options, passed on as one dict argument ``into``."""
    def make(options_of):
        def decorator(func):
            options = options_of()
            names = [option(lambda: None).__click_params__[0].name for option in options]
            return _apply(_gather(names, into)(func), options)

        return decorator

    return make


def training_options(batch_size=512, lr=1e-2, batch_help="Rows per step.",
                     lr_help="AdamW learning rate (cut on plateaus)."):
    """The training options of every head (galtools.heads.train.TrainSettings), given as ``training``."""
    def decorator(func):
        return _apply(_gather(TRAINING, "training")(func), [
            click.option("--hidden", type=int, default=None, metavar="N",
                         help="One hidden layer of N units (an MLP) instead of a linear head."),
            click.option("--val-fraction", type=float, default=0.1, show_default=True,
                         help="Labelled rows held out for early stopping."),
            click.option("--max-epochs", type=click.IntRange(min=1), default=None, metavar="N",
                         help="Upper limit on passes over the labelled rows; a run that reaches it says 'stopped: "
                              "cap' (not converged). Default: at most 100 validation checks (a check is one pass, "
                              "or 25 steps where a pass is shorter)."),
            click.option("--patience", type=int, default=6, show_default=True,
                         help="Stop after this many validation checks without improvement (the learning rate is "
                              "cut after 2)."),
            click.option("--batch-size", type=int, default=batch_size, show_default=batch_size is not None,
                         help=batch_help),
            click.option("--lr", type=float, default=lr, show_default=lr is not None, help=lr_help),
            click.option("--weight-decay", type=float, default=1e-4, show_default=True),
            seed_option,
        ])

    return decorator


@option_group("network")
def network_options():
    """Training a network on images (the encoder of a gal-train checkpoint), given as ``network``."""
    from galtools.cli.common import device_option

    return [click.option("--checkpoint", metavar="CKPT", help="A gal-train checkpoint (RUN/last.pt): its encoder, "
                         "bands, input size and preprocessing."),
            click.option("--images", metavar="CUTOUTS", help="The cutout table the embeddings were made from (matched "
                         "by object_id)."),
            click.option("--backbone-lr-factor", type=float, default=1.0, show_default=True,
                         help="Fine-tuning: the encoder's learning rate as a fraction of the head's (1: the "
                              "optimiser of the from-scratch arm; 0.1 keeps closer to the pre-trained weights)."),
            click.option("--augment", "augment_spec", default=None, metavar="SPEC",
                         help="Augmentations of the training views (galtools.augment spec; default "
                              "'rotate,flip,jitter:max_shift=2', which leave a redshift unchanged)."),
            device_option]


def report_options(plot_help: str):
    """--json, --plot PNG and --overwrite, for 'eval'."""
    def decorator(func):
        return _apply(func, [click.option("--json", "as_json", is_flag=True, help="Print the results as JSON."),
                             click.option("--plot", metavar="PNG", help=plot_help),
                             click.option("--overwrite", is_flag=True, help="Replace PNG if it exists.")])

    return decorator


model_output = model_output_options(help="Model file to write (.model, an npz).")   # -o MODEL, for 'fit'


def model_option(tool: str):
    """--model MODEL, for 'predict' and 'score'."""
    return click.option("--model", "model_path", required=True, metavar="MODEL", help=f"A model from '{tool} fit'.")


def curve_options(plot_help: str):
    """The label-curve options, given as ``curve`` (a dict)."""
    def decorator(func):
        return _apply(_gather(CURVE, "curve")(func), [
            click.option("--fractions", default="0.01,0.03,0.1,0.3,1", show_default=True,
                         help="Fractions of the training pool to train on (nested subsets)."),
            click.option("--test-fraction", type=float, default=0.2, show_default=True,
                         help="Labelled rows set aside once as the common test set."),
            click.option("--json", "as_json", is_flag=True, help="Print the curve as JSON instead of a table."),
            click.option("--plot", metavar="PNG", help=plot_help),
            click.option("-o", "--output", default=None, metavar="TABLE",
                         help="Also write the curve as a table (.parquet ...)."),
            format_option,
            click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
        ])

    return decorator

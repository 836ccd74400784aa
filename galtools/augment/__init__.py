"""Galaxy augmentations for contrastive learning: batched torch operations with per-object random streams.

    from galtools.augment import AugmentPipeline
    pipe = AugmentPipeline.from_spec("rotate,jitter:max_shift=7,noise,redden,psf", out_size=64,
                                     bands=["u", "g", "r", "i", "z"], pixscale=0.396)
    views = pipe(images, object_ids, view=0, seed=0, ebv=None, psf_fwhm=None)

The spec grammar, every operation and its parameters live in galtools.augment.spec (no torch import); the
operations in galtools.augment.ops; the random streams in galtools.augment.streams.  Importing this package does
not import torch: AugmentPipeline is loaded on first use.
"""
from galtools.augment.spec import DEFAULT_SPEC, OPS, describe_ops, parse_spec

__all__ = ["AugmentPipeline", "DEFAULT_SPEC", "OPS", "describe_ops", "parse_spec"]


def __getattr__(name):
    if name == "AugmentPipeline":
        from galtools.augment.pipeline import AugmentPipeline

        return AugmentPipeline
    raise AttributeError(f"module 'galtools.augment' has no attribute {name!r}")

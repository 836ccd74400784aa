"""Features for the baseline arms of a label curve, from the labelled cutouts themselves (no labels used):

- ``pixel_pca_features``: the cutouts' pixels (centre crop, the encoder's own preprocessing) projected on their
  first principal components (numpy SVD): what a probe gets from the pixels without any learnt representation.
  How many components suit a probe depends on the number of labels (with a hundred labels, 16 components beat
  128 by far), so the curves try each of ``pca_sizes`` and keep the one with the lowest validation loss;
- ``random_encoder_features``: the same encoder with random weights (the architecture without pre-training).

A probe on each is trained and stopped exactly as the probe on the representation.  ``source`` is a gal-train
checkpoint's encoder description (``build(pretrained)``, ``preprocess_json``, ``crop``); torch is imported only by
``random_encoder_features``.
"""
from __future__ import annotations

import numpy as np

BATCH = 256
PCA_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def pca_sizes(largest: int) -> list[int]:
    """The numbers of principal components the pixel baseline tries: those of PCA_SIZES below ``largest`` (the
    representation's dimension), and ``largest``."""
    return [k for k in PCA_SIZES if k < largest] + [largest]


def _preprocessed(images: np.ndarray, source) -> np.ndarray:
    from galtools.preprocess import Preprocess

    size = source.crop
    height, width = images.shape[-2:]
    top, left = (height - size) // 2, (width - size) // 2      # gal-embed's centre crop
    crop = np.ascontiguousarray(images[..., top:top + size, left:left + size], dtype=np.float32)
    return Preprocess.from_json(source.preprocess_json).apply_numpy(crop)


def pixel_pca_features(images: np.ndarray, source, components: int) -> np.ndarray:
    """(n, components) projections of the preprocessed pixels on their leading principal axes (float32)."""
    pixels = _preprocessed(images, source).reshape(len(images), -1).astype(np.float64)
    pixels -= pixels.mean(axis=0)
    components = max(1, min(components, pixels.shape[0] - 1, pixels.shape[1]))
    _, _, axes = np.linalg.svd(pixels, full_matrices=False)
    return (pixels @ axes[:components].T).astype(np.float32)


def random_encoder_features(images: np.ndarray, source, seed: int) -> np.ndarray:
    """(n, D) pooled features of the checkpoint's architecture with random weights (eval mode, on the CPU)."""
    import torch

    torch.manual_seed(seed)
    encoder = source.build(pretrained=False).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), BATCH):
            views = torch.from_numpy(_preprocessed(images[start:start + BATCH], source))
            out.append(encoder.forward_features(views).float().numpy())
    return np.concatenate(out) if out else np.empty((0, encoder.num_features), np.float32)

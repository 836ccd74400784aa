"""Two-dimensional maps of a representation: PCA (numpy) and UMAP (umap-learn), both deterministic for a seed.

The maps are of the unit-normalised embeddings, the cosine geometry in which gal-knn searches and MoCo trains.

PCA: the centred data's covariance C = X^T X / (n - 1) is accumulated in float64 over blocks of rows (memory D x D,
whatever n), decomposed with ``numpy.linalg.svd`` (C is symmetric positive semi-definite, so its singular vectors
are the principal axes and its singular values the variances along them), and the rows are projected on the first
two axes.  Each axis's sign is fixed so that its largest loading is positive (scikit-learn's convention since 1.5),
so the same data always gives the same picture.
"""
from __future__ import annotations

import logging
import warnings

import numpy as np

from galtools.errors import BadData

log = logging.getLogger("galtools")

BLOCK_ROWS = 65536
UMAP_SLOW_ROWS = 200_000     # above this, say that UMAP on CPU will take a while
EXACT_NEIGHBOURS_BELOW = 4096  # umap-learn's own limit for exact neighbours (above it: its approximate NN-descent)


def pca(x: np.ndarray, n_components: int = 2, block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, dict]:
    """(n, n_components) float64 coordinates and {explained_variance, explained_variance_ratio, components}."""
    n, dim = x.shape
    if n < 2:
        raise BadData(f"a map needs at least 2 rows, got {n}", "give more embeddings")
    mean = x.mean(axis=0, dtype=np.float64)
    scatter = np.zeros((dim, dim))
    for start in range(0, n, block_rows):
        part = x[start:start + block_rows].astype(np.float64) - mean
        scatter += part.T @ part
    _, variances, axes = np.linalg.svd(scatter / (n - 1))
    axes = axes[:n_components]
    biggest = np.argmax(np.abs(axes), axis=1)
    axes *= np.sign(axes[np.arange(len(axes)), biggest])[:, None]
    coordinates = np.empty((n, len(axes)))
    for start in range(0, n, block_rows):
        coordinates[start:start + block_rows] = (x[start:start + block_rows].astype(np.float64) - mean) @ axes.T
    total = variances.sum()
    info = {"explained_variance": variances[:n_components].tolist(),
            "explained_variance_ratio": (variances[:n_components] / total if total > 0
                                         else np.zeros(n_components)).tolist()}
    return coordinates, {**info, "components": axes}


def umap_map(x: np.ndarray, seed: int, n_neighbors: int = 15, min_dist: float = 0.1) -> tuple[np.ndarray, dict]:
    """(n, 2) coordinates from UMAP (McInnes et al. 2018); a fixed random_state makes it deterministic (and
    single-threaded)."""
    n = len(x)
    if n < 4:
        raise BadData(f"UMAP needs at least 4 rows, got {n}", "give more embeddings, or use --method pca")
    neighbours = min(n_neighbors, n - 1)
    if neighbours < n_neighbors:
        log.warning(f"only {n} rows: UMAP uses {neighbours} neighbors instead of {n_neighbors}")
    if n > UMAP_SLOW_ROWS:
        log.info(f"UMAP of {n} rows on one CPU thread takes a while (use --method pca for a quick look)")
    # Small tables: the exact neighbours with numpy, as umap-learn would compute them, but without compiling its
    # parallel numba kernels (about 15 s of CPU in every new process, far more than the map itself takes).
    known = exact_neighbours(x, neighbours) + (None,) if n < EXACT_NEIGHBOURS_BELOW else (None, None, None)
    with warnings.catch_warnings():   # umap warns that a random_state turns parallelism off: that is the point
        warnings.simplefilter("ignore")
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=neighbours, min_dist=min_dist, metric="euclidean",
                            random_state=seed, transform_seed=seed, precomputed_knn=known)
        coordinates = reducer.fit_transform(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(coordinates, dtype=np.float64), {"n_neighbors": neighbours, "min_dist": min_dist}


def exact_neighbours(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, Euclidean distances) of each row's ``k`` nearest rows, itself included, nearest first (ties by
    row).  Memory n x n float64: for small tables only."""
    x = np.asarray(x, dtype=np.float64)
    squares = np.einsum("ij,ij->i", x, x)
    distance2 = np.maximum(squares[:, None] + squares[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(distance2, 0.0)
    indices = np.argsort(distance2, axis=1, kind="stable")[:, :k]
    return indices, np.sqrt(np.take_along_axis(distance2, indices, axis=1))

"""Density-based strangeness of embeddings, fitted with scikit-learn and evaluated from plain arrays with numpy.

- ``gmm``: a Gaussian mixture (full covariances) on a PCA projection; strangeness = -log p(x).
- ``iforest``: an isolation forest (Liu et al. 2008) on the same projection; strangeness = 2^(-E[h(x)] / c(n)),
  Liu et al.'s anomaly score (scikit-learn's ``-score_samples``).

Fitting needs scikit-learn; the fitted parameters are stored as arrays (never pickled), and scoring re-implements
the two formulas in numpy (tests compare them with scikit-learn's own ``score_samples``).
"""
from __future__ import annotations

import math

import numpy as np

EULER_GAMMA = 0.5772156649015329


# --------------------------------------------------------------------------------------------------------- PCA

def fit_pca(x: np.ndarray, components: int, seed: int) -> dict[str, np.ndarray]:
    from sklearn.decomposition import PCA

    components = max(1, min(components, x.shape[1], x.shape[0] - 1))
    pca = PCA(n_components=components, svd_solver="full", random_state=seed).fit(x)
    return {"pca_mean": pca.mean_.astype(np.float64), "pca_components": pca.components_.astype(np.float64)}


def project(x: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64) - arrays["pca_mean"]) @ arrays["pca_components"].T


# --------------------------------------------------------------------------------------------- Gaussian mixture

def fit_gmm(y: np.ndarray, components: int, seed: int) -> dict[str, np.ndarray]:
    from sklearn.mixture import GaussianMixture

    components = max(1, min(components, y.shape[0] // max(2, y.shape[1])))
    gmm = GaussianMixture(n_components=components, covariance_type="full", random_state=seed, reg_covar=1e-6,
                          n_init=1, max_iter=200).fit(y)
    return {"gmm_weights": gmm.weights_.astype(np.float64), "gmm_means": gmm.means_.astype(np.float64),
            "gmm_precisions_cholesky": gmm.precisions_cholesky_.astype(np.float64)}


def gmm_log_density(y: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """log p(y) under the mixture: logsumexp_k [log w_k - d/2 log 2pi + log|P_k| - |(y - mu_k) P_k|^2 / 2],
    with P_k the Cholesky factor of component k's precision matrix."""
    weights, means, chol = arrays["gmm_weights"], arrays["gmm_means"], arrays["gmm_precisions_cholesky"]
    dim = y.shape[1]
    per_component = np.empty((y.shape[0], len(weights)))
    for k in range(len(weights)):
        z = (y - means[k]) @ chol[k]
        log_det = np.sum(np.log(np.diag(chol[k])))
        per_component[:, k] = np.log(weights[k]) - 0.5 * dim * math.log(2 * math.pi) + log_det \
            - 0.5 * np.einsum("ij,ij->i", z, z)
    top = per_component.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(per_component - top).sum(axis=1, keepdims=True)))[:, 0]


# ------------------------------------------------------------------------------------------------ isolation forest

def average_path_length(n: np.ndarray) -> np.ndarray:
    """c(n): the mean path length of an unsuccessful search in a binary search tree of n points (Liu et al.):
    0 for n <= 1, 1 for n = 2, else 2 H(n - 1) - 2 (n - 1) / n with H(i) ~ ln(i) + Euler's gamma."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    out[n == 2] = 1.0
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + EULER_GAMMA) - 2.0 * (n[big] - 1.0) / n[big]
    return out


def fit_iforest(y: np.ndarray, trees: int, seed: int) -> dict[str, np.ndarray]:
    """Fit scikit-learn's IsolationForest and keep its trees as flat arrays (one row of ``tree_offsets`` per tree)."""
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=trees, random_state=seed).fit(y)
    lefts, rights, features, thresholds, counts, offsets = [], [], [], [], [], [0]
    for estimator, used in zip(forest.estimators_, forest.estimators_features_):
        tree = estimator.tree_
        leaf = tree.children_left < 0
        lefts.append(np.where(leaf, -1, tree.children_left))
        rights.append(np.where(leaf, -1, tree.children_right))
        # the tree's feature numbers refer to its own feature subset: map them to columns of y
        features.append(np.where(leaf, -1, np.asarray(used)[np.maximum(tree.feature, 0)]))
        thresholds.append(tree.threshold)
        counts.append(tree.n_node_samples)
        offsets.append(offsets[-1] + tree.node_count)
    return {"iforest_left": np.concatenate(lefts).astype(np.int32),
            "iforest_right": np.concatenate(rights).astype(np.int32),
            "iforest_feature": np.concatenate(features).astype(np.int32),
            "iforest_threshold": np.concatenate(thresholds).astype(np.float64),
            "iforest_samples": np.concatenate(counts).astype(np.int64),
            "iforest_offsets": np.asarray(offsets, dtype=np.int64),
            "iforest_max_samples": np.asarray(forest.max_samples_, dtype=np.int64)}


def iforest_anomaly_score(y: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """2^(-mean_t h_t(y) / c(max_samples)), where h_t is the depth of y's leaf in tree t plus c(samples in it)."""
    left, right = arrays["iforest_left"], arrays["iforest_right"]
    feature, threshold = arrays["iforest_feature"], arrays["iforest_threshold"]
    samples, offsets = arrays["iforest_samples"], arrays["iforest_offsets"]
    y = np.asarray(y, dtype=np.float64)
    rows = np.arange(y.shape[0])
    total = np.zeros(y.shape[0])
    for t in range(len(offsets) - 1):
        node = np.full(y.shape[0], offsets[t], dtype=np.int64)
        depth = np.zeros(y.shape[0])
        active = left[node] >= 0
        while active.any():
            here = node[active]
            # scikit-learn's trees send x[feature] <= threshold to the left child
            go_left = y[rows[active], feature[here]] <= threshold[here]
            node[active] = offsets[t] + np.where(go_left, left[here], right[here])
            depth[active] += 1
            active = left[node] >= 0
        total += depth + average_path_length(samples[node])
    mean_depth = total / (len(offsets) - 1)
    return 2.0 ** (-mean_depth / average_path_length(np.array([arrays["iforest_max_samples"]]))[0])

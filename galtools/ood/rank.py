"""Ranking every object by how likely it is to be what a person's positive labels are, on frozen embeddings.

Components (each a number per object, larger = more likely wanted):

- ``similarity``: cosine similarity to the nearest labelled positive (one-shot similarity search); its argmax is
  the "why" of the ranking (``nearest_positive_id``);
- ``linear``: a class-balanced logistic regression (scikit-learn) on the standardised embeddings: the labelled
  positives against the labelled negatives *and* a sample of the unlabelled objects taken as negatives (rare
  classes make almost every unlabelled object a negative: positive-unlabelled learning), so it works from one
  positive and no negative; a labelled negative weighs ``NEGATIVE_WEIGHT`` unlabelled ones;
- ``prior``: an isolation forest (Liu et al. 2008) on a PCA projection: how unusual an object is, without labels.

- ``graph``: label spreading (Zhou et al. 2004) from the labelled rows over the k-nearest-neighbour graph of the
  objects (the graph of every object up to ``graph_rows``, else of the labelled and the best-scored others): an
  object joined to positives through chains of near neighbours scores high even when it is far from each of them.

``auto`` standardises the first three over all objects and mixes them: with P positives the linear model gets the
weight P / (P + half_labels), the rest goes to similarity (share ``similarity_share``) and the prior.  So a
handful of labels leans on similarity and the prior, and more labels on the linear model.  That mix, standardised,
then shares the score with label spreading (``graph_share``).

The acquisition rule proposes the next objects to label: the unlabelled objects with the highest
score + explore x spread, where the spread is the standard deviation of the score over an ensemble of linear
models fitted on bootstrap resamples of the labels (an upper confidence bound: high score, or uncertain); with
``steer`` (``auto``), that acquisition, standardised, shares the choice with an RBF-kernel model fitted like the
linear one (``steering_scores``), which reads shapes a hyperplane cannot; the score itself stays as it is.  The
defaults were chosen on a gal-sim table of one seed (benchmarks/bench_discovery.py); results are reported on
another seed and on real galaxies.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, UsageProblem

log = logging.getLogger("galtools")

METHODS = ("auto", "similarity", "linear", "prior")
NEGATIVE_WEIGHT = 10.0
RANK_COLUMNS = ("score", "rank", "proposed", "label", "nearest_positive_id", "nearest_positive_similarity",
                "linear", "prior", "spread")


@dataclass
class RankSettings:
    method: str = "auto"
    propose: int = 0
    half_labels: float = 5.0       # linear weight P / (P + half_labels)
    similarity_share: float = 0.75  # of the rest: similarity, then the prior
    explore: float = 1.0           # acquisition = score + explore x ensemble spread
    members: int = 5               # bootstrap linear models for the spread
    fit_rows: int = 20000          # unlabelled objects sampled for the linear fits and the forest
    trees: int = 200
    pca: int = 32
    c: float = 1.0                 # inverse L2 strength of the logistic regression (weights averaging 1)
    graph_share: float = 0.5       # share of the score from label spreading on the kNN graph (0: off)
    neighbours: int = 15           # k of the kNN graph
    alpha: float = 0.9             # label spreading: weight of the neighbours against the labels
    graph_rows: int = 50000        # the graph covers the labelled rows and the best-scored others, up to this many
    steer: float = 0.5             # share of the acquisition from the cross-fitted kernel model (0: off)
    landmarks: int = 500           # Nystroem landmarks of the kernel model (cost: O(N x landmarks x dimension))
    kernel_gamma: float = 2.0      # RBF kernel exp(-kernel_gamma d^2 / median d^2) on the unit vectors
    seed: int = 0

    def validate(self) -> "RankSettings":
        if self.method not in METHODS:
            raise UsageProblem(f"unknown method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.propose < 0 or self.members < 0 or self.fit_rows < 2 or self.trees < 1 or self.pca < 1:
            raise UsageProblem("--propose, the ensemble and the forest need sizes of at least 0, 0, 2, 1 and 1")
        if self.half_labels < 0 or not 0 <= self.similarity_share <= 1 or self.explore < 0 or self.c <= 0:
            raise UsageProblem("half_labels and explore are >= 0, similarity_share in [0, 1], c > 0")
        if not 0 <= self.graph_share <= 1 or self.neighbours < 1 or not 0 < self.alpha < 1 or self.graph_rows < 2:
            raise UsageProblem("graph_share in [0, 1], neighbours >= 1, alpha in (0, 1), graph_rows >= 2")
        if not 0 <= self.steer <= 1 or self.landmarks < 1 or self.kernel_gamma <= 0:
            raise UsageProblem("steer in [0, 1], landmarks >= 1, kernel_gamma > 0")
        return self


@dataclass
class Ranking:
    """Per object (row-aligned with the vectors): the score and its parts; the proposed rows in order."""

    score: np.ndarray
    similarity: np.ndarray | None
    nearest_positive: np.ndarray | None     # row of the nearest labelled positive, -1 for none
    linear: np.ndarray | None
    prior: np.ndarray | None
    spread: np.ndarray | None
    proposed: np.ndarray                     # rows, best first


def _z(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def prior_scores(vectors: np.ndarray, settings: RankSettings) -> np.ndarray:
    """The isolation forest's anomaly score (larger = more unusual) of every row, fitted on a sample of them."""
    from sklearn.ensemble import IsolationForest

    from galtools.ood.density import fit_pca, project

    rng = np.random.default_rng(settings.seed)
    sample = vectors if len(vectors) <= settings.fit_rows else vectors[rng.choice(len(vectors), settings.fit_rows,
                                                                                  replace=False)]
    arrays = fit_pca(np.asarray(sample, np.float64), settings.pca, settings.seed)
    forest = IsolationForest(n_estimators=settings.trees, random_state=settings.seed).fit(project(sample, arrays))
    out = np.empty(len(vectors))
    for start in range(0, len(vectors), 65536):
        out[start:start + 65536] = -forest.score_samples(project(vectors[start:start + 65536], arrays))
    return out


def similarity_to(vectors: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarity to the nearest positive row, which positive row) for every row of unit ``vectors``."""
    from galtools.search import exact_topk

    found = exact_topk(vectors, vectors[positives], 1, tie_rank=np.arange(len(positives)), normalized=True,
                       check_base=False)
    return found.scores[:, 0].astype(np.float64), positives[found.indices[:, 0]]


class _Standardiser:
    def __init__(self, x: np.ndarray):
        self.mean = x.mean(axis=0)
        self.scale = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale


def _unlabelled(n: int, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    labelled = np.zeros(n, bool)
    labelled[positives] = True
    labelled[negatives] = True
    return np.flatnonzero(~labelled)


def _fit_logit(x: np.ndarray, n_pos: int, n_neg: int, n_unl: int, c: float) -> tuple[np.ndarray, float]:
    """(coefficients, intercept) in the coordinates of ``x`` of the class-balanced logistic regression of its rows:
    ``n_pos`` positives, then ``n_neg`` labelled negatives (weight NEGATIVE_WEIGHT), then ``n_unl`` unlabelled
    rows taken as negatives (weight 1); both classes carry the same total weight; fitted on standardised x."""
    from sklearn.linear_model import LogisticRegression

    y = np.concatenate([np.ones(n_pos), np.zeros(n_neg + n_unl)])
    w_neg = np.concatenate([np.full(n_neg, NEGATIVE_WEIGHT), np.ones(n_unl)])
    w_pos = np.full(n_pos, w_neg.sum() / max(n_pos, 1))
    weights = np.concatenate([w_pos, w_neg])
    weights *= len(weights) / weights.sum()
    scaler = _Standardiser(x)
    model = LogisticRegression(C=c, max_iter=300).fit(scaler(x), y, sample_weight=weights)
    return model.coef_[0] / scaler.scale, model.intercept_[0] - (scaler.mean / scaler.scale) @ model.coef_[0]


def linear_scores(vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, settings: RankSettings,
                  unlabelled_as_negative: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(the logit of the class-balanced logistic regression for every row, the ensemble's spread of it or None).

    Rows: the positives (label 1), the negatives (label 0) and, with ``unlabelled_as_negative``, a sample of the
    other rows (label 0, weight 1; a labelled negative weighs NEGATIVE_WEIGHT); both classes carry the same total
    weight."""
    rng = np.random.default_rng(settings.seed + 1)
    pool = _unlabelled(len(vectors), positives, negatives) if unlabelled_as_negative else np.empty(0, np.int64)

    def fit(pos, neg, unl):
        rows = np.concatenate([pos, neg, unl])
        coef, intercept = _fit_logit(vectors[rows].astype(np.float64), len(pos), len(neg), len(unl), settings.c)
        return vectors @ coef.astype(np.float32) + intercept

    def sample_unlabelled():
        return pool if len(pool) <= settings.fit_rows else rng.choice(pool, settings.fit_rows, replace=False)

    main = fit(positives, negatives, sample_unlabelled()).astype(np.float64)
    if settings.members < 2:
        return main, None
    members = []
    for _ in range(settings.members):
        pos = rng.choice(positives, len(positives), replace=True) if len(positives) > 1 else positives
        neg = rng.choice(negatives, len(negatives), replace=True) if len(negatives) > 1 else negatives
        members.append(fit(pos, neg, sample_unlabelled()))
    return main, np.std(np.stack(members), axis=0).astype(np.float64)


STEER_FOLDS = 5


def steering_scores(vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
                    settings: RankSettings) -> np.ndarray | None:
    """The logit of an RBF-kernel model for every row of unit ``vectors``, fitted like the linear model (positives
    against the labelled negatives and a sample of the unlabelled taken as negatives) on a Nystroem map of the
    kernel (Williams & Seeger 2001; ``landmarks`` rows of a 1,000-row sample, the width from that sample's median
    squared distance), cross-fitted: the unlabelled sample is cut in STEER_FOLDS folds and each fold is scored by
    the model fitted without it, so no unlabelled object is scored by a model that saw it as a negative; the other
    rows by the mean of the fold models, folded into the kernel (K(x, landmarks) @ weights) and scored in blocks:
    O(N x landmarks x dimension).  None for tables too small to cross-fit."""
    from sklearn.kernel_approximation import Nystroem
    from sklearn.metrics.pairwise import rbf_kernel

    n = len(vectors)
    rng = np.random.default_rng(settings.seed + 1)
    pool = _unlabelled(n, positives, negatives)
    sample = pool if len(pool) <= settings.fit_rows else rng.choice(pool, settings.fit_rows, replace=False)
    sample = rng.permutation(sample)
    if len(sample) < 2 * STEER_FOLDS:
        return None
    draw = vectors[np.random.default_rng(settings.seed + 2).choice(n, min(n, max(1000, settings.landmarks)),
                                                                   replace=False)]
    draw = draw.astype(np.float64)
    squared = np.clip(2 - 2 * draw @ draw.T, 0, None)[np.triu_indices(len(draw), 1)]
    landmarks = draw[: settings.landmarks]
    kernel = Nystroem(gamma=settings.kernel_gamma / (float(np.median(squared)) or 1.0),
                      n_components=len(landmarks), random_state=settings.seed).fit(landmarks)

    def mapped(rows):
        return kernel.transform(vectors[rows].astype(np.float64)) if len(rows) else np.empty((0, len(landmarks)))

    labelled, unlabelled = np.concatenate([mapped(positives), mapped(negatives)]), mapped(sample)
    out = np.empty(n)
    fold = np.arange(len(sample)) % STEER_FOLDS
    coefs, intercepts = [], []
    for k in range(STEER_FOLDS):
        coef, intercept = _fit_logit(np.concatenate([labelled, unlabelled[fold != k]]), len(positives),
                                     len(negatives), int((fold != k).sum()), settings.c)
        out[sample[fold == k]] = unlabelled[fold == k] @ coef + intercept
        coefs.append(coef)
        intercepts.append(intercept)
    # the mean model on the map K(x, landmarks) @ normalization.T, folded: one kernel row per object, no map
    weights = kernel.normalization_.T @ np.mean(coefs, axis=0)
    intercept = float(np.mean(intercepts))
    rest = np.ones(n, bool)
    rest[sample] = False
    rest = np.flatnonzero(rest)
    for start in range(0, len(rest), 16384):
        block = vectors[rest[start:start + 16384]].astype(np.float64)
        out[rest[start:start + 16384]] = rbf_kernel(block, kernel.components_, gamma=kernel.gamma) @ weights + intercept
    return out


@dataclass
class KnnGraph:
    """The k nearest neighbours (cosine, the row itself left out) of ``rows`` among themselves, as row numbers of
    the whole table; label-free, so it can be built once and reused for every round of labels."""

    rows: np.ndarray          # (M,) table rows the graph covers
    neighbours: np.ndarray    # (M, k) positions in ``rows``
    similarity: np.ndarray    # (M, k) cosine similarity

    @classmethod
    def build(cls, vectors: np.ndarray, rows: np.ndarray, k: int) -> "KnnGraph":
        from galtools.search.exact import all_rows_topk

        rows = np.asarray(rows, np.int64)
        base = unit(vectors[rows])
        k = min(k, len(rows) - 1)
        neighbours = np.empty((len(rows), k), np.int64)
        similarity = np.empty((len(rows), k), np.float32)
        for block, found in all_rows_topk(base, k, normalized=True, check_base=False):
            neighbours[block.start:block.stop] = found.indices
            similarity[block.start:block.stop] = found.scores
        return cls(rows, neighbours, similarity)


def spread_labels(graph: KnnGraph, positives: np.ndarray, negatives: np.ndarray, alpha: float,
                  iterations: int = 30) -> np.ndarray:
    """Label spreading (Zhou et al. 2004) on the symmetrised kNN graph: for each graph row, the spread mass of the
    positives minus that of the negatives (each class's seeds sum to 1), so unlabelled regions dense with
    positives score high and those around labelled negatives low."""
    from scipy import sparse

    m, k = graph.neighbours.shape
    weights = sparse.csr_matrix((np.clip(graph.similarity.ravel(), 1e-6, None).astype(np.float64),
                                 (np.repeat(np.arange(m), k), graph.neighbours.ravel())), shape=(m, m))
    weights = weights.maximum(weights.T)
    inverse_root = 1.0 / np.sqrt(np.asarray(weights.sum(axis=1)).ravel())
    normalised = sparse.diags(inverse_root) @ weights @ sparse.diags(inverse_root)
    position = {int(r): i for i, r in enumerate(graph.rows)}
    seeds = np.zeros((m, 2))
    for column, labelled in enumerate((positives, negatives)):
        inside = [position[int(r)] for r in labelled if int(r) in position]
        if inside:
            seeds[inside, column] = 1.0 / len(inside)
    mass = seeds.copy()
    for _ in range(iterations):
        mass = alpha * (normalised @ mass) + (1 - alpha) * seeds
    return mass[:, 0] - mass[:, 1]


def graph_scores(vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, base_score: np.ndarray,
                 settings: RankSettings, graph: KnnGraph | None = None) -> np.ndarray:
    """Label spreading's score for every row (standardised over the graph's rows; rows outside the graph get the
    lowest of them).  The graph covers every row when there are at most ``graph_rows``; otherwise the labelled
    rows and the best-scored others by ``base_score`` (a re-ranking of the head of the list)."""
    n = len(vectors)
    if graph is None or len(graph.rows) < min(n, settings.graph_rows):
        if n <= settings.graph_rows:
            rows = np.arange(n)
        else:
            labelled = np.unique(np.concatenate([positives, negatives]))
            others = np.setdiff1d(np.argsort(-base_score, kind="stable")[:settings.graph_rows], labelled)
            rows = np.sort(np.concatenate([labelled, others[:settings.graph_rows - len(labelled)]]))
        graph = KnnGraph.build(vectors, rows, settings.neighbours)
    spread = _graph_transform(spread_labels(graph, positives, negatives, settings.alpha))
    out = np.full(n, spread.min() if len(spread) else 0.0)
    out[graph.rows] = spread
    return out


def _graph_transform(mass: np.ndarray) -> np.ndarray:
    """Spread mass is heavy-tailed (most rows hold almost none): a signed log before standardising."""
    scale = np.median(np.abs(mass)) or 1e-12
    return _z(np.sign(mass) * np.log1p(np.abs(mass) / scale))


def rank_vectors(vectors: np.ndarray, positives: np.ndarray, negatives: np.ndarray, settings: RankSettings,
                 prior: np.ndarray | None = None, graph: KnnGraph | None = None) -> Ranking:
    """Rank the rows of ``vectors`` (N, D) given the rows labelled positive and negative (see the module).

    ``prior``: the isolation-forest scores when already computed (they do not depend on the labels); ``graph``:
    the kNN graph of every row, likewise."""
    settings.validate()
    vectors = unit(vectors)
    positives = np.asarray(positives, np.int64)
    negatives = np.asarray(negatives, np.int64)
    method = settings.method
    if method != "prior" and len(positives) == 0:
        raise BadData("no positive label: nothing to look for", "label at least one wanted object 1 (yes), or "
                      "rank by --method prior")
    if method == "linear" and len(negatives) == 0:
        raise BadData("--method linear needs negative labels too (only positives are labelled)",
                      "label some objects 0 (no), or use --method auto, which also works from positives alone")
    similarity = nearest = linear = spread = None
    if len(positives):
        similarity, nearest = similarity_to(vectors, positives)
    if method in ("auto", "prior") and prior is None:
        prior = prior_scores(vectors, settings)
    if method in ("auto", "linear"):
        linear, spread = linear_scores(vectors, positives, negatives, settings,
                                       unlabelled_as_negative=method == "auto")
    if method == "similarity":
        score = similarity.copy()
    elif method == "prior":
        score = prior.copy()
    elif method == "linear":
        score = linear.copy()
    else:
        weight = len(positives) / (len(positives) + settings.half_labels) if settings.half_labels else 1.0
        z_linear, scale = _z(linear), linear.std() or 1.0
        rest = settings.similarity_share * _z(similarity) + (1 - settings.similarity_share) * _z(prior)
        score = weight * z_linear + (1 - weight) * rest
        if spread is not None:
            spread = weight * spread / scale
        if settings.graph_share:
            spreading = graph_scores(vectors, positives, negatives, score, settings, graph)
            if spread is not None:
                spread = (1 - settings.graph_share) * spread / (score.std() or 1.0)
            score = (1 - settings.graph_share) * _z(score) + settings.graph_share * spreading
    labelled = np.zeros(len(vectors), bool)
    labelled[positives] = True
    labelled[negatives] = True
    proposed = np.empty(0, np.int64)
    if settings.propose:
        acquisition = score + settings.explore * spread if spread is not None else score
        steering = steering_scores(vectors, positives, negatives, settings) \
            if method == "auto" and settings.steer else None
        if steering is not None:
            acquisition = (1 - settings.steer) * _z(acquisition) + settings.steer * _z(steering)
        candidates = np.flatnonzero(~labelled)
        order = np.lexsort((candidates, -acquisition[candidates]))
        proposed = candidates[order[: settings.propose]]
    return Ranking(score=score, similarity=similarity, nearest_positive=nearest, linear=linear,
                   prior=prior if method in ("auto", "prior") else None, spread=spread, proposed=proposed)


def rank_table(table, labels, out, settings: RankSettings, name: str | None = None) -> dict:
    """Rank the objects of ``table`` (an embedding table, open) with ``labels`` (:class:`galtools.ood.labels.Labels`)
    into ``out`` (a sink): one row per object, best first, with score, rank (1 = best), proposed (1..N in the
    order to label, null for the others), label (the known one, null if none), nearest_positive_id and its
    similarity, the components and the carried columns.  Returns a summary."""
    from galtools.io import check_unique_ids
    from galtools.ood.labels import rows_in
    from galtools.search.table import load_embeddings

    name = name or table.name
    embeddings = load_embeddings(table, name=name)
    check_unique_ids(embeddings.ids, name)
    rows = rows_in(labels, embeddings.ids, name)
    positives, negatives = rows[labels.values], rows[~labels.values]
    ranking = rank_vectors(embeddings.vectors, positives, negatives, settings)
    order = np.lexsort((np.arange(embeddings.count), -ranking.score))
    out.expect_schema(output_schema(embeddings))
    out.write(_ranked_table(embeddings, ranking, rows, labels.values, order))
    return {"objects": embeddings.count, "positives": len(positives), "negatives": len(negatives),
            "proposed": len(ranking.proposed), "method": settings.method,
            "proposed_ids": embeddings.ids.take(pa.array(ranking.proposed)).to_pylist()}


def _plain_carried(embeddings) -> list[str]:
    return [f.name for f in embeddings.carried.schema if not pa.types.is_fixed_size_list(f.type)
            and f.name not in RANK_COLUMNS]


def output_schema(embeddings) -> pa.Schema:
    id_type = embeddings.ids.type
    fields = [pa.field("object_id", id_type), pa.field("score", pa.float64()), pa.field("rank", pa.int64()),
              pa.field("proposed", pa.int32()), pa.field("label", pa.bool_()),
              pa.field("nearest_positive_id", id_type), pa.field("nearest_positive_similarity", pa.float32()),
              pa.field("linear", pa.float32()), pa.field("prior", pa.float32()),
              pa.field("spread", pa.float32())]
    return pa.schema(fields + [embeddings.carried.schema.field(c) for c in _plain_carried(embeddings)])


def _optional(values, order, kind) -> pa.Array:
    return pa.array(values[order], kind) if values is not None else pa.nulls(len(order), kind)


def _ranked_table(embeddings, ranking: Ranking, label_rows, label_values, order) -> pa.Table:
    n = embeddings.count
    proposed = np.zeros(n, np.int32)
    proposed[ranking.proposed] = np.arange(1, len(ranking.proposed) + 1, dtype=np.int32)
    label = np.zeros(n, np.int8)            # 0 unknown, 1 yes, -1 no
    label[label_rows] = np.where(label_values, 1, -1)
    nearest = ranking.nearest_positive
    nearest_ids = embeddings.ids.take(pa.array(nearest[order])) if nearest is not None \
        else pa.nulls(n, embeddings.ids.type)
    schema = output_schema(embeddings)
    columns = {"object_id": embeddings.ids.take(pa.array(order)),
               "score": pa.array(ranking.score[order], pa.float64()),
               "rank": pa.array(np.arange(1, n + 1, dtype=np.int64)),
               "proposed": pa.array(proposed[order], pa.int32(), mask=proposed[order] == 0),
               "label": pa.array(label[order] > 0, pa.bool_(), mask=label[order] == 0),
               "nearest_positive_id": nearest_ids,
               "nearest_positive_similarity": _optional(ranking.similarity, order, pa.float32()),
               "linear": _optional(ranking.linear, order, pa.float32()),
               "prior": _optional(ranking.prior, order, pa.float32()),
               "spread": _optional(ranking.spread, order, pa.float32())}
    for column in _plain_carried(embeddings):
        columns[column] = embeddings.carried.column(column).take(pa.array(order))
    return pa.table(columns, schema=schema)

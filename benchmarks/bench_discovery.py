"""How fast does the discovery loop of 'gal-ood rank' find a rare class, with an oracle labelling its proposals?

    python benchmarks/bench_discovery.py --sim-tune TUNE-EMB --sim-test TEST-EMB --gz1-emb GZ1-EMB --gz1 DATA/gz1-sdss
    python benchmarks/bench_discovery.py --ceiling-of TUNE-EMB=RECIPE ...   # what each encoder's embeddings carry
    python benchmarks/bench_discovery.py --rank-cost TEST-EMB               # CPU-s of one ranking, steered or not

Protocol (the same for every data set): a table of normal objects plus one wanted class at a given prevalence;
start from 1, 5 or 10 known positives (no negatives), then 3 rounds in which ``rank_vectors`` proposes 20
unlabelled objects (``--propose 20``) and the oracle labels them (yes if of the wanted class).  After the last round
the final list is scored over every object but the starting positives (given, not found): the objects labelled
yes first, then the unlabelled ones by score, the noes last (what a person ends with): AUPRC (average precision),
precision@100, and precision and recall in the top 1%.  Beside it, with the same data:

- random order (AUPRC = the prevalence, up to noise);
- similarity alone: its own loop (each round the 20 unlabelled objects most similar to a positive are labelled),
  ranked by similarity to the nearest positive;
- isolation forest alone (no labels);
- the supervised probe: a class-balanced logistic regression on the same labels as ours (labelled rows only).

gal-sim: each anomaly kind in turn is the wanted class, at 1% and 0.1% of the table (all normal objects kept, the
kind's objects subsampled by seed); the other anomaly kinds are left out.  The settings of 'auto' (GRID: half_labels,
explore, graph_share, each with and without steer) are chosen on a *tuning* table (another gal-sim seed, 5 starting positives, every object of
the kind kept so that the loop's 60 labels cannot exhaust it) and reported on the *test* table, never tuned on.  Galaxy Zoo 1 (real SDSS): mergers and edge-on
galaxies as the wanted class, all 1,500 galaxies kept (their natural prevalence).

Embeddings: from an encoder trained by gal-train on each data set (unlabelled), embedded by gal-embed; the
command that made them is given in --note.  Rows go to benchmarks/RESULTS.md (``--no-record`` to skip) and the
whole result to --json.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from galtools.io import open_table, vectors_of  # noqa: E402
from galtools.ood.metrics import average_precision  # noqa: E402
from galtools.ood.rank import KnnGraph, RankSettings, prior_scores, rank_vectors, unit  # noqa: E402

STARTS = (1, 5, 10)
ROUNDS = 3
PER_ROUND = 20
ARMS = ("ours", "random", "similarity", "iforest", "probe")
BASE = dict(half_labels=5.0, similarity_share=0.75, explore=1.0, graph_share=0.0, steer=0.0)   # the grid's reference
GRID = [BASE, {**BASE, "explore": 0.0}, {**BASE, "half_labels": 20.0}, {**BASE, "half_labels": 50.0},
        {**BASE, "half_labels": 50.0, "explore": 0.0}, {**BASE, "graph_share": 0.5}]
GRID += [{**g, "steer": 0.5} for g in GRID]   # each with the proposals steered half by the kernel model
TUNE_SEEDS = (0, 1)
# The tuning table (4,000 rows) holds ~170 objects of each kind: all of them are kept (5%), so that, as on the test
# table (~165 at 1%), the 60 labels of the loop cannot exhaust the wanted class (at 1% there would be 28).
TUNE_PREVALENCE = 0.05


def read_embeddings(path: str, columns: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, dict]:
    with open_table(path) as table:
        data = table.read_all(columns=["object_id", "embedding", *[c for c in columns if c in table.schema.names]])
    ids = data.column("object_id").to_numpy()
    vectors = unit(vectors_of(data.combine_chunks().to_batches()[0]))
    return ids, vectors, {c: np.asarray(data.column(c).to_pylist()) for c in columns if c in data.column_names}


def _cutout_features(cutouts: str, per_batch) -> tuple[np.ndarray, object]:
    """``per_batch(images)`` over the cutout table, concatenated, and the table's id and truth columns."""
    import pyarrow as pa

    from galtools.io import images_of

    blocks, carried = [], []
    with open_table(cutouts) as table:
        keep = [f.name for f in table.schema if f.name in ("object_id", "anomaly_kind", "is_anomaly")]
        for batch in table.iter_batches(batch_size=1024):
            blocks.append(np.asarray(per_batch(images_of(batch)), np.float32))
            carried.append(pa.Table.from_batches([batch.select(keep)]))
    return np.concatenate(blocks), pa.concat_tables(carried)


def _write_embedding(out: str, carried, x: np.ndarray, model: str) -> str:
    from galtools.io import open_output, vector_column

    with open_output(out, metadata={"galtools.model_sha256": model}, tool="bench_discovery") as handle:
        handle.write(carried.append_column("embedding", vector_column(x.astype(np.float32))))
    return out


def pixel_pca(cutouts: str, out: str, components: int = 64, crop: int = 32, seed: int = 0) -> str:
    """The stated fallback representation: principal components of the centre crop's pixels (asinh-scaled per
    band), fitted on up to 5,000 cutouts, written as an embedding table with the cutouts' plain columns."""
    if os.path.exists(out):
        return out

    def crop_pixels(images):
        top = (images.shape[-1] - crop) // 2
        return np.arcsinh(images[..., top:top + crop, top:top + crop] / 0.05).reshape(len(images), -1)

    pixels, carried = _cutout_features(cutouts, crop_pixels)
    rng = np.random.default_rng(seed)
    sample = pixels[rng.choice(len(pixels), min(5000, len(pixels)), replace=False)]
    mean = sample.mean(axis=0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    return _write_embedding(out, carried, (pixels - mean) @ vt[:components].T, "pixel-pca")


def defect_stats(cutouts: str, out: str, crop: int = 48) -> str:
    """Detector-defect statistics of the centre crop, per band, after the encoders' preprocessing (arcsinh,
    standardised; fitted on the first 1,024 cutouts): the largest and smallest contrast of a column (its mean minus
    the mean of its two neighbours) and of a row, and the largest and smallest pixel minus its 3x3 median (a spike),
    standardised over the table: what a bad column or a cosmic ray leaves in the pixels, as an embedding table."""
    from scipy.ndimage import median_filter

    from galtools.preprocess import Preprocess, centre_crop

    if os.path.exists(out):
        return out
    fitted = []

    def stats(images):
        if not fitted:
            fitted.append(Preprocess.fit(images, [str(b) for b in range(images.shape[1])]))
        y = centre_crop(fitted[0].apply_numpy(images), crop)
        spike = y - median_filter(y, size=(1, 1, 3, 3))
        contrast = [line[..., 1:-1] - 0.5 * (line[..., :-2] + line[..., 2:]) for line in (y.mean(2), y.mean(3))]
        return np.concatenate([f(c, axis=2) for c in contrast for f in (np.max, np.min)]
                              + [spike.max(axis=(2, 3)), spike.min(axis=(2, 3))], axis=1)

    x, carried = _cutout_features(cutouts, stats)
    return _write_embedding(out, carried, (x - x.mean(0)) / (x.std(0) + 1e-6), "defect-stats")


def metrics(score: np.ndarray, truth: np.ndarray, pool: np.ndarray) -> dict:
    s, t = score[pool], truth[pool]
    order = np.lexsort((np.arange(len(s)), -s))
    top1 = max(1, int(np.ceil(0.01 * len(s))))
    hits = t[order]
    return {"auprc": average_precision(s, t) if 0 < t.sum() < len(t) else float("nan"),
            "p100": float(hits[:100].mean()), "p_top1": float(hits[:top1].mean()),
            "r_top1": float(hits[:top1].sum() / max(t.sum(), 1)), "pool_prevalence": float(t.mean()),
            "wanted": int(t.sum())}


def loop(x, truth, start, settings: RankSettings, prior, graph=None):
    """Labels after the rounds (positives, negatives) and the final ranking, for one method's own proposals."""
    positives = list(start)
    negatives: list[int] = []
    for _ in range(ROUNDS):
        ranking = rank_vectors(x, np.array(positives), np.array(negatives, np.int64), settings, prior=prior,
                               graph=graph)
        for row in ranking.proposed:
            (positives if truth[row] else negatives).append(int(row))
    final = rank_vectors(x, np.array(positives), np.array(negatives, np.int64),
                         RankSettings(**{**settings.__dict__, "propose": 0}), prior=prior, graph=graph)
    return np.array(positives), np.array(negatives, np.int64), final


def with_labels(score: np.ndarray, positives, negatives) -> np.ndarray:
    """The list a person ends with: the objects labelled yes first, then the rest by score, the noes last."""
    score = score.astype(np.float64).copy()
    score[positives] = np.inf
    score[negatives] = -np.inf
    return score


def one_run(x, truth, n_start, seed, config: dict, prior=None, graph=None) -> dict:
    """Every arm scored over all objects but the starting positives (given, not found); an arm that labelled
    objects (ours, similarity's own loop, the probe on our labels) lists its yeses first and its noes last."""
    rng = np.random.default_rng(seed)
    start = rng.choice(np.flatnonzero(truth), n_start, replace=False)
    if prior is None:
        prior = prior_scores(x, RankSettings(seed=seed))
    judged = np.ones(len(x), bool)
    judged[start] = False
    ours = RankSettings(method="auto", propose=PER_ROUND, seed=seed, **config)
    if ours.graph_share and graph is None and len(x) <= ours.graph_rows:
        graph = KnnGraph.build(x, np.arange(len(x)), ours.neighbours)
    pos, neg, final = loop(x, truth, start, ours, prior, graph)
    result = {"ours": metrics(with_labels(final.score, pos, neg), truth, judged), "labels": int(len(pos) + len(neg)),
              "found": int(len(pos) - n_start)}
    result["random"] = metrics(rng.random(len(x)), truth, judged)
    result["iforest"] = metrics(prior, truth, judged)
    if len(neg):
        probe = rank_vectors(x, pos, neg, RankSettings(method="linear", members=0, seed=seed))
        result["probe"] = metrics(with_labels(probe.score, pos, neg), truth, judged)
    else:
        result["probe"] = {k: float("nan") for k in result["ours"]}
    s_pos, s_neg, s_final = loop(x, truth, start, RankSettings(method="similarity", propose=PER_ROUND, seed=seed),
                                 prior)
    result["similarity"] = metrics(with_labels(s_final.score, s_pos, s_neg), truth, judged)
    result["similarity_found"] = int(len(s_pos) - n_start)
    return result


def subsample(kinds: np.ndarray, wanted: str, prevalence: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a table with every normal object and the ``wanted`` kind at ``prevalence``; the truth of them."""
    normal = np.flatnonzero(kinds == "none")
    of_kind = np.flatnonzero(kinds == wanted)
    count = max(int(round(prevalence * len(normal) / (1 - prevalence))), max(STARTS) + 1)
    chosen = np.random.default_rng(seed).choice(of_kind, min(count, len(of_kind)), replace=False)
    rows = np.sort(np.concatenate([normal, chosen]))
    return rows, np.isin(rows, chosen)


def summarise(runs: list[dict]) -> dict:
    out = {}
    for arm in ARMS:
        out[arm] = {}
        for key in ("auprc", "p100", "p_top1", "r_top1"):
            values = np.array([r[arm][key] for r in runs], float)
            values = values[np.isfinite(values)]
            out[arm][key] = (float(values.mean()), float(values.std())) if len(values) else (float("nan"),) * 2
    out["prevalence"] = float(np.mean([r["ours"]["pool_prevalence"] for r in runs]))
    out["labels"] = float(np.mean([r["labels"] for r in runs]))
    out["found"] = float(np.mean([r["found"] for r in runs]))
    out["wanted"] = float(np.mean([r["ours"]["wanted"] for r in runs]))
    out["similarity_found"] = float(np.mean([r.get("similarity_found", np.nan) for r in runs]))
    out["runs"] = len(runs)
    return out


def sim_runs(path: str, prevalences, starts, seeds, config, kinds_wanted=None, log=print, done=None,
             kept_only: bool = False) -> dict:
    """Runs grouped by (prevalence, start); the 1%-from-5 cells first (the goal), each run appended to ``done``
    (a JSON-lines file) as it ends, so an interrupted benchmark keeps what it measured and resumes."""
    ids, vectors, columns = read_embeddings(path, ("anomaly_kind",))
    kinds = columns["anomaly_kind"]
    table = os.path.abspath(path)     # in the key: a run of another table is never taken for this one's
    wanted_kinds = kinds_wanted or sorted(k for k in set(kinds.tolist()) if k != "none")
    cells = sorted(((p, s) for p in prevalences for s in starts), key=lambda c: (c != (0.01, 5), -c[0], c[1]))
    results, priors, finished = {}, {}, _finished(done)
    for prevalence, start in cells:
        for kind in wanted_kinds:
            for seed in seeds:
                key = f"sim {table} {kind} {prevalence} {start} {seed} {json.dumps(config, sort_keys=True)}"
                if key in finished:
                    results.setdefault((prevalence, start), []).append(finished[key])
                    continue
                if kept_only:
                    continue
                rows, truth = subsample(kinds, kind, prevalence, seed)
                x = vectors[rows]
                if (kind, prevalence, seed) not in priors:
                    priors, graphs = {(kind, prevalence, seed): prior_scores(x, RankSettings(seed=seed))}, {}
                started = time.perf_counter()
                run = one_run(x, truth, start, seed, config, priors[(kind, prevalence, seed)],
                              graph_of(x, config, graphs))
                run.update(kind=kind, seed=seed, prevalence=prevalence, start=start, n=len(rows), key=key)
                results.setdefault((prevalence, start), []).append(run)
                _keep(done, run)
                log(f"sim {kind} p={prevalence} start={start} seed={seed}: {_auprcs(run)} "
                    f"({time.perf_counter() - started:.1f} s)")
    return results


def graph_of(x, config: dict, cache: dict):
    """The kNN graph of every row that the settings ask for (None when they use none), built once per table."""
    settings = RankSettings(**config)
    if not settings.graph_share or len(x) > settings.graph_rows:
        return None
    if settings.neighbours not in cache:
        cache[settings.neighbours] = KnnGraph.build(x, np.arange(len(x)), settings.neighbours)
    return cache[settings.neighbours]


def reader(name: str, seed: int = 0, samples: int = 500):
    """A scikit-learn classifier that reads the embeddings, for the every-label ceiling: the class-balanced linear
    probe, or a nonlinear one (each class-balanced where scikit-learn allows it); ``samples``: the rows it will be
    fitted on (the kernel's landmarks are at most these)."""
    from sklearn.ensemble import ExtraTreesClassifier, HistGradientBoostingClassifier
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline

    return {"linear": lambda: LogisticRegression(max_iter=500, class_weight="balanced"),
            "boosted": lambda: HistGradientBoostingClassifier(max_iter=100, random_state=seed),
            "trees": lambda: ExtraTreesClassifier(300, min_samples_leaf=2, class_weight="balanced_subsample",
                                                  random_state=seed),
            "kernel": lambda: make_pipeline(Nystroem(gamma=4.0, n_components=min(500, samples),
                                                     random_state=seed),
                                            LogisticRegression(max_iter=1000, class_weight="balanced")),
            "neighbours": lambda: KNeighborsClassifier(15, weights="distance")}[name]()


READERS = ("linear", "boosted", "trees", "kernel", "neighbours")


def ceiling(path: str, prevalence: float = 0.01, seed: int = 1, folds: int = 5, read: str = "linear") -> dict:
    """What the embeddings carry about each kind: AUPRC of a probe (``read``: a :func:`reader`; by default a
    class-balanced logistic regression) given *every* label (``folds``-fold cross-validated), on the table with
    the kind at ``prevalence``.  A diagnostic: on the test table nothing is chosen by it; on the tuning table
    (--ceiling-of) it compares encoder recipes and readers.  (Kernel: an RBF kernel exp(-4 |x - y|^2) on the unit
    embeddings through 500 Nystroem landmarks.)"""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    _, vectors, columns = read_embeddings(path, ("anomaly_kind",))
    kinds = columns["anomaly_kind"]
    out = {}
    for kind in sorted(k for k in set(kinds.tolist()) if k != "none"):
        rows, truth = subsample(kinds, kind, prevalence, seed)
        model = reader(read, samples=len(rows) - len(rows) // folds - 1)
        method = "decision_function" if hasattr(model, "decision_function") else "predict_proba"
        score = cross_val_predict(model, vectors[rows], truth, cv=StratifiedKFold(folds, shuffle=True,
                                                                                  random_state=seed), method=method)
        score = score[:, 1] if score.ndim == 2 else score
        out[kind] = {"auprc": average_precision(score, truth), "wanted": int(truth.sum()),
                     "prevalence": float(truth.mean())}
    return out


def _auprcs(run: dict) -> str:
    """One run's AUPRC by method, for the progress log."""
    return " ".join(f"{name} {run[arm]['auprc']:.3f}" for name, arm in
                    (("ours AUPRC", "ours"), ("sim", "similarity"), ("probe", "probe"), ("iforest", "iforest")))


def _finished(done) -> dict:
    if not done or not os.path.exists(done):
        return {}
    with open(done) as handle:
        return {run["key"]: run for run in map(json.loads, handle) if "key" in run}


def _keep(done, run) -> None:
    if done:
        with open(done, "a") as handle:
            handle.write(json.dumps(run) + "\n")


def gz1_runs(path: str, gz1: str, starts, seeds, config, log=print, done=None) -> dict:
    ids, vectors, _ = read_embeddings(path, ())
    table = os.path.abspath(path)
    labels = {}
    with open(os.path.join(gz1, "labels.csv"), newline="") as handle:
        for row in csv.DictReader(handle):
            labels[int(row["objid"])] = row["gz1_label"]
    names = np.array([labels.get(int(i), "") for i in ids])
    results, finished, graphs = {}, _finished(done), {}
    for wanted in ("merger", "edge_on"):
        truth = names == wanted
        for seed in seeds:
            prior = None
            for start in starts:
                key = f"gz1 {table} {wanted} {start} {seed} {json.dumps(config, sort_keys=True)}"
                if key in finished:
                    results.setdefault((wanted, start), []).append(finished[key])
                    continue
                prior = prior if prior is not None else prior_scores(vectors, RankSettings(seed=seed))
                run = one_run(vectors, truth, start, seed, config, prior, graph_of(vectors, config, graphs))
                run.update(kind=wanted, seed=seed, start=start, n=len(ids), key=key)
                results.setdefault((wanted, start), []).append(run)
                _keep(done, run)
                log(f"gz1 {wanted} start={start} seed={seed}: {_auprcs(run)}")
    return results


def tune(path: str, log=print, done=None) -> tuple[dict, list]:
    """The 'auto' settings with the best mean AUPRC on the tuning table (TUNE_PREVALENCE, 5 starting positives,
    TUNE_SEEDS)."""
    scores = []
    for config in GRID:
        runs = sim_runs(path, (TUNE_PREVALENCE,), (5,), TUNE_SEEDS, config, log=lambda *_: None,
                        done=done)[(TUNE_PREVALENCE, 5)]
        mean = float(np.mean([r["ours"]["auprc"] for r in runs]))
        scores.append({**config, "auprc": mean})
        log(f"tune {config}: mean AUPRC {mean:.3f}")
    best = max(scores, key=lambda s: s["auprc"])
    return {k: best[k] for k in BASE}, scores


def cell(summary: dict, arm: str, key: str) -> str:
    mean, spread = summary[arm][key]
    return f"{mean:.3f}±{spread:.3f}"


def table_lines(title: str, grouped: dict) -> list[str]:
    lines = [f"**{title}**", "", "| wanted, start | prevalence | labels | found (of) | runs | metric | ours | similarity | "
             "probe | iforest | random |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, runs in grouped.items():
        s = summarise(runs)
        for metric in ("auprc", "p_top1", "p100"):
            lines.append(f"| {key[0]}, {key[1]} | {s['prevalence']:.4f} | {s['labels']:.0f} | "
                         f"{s['found']:.1f} ({s['wanted']:.0f}) | "
                         f"{s['runs']} | {metric} | " + " | ".join(cell(s, a, metric) for a in
                                                                  ("ours", "similarity", "probe", "iforest", "random"))
                         + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sim-tune", help="gal-embed table of the gal-sim tuning table (with anomaly_kind)")
    parser.add_argument("--sim-test", help="gal-embed table of the gal-sim test table (another seed)")
    parser.add_argument("--gz1-emb", help="gal-embed table of the packed Galaxy Zoo 1 galaxies")
    parser.add_argument("--gz1", help="the Galaxy Zoo 1 folder (labels.csv)")
    parser.add_argument("--pixel-pca", action="store_true", help="--sim-tune and --sim-test are cutout tables: "
                        "embed them by pixel PCA (the fallback when no trained encoder is at hand)")
    parser.add_argument("--prevalences", default="0.01,0.001", help="gal-sim: prevalences of the wanted kind")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per gal-sim kind and prevalence")
    parser.add_argument("--starts", default=",".join(map(str, STARTS)), help="known positives at the start")
    parser.add_argument("--gz1-seeds", type=int, default=5)
    parser.add_argument("--note", default="", help="how the embeddings were made (goes into the rows)")
    parser.add_argument("--json", default=os.path.join(HERE, ".work-discovery", "result.json"))
    parser.add_argument("--ceiling", action="store_true", help="also: per kind of the gal-sim test table, the AUPRC "
                        "of a probe given every label (5-fold), i.e. what the embeddings carry at all")
    parser.add_argument("--ceiling-of", action="append", default=[], metavar="EMB[=RECIPE]", help="only this: per "
                        "kind, the every-label probe of the gal-sim embedding table EMB with every object of the kind "
                        "kept (the tuning protocol), to compare encoders on the tuning table; repeatable; RECIPE (how "
                        "EMB was made) and --note go into the rows")
    parser.add_argument("--reader", action="append", choices=READERS, help="with --ceiling-of: the probe that reads "
                        "the embeddings (repeatable; default linear): a class-balanced logistic regression, boosted "
                        "trees, extremely randomised trees, an RBF-kernel logistic regression, a 15-neighbour vote")
    parser.add_argument("--defect-stats", metavar="CUTOUTS", help="with --ceiling-of: also the detector-defect "
                        "statistics of the gal-sim cutout table CUTOUTS (written beside it), the pixels' side")
    parser.add_argument("--settings", metavar="KEY=VALUE,...", help="gal-sim and gz1: these 'auto' settings in place "
                        "of the grid's choice (e.g. steer=0: the chosen settings without steering, a baseline)")
    parser.add_argument("--rank-cost", metavar="EMB", help="only this: the CPU seconds of one ranking with --propose 20 "
                        "(15 positives of a kind and 50 negatives) of the gal-sim embedding table EMB, steered and "
                        "not (--steer 0.5 and 0)")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("--kept-only", action="store_true", help="gal-sim: report the runs kept so far (in the "
                        "runs file beside --json), computing none")
    args = parser.parse_args()
    if args.defect_stats:
        made = defect_stats(args.defect_stats, os.path.splitext(args.defect_stats)[0] + "-defects.parquet")
        args.ceiling_of.append(f"{made}=detector-defect statistics of the pixels (column and row contrast, spike)")
    if args.ceiling_of:
        return ceilings_only(args.ceiling_of, args.note, args.no_record, args.reader or ["linear"])
    if args.rank_cost:
        return rank_cost(args.rank_cost, args.note, args.no_record)
    started = time.perf_counter()
    if args.pixel_pca:
        for name in ("sim_tune", "sim_test"):
            if getattr(args, name):
                path = getattr(args, name)
                setattr(args, name, pixel_pca(path, os.path.splitext(path)[0] + "-pixelpca.parquet"))
    config = dict(BASE)
    result = {"note": args.note, "grid": None, "settings": args.settings}
    done = os.path.splitext(args.json)[0] + "-runs.jsonl"
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)   # the runs files go beside it
    if args.sim_tune:
        config, result["grid"] = tune(args.sim_tune, done=done.replace("-runs", "-tuning"))
    for item in filter(None, (args.settings or "").split(",")):
        key, _, value = item.partition("=")
        config[key] = float(value)
    result["config"] = config
    print(f"auto settings: {config}", flush=True)
    report = {}
    if args.sim_test:
        starts = tuple(int(v) for v in args.starts.split(","))
        grouped = sim_runs(args.sim_test, tuple(float(p) for p in args.prevalences.split(",")), starts,
                           tuple(range(1, args.seeds + 1)), config, done=done,
                           kept_only=args.kept_only)
        report["sim"] = {f"{p} {s}": summarise(r) for (p, s), r in grouped.items()}
        result["sim_lines"] = table_lines("gal-sim test table (all anomaly kinds; wanted prevalence, start)",
                                          {(f"{p:.1%}", s): r for (p, s), r in grouped.items()})
        for (p, s), runs in grouped.items():
            by_kind: dict = {}
            for run in runs:
                by_kind.setdefault((f"{run['kind']} {p:.1%}", s), []).append(run)
            result["sim_lines"] += ["", *table_lines(f"by kind, {p:.1%}, start {s}", by_kind)]
    if args.sim_test and args.ceiling:
        result["ceiling"] = ceiling(args.sim_test)
        print("every-label probe, 5-fold, 1%: " + ", ".join(f"{k} {v['auprc']:.3f}" for k, v in
                                                            result["ceiling"].items()), flush=True)
    if args.gz1_emb:
        grouped = gz1_runs(args.gz1_emb, args.gz1, tuple(int(v) for v in args.starts.split(",")), tuple(range(1, args.gz1_seeds + 1)), config, done=done)
        report["gz1"] = {f"{k} {s}": summarise(r) for (k, s), r in grouped.items()}
        result["gz1_lines"] = table_lines("Galaxy Zoo 1 (1,500 SDSS galaxies)", grouped)
    result["report"] = report
    result["seconds"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as handle:
        json.dump(result, handle, indent=1)
    for key in ("sim_lines", "gz1_lines"):
        if key in result:
            print("\n".join(result[key]))
    if not args.no_record:
        record(result, config)


def ceilings_only(tables, note: str, no_record: bool, readers=("linear",)) -> None:
    """--ceiling-of: what each embedding table carries about each kind (``ceiling`` at TUNE_PREVALENCE), as read
    by each of ``readers`` (the linear probe's line names no reader)."""
    from _record import record as append_row

    for table in tables:
        path, _, recipe = table.partition("=")
        for read in readers:
            c = ceiling(path, prevalence=TUNE_PREVALENCE, read=read)
            values = ", ".join(f"{k} AUPRC {v['auprc']:.3f}" for k, v in c.items())
            mean = np.mean([v["auprc"] for v in c.values()])
            name = (recipe or path) + ("" if read == "linear" else f" [{read} reader]")
            print(f"{name}: {values}; mean {mean:.3f}", flush=True)
            if not no_record:
                append_row(f"discovery ceiling by recipe: probe given every label, 5-fold, gal-sim tuning table with "
                           f"every object of each kind (~{np.mean([v['wanted'] for v in c.values()]):.0f} wanted); "
                           f"{name}; {note}", f"{values}; mean {mean:.3f}",
                       f"prevalence {np.mean([v['prevalence'] for v in c.values()]):.4f}", "-")


def rank_cost(path: str, note: str, no_record: bool, repeats: int = 2) -> None:
    """--rank-cost: CPU seconds (user + system of this process, the fastest of ``repeats``) of ``rank_vectors`` with
    the default settings and --propose 20 on every row of ``path``, with steering (the default) and without."""
    from _record import machine, record as append_row

    _, vectors, columns = read_embeddings(path, ("anomaly_kind",))
    kinds = columns["anomaly_kind"]
    rng = np.random.default_rng(0)
    wanted = "merger" if "merger" in kinds else sorted(set(kinds.tolist()) - {"none"})[0]
    positives = rng.choice(np.flatnonzero(kinds == wanted), 15, replace=False)
    negatives = rng.choice(np.flatnonzero(kinds == "none"), 50, replace=False)
    cpu, share = {}, RankSettings().steer
    for steer in (0.0, share):
        times = []
        for _ in range(repeats):
            started = time.process_time()
            rank_vectors(vectors, positives, negatives, RankSettings(propose=PER_ROUND, steer=steer))
            times.append(time.process_time() - started)
        cpu[steer] = min(times)
    plain, steered = cpu[0.0], cpu[share]
    print(f"{len(vectors)} rows: {steered:.1f} CPU-s steered ({share}), {plain:.1f} not", flush=True)
    if not no_record:
        append_row(f"gal-ood rank --propose {PER_ROUND}: CPU-s of one ranking (rank_vectors, default settings, 15 "
                   f"positives and 50 negatives), {len(vectors):,} rows of {os.path.basename(path)}, fastest of "
                   f"{repeats}; {note}; {machine()}", f"steer {share}: {steered:.1f} CPU-s", f"steer 0: {plain:.1f} "
                   f"CPU-s", f"{steered / plain:.2f}x")


def record(result: dict, config: dict) -> None:
    from _record import machine, record as append_row

    by_hand = f" ({result['settings']} set by --settings)" if result.get("settings") else ""
    setting = (f"auto settings chosen on the tuning table{by_hand}: " + ", ".join(f"{k} {v}" for k, v in config.items())
               + f"; {result['note']}")
    for part, title in (("sim", "gal-sim test table, mean over the 7 anomaly kinds x seeds"),
                        ("gz1", "Galaxy Zoo 1, merger and edge_on, x seeds")):
        for key, s in result["report"].get(part, {}).items():
            ours = f"ours AUPRC {cell(s, 'ours', 'auprc')}, P@top1% {cell(s, 'ours', 'p_top1')}, " \
                   f"P@100 {cell(s, 'ours', 'p100')}, R@top1% {cell(s, 'ours', 'r_top1')}"
            base = "; ".join(f"{a} AUPRC {cell(s, a, 'auprc')}, P@top1% {cell(s, a, 'p_top1')}"
                             for a in ("similarity", "probe", "iforest", "random"))
            best_base = max(s[a]["auprc"][0] for a in ("similarity", "probe", "iforest", "random"))
            append_row(f"discovery loop ({title}; {key}: prevalence / class, start positives; prevalence "
                       f"{s['prevalence']:.4f}, {s['labels']:.0f} labels in all, {s['found']:.1f} of {s['wanted']:.0f} "
                       f"found by the loop ({s['similarity_found']:.1f} by similarity's), {s['runs']} runs; "
                       f"{setting}); "
                       f"{machine()}", ours, base, f"{s['ours']['auprc'][0] / max(best_base, 1e-9):.2f}x best")
    if result.get("grid"):
        append_row(f"discovery tuning grid (gal-sim tuning table, {TUNE_PREVALENCE:.0%}, 5 start positives, 7 kinds x seeds "
                   f"{','.join(map(str, TUNE_SEEDS))}; {result['note']}); {machine()}",
                   "; ".join(f"{' '.join(f'{k} {g[k]}' for k in BASE if g[k] != BASE[k]) or 'reference'}: AUPRC "
                             f"{g['auprc']:.3f}" for g in result["grid"]), "-", f"chosen: {config}")
    if result.get("ceiling"):
        c = result["ceiling"]
        append_row(f"discovery ceiling: probe given every label, 5-fold, gal-sim test table with each kind at 1% "
                   f"(~{np.mean([v['wanted'] for v in c.values()]):.0f} wanted); {result['note']}; {machine()}",
                   ", ".join(f"{k} AUPRC {v['auprc']:.3f}" for k, v in c.items()),
                   f"prevalence {np.mean([v['prevalence'] for v in c.values()]):.4f}", "-")


if __name__ == "__main__":
    main()

"""Does the learned representation earn its keep?  One recipe of gal-train against the baselines a reader needs,
on real galaxies (Galaxy Zoo 1 classes of SDSS gri composites) and on gal-sim mocks (photo-z label curve).

    python benchmarks/bench_representation.py --gz1 DATA/gz1-sdss                       # the `small` preset
    python benchmarks/bench_representation.py --gz1 DATA/gz1-sdss --name try-simclr \\
        --train-flags "--preset small --method simclr" --parts gz1 --no-record          # rank a recipe quickly
    python benchmarks/bench_representation.py --gz1 DATA/gz1-sdss --heldout --steps 300 --seeds 0,1,2 \\
        --recipe "small=--preset small" --recipe "crop32=--preset small --crop 32" --whiten  # select, then report

DATA/gz1-sdss holds labels.csv (objid, gz1_label, file) and images/.  The commands run as a user runs them
(subprocesses): gal-pack, gal-sim, gal-train, gal-embed, gal-photoz curve.  numpy does what no tool does yet, the
same way for every representation:

- raw-pixel PCA-64: principal components of the packed cutouts' pixels (no labels), fitted on all of them; and the
  same on the centre crop the encoder sees (its input size), when that is smaller;
- random weights: the recipe's encoder exported by ``gal-train --steps 0`` (initial weights, same preprocessing);
- the probe: multinomial logistic regression on standardised features, its L2 strength chosen by 3-fold
  cross-validation inside the training folds from one fixed grid, scored by 5-fold cross-validation over a split
  fixed by object_id (a hash), so every arm sees the same folds;
- precision@10: the share of the 10 nearest neighbours (cosine, brute force, the galaxy itself left out) among the
  labelled galaxies that have the query's class; per class and over all queries.

Classes: elliptical, spiral (clockwise + anticlockwise), edge_on, merger; 'unknown' is left out.  The SSL run
trains on every packed image (no labels), which is what self-supervision may use; the probe sees the labels of
its training folds only.

Photo-z (``--parts photoz``): gal-sim mocks, the same recipe trained on them (``--sim-train-flags``), then
``gal-photoz curve --images --checkpoint``: the linear probe, fine-tuning and the same network from scratch (all
stopped by validation patience), and the training median, at the same nested label counts; the probe is also run
on PCA-64 and random-weight embeddings of the mocks.

Held-out discipline (``--heldout``): every --recipe is trained with each of --seeds on all the galaxies (no labels);
the recipe with the best mean precision@10 on folds 0-2 of the fixed split (then probe accuracy) is *selected*, and
every recipe is *reported* on folds 3-4, which the selection never saw: probe (5-fold within those galaxies) and
precision@10 (neighbours among those galaxies only; also for edge-on and merger queries), mean and spread over the
seeds, beside raw-pixel PCA-64 on the same galaxies.  With ``--whiten`` every recipe is a second arm too, its
encoder whitened by ``gal-train whiten``'s defaults (fitted on all packed galaxies, no labels) and embedded again,
and selection picks among all arms.  Only the reported numbers of the selected arm are to be quoted.  Each run's
CPU time (user+sys of gal-train) is kept beside its wall time: on a shared machine only the former means much.

The training budget is a number of steps (``--steps``), the same for every recipe; its wall time is reported.
Rows go to benchmarks/RESULTS.md (``--no-record`` to skip) and the whole result to WORK/NAME/result.json.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time

# The probe's small matrices are fastest on one BLAS thread (and do not fight the tools for the cores).
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

CLASSES = ("elliptical", "spiral", "edge_on", "merger")
MERGE = {"spiral_clockwise": "spiral", "spiral_anticlockwise": "spiral"}
FOLDS = 5
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)     # inverse L2 strength of the probe, chosen by inner cross-validation
K = 10
SELECT_FOLDS = (0, 1, 2)  # --heldout: recipes are selected on these folds and reported on the others
CPU_SECONDS = "bench-train-cpu-seconds.txt"   # in a run folder: gal-train's CPU time (meaningful on a busy machine)


# -- running the tools --------------------------------------------------------------------------------------------
def tool(name: str) -> str:
    local = os.path.join(os.path.dirname(sys.executable), name)
    return local if os.path.exists(local) else name


def run(args: list[str], threads: int, capture: bool = False) -> str:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    print("$ " + " ".join(shlex.quote(a) for a in args), flush=True)
    done = subprocess.run([tool(args[0]), *args[1:]], env=env, check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout if capture else ""


# -- data ---------------------------------------------------------------------------------------------------------
def pack_gz1(gz1: str, work: str, threads: int) -> str:
    path = os.path.join(work, "gz1.parquet")
    if not os.path.exists(path):
        run(["gal-pack", os.path.join(gz1, "labels.csv"), "--crop", "212", "--resize", "64", "--bands", "i,r,g",
             "--pixscale", "1.31", "-q", "-o", path], threads)
    return path


def gz1_labels(gz1: str) -> dict[int, str]:
    labels = {}
    with open(os.path.join(gz1, "labels.csv"), newline="") as handle:
        for row in csv.DictReader(handle):
            name = MERGE.get(row["gz1_label"], row["gz1_label"])
            if name in CLASSES:
                labels[int(row["objid"])] = name
    return labels


def fold_of(object_ids: np.ndarray, salt: str = "") -> np.ndarray:
    """A fixed fold per object: sha256 of its id (and ``salt``, for a second, independent split), so the split
    never depends on row order or on the arm."""
    return np.array([int(hashlib.sha256((salt + str(int(i))).encode()).hexdigest(), 16) % FOLDS
                     for i in object_ids])


def read_images(path: str) -> tuple[np.ndarray, np.ndarray]:
    from galtools.io import open_table
    from galtools.io.tensor import images_of

    with open_table(path) as table:
        data = table.read_all()
    return np.asarray(data.column("object_id").to_pylist()), images_of(data)


def read_embeddings(path: str, extra: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    import pyarrow.parquet as pq

    data = pq.read_table(path)
    x = np.asarray(data.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False),
                   dtype=np.float64).reshape(data.num_rows, -1)
    values = np.asarray(data.column(extra).to_pylist(), dtype=np.float64) if extra else None
    return np.asarray(data.column("object_id").to_pylist()), x, values


def pca(pixels: np.ndarray, components: int) -> np.ndarray:
    """Scores on the leading principal components of the flattened pixels (centred; no labels)."""
    flat = pixels.reshape(len(pixels), -1).astype(np.float64)
    flat -= flat.mean(axis=0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    return flat @ vt[:components].T


def write_embeddings(path: str, ids, x: np.ndarray, columns: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from galtools.io import vector_column

    table = pa.table({"object_id": pa.array(ids), **{k: pa.array(v) for k, v in columns.items()},
                      "embedding": vector_column(x.astype(np.float32))})
    pq.write_table(table, path)


# -- the probe and precision@k, identical for every representation -----------------------------------------------
def softmax_regression(x: np.ndarray, y: np.ndarray, classes: int, c: float, iterations: int = 100) -> np.ndarray:
    """Multinomial logistic regression: mean cross-entropy + |W|^2 / (2 c n), minimised by Newton's method with
    backtracking (convex: the same optimum whatever the start).  x already standardised; returns W (D+1, classes),
    the last row the biases (penalised 1e-6 times as much, so that the optimum is unique)."""
    n, d = x.shape
    xb = np.hstack([x, np.ones((n, 1))])
    onehot = np.eye(classes)[y]
    reg = np.full(d + 1, 1.0 / (c * n))
    reg[-1] *= 1e-6

    def loss_of(w):
        logits = xb @ w
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return -(onehot * log_p).sum() / n + 0.5 * (reg[:, None] * w * w).sum(), np.exp(log_p)

    w = np.zeros((d + 1, classes))
    loss, p = loss_of(w)
    for _ in range(iterations):
        grad = xb.T @ (p - onehot) / n + reg[:, None] * w
        # Hessian of the mean cross-entropy, ordered like w.reshape(-1): (feature a, class k) x (feature b, class l)
        blocks = np.einsum("ik,il->ikl", p, -p)
        blocks[:, np.arange(classes), np.arange(classes)] += p
        hessian = np.empty((d + 1, classes, d + 1, classes))
        for k in range(classes):
            for m in range(k, classes):
                hessian[:, k, :, m] = hessian[:, m, :, k] = xb.T @ (xb * blocks[:, k, m, None]) / n
        hessian = hessian.reshape((d + 1) * classes, -1)
        hessian += np.diag(np.repeat(reg, classes))
        step = np.linalg.solve(hessian, grad.reshape(-1)).reshape(d + 1, classes)
        size = 1.0
        while True:
            new_loss, new_p = loss_of(w - size * step)
            if new_loss <= loss or size < 1e-4:
                break
            size /= 2
        w, converged = w - size * step, loss - new_loss < 1e-10
        loss, p = new_loss, new_p
        if converged:
            break
    return w


def _standardise(train: np.ndarray, *others: np.ndarray):
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0
    return [(a - mean) / std for a in (train, *others)]


def _predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return (np.hstack([x, np.ones((len(x), 1))]) @ w).argmax(axis=1)


def _choose_c(x: np.ndarray, y: np.ndarray, classes: int, folds: np.ndarray) -> float:
    inner = folds % 3
    scores = []
    for c in C_GRID:
        correct = 0
        for f in range(3):
            xt, xv = _standardise(x[inner != f], x[inner == f])
            correct += int((_predict(softmax_regression(xt, y[inner != f], classes, c), xv) == y[inner == f]).sum())
        scores.append(correct)
    return C_GRID[int(np.argmax(scores))]


def probe(x: np.ndarray, y: np.ndarray, folds: np.ndarray, classes: int) -> dict:
    """5-fold cross-validated accuracy and balanced accuracy of the probe (and of the majority class)."""
    x = x.astype(np.float64)
    predicted = np.empty_like(y)
    majority = np.empty_like(y)
    chosen = []
    inner_folds = np.arange(len(y))   # a fixed inner split: position within the training folds
    for f in range(FOLDS):
        train, test = folds != f, folds == f
        c = _choose_c(x[train], y[train], classes, inner_folds[train])
        chosen.append(c)
        xt, xv = _standardise(x[train], x[test])
        predicted[test] = _predict(softmax_regression(xt, y[train], classes, c), xv)
        majority[test] = np.bincount(y[train], minlength=classes).argmax()
    return {"accuracy": float((predicted == y).mean()), "balanced_accuracy": balanced(predicted, y, classes),
            "majority_accuracy": float((majority == y).mean()),
            "majority_balanced_accuracy": balanced(majority, y, classes), "c": chosen}


def balanced(predicted: np.ndarray, y: np.ndarray, classes: int) -> float:
    return float(np.mean([(predicted[y == k] == k).mean() for k in range(classes) if (y == k).any()]))


def precision_at_k(x: np.ndarray, y: np.ndarray, classes: int, k: int = K) -> dict:
    """Share of the k nearest neighbours (cosine; self left out) with the query's class: overall and per class."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    hits = (y[neighbours] == y[:, None]).mean(axis=1)
    return {"overall": float(hits.mean()),
            "per_class": {CLASSES[c]: float(hits[y == c].mean()) for c in range(classes) if (y == c).any()}}


def chance_precision(y: np.ndarray, classes: int) -> float:
    """precision@k of neighbours drawn at random: sum over classes of (share x share among the others)."""
    counts = np.bincount(y, minlength=classes).astype(float)
    n = counts.sum()
    return float((counts * (counts - 1) / (n - 1)).sum() / n)


# -- the arms -----------------------------------------------------------------------------------------------------
def train_and_embed(table: str, out: str, flags: list[str], steps: int, threads: int, force: bool) -> tuple[str, float]:
    emb = os.path.join(out, "emb.parquet")
    timing = os.path.join(out, "bench-train-seconds.txt")
    if force or not os.path.exists(os.path.join(out, "encoder.onnx")):
        started, cpu = time.perf_counter(), os.times()
        run(["gal-train", table, "--out", out, *flags, "--steps", str(steps), "--device", "cpu",
             "--checkpoint-every", "100000", "-q", "--overwrite"], threads)
        done = os.times()
        with open(timing, "w") as handle:
            handle.write(f"{time.perf_counter() - started:.1f}\n")
        with open(os.path.join(out, CPU_SECONDS), "w") as handle:   # user + sys of gal-train
            used = done.children_user - cpu.children_user + done.children_system - cpu.children_system
            handle.write(f"{used:.1f}\n")
    with open(timing) as handle:        # a run trained by an earlier call: its own time
        seconds = float(handle.read())
    if force or not os.path.exists(emb):
        run(["gal-embed", table, "--model", os.path.join(out, "encoder.onnx"), "-q", "-o", emb, "--overwrite"],
            threads)
    return emb, seconds


def whitened_embedding(table: str, run_folder: str, threads: int, force: bool, out_dir: str | None = None) -> str:
    """``gal-train whiten`` with its defaults, fitted on every cutout of TABLE (no labels: a user fits it on the
    survey searched), then ``gal-embed`` through the whitened encoder; files in OUT_DIR (default the run folder)."""
    out_dir = out_dir or run_folder
    model = os.path.join(out_dir, "encoder-whitened.onnx")
    emb = os.path.join(out_dir, "emb-whitened.parquet")
    if force or not os.path.exists(model):
        run(["gal-train", "whiten", run_folder, table, "--device", "cpu", "-q", "-o", model, "--overwrite"], threads)
    if force or not os.path.exists(emb):
        run(["gal-embed", table, "--model", model, "--device", "cpu", "-q", "-o", emb, "--overwrite"], threads)
    return emb


def encoder_input_size(onnx_path: str) -> int:
    from galtools.train.export import read_metadata

    return int(read_metadata(onnx_path)["galtools.input_size"])


def export_tta(table: str, run_folder: str, tta: int, threads: int, force: bool) -> str:
    onnx_path = os.path.join(run_folder, f"encoder-tta{tta}.onnx")
    emb = os.path.join(run_folder, f"emb-tta{tta}.parquet")
    if force or not os.path.exists(onnx_path):
        run(["gal-train", "export", os.path.join(run_folder, "last.pt"), "-o", onnx_path, "--tta", str(tta),
             "--overwrite"], threads)
    if force or not os.path.exists(emb):
        run(["gal-embed", table, "--model", onnx_path, "-q", "-o", emb, "--overwrite"], threads)
    return emb


def gz1_data(args, work: str):
    """The packed galaxies: (table path, ids, pixels, labelled mask, class index or -1, fold)."""
    table = pack_gz1(args.gz1, work, args.threads)
    labels = gz1_labels(args.gz1)
    ids, pixels = read_images(table)
    keep = np.array([int(i) in labels for i in ids])
    y = np.array([CLASSES.index(labels[int(i)]) if int(i) in labels else -1 for i in ids])
    return table, ids, pixels, keep, y, fold_of(ids)


def gz1_part(args, work: str, run_dir: str) -> dict:
    table, ids, pixels, keep, y_all, folds_all = gz1_data(args, work)
    representations = {"pca64": pca(pixels, 64)}
    flags = shlex.split(args.train_flags)
    learned, seconds = train_and_embed(table, os.path.join(run_dir, "gz1"), flags, args.steps, args.threads,
                                       args.force)
    random_emb, _ = train_and_embed(table, os.path.join(run_dir, "gz1-random"), flags, 0, args.threads, args.force)
    crop = encoder_input_size(os.path.join(run_dir, "gz1", "encoder.onnx"))
    if crop < pixels.shape[-1]:    # PCA of the very pixels the encoder sees (gal-embed's centre crop)
        top = (pixels.shape[-1] - crop) // 2
        representations[f"pca64-crop{crop}"] = pca(np.ascontiguousarray(pixels[..., top:top + crop, top:top + crop]),
                                                    64)
    arms = [("learned", learned), ("random", random_emb)]
    if args.tta > 1:     # the same checkpoints exported with test-time averaging, embedded again
        for name, folder in (("learned", "gz1"), ("random", "gz1-random")):
            arms.append((f"{name}-tta{args.tta}", export_tta(table, os.path.join(run_dir, folder), args.tta,
                                                              args.threads, args.force)))
    for name, path in arms:
        emb_ids, x, _ = read_embeddings(path)
        order = {int(v): i for i, v in enumerate(emb_ids)}
        representations[name] = x[[order[int(i)] for i in ids]]
    y, folds = y_all[keep], folds_all[keep]
    result = {"train_seconds": seconds, "objects": int(keep.sum()), "class_counts":
              {CLASSES[c]: int((y == c).sum()) for c in range(len(CLASSES))},
              "precision_chance": chance_precision(y, len(CLASSES))}
    for name, x in representations.items():
        x = x[keep]
        result[name] = {"probe": probe(x, y, folds, len(CLASSES)), "precision": precision_at_k(x, y, len(CLASSES)),
                        "dim": int(x.shape[1]),
                        # a diagnostic: cosine after removing the mean embedding (PCA scores are centred already)
                        "precision_centred": precision_at_k(x - x.mean(axis=0), y, len(CLASSES))["overall"]}
        print(f"gz1 {name}: probe {result[name]['probe']['accuracy']:.3f} "
              f"(balanced {result[name]['probe']['balanced_accuracy']:.3f}), "
              f"precision@{K} {result[name]['precision']['overall']:.3f} "
              f"(centred {result[name]['precision_centred']:.3f})", flush=True)
    return result


HELDOUT_METRICS = ("probe", "precision", "edge_on", "merger")


def evaluate(x: np.ndarray, y: np.ndarray, ids: np.ndarray) -> dict:
    """Probe accuracy (5-fold, folds by a salted hash of the ids: independent of the selection/report split) and
    precision@10 with neighbours searched among these galaxies only (overall, edge-on and merger queries)."""
    search = precision_at_k(x, y, len(CLASSES))
    return {"probe": probe(x, y, fold_of(ids, "inner"), len(CLASSES))["accuracy"], "precision": search["overall"],
            "edge_on": search["per_class"]["edge_on"], "merger": search["per_class"]["merger"]}


def whitened_pca(x: np.ndarray) -> np.ndarray:
    """raw-pixel PCA scores whitened like ``gal-train whiten``'s defaults (every dimension, its shrink)."""
    from galtools.embed import whiten

    moments = whiten.Moments()
    moments.add(x)
    fitted = whiten.fit(moments, x.shape[1], whiten.DEFAULT_SHRINK)
    return (x - fitted.mean) @ fitted.matrix


def mean_spread(values) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def scored(emb: str, labels: str, ids: np.ndarray, y: np.ndarray, parts: dict) -> dict:
    """evaluate() on every part, kept beside the embeddings (EMB.scores.json) under a hash of the embeddings, the
    labels and the split, so that a later call with more recipes or seeds scores only what is new."""
    digest = hashlib.sha256(repr((SELECT_FOLDS, K, HELDOUT_METRICS, C_GRID)).encode())
    for path in (emb, labels):
        with open(path, "rb") as handle:
            digest.update(handle.read())
    cache = emb + ".scores.json"
    if os.path.exists(cache):
        with open(cache) as handle:
            kept = json.load(handle)
        if kept["key"] == digest.hexdigest():
            return kept["scores"]
    emb_ids, x, _ = read_embeddings(emb)
    order = {int(v): i for i, v in enumerate(emb_ids)}
    x = x[[order[int(i)] for i in ids]]
    scores = {p: evaluate(x[m], y[m], ids[m]) for p, m in parts.items()}
    with open(cache, "w") as handle:
        json.dump({"key": digest.hexdigest(), "scores": scores}, handle)
    return scores


def recipe_steps(flags: list[str], default: int) -> tuple[int, list[str]]:
    """A recipe's own ``--steps N`` (a longer run of a cheaper step, at a like CPU budget) or --steps', and the
    other flags."""
    if "--steps" not in flags:
        return default, flags
    at = flags.index("--steps")
    return int(flags[at + 1]), flags[:at] + flags[at + 2:]


def heldout_part(args, work: str) -> dict:
    """Recipes selected on some folds of the galaxies, reported on the others (see --heldout)."""
    table, ids, pixels, keep, y, folds = gz1_data(args, work)
    parts = {"select": keep & np.isin(folds, SELECT_FOLDS), "report": keep & ~np.isin(folds, SELECT_FOLDS)}
    seeds = [int(v) for v in args.seeds.split(",")]
    result = {"steps": args.steps, "seeds": seeds, "select_folds": list(SELECT_FOLDS), "recipes": {},
              "galaxies": {p: int(m.sum()) for p, m in parts.items()}}
    base = pca(pixels, 64)
    result["pca64"] = {p: evaluate(base[m], y[m], ids[m]) for p, m in parts.items()}
    if args.whiten:
        white = whitened_pca(base)
        result["pca64_whitened"] = {p: evaluate(white[m], y[m], ids[m]) for p, m in parts.items()}
    posts = ("none", "whitened") if args.whiten else ("none",)
    for spec in args.recipe:
        name, flags = spec.split("=", 1)
        steps, train_flags = recipe_steps(shlex.split(flags), args.steps)
        runs = {post: [] for post in posts}
        for seed in seeds:
            folder = os.path.join(work, "heldout", f"{name}-{steps}-seed{seed}")
            emb, seconds = train_and_embed(table, folder, [*train_flags, "--seed", str(seed)], steps,
                                           args.threads, args.force)
            cpu_file = os.path.join(folder, CPU_SECONDS)
            cpu = float(open(cpu_file).read()) if os.path.exists(cpu_file) else None
            for post in posts:
                path = emb if post == "none" else whitened_embedding(table, folder, args.threads, args.force)
                scores = scored(path, os.path.join(args.gz1, "labels.csv"), ids, y, parts)
                runs[post].append({"seed": seed, "seconds": seconds, "cpu_seconds": cpu, **scores})
                print(f"heldout {name} ({post}) seed {seed}: " + ", ".join(
                    f"{p} probe {v['probe']:.3f} p@{K} {v['precision']:.3f}" for p, v in scores.items()), flush=True)
        for post in posts:
            arm = name if post == "none" else f"{name}+{post}"
            result["recipes"][arm] = {"flags": flags, "steps": steps, "post": post, "runs": runs[post], **{
                p: {metric: mean_spread([r[p][metric] for r in runs[post]]) for metric in HELDOUT_METRICS}
                for p in parts}}
    # selection sees the selection folds only: the best mean precision@10 there, then the probe
    result["selected"] = max(result["recipes"], key=lambda n: (result["recipes"][n]["select"]["precision"][0],
                                                               result["recipes"][n]["select"]["probe"][0]))
    return result


POST_NAMES = {"none": "unwhitened", "whitened": "whitened by gal-train whiten's defaults, fitted on all packed "
               "galaxies without labels"}


def heldout_rows(result: dict) -> list[tuple[str, str, str]]:
    def fmt(scores):
        def pm(metric):
            value = scores[metric]
            return f"{value[0]:.3f}±{value[1]:.3f}" if isinstance(value, (list, tuple)) else f"{value:.3f}"
        per_class = f" (edge-on {pm('edge_on')}, mergers {pm('merger')})" if "edge_on" in scores else ""
        return f"probe acc {pm('probe')}, p@{K} {pm('precision')}{per_class}"

    def baseline(key, label):
        b = result.get(key)
        return f"{label} reported: {fmt(b['report'])}; selection folds: {fmt(b['select'])}" if b else ""

    rows = []
    pca_ = result["pca64"]
    for name, r in result["recipes"].items():
        won = "SELECTED" if name == result["selected"] else "not selected"
        cpu = [x.get("cpu_seconds") for x in r["runs"]]
        cpu_text = (f", {np.mean(cpu) / 60:.1f} CPU-min each (user+sys)" if all(c is not None for c in cpu)
                    else "")
        rows.append((f"representation, held-out discipline: arm '{name}' ({r['flags']}, "
                     f"{r.get('steps', result['steps'])} steps, "
                     f"{POST_NAMES[r.get('post', 'none')]}; seeds {','.join(map(str, result['seeds']))}; {won} "
                     f"among {len(result['recipes'])} arms by mean p@{K} on folds "
                     f"{','.join(map(str, result['select_folds']))} = {result['galaxies']['select']} gz1 galaxies); "
                     f"reported on the other folds ({result['galaxies']['report']} galaxies, never used to select); "
                     f"mean±std over seeds; train {np.mean([x['seconds'] for x in r['runs']]):.0f} s wall"
                     f"{cpu_text}",
                     f"reported: {fmt(r['report'])}; selection folds: {fmt(r['select'])}; reported minus PCA-64: "
                     f"probe {r['report']['probe'][0] - pca_['report']['probe']:+.3f}, "
                     f"p@{K} {r['report']['precision'][0] - pca_['report']['precision']:+.3f}",
                     "; ".join(filter(None, (baseline("pca64", "PCA-64 (same run)"),
                                             baseline("pca64_whitened", "PCA-64 whitened the same way"))))))
    return rows


def heldout_table(result: dict) -> str:
    """The reported folds as a markdown table (mean±std over seeds), selection-fold numbers beside them."""
    def cell(value):
        return f"{value[0]:.3f}±{value[1]:.3f}" if isinstance(value, (list, tuple)) else f"{value:.3f}"

    lines = [f"| arm (--steps {result['steps']} unless its flags say; seeds {','.join(map(str, result['seeds']))}) "
             f"| selection folds: "
             f"probe / p@{K} | reported: probe | reported: p@{K} | edge-on | mergers | train CPU-min |",
             "|---|---|---|---|---|---|---|"]
    arms = [(n + (" (**selected**)" if n == result["selected"] else ""), r) for n, r in result["recipes"].items()]
    arms += [(label, result[key]) for key, label in (("pca64", "raw-pixel PCA-64"),
                                                      ("pca64_whitened", "raw-pixel PCA-64, whitened"))
             if key in result]
    for name, r in arms:
        s, o = r["select"], r["report"]
        cpu = [run.get("cpu_seconds") for run in r.get("runs", [])]
        minutes = "/".join(f"{c / 60:.1f}" if c is not None else "?" for c in cpu) or "0"
        lines.append(f"| {name} | {cell(s['probe'])} / {cell(s['precision'])} | {cell(o['probe'])} | "
                     f"{cell(o['precision'])} | {cell(o['edge_on'])} | {cell(o['merger'])} | {minutes} |")
    return "\n".join(lines)


def photoz_part(args, work: str, run_dir: str) -> dict:
    sim = os.path.join(work, f"sim-{args.sim}.parquet")
    if not os.path.exists(sim):
        run(["gal-sim", "-n", str(args.sim), "--seed", "11", "-j", str(args.threads), "-q", "-o", sim], args.threads)
    flags = shlex.split(args.sim_train_flags if args.sim_train_flags is not None else args.train_flags)
    learned, seconds = train_and_embed(sim, os.path.join(run_dir, "sim"), flags, args.steps, args.threads, args.force)
    random_emb, _ = train_and_embed(sim, os.path.join(run_dir, "sim-random"), flags, 0, args.threads, args.force)
    ids, pixels = read_images(sim)
    emb_ids, _, z = read_embeddings(learned, "z_true")
    order = {int(v): i for i, v in enumerate(emb_ids)}
    pca_path = os.path.join(run_dir, "sim-pca64.parquet")
    write_embeddings(pca_path, ids, pca(pixels, 64), {"z_true": z[[order[int(i)] for i in ids]]})
    curve = ["gal-photoz", "curve", "--z-column", "z_true", "--label-smoothing", "2", "--fractions", args.fractions,
             *shlex.split(args.curve_flags), "--json", "-q"]
    result = {"train_seconds": seconds}
    full = json.loads(run([curve[0], curve[1], learned, *curve[2:], "--images", sim, "--checkpoint",
                           os.path.join(run_dir, "sim", "last.pt"), "--device", "cpu"], args.threads, capture=True))
    result["learned"] = full["rows"]
    for name, path in (("random", random_emb), ("pca64", pca_path)):
        result[name] = json.loads(run([curve[0], curve[1], path, *curve[2:]], args.threads, capture=True))["rows"]
    return result


# -- reporting ----------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def curve_points(rows: list[dict], arm_names: tuple[str, ...]) -> dict[int, float]:
    """sigma_MAD by label count for the rows of one arm (the curve's JSON names arms in 'method' or 'arm')."""
    points = {}
    for row in rows:
        arm = str(row.get("method", row.get("arm", "")))
        if arm in arm_names and row.get("sigma_mad") is not None:
            points[int(row["n_labels"])] = float(row["sigma_mad"])
    return points


def summary_rows(name: str, flags: str, steps: int, result: dict) -> list[tuple[str, str, str]]:
    rows = []
    g = result.get("gz1")
    if g:
        def arm(a):
            return (f"probe acc {g[a]['probe']['accuracy']:.3f}, balanced {g[a]['probe']['balanced_accuracy']:.3f}, "
                    f"p@{K} {g[a]['precision']['overall']:.3f} ("
                    + ", ".join(f"{c} {v:.2f}" for c, v in g[a]["precision"]["per_class"].items()) + ")")
        extra = "".join(f"; {a}: {arm(a)}" for a in g if a.startswith("learned-"))
        extra_random = "".join(f"; {a}: {arm(a)}" for a in g if a.startswith("random-"))
        extra_random += "".join(f"; PCA-64 of the centre {a.removeprefix('pca64-crop')} px: {arm(a)}" for a in g
                                if a.startswith("pca64-crop"))
        rows.append((f"representation on gz1 SDSS gri ({g['objects']} galaxies, 4 classes, 5-fold probe; recipe "
                     f"'{name}': {flags}, {steps} steps, trained in {g['train_seconds']:.0f} s)",
                     "learned: " + arm("learned") + extra,
                     f"PCA-64: {arm('pca64')}; random weights: {arm('random')}{extra_random}; majority acc "
                     f"{g['learned']['probe']['majority_accuracy']:.3f}, balanced "
                     f"{g['learned']['probe']['majority_balanced_accuracy']:.3f}; chance p@{K} "
                     f"{g['precision_chance']:.3f}"))
    p = result.get("photoz")
    if p:
        def fmt(points):
            return ", ".join(f"{n}: {s:.4f}" for n, s in sorted(points.items())) or "-"
        learned = p["learned"]
        rows.append((f"photo-z label curve on gal-sim ({result['sim']} mocks; recipe '{name}', {steps} steps, "
                     f"trained in {p['train_seconds']:.0f} s), sigma_MAD by labels",
                     f"probe {fmt(curve_points(learned, ('linear', 'probe')))}; fine-tune "
                     f"{fmt(curve_points(learned, ('finetune', 'fine_tune', 'fine-tune')))}",
                     f"scratch {fmt(curve_points(learned, ('scratch',)))}; PCA-64 probe "
                     f"{fmt(curve_points(p['pca64'], ('linear', 'probe')))}; random-weights probe "
                     f"{fmt(curve_points(p['random'], ('linear', 'probe')))}; median "
                     f"{fmt(curve_points(learned, ('median',)))}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gz1", help="folder with the Galaxy Zoo 1 sample: labels.csv and images/")
    parser.add_argument("--work", default=os.path.join(ROOT, "benchmarks", ".work-representation"),
                        help="folder for tables and runs (kept between calls: packed data is reused)")
    parser.add_argument("--name", default="small", help="name of the recipe (a sub-folder of --work)")
    parser.add_argument("--train-flags", default="--preset small", help="gal-train flags of the recipe")
    parser.add_argument("--sim-train-flags", default=None, help="gal-train flags on the mocks (default: the same)")
    parser.add_argument("--steps", type=int, default=1200, help="training budget in steps, the same for every recipe "
                        "(1,200 steps of 64: 10-13 minutes of one core for the small preset)")
    parser.add_argument("--parts", default="gz1,photoz", help="gz1, photoz or both")
    parser.add_argument("--sim", type=int, default=3000, help="gal-sim mocks for the photo-z part")
    parser.add_argument("--fractions", default="0.1,0.3,0.9", help="label fractions of the photo-z curve (of the "
                        "training pool, 80%% of the mocks: 240, 720, 2,160 labels of 3,000)")
    parser.add_argument("--curve-flags", default="", help="more gal-photoz curve options (every arm gets them; the "
                        "default stops each by validation patience)")
    parser.add_argument("--tta", type=int, default=1, choices=(1, 4, 8), help="also score the learned and random "
                        "encoders exported with gal-train export --tta N")
    parser.add_argument("--heldout", action="store_true", help="held-out discipline: train every --recipe with "
                        "each of --seeds, select the recipe with the best mean precision@10 on folds 0-2 of the "
                        "galaxies, and report every recipe on folds 3-4, which selection never saw")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=FLAGS",
                        help="--heldout: a candidate recipe (gal-train flags; a --steps among them overrides "
                        "--steps for this recipe); repeat for each")
    parser.add_argument("--seeds", default="0,1,2", help="--heldout: training seeds of each recipe")
    parser.add_argument("--whiten", action="store_true", help="--heldout: each recipe is also an arm whitened by "
                        "gal-train whiten's defaults (fitted on all packed galaxies, no labels); raw-pixel PCA-64 "
                        "is also reported whitened the same way")
    parser.add_argument("--threads", type=int, default=2, help="threads per tool (OMP_NUM_THREADS)")
    parser.add_argument("--force", action="store_true", help="train again even if the run folder holds a run")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/RESULTS.md")
    parser.add_argument("--record", metavar="RESULT_JSON", nargs="+", help="append the rows of finished runs (their "
                        "WORK/NAME/result.json or WORK/heldout/result-STEPS.json, e.g. runs made with --no-record) "
                        "to RESULTS.md, and run nothing")
    args = parser.parse_args()
    if args.record:
        for path in args.record:
            with open(path) as handle:
                result = json.load(handle)
            if "recipes" in result:                 # a --heldout result
                record_heldout(result, no_record=False)
            else:
                record_result(result, no_record=False)
        return
    if not args.gz1 and "gz1" in args.parts:
        parser.error("--gz1 DIR is needed for the gz1 part (or give --parts photoz)")

    import torch  # noqa: F401  (only to fail early without the training extras)

    work = os.path.abspath(args.work)
    if args.heldout:
        heldout_main(args, work)
        return
    run_dir = os.path.join(work, args.name)
    os.makedirs(run_dir, exist_ok=True)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = {"name": args.name, "train_flags": args.train_flags, "steps": args.steps, "sim": args.sim,
              "cpu": cpu_model(), "threads": args.threads}
    if "gz1" in parts:
        result["gz1"] = gz1_part(args, work, run_dir)
    if "photoz" in parts:
        result["photoz"] = photoz_part(args, work, run_dir)
    result["load_average"] = [load, os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")]
    with open(os.path.join(run_dir, "result.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    record_result(result, args.no_record)


def heldout_main(args, work: str) -> None:
    if not args.recipe:
        raise SystemExit("--heldout needs at least one --recipe NAME=FLAGS")
    load = os.getloadavg()[0]
    os.makedirs(os.path.join(work, "heldout"), exist_ok=True)
    result = heldout_part(args, work)
    result.update(cpu=cpu_model(), threads=args.threads, load_average=[load, os.getloadavg()[0]])
    with open(os.path.join(work, "heldout", f"result-{args.steps}.json"), "w") as handle:
        json.dump(result, handle, indent=1)
    print(heldout_table(result))
    record_heldout(result, args.no_record)


def record_heldout(result: dict, no_record: bool) -> None:
    from _record import record

    start, end = result["load_average"]
    for benchmark, measured, baseline in heldout_rows(result):
        benchmark += f"; {result['cpu']}, {result['threads']} threads, load avg {start:.1f}->{end:.1f}"
        print(f"{benchmark}: {measured}; baselines {baseline}")
        if not no_record:
            record(benchmark, measured, baseline, "-")


def record_result(result: dict, no_record: bool) -> None:
    from _record import record

    start, end = result["load_average"]
    for benchmark, measured, baseline in summary_rows(result["name"], result["train_flags"], result["steps"], result):
        benchmark += f"; {result['cpu']}, {result['threads']} threads, load avg {start:.1f}->{end:.1f}"
        if no_record:
            print(f"{benchmark}: {measured}; baselines {baseline}")
        else:
            record(benchmark, measured, baseline, "-")


if __name__ == "__main__":
    main()

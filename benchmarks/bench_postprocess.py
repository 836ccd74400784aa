"""Label-free post-processing of embeddings for similarity search, chosen and reported on disjoint galaxies.

    python benchmarks/bench_postprocess.py --gz1 DATA/gz1-sdss --table gz1.parquet --runs RUN_A/ RUN_B/

Each RUN/ is a gal-train run folder on the packed Galaxy Zoo 1 table (the one bench_representation.py packs):
RUN/encoder.onnx (embedded into WORK/LABEL/emb.parquet, LABEL the name of RUN's parent folder) and RUN/last.pt
(for the projection head's output).  The galaxies are split into 5 folds by a hash of the object id (bench_representation.fold_of);
folds 0-2 are the *selection* folds and folds 3-4 the *reported* folds.

- Candidates (all fitted without labels): none; centring; PCA whitening x -> (x - mean) V_d diag(lambda + a *
  mean(lambda))^(-1/2), over a grid of kept dimensions d and shrinkage a; each optionally after L2 normalising
  the raw embeddings.  The whitening is fitted on the embeddings of every packed galaxy (no labels: a user fits it
  on the survey being searched) or, as a check, on the selection folds' galaxies only.
- Feature: the exported backbone output and, for the learned encoders, the projection head applied to it.
- Selection: the candidate with the best precision@10 among the selection folds' galaxies (queries and candidates
  both in folds 0-2), separately for every representation (learned and raw-pixel PCA-64 get the same search).
- Reported: precision@10 among the reported folds' galaxies only (overall, edge-on, mergers), and the probe
  trained on the selection folds' labels (L2 strength by inner cross-validation there) scored on the reported
  folds.  Beside the chosen candidate, gal-train whiten's default (every dimension, shrink 3) for every
  representation, and for the learned encoders the same made by the tools (gal-train whiten, then gal-embed).
  SE: standard error of the mean over queries of the paired difference against PCA-64 (a guide; queries
  share neighbours).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import bench_representation as rep  # noqa: E402

from galtools.embed import whiten  # noqa: E402
from galtools.errors import BadData  # noqa: E402

SELECT, REPORT = (0, 1, 2), (3, 4)
DIMS = (8, 16, 24, 32, 48, 64, 96, 128)
SHRINK = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
# gal-train whiten's defaults (every dimension, shrink 3): chosen on the selection folds of two 300-step encoders
DEFAULT = {"kind": "whiten", "l2_first": False, "shrink": whiten.DEFAULT_SHRINK}


# -- candidates -------------------------------------------------------------------------------------------------
def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_whitening(x: np.ndarray, dim: int, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """mean (D,) and matrix (D, dim) of x -> (x - mean) @ matrix: galtools' own fit (what gal-train whiten stores)."""
    moments = whiten.Moments()
    moments.add(x)
    fitted = whiten.fit(moments, dim, shrink)
    return fitted.mean, fitted.matrix


def candidates(width: int):
    yield {"kind": "none"}
    for l2 in (False, True):
        yield {"kind": "centre", "l2_first": l2}
        for d in DIMS:
            if d <= width:
                for a in SHRINK:
                    yield {"kind": "whiten", "l2_first": l2, "dim": d, "shrink": a}


def apply(cand: dict, x: np.ndarray, fit_rows: np.ndarray) -> np.ndarray:
    if cand["kind"] == "none":
        return x
    x = unit(x) if cand["l2_first"] else x
    if cand["kind"] == "centre":
        return x - x[fit_rows].mean(axis=0)
    mean, matrix = fit_whitening(x[fit_rows], cand["dim"], cand["shrink"])
    return (x - mean) @ matrix


def name_of(cand: dict) -> str:
    if cand["kind"] == "none":
        return "none"
    pre = "L2, " if cand["l2_first"] else ""
    if cand["kind"] == "centre":
        return pre + "centred"
    return pre + f"whitened d={cand['dim']} shrink={cand['shrink']:g}"


# -- scores -----------------------------------------------------------------------------------------------------
def hits(x: np.ndarray, y: np.ndarray, k: int = rep.K) -> np.ndarray:
    """Per query: share of its k nearest neighbours (cosine, itself left out, among the rows given) of its class."""
    u = unit(x)
    similarity = u @ u.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return (y[neighbours] == y[:, None]).mean(axis=1)


def held_out_probe(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    classes = len(rep.CLASSES)
    c = rep._choose_c(x[train], y[train], classes, np.arange(int(train.sum())))
    xt, xv = rep._standardise(x[train], x[test])
    return float((rep._predict(rep.softmax_regression(xt, y[train], classes, c), xv) == y[test]).mean())


def report(x: np.ndarray, y: np.ndarray, folds: np.ndarray) -> dict:
    test = np.isin(folds, REPORT)
    h = hits(x[test], y[test])
    yt = y[test]
    return {"p10": float(h.mean()), "edge_on": float(h[yt == rep.CLASSES.index("edge_on")].mean()),
            "merger": float(h[yt == rep.CLASSES.index("merger")].mean()),
            "probe": held_out_probe(x, y, ~test, test), "hits": h}


# -- representations ----------------------------------------------------------------------------------------------
def head_output(run: str, x: np.ndarray) -> np.ndarray:
    """The projection head (Linear-ReLU-Linear) of the run's query encoder applied to the exported embedding."""
    import torch

    state = torch.load(os.path.join(run, "last.pt"), map_location="cpu", weights_only=True)["model"]
    w = {k.removeprefix("encoder_q.head."): v.double().numpy() for k, v in state.items()
         if k.startswith("encoder_q.head.")}
    hidden = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0.0)
    return hidden @ w["2.weight"].T + w["2.bias"]


def embeddings(path: str, ids: np.ndarray) -> np.ndarray:
    emb_ids, x, _ = rep.read_embeddings(path)
    order = {int(v): i for i, v in enumerate(emb_ids)}
    return x[[order[int(i)] for i in ids]]


def embed(model: str, table: str, out: str) -> str:
    if not os.path.exists(out):
        rep.run(["gal-embed", table, "--model", model, "--device", "cpu", "-q", "-o", out], 1)
    return out


def through_the_tools(run: str, table: str, work: str) -> str:
    """gal-train whiten with its defaults (fitted on every packed galaxy, no labels), then gal-embed."""
    return rep.whitened_embedding(table, run, 1, False, work)


def select(x: np.ndarray, y: np.ndarray, folds: np.ndarray, keep: np.ndarray) -> list[tuple[float, dict]]:
    """Every candidate's precision@10 among the selection folds (whitening fitted on all packed galaxies)."""
    everyone = np.ones(len(x), dtype=bool)
    sel = keep & np.isin(folds, SELECT)
    scored = []
    for c in candidates(x.shape[1]):
        try:
            scored.append((float(hits(apply(c, x, everyone)[sel], y[sel]).mean()), c))
        except BadData:          # full whitening of a rank-deficient representation
            pass
    return sorted(scored, key=lambda t: -t[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gz1", required=True, help="folder with labels.csv")
    parser.add_argument("--table", required=True, help="the packed gz1 table the runs were trained on")
    parser.add_argument("--runs", nargs="+", required=True, help="gal-train run folders")
    parser.add_argument("--work", default=os.path.join(HERE, ".work-postprocess"), help="folder for embeddings")
    parser.add_argument("--json", default=None, help="write the whole result here")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()

    labels = rep.gz1_labels(args.gz1)
    ids, pixels = rep.read_images(args.table)
    keep = np.array([int(i) in labels for i in ids])
    y = np.array([rep.CLASSES.index(labels[int(i)]) if int(i) in labels else -1 for i in ids])
    folds = rep.fold_of(ids)
    reps, tools = {"PCA-64": rep.pca(pixels, 64)}, {}
    del pixels
    load = os.getloadavg()[0]
    for run in args.runs:
        label = os.path.basename(os.path.dirname(os.path.abspath(run).rstrip("/"))) or run
        work = os.path.join(args.work, label)
        os.makedirs(work, exist_ok=True)
        x = embeddings(embed(os.path.join(run, "encoder.onnx"), args.table, os.path.join(work, "emb.parquet")), ids)
        reps[f"{label} backbone"] = x
        reps[f"{label} head"] = head_output(run, x)
        tools[f"{label} backbone"] = embeddings(through_the_tools(run, args.table, work), ids)
    result = {"select_folds": SELECT, "report_folds": REPORT, "objects": int(keep.sum()),
              "reported_objects": int((keep & np.isin(folds, REPORT)).sum()), "default": DEFAULT, "arms": {}}
    everyone, sel_only = np.ones(len(ids), dtype=bool), np.isin(folds, SELECT)
    for name, x in reps.items():
        ranked = select(x, y, folds, keep)
        best_score, best = ranked[0]
        default = {**DEFAULT, "dim": x.shape[1]}
        arm = {"selection_p10_none": next(s for s, c in ranked if c["kind"] == "none"),
               "selection_p10_best": best_score, "selection_p10_default": next(s for s, c in ranked if c == default),
               "chosen": best, "top5": [(s, name_of(c)) for s, c in ranked[:5]]}
        variants = {"raw": x, "post": apply(best, x, everyone), "post_fit_selection": apply(best, x, sel_only),
                    "default": apply(default, x, everyone)}
        if name in tools:
            variants["tools"] = tools[name]
            arm["tools_vs_numpy_max_abs"] = float(np.abs(tools[name] - variants["default"]).max())
        for key, z in variants.items():
            arm[key] = report(z[keep], y[keep], folds[keep])
        result["arms"][name] = arm
        print(f"{name}: chosen {name_of(best)} (selection p@10 {arm['selection_p10_none']:.3f} -> {best_score:.3f}, "
              f"default {arm['selection_p10_default']:.3f}); reported: "
              + "; ".join(f"{k} p@10 {arm[k]['p10']:.3f} edge {arm[k]['edge_on']:.3f} merger {arm[k]['merger']:.3f} "
                          f"probe {arm[k]['probe']:.3f}" for k in variants), flush=True)
    base = result["arms"]["PCA-64"]
    for name, arm in result["arms"].items():
        for key, ref in (("raw", "raw"), ("post", "post"), ("default", "default")):
            d = arm[key]["hits"] - base[ref]["hits"]
            arm[f"vs_pca_{key}"] = {"p10": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d))),
                                    "probe": arm[key]["probe"] - base[ref]["probe"]}
    result["load_average"] = [load, os.getloadavg()[0]]
    for arm in result["arms"].values():
        for key in list(arm):
            if isinstance(arm[key], dict):
                arm[key].pop("hits", None)
    print(json.dumps({n: {k: v for k, v in a.items() if k.startswith("vs_") or k.startswith("tools_")}
                      for n, a in result["arms"].items()}, indent=1))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    if not args.no_record:
        record_rows(result)


def record_rows(result: dict) -> None:
    from _record import record

    def fmt(arm: dict, key: str) -> str:
        a = arm[key]
        return f"p@10 {a['p10']:.3f} (edge-on {a['edge_on']:.2f}, mergers {a['merger']:.2f}), probe {a['probe']:.3f}"

    pca = result["arms"]["PCA-64"]
    baseline = (f"PCA-64 raw: {fmt(pca, 'raw')}; PCA-64 + its chosen {name_of(pca['chosen'])}: {fmt(pca, 'post')}; "
                f"PCA-64 + the default: {fmt(pca, 'default')}")
    start, end = result["load_average"]
    for name, arm in result["arms"].items():
        if name == "PCA-64":
            continue
        tools = f"; through gal-train whiten + gal-embed: {fmt(arm, 'tools')}" if "tools" in arm else ""
        measured = (f"{name} raw: {fmt(arm, 'raw')}; + its chosen {name_of(arm['chosen'])}: {fmt(arm, 'post')}; "
                    f"+ the default (whitened, all dims, shrink {whiten.DEFAULT_SHRINK:g}): {fmt(arm, 'default')}"
                    f"{tools}")
        ratio = ", ".join(f"{k}: {arm[f'vs_pca_{k}']['p10']:+.3f} +- {arm[f'vs_pca_{k}']['se']:.3f} p@10, "
                          f"{arm[f'vs_pca_{k}']['probe']:+.3f} probe" for k in ("raw", "post", "default"))
        record(f"label-free post-processing of embeddings for search, gz1 SDSS gri, held out: chosen on folds "
               f"0-2, reported on folds 3-4 only ({result['reported_objects']} labelled galaxies, queries and "
               f"neighbours among them; probe trained on folds 0-2); whitening fitted on all packed galaxies' "
               f"embeddings, no labels; {name}; load avg {start:.1f}->{end:.1f} (bench_postprocess.py)",
               measured, baseline, "vs PCA-64 (raw vs raw, chosen vs chosen, default vs default): " + ratio)


if __name__ == "__main__":
    main()

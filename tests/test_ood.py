"""gal-ood: metrics against scikit-learn and hand-computed answers, density scoring from arrays against
scikit-learn's own, and the tool as a user runs it on two separated Gaussians (real processes and files)."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from conftest import assert_clean_error as _error
from conftest import make_cutouts, run_tool, tool_env, write_table
from galtools.io import open_table, vector_column
from galtools.ood.metrics import auroc, average_precision, tpr_at_fpr, trust_curve

OOD = f"{shlex.quote(sys.executable)} -m galtools.cli.ood"
ENCODER = "ab" * 32
DIM = 16


# ------------------------------------------------------------------------------------------------------ metrics

def test_metrics_on_a_hand_computed_example():
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    truth = np.array([0, 0, 1, 1])
    # pairs (anomaly, normal): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, .) yes twice -> 3 of 4
    assert auroc(scores, truth) == pytest.approx(0.75)
    # thresholds 0.8 (P=1, R=.5), 0.4 (P=.5, R=.5), 0.35 (P=2/3, R=1): AP = .5 x 1 + .5 x 2/3
    assert average_precision(scores, truth) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert tpr_at_fpr(scores, truth, 0.05) == pytest.approx(0.5)   # flag only 0.8
    tied = np.array([1.0, 1.0, 0.0, 2.0])
    assert auroc(tied, [1, 0, 0, 1]) == pytest.approx((0.5 + 1 + 1 + 1) / 4)


def test_metrics_equal_scikit_learn_with_ties():
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    rng = np.random.default_rng(3)
    truth = rng.uniform(size=3000) < 0.1
    scores = np.round(rng.normal(size=3000) + 1.5 * truth, 1)      # rounding makes many ties
    assert auroc(scores, truth) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert average_precision(scores, truth) == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
    fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
    for limit in (0.01, 0.05, 0.2):
        assert tpr_at_fpr(scores, truth, limit) == pytest.approx(tpr[fpr <= limit].max(), abs=1e-12)


def test_trust_curve_bins_by_equal_counts():
    scores = np.arange(10, dtype=float)
    errors = np.array([1, 1, 2, 2, 3, 3, 4, 4, 50, 60], dtype=float)
    curve = trust_curve(scores, errors, bins=5, trusted=scores < 8)
    assert [r["median_error"] for r in curve["bins"]] == [1, 2, 3, 4, 55]
    assert curve["trusted"] == {"n": 8, "median_error": 2.5, "mean_error": 2.5}
    assert curve["untrusted"]["median_error"] == 55


# ------------------------------------------------------------------------------------------------ density models

def test_density_scores_from_arrays_equal_scikit_learn():
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.mixture import GaussianMixture

    from galtools.ood import density

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 10)) @ rng.normal(size=(10, 10))
    queries = rng.normal(size=(50, 10)) * 3
    arrays = density.fit_pca(x, 4, seed=0)
    pca = PCA(n_components=4, svd_solver="full").fit(x)
    assert np.allclose(np.abs(density.project(queries, arrays)), np.abs(pca.transform(queries)), atol=1e-8)
    y, yq = density.project(x, arrays), density.project(queries, arrays)
    arrays.update(density.fit_gmm(y, 3, seed=1))
    gmm = GaussianMixture(3, covariance_type="full", random_state=1, reg_covar=1e-6).fit(y)
    assert np.allclose(density.gmm_log_density(yq, arrays), gmm.score_samples(yq), rtol=1e-8, atol=1e-8)
    forest_arrays = density.fit_iforest(y.astype(np.float32), 50, seed=2)
    forest = IsolationForest(n_estimators=50, random_state=2).fit(y.astype(np.float32))
    assert np.allclose(density.iforest_anomaly_score(yq, forest_arrays), -forest.score_samples(yq), atol=1e-12)
    assert density.average_path_length(np.array([1, 2, 256])).tolist() == pytest.approx(
        [0.0, 1.0, 2 * (np.log(255) + 0.5772156649015329) - 2 * 255 / 256])


# ---------------------------------------------------------------------------------------------- two Gaussians

def gaussians(n, centre_axis, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    centre = np.zeros(DIM)
    centre[centre_axis] = 5.0
    return (centre + spread * rng.standard_normal((n, DIM))).astype(np.float32)


def emb_table(vectors, first_id, **columns):
    n = len(vectors)
    return pa.table({"object_id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)), **columns,
                     "embedding": vector_column(vectors)})


@pytest.fixture(scope="module")
def two_gaussians(tmp_path_factory):
    """Reference: 4000 points of Gaussian A. Target: 3000 new points of A and 300 of Gaussian B."""
    folder = tmp_path_factory.mktemp("ood")
    reference = write_table(emb_table(gaussians(4000, 0, seed=1), 0, ra=pa.array(np.zeros(4000))),
                            str(folder / "reference.parquet"), **{"galtools.model_sha256": ENCODER})
    target_vectors = np.concatenate([gaussians(3000, 0, seed=2), gaussians(300, 1, seed=3)])
    truth = np.r_[np.zeros(3000, bool), np.ones(300, bool)]
    target = write_table(emb_table(target_vectors, 100000, is_anomaly=pa.array(truth)),
                         str(folder / "target.parquet"), **{"galtools.model_sha256": ENCODER})
    return folder, reference, target, target_vectors, truth


@pytest.mark.slow
@pytest.mark.parametrize("method", ["knn", "gmm", "iforest"])
def test_two_gaussians_auroc_and_held_out_coverage(two_gaussians, method):
    from sklearn.metrics import roc_auc_score

    folder, reference, target, _, truth = two_gaussians
    model = folder / f"{method}.model"
    scored = folder / f"scored-{method}.parquet"
    run_tool("gal-ood", "fit", reference, "--method", method, "-o", model, "--overwrite", check=True)
    run_tool("gal-ood", "score", target, "--model", model, "-o", scored, "--overwrite", check=True)
    with open_table(str(scored)) as table:
        out = table.read_all()
    report = json.loads(run_tool("gal-ood", "eval", scored, "--truth", "is_anomaly", "--json", check=True).stdout)
    detection = report["detection"]
    raw = out.column("ood_raw").to_numpy()
    assert detection["auroc"] == pytest.approx(roc_auc_score(truth, raw), abs=1e-12)
    assert detection["auroc"] > 0.99, detection
    coverage = out.column("trusted").to_numpy(zero_copy_only=False)[~truth].mean()
    assert abs(coverage - 0.95) <= 0.02, coverage          # new points of the reference Gaussian
    assert out.column("trusted").to_numpy(zero_copy_only=False)[truth].mean() < 0.05
    score = out.column("ood_score").to_numpy()
    assert score.min() >= 0 and score.max() <= 1
    assert np.array_equal(out.column("trusted").to_numpy(zero_copy_only=False), score < 0.95)


def test_knn_score_is_the_kth_neighbour_distance_and_nearest_reference(two_gaussians):
    folder, reference, target, target_vectors, _ = two_gaussians
    model = folder / "k5.model"
    run_tool("gal-ood", "fit", reference, "-k", "5", "-o", model, "--seed", "4", check=True)
    result = subprocess.run(["bash", "-o", "pipefail", "-c", f"cat {target} | {OOD} score - --model {model}"],
                            capture_output=True, env=tool_env())
    assert result.returncode == 0, result.stderr.decode()
    out = pa.ipc.open_stream(pa.py_buffer(result.stdout)).read_all()
    assert out.column_names == ["object_id", "is_anomaly", "embedding", "ood_score", "ood_raw", "trusted",
                                "nearest_reference_id", "nearest_reference_distance"]
    with np.load(model) as data:
        ref_vectors, ref_ids = data["reference_vectors"], data["reference_ids"]
        calibration = data["calibration"]
        meta = json.loads(str(data["__galtools__"]))
    assert meta["n_reference"] == 3200 and meta["n_calibration"] == 800 and meta["seed"] == 4
    # brute force in float64 over the stored reference rows
    unit = target_vectors / np.linalg.norm(target_vectors.astype(np.float64), axis=1, keepdims=True)
    similarity = unit @ ref_vectors.T.astype(np.float64)
    ordered = -np.sort(-similarity, axis=1)
    assert np.allclose(out.column("ood_raw").to_numpy(), 1 - ordered[:, 4], atol=1e-5)
    assert np.allclose(out.column("nearest_reference_distance").to_numpy(), 1 - ordered[:, 0], atol=1e-5)
    nearest = ref_ids[np.argmax(similarity, axis=1)]
    agree = out.column("nearest_reference_id").to_numpy() == nearest
    assert agree.mean() > 0.999                                # float32 near-ties aside
    # ood_score: the fraction of calibration distances strictly below
    raw = out.column("ood_raw").to_numpy()
    expected = (calibration[None, :] < raw[:, None]).mean(axis=1)
    assert np.allclose(out.column("ood_score").to_numpy(), expected, atol=1e-6)
    # the reference's own objects are carried through the model's ids; the ids were never reordered
    assert set(ref_ids.tolist()) < set(range(4000))


@pytest.mark.slow
def test_score_to_a_file_says_what_it_wrote(two_gaussians, tmp_path):
    """As other tools do: a summary line on stderr when the table goes to a file, none when it goes to stdout."""
    _, reference, target, _, _ = two_gaussians
    model, scored = tmp_path / "m.model", tmp_path / "scored.parquet"
    run_tool("gal-ood", "fit", reference, "-k", "5", "-o", model, "--seed", "4", check=True)
    result = run_tool("gal-ood", "score", target, "--model", model, "--coverage", "0.9", "-o", scored, check=True)
    with open_table(str(scored)) as table:
        trusted = table.read_all().column("trusted").to_numpy(zero_copy_only=False)
    untrusted = int((~trusted).sum())
    assert 300 <= untrusted < 3300
    expected = (f"gal-ood: wrote {scored}: 3300 objects scored, {untrusted} ({100 * untrusted / 3300:.1f}%) not "
                "trusted (ood_score >= 0.9)")
    assert result.stderr.decode().splitlines() == [expected], result.stderr.decode()
    assert run_tool("gal-ood", "score", target, "--model", model, "-q", "-o", tmp_path / "quiet.parquet",
                    check=True).stderr == b""
    piped = run_tool("gal-ood", "score", target, "--model", model, "-o", "-", check=True)
    assert b"wrote" not in piped.stderr and piped.stdout[:6] != b""


def test_faiss_search_backends_agree_with_exact(two_gaussians):
    folder, reference, target, _, _ = two_gaussians
    tables = {}
    for search in ("exact", "flat", "hnsw"):
        model = folder / f"search-{search}.model"
        run_tool("gal-ood", "fit", reference, "--search", search, "-o", model, "--overwrite", check=True)
        scored = folder / f"search-{search}.parquet"
        run_tool("gal-ood", "score", target, "--model", model, "-o", scored, "--overwrite", check=True)
        with open_table(str(scored)) as table:
            tables[search] = table.read_all()
    exact = tables["exact"].column("ood_raw").to_numpy()
    assert np.allclose(tables["flat"].column("ood_raw").to_numpy(), exact, atol=1e-5)
    hnsw = tables["hnsw"].column("ood_raw").to_numpy()
    assert np.mean(np.abs(hnsw - exact) < 1e-5) > 0.97         # approximate, nearly always the same neighbours


def test_top_table_and_montage_show_the_anomalies(two_gaussians, tmp_path):
    folder, reference, target, _, truth = two_gaussians
    model = folder / "top.model"
    run_tool("gal-ood", "fit", reference, "-o", model, "--overwrite", check=True)
    cutouts = make_cutouts(n=3300, bands=3, size=8)
    cutouts = cutouts.set_column(0, "object_id", pa.array(np.arange(100000, 103300, dtype=np.int64)))
    images = write_table(cutouts, str(tmp_path / "cutouts.parquet"))
    montage = tmp_path / "strange.png"
    result = run_tool("gal-ood", "score", target, "--model", model, "--top", "6", "--show", "is_anomaly",
                      "--montage", montage, "--images", images, check=True)
    lines = result.stdout.decode().splitlines()
    assert lines[0].split() == ["rank", "object_id", "ood_score", "ood_raw", "trusted", "nearest_reference_id",
                                "nearest_reference_distance", "is_anomaly"]
    assert len(lines) == 7 and all(line.split()[-1] == "True" for line in lines[1:])
    assert all(int(line.split()[1]) >= 103000 for line in lines[1:])   # the anomalies' ids
    raws = [float(line.split()[3]) for line in lines[1:]]
    assert raws == sorted(raws, reverse=True)
    assert montage.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_eval_trust_curve_and_plot(two_gaussians, tmp_path):
    folder, reference, target, _, truth = two_gaussians
    model = folder / "trust.model"
    scored = tmp_path / "scored.parquet"
    run_tool("gal-ood", "fit", reference, "-o", model, "--overwrite", check=True)
    run_tool("gal-ood", "score", target, "--model", model, "-o", scored, check=True)
    plot = tmp_path / "ood.png"
    report = json.loads(run_tool("gal-ood", "eval", scored, "--truth", "is_anomaly", "--error-column",
                                 "nearest_reference_distance", "--bins", "5", "--json", "--plot", plot,
                                 check=True).stdout)
    with open_table(str(scored)) as table:
        out = table.read_all()
    raw = out.column("ood_raw").to_numpy()
    error = out.column("nearest_reference_distance").to_numpy()
    order = np.argsort(raw, kind="mergesort")
    medians = [float(np.median(error[chunk])) for chunk in np.array_split(order, 5)]
    assert [b["median_error"] for b in report["trust"]["bins"]] == pytest.approx(medians)
    trusted = out.column("trusted").to_numpy(zero_copy_only=False)
    assert report["trust"]["trusted"]["n"] == trusted.sum()
    assert report["trust"]["untrusted"]["median_error"] > report["trust"]["trusted"]["median_error"]
    assert report["score_column"] == "ood_raw"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = run_tool("gal-ood", "eval", scored, "--truth", "is_anomaly", "--score-column", "ood_score",
                    check=True).stdout.decode()
    assert "AUROC" in text and "score: ood_score" in text


# ------------------------------------------------------------------------------------------------------- errors

def test_error_reference_and_target_from_different_models(two_gaussians, tmp_path):
    folder, reference, _, _, _ = two_gaussians
    model = tmp_path / "m.model"
    run_tool("gal-ood", "fit", reference, "-o", model, check=True)
    other = write_table(emb_table(gaussians(50, 0, seed=9), 0), str(tmp_path / "other.parquet"),
                        **{"galtools.model_sha256": "cd" * 32})
    _error(run_tool("gal-ood", "score", other, "--model", model, "-o", tmp_path / "s.parquet"), 65,
           "embedded by another encoder")
    assert not (tmp_path / "s.parquet").exists()
    wide = write_table(emb_table(np.hstack([gaussians(50, 0, seed=9)] * 2), 0), str(tmp_path / "wide.parquet"),
                       **{"galtools.model_sha256": ENCODER})
    _error(run_tool("gal-ood", "score", wide, "--model", model, "-o", tmp_path / "s.parquet"), 65, "32-d")


def test_error_too_few_reference_rows_for_k(tmp_path):
    small = write_table(emb_table(gaussians(110, 0, seed=5), 0), str(tmp_path / "small.parquet"))
    _error(run_tool("gal-ood", "fit", small, "-k", "100", "-o", tmp_path / "m.model"), 65,
           "too few reference rows: 110 rows give 88 to search and 22 to calibrate on; k=100 needs at least 100")
    tiny = write_table(emb_table(gaussians(30, 0, seed=5), 0), str(tmp_path / "tiny.parquet"))
    _error(run_tool("gal-ood", "fit", tiny, "-k", "1", "-o", tmp_path / "m.model"), 65, "too few reference rows",
           "give at least 100 reference rows")
    assert not (tmp_path / "m.model").exists()


def test_error_nans_in_reference_or_target(two_gaussians, tmp_path):
    folder, reference, _, _, _ = two_gaussians
    vectors = gaussians(200, 0, seed=6)
    vectors[17, 3] = np.nan
    bad = write_table(emb_table(vectors, 500), str(tmp_path / "nan.parquet"), **{"galtools.model_sha256": ENCODER})
    _error(run_tool("gal-ood", "fit", bad, "-o", tmp_path / "m.model"), 65, "NaN", "517")
    model = tmp_path / "good.model"
    run_tool("gal-ood", "fit", reference, "-o", model, check=True)
    _error(run_tool("gal-ood", "score", bad, "--model", model, "-o", tmp_path / "s.parquet"), 65,
           "NaN or infinite", "object_id 517")


def test_error_wrong_model_file_and_usage(two_gaussians, tmp_path):
    from galtools.heads import save_head

    _, _, target, _, _ = two_gaussians
    photoz = tmp_path / "photoz.model"
    save_head(str(photoz), {"w0": np.zeros((DIM, 4), np.float32)}, tool="gal-photoz", kind="photoz-linear",
              embedding_dim=DIM, model_sha256=ENCODER)
    _error(run_tool("gal-ood", "score", target, "--model", photoz, "-o", tmp_path / "s.parquet"), 65,
           "is a gal-photoz model, not a gal-ood one")
    _error(run_tool("gal-ood", "eval", target), 2, "nothing to evaluate")
    _error(run_tool("gal-ood", "score", target, "--model", photoz, "--montage", tmp_path / "m.png"), 2,
           "--montage needs --images")


def test_help_is_fast_and_imports_neither_torch_nor_sklearn():
    code = ("import sys; from galtools.cli.ood import main; sys.argv = ['gal-ood', 'score', '--help']\n"
            "try: main()\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=tool_env())
    assert result.returncode == 0, result.stderr.decode()
    assert b"Example:" in result.stdout

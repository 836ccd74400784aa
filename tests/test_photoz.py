"""gal-photoz: metrics against hand-written formulas and astropy, bins, the fitted probe on synthetic embeddings,
and the tool as a user runs it (real processes, pipes, files, error lines and exit codes)."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from conftest import embedding_table as table_of_embeddings
from conftest import assert_clean_error as _error
from conftest import run_tool, tool_env, write_table
from galtools.io import open_table
from galtools.photoz.bins import RedshiftBins, summarise_pdf
from galtools.photoz.metrics import binned_metrics, photoz_metrics

PHOTOZ = f"{shlex.quote(sys.executable)} -m galtools.cli.photoz"
ENCODER = "cd" * 32


# ------------------------------------------------------------------------------------------------------ metrics

def test_metrics_equal_a_hand_computation_and_astropy():
    from astropy.stats import mad_std

    z_spec = np.array([0.10, 0.20, 0.30, 0.05, 0.15, 0.25, 0.35])
    z_phot = np.array([0.11, 0.18, 0.40, 0.05, 0.14, 0.26, 0.20])
    # dz = (z_phot - z_spec) / (1 + z_spec), written out
    dz = [0.01 / 1.10, -0.02 / 1.20, 0.10 / 1.30, 0.0 / 1.05, -0.01 / 1.15, 0.01 / 1.25, -0.15 / 1.35]
    ordered = sorted(dz)
    median = ordered[3]                                      # 7 values: the 4th smallest
    deviations = sorted(abs(d - median) for d in dz)
    sigma_mad = 1.4826 * deviations[3]
    outliers = sum(1 for d in dz if abs(d) > 0.05)           # 0.10/1.30 and 0.15/1.35
    assert outliers == 2

    got = photoz_metrics(z_phot, z_spec)
    assert got["n"] == 7
    assert got["bias"] == pytest.approx(median, abs=1e-15)
    assert got["sigma_mad"] == pytest.approx(sigma_mad, rel=1e-12)
    assert got["eta"] == pytest.approx(100 * 2 / 7)
    assert got["sigma_mad"] == pytest.approx(mad_std(np.array(dz)), rel=2e-5)   # astropy's 1.482602...


def test_metrics_skip_non_finite_and_bin_by_a_column():
    z_spec = np.array([0.1, 0.2, np.nan, 0.3, 0.35])
    z_phot = np.array([0.1, 0.3, 0.2, np.nan, 0.35])
    assert photoz_metrics(z_phot, z_spec)["n"] == 3
    rows = binned_metrics(z_phot, z_spec, z_spec, np.array([0.0, 0.15, 0.4]))
    assert [r["n"] for r in rows] == [1, 2]                 # 0.1 | 0.2, 0.35 (0.3 has no z_phot)
    assert rows[1]["eta"] == pytest.approx(50.0)            # dz = 0.1/1.2 > 0.05 for z_spec = 0.2
    empty = binned_metrics(z_phot, z_spec, z_spec, np.array([0.5, 0.6]))[0]
    assert empty["n"] == 0 and np.isnan(empty["sigma_mad"])


# --------------------------------------------------------------------------------------------------------- bins

def test_one_hot_pdf_mean_is_the_bin_centre():
    bins = RedshiftBins(180, 0.4)
    assert bins.centres[0] == pytest.approx(0.2 / 180) and bins.centres[-1] == pytest.approx(0.4 - 0.2 / 180)
    for k in (0, 17, 90, 179):
        pdf = np.zeros((1, 180))
        pdf[0, k] = 1.0
        mean, mode, std = summarise_pdf(pdf, bins.centres)
        assert mean[0] == pytest.approx((k + 0.5) * 0.4 / 180, abs=1e-12)
        assert mode[0] == pytest.approx(mean[0]) and std[0] == pytest.approx(0.0, abs=1e-9)
    two = np.zeros((1, 180))
    two[0, [10, 12]] = 0.5                                  # two bins: mean between them, std half their distance
    mean, _, std = summarise_pdf(two, bins.centres)
    assert mean[0] == pytest.approx(bins.centres[11]) and std[0] == pytest.approx(bins.width)


def test_z_at_and_above_zmax_goes_to_the_last_bin():
    bins = RedshiftBins(180, 0.4)
    index, above, below = bins.assign(np.array([0.0, 0.4 / 180 * 0.999, 0.4 / 180, 0.2, 0.4, 0.41, 3.0, -0.001]))
    assert index.tolist() == [0, 0, 1, 90, 179, 179, 179, 0]
    assert (above, below) == (3, 1)


def test_label_smoothing_kernel_is_a_normalised_gaussian_over_bins():
    from galtools.photoz.bins import smoothing_kernel

    bins = RedshiftBins(180, 0.4)
    kernel = smoothing_kernel(bins, 2.0)
    assert kernel.shape == (180, 180) and kernel.dtype == np.float32
    assert np.allclose(kernel.sum(axis=1), 1.0, atol=1e-6)
    # far from the edges: mean at the label's own bin centre, standard deviation 2 bin widths, values as the formula
    mean, mode, std = summarise_pdf(kernel[[40, 90, 130]], bins.centres)
    assert np.allclose(mean, bins.centres[[40, 90, 130]], atol=1e-7) and np.allclose(mode, mean)
    assert np.allclose(std, 2.0 * bins.width, rtol=1e-4)
    offsets = np.arange(-8, 9)
    gaussian = np.exp(-offsets**2 / 8.0)
    row_total = np.exp(-np.arange(-90, 90)**2 / 8.0).sum()          # row 90 reaches 90 bins down, 89 up
    assert np.allclose(kernel[90, 82:99], gaussian / row_total, atol=1e-7)
    # at the edge the Gaussian is cut at z = 0 and renormalised: no probability outside the bins
    assert kernel[0, 0] == pytest.approx(1 / np.exp(-np.arange(180)**2 / 8.0).sum(), rel=1e-5)
    assert np.array_equal(smoothing_kernel(bins, 0.0), np.eye(180, dtype=np.float32))


def test_label_smoothing_out_of_range_is_a_usage_error(small, tmp_path):
    folder, emb, *_ = small
    result = run_tool("gal-photoz", "fit", emb, "--label-smoothing", "-1", "-o", tmp_path / "x.model")
    _error(result, 2, "--label-smoothing must be between 0 and the number of bins, got -1.0")
    assert not (tmp_path / "x.model").exists()


# ------------------------------------------------------------------------------------------------ synthetic data

def synthetic_embeddings(n, dim=16, seed=0):
    """z a linear function of the embedding plus noise, twice as noisy for a 'faint' half that sits in its own
    directions of the space (so a linear probe can know which objects are uncertain)."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.01, 0.39, n)
    faint = rng.uniform(size=n) < 0.5
    signal = z + np.where(faint, 0.06, 0.015) * rng.standard_normal(n)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    x = (np.where(faint, 0, signal)[:, None] * basis[0] * 10 + np.where(faint, signal, 0)[:, None] * basis[1] * 10
         + faint[:, None] * basis[2] + 0.02 * rng.standard_normal((n, dim - 3)) @ basis[3:])
    return x.astype(np.float32), z, faint


def embedding_table(x, z_spec, **columns):
    return table_of_embeddings(x, first_id=7000, ra=np.linspace(0, 10, len(x)), z_spec=z_spec, **columns)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """6000 synthetic objects, 5000 labelled; a linear probe fitted by the real tool; predictions through a pipe."""
    folder = tmp_path_factory.mktemp("photoz")
    x, z, faint = synthetic_embeddings(6000)
    z_spec = z.copy()
    z_spec[5000:] = np.nan                                    # the unlabelled rows we predict for
    emb = write_table(embedding_table(x, z_spec, z_true=pa.array(z), faint=pa.array(faint)),
                      str(folder / "emb.parquet"), **{"galtools.model_sha256": ENCODER})
    model = folder / "photoz.model"
    run_tool("gal-photoz", "fit", emb, "--z-column", "z_spec", "-o", model, "--seed", "3", check=True)
    pred = folder / "pred.parquet"
    piped = subprocess.run(["bash", "-o", "pipefail", "-c",
                            f"cat {emb} | {PHOTOZ} predict - --model {model} | "
                            f"{PHOTOZ} predict - --model {model} --no-pdf -o {pred} 2>&1 >/dev/null; echo $?"],
                           capture_output=True, env=tool_env())
    return {"folder": folder, "emb": emb, "model": model, "pred": pred, "x": x, "z": z, "faint": faint,
            "piped": piped}


def read(path):
    with open_table(str(path)) as table:
        return table.read_all(), table.metadata


@pytest.mark.slow
def test_predict_through_a_pipe_carries_columns(fitted):
    # the second predict reads the first one's output: predictions are replaced, not duplicated
    assert fitted["piped"].stdout.decode().strip().endswith("0"), fitted["piped"].stdout.decode()
    table, metadata = read(fitted["pred"])
    assert table.column_names == ["object_id", "ra", "z_spec", "z_true", "faint", "embedding", "z_phot",
                                  "z_phot_mode", "z_phot_std"]
    assert table.num_rows == 6000
    history = json.loads(metadata["galtools.history"])
    assert [h["tool"] for h in history] == ["test", "gal-photoz", "gal-photoz"]
    assert metadata["galtools.model_sha256"] == ENCODER


@pytest.mark.slow
def test_predictions_hold_a_normalised_pdf(fitted, tmp_path):
    out = tmp_path / "pred.arrow"
    run_tool("gal-photoz", "predict", fitted["emb"], "--model", fitted["model"], "-o", out, "--drop-embedding",
             check=True)
    table, metadata = read(out)
    assert "embedding" not in table.column_names
    assert table.schema.field("z_pdf").type == pa.list_(pa.float32(), 180)
    pdf = np.asarray(table.column("z_pdf").combine_chunks().values).reshape(-1, 180)
    assert np.allclose(pdf.sum(axis=1), 1.0, atol=1e-4) and (pdf >= 0).all()
    mean, mode, std = summarise_pdf(pdf, RedshiftBins().centres)
    assert np.allclose(table.column("z_phot").to_numpy(), mean, atol=1e-5)
    assert np.allclose(table.column("z_phot_mode").to_numpy(), mode, atol=1e-6)
    assert np.allclose(table.column("z_phot_std").to_numpy(), std, atol=1e-5)
    assert metadata["galtools.photoz.bins"] == "180,0.4"


@pytest.mark.slow
def test_linear_probe_beats_the_training_median_and_knows_its_errors(fitted):
    from scipy.stats import spearmanr

    table, _ = read(fitted["pred"])
    unseen = slice(5000, 6000)                               # rows that had no label at fit time
    z_true = fitted["z"][unseen]
    z_phot = table.column("z_phot").to_numpy()[unseen]
    probe = photoz_metrics(z_phot, z_true)
    median = photoz_metrics(np.full(1000, np.median(fitted["z"][:5000])), z_true)
    assert probe["sigma_mad"] < 0.4 * median["sigma_mad"], (probe, median)
    assert probe["eta"] < 0.4 * median["eta"]
    errors = np.abs(z_phot - z_true)
    rho = spearmanr(table.column("z_phot_std").to_numpy()[unseen], errors).statistic
    assert rho > 0.2, rho
    std = table.column("z_phot_std").to_numpy()[unseen]
    faint = fitted["faint"][unseen]
    assert np.median(std[faint]) > np.median(std[~faint])


@pytest.mark.slow
def test_model_file_records_the_fit_and_predicts_without_torch(fitted):
    with np.load(fitted["model"], allow_pickle=False) as data:
        meta = json.loads(str(data["__galtools__"]))
        assert sorted(data.files) == ["__galtools__", "b0", "training_id_fingerprints", "w0"]
        assert data["w0"].shape == (16, 180)
        # the (object_id, redshift) pairs of the 5000 rows with a redshift (training and validation)
        from galtools.io.ids import labelled_fingerprints

        want = np.unique(labelled_fingerprints(pa.array(np.arange(7000, 12000)), fitted["z"][:5000]))
        assert np.array_equal(data["training_id_fingerprints"], want)
    assert meta["tool"] == "gal-photoz" and meta["kind"] == "photoz-linear"
    assert meta["seed"] == 3 and meta["settings"]["seed"] == 3
    assert meta["model_sha256"] == ENCODER and meta["embedding_dim"] == 16
    assert meta["n_train"] + meta["n_val"] == 5000 and meta["n_val"] == 500
    assert meta["training"]["best_check"] <= meta["training"]["checks"]
    # predicting imports no torch: block it and predict again
    code = ("import sys; sys.modules['torch'] = None; from galtools.cli.photoz import main; "
            "sys.argv = ['gal-photoz', 'predict', sys.argv[1], '--model', sys.argv[2], '-o', sys.argv[3]]; main()")
    out = fitted["folder"] / "no-torch.parquet"
    result = subprocess.run([sys.executable, "-c", code, str(fitted["emb"]), str(fitted["model"]), str(out)],
                            capture_output=True, env=tool_env())
    assert result.returncode == 0, result.stderr.decode()


def test_eval_warns_when_it_scores_rows_the_model_was_fitted_on(fitted, tmp_path):
    """The 5000 rows with z_spec were the fit's labels; the 1000 others were never seen."""
    def evaluate(pred, truth):
        result = run_tool("gal-photoz", "eval", pred, "--truth", truth, "--json", check=True)
        return json.loads(result.stdout), result.stderr.decode()

    report, err = evaluate(fitted["pred"], "z_spec")
    assert report["n"] == 5000 and report["n_fitted_on"] == 5000
    assert err == ("gal-photoz: warning: 5000 of the 5000 rows evaluated are rows the model was fitted on (their "
                   "redshifts were its training labels): these metrics flatter it; evaluate objects held out from "
                   "gal-photoz fit\n")
    report, err = evaluate(fitted["pred"], "z_true")
    assert report["n"] == 6000 and report["n_fitted_on"] == 5000 and "5000 of the 6000 rows" in err
    held_out = write_table(read(fitted["emb"])[0].slice(5000), str(tmp_path / "held-out.parquet"),
                           **{"galtools.model_sha256": ENCODER})
    pred = tmp_path / "pred.parquet"
    run_tool("gal-photoz", "predict", held_out, "--model", fitted["model"], "-o", pred, check=True)
    report, err = evaluate(pred, "z_true")
    assert report["n"] == 1000 and report["n_fitted_on"] == 0 and err == ""
    # other objects under the same ids (two gal-sim runs number their objects alike): not the fitted rows
    x, z, _ = synthetic_embeddings(6000, seed=11)
    others = write_table(embedding_table(x, z), str(tmp_path / "others.parquet"), **{"galtools.model_sha256": ENCODER})
    pred = tmp_path / "others-pred.parquet"
    run_tool("gal-photoz", "predict", others, "--model", fitted["model"], "-o", pred, check=True)
    report, err = evaluate(pred, "z_spec")
    assert report["n"] == 6000 and report["n_fitted_on"] == 0 and err == ""


@pytest.mark.slow
def test_eval_json_equals_the_metrics_and_draws_a_plot(fitted, tmp_path):
    plot = tmp_path / "photoz.png"
    result = run_tool("gal-photoz", "eval", fitted["pred"], "--truth", "z_true", "--mag", "ra", "--json",
                      "--plot", plot, check=True)
    report = json.loads(result.stdout)
    table, _ = read(fitted["pred"])
    expected = photoz_metrics(table.column("z_phot").to_numpy(), fitted["z"])
    for key in ("bias", "sigma_mad", "eta"):
        assert report[key] == pytest.approx(expected[key], rel=1e-6)
    assert report["n"] == 6000 and report["n_skipped"] == 0
    assert len(report["by_z"]) == 8 and sum(r["n"] for r in report["by_z"]) == 6000
    assert report["by_z"][-1]["hi"] == pytest.approx(0.4)
    assert len(report["by_magnitude"]) == 5 and sum(r["n"] for r in report["by_magnitude"]) == 6000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = run_tool("gal-photoz", "eval", fitted["pred"], "--truth", "z_true", "--plot", plot)
    assert again.returncode == 1 and "already exists" in again.stderr.decode()
    text = run_tool("gal-photoz", "eval", fitted["pred"], check=True).stdout.decode()
    assert "(1000 rows without z_phot or truth skipped)" in text and "sigma_MAD" in text


@pytest.mark.slow
def test_same_seed_same_model(tmp_path):
    x, z, _ = synthetic_embeddings(800, seed=5)
    emb = write_table(embedding_table(x, z), str(tmp_path / "small.parquet"))
    for name in ("a.model", "b.model"):
        run_tool("gal-photoz", "fit", emb, "-o", tmp_path / name, "--seed", "11", "--max-epochs", "3", check=True)
    with np.load(tmp_path / "a.model") as a, np.load(tmp_path / "b.model") as b:
        assert np.array_equal(a["w0"], b["w0"]) and np.array_equal(a["b0"], b["b0"])


@pytest.mark.slow
def test_streamed_fit_matches_in_memory_statistics_and_quality(tmp_path):
    from galtools.heads.rows import InMemoryRows, StreamedRows

    x, z, _ = synthetic_embeddings(3000, seed=2)
    path = write_table(embedding_table(x, z), str(tmp_path / "emb.arrow"))
    labels = RedshiftBins().assign(z)[0].astype(np.int16)
    labels[::7] = -1                                           # rows that are not training rows
    streamed = StreamedRows(path, labels, 16, window_bytes=64 * 16 * 4)   # tiny windows: many shuffles
    kept = labels >= 0
    mean, std = streamed.mean_and_scale()
    want_mean, want_std = InMemoryRows(x[kept], labels[kept]).mean_and_scale()
    assert np.allclose(mean, want_mean, atol=1e-6) and np.allclose(std, want_std, rtol=1e-5)
    batches = streamed.passes(np.random.default_rng(0), 100)
    seen = np.concatenate([next(batches)[1] for _ in range(int(np.ceil(kept.sum() / 100)) + 30)])
    assert len(seen) >= kept.sum()                             # one pass covers every training row once
    assert np.array_equal(np.sort(seen[:kept.sum()]), np.sort(labels[kept].astype(np.int64)))
    result = run_tool("gal-photoz", "fit", path, "--stream", "-o", tmp_path / "s.model", "-v", check=True)
    assert "streamed from" in result.stderr.decode()
    with np.load(tmp_path / "s.model") as data:
        assert json.loads(str(data["__galtools__"]))["streamed"] is True


@pytest.mark.slow
def test_labels_beyond_zmax_are_clipped_with_a_warning_and_counted(tmp_path):
    x, z, _ = synthetic_embeddings(600, seed=4)
    z = z.copy()
    z[:25] = 0.45
    z[25:27] = 0.4
    emb = write_table(embedding_table(x, z), str(tmp_path / "emb.parquet"))
    result = run_tool("gal-photoz", "fit", emb, "-o", tmp_path / "m.model", "--max-epochs", "2", "--clip-labels",
                      check=True)
    assert "27 label(s) with z_spec >= 0.4 were put in the last bin" in result.stderr.decode()
    with np.load(tmp_path / "m.model") as data:
        assert json.loads(str(data["__galtools__"]))["n_clipped_above_zmax"] == 27


@pytest.mark.slow
def test_curve_linear_probe_beats_the_median_at_every_size(fitted):
    result = run_tool("gal-photoz", "curve", fitted["emb"], "--fractions", "0.01,0.25,1", "--json", check=True)
    curve = json.loads(result.stdout)
    rows = curve["rows"]
    assert {(r["method"], r["fraction"]) for r in rows} == {(m, f) for m in ("median", "linear") for f in (0.25, 1.0)}
    assert "fraction 0.01 gives 40 labels, fewer than the 180 bins: skipped" in result.stderr.decode()
    for fraction in (0.25, 1.0):
        by = {r["method"]: r for r in rows if r["fraction"] == fraction}
        assert by["linear"]["sigma_mad"] < 0.5 * by["median"]["sigma_mad"]
        assert by["linear"]["n_test"] == 1000 and by["linear"]["n_labels"] == int(round(fraction * 4000))
    full = {r["method"]: r for r in rows if r["fraction"] == 1.0}["linear"]
    quarter = {r["method"]: r for r in rows if r["fraction"] == 0.25}["linear"]
    assert full["sigma_mad"] < quarter["sigma_mad"] * 1.1     # more labels do not make it worse


# ------------------------------------------------------------------------------------------------------- errors

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photoz-errors")
    x, z, _ = synthetic_embeddings(400, seed=9)
    emb = write_table(embedding_table(x, z), str(folder / "emb.parquet"), **{"galtools.model_sha256": ENCODER})
    model = folder / "m.model"
    run_tool("gal-photoz", "fit", emb, "-o", model, "--max-epochs", "1", check=True)
    return folder, emb, model, x, z


def test_error_missing_z_column(small):
    folder, emb, *_ = small
    result = run_tool("gal-photoz", "fit", emb, "--z-column", "zspec", "-o", folder / "x.model")
    _error(result, 65, "has no 'zspec' column", "--z-column")
    assert not (folder / "x.model").exists()


def test_error_all_labels_nan(small, tmp_path):
    _, _, _, x, _ = small
    emb = write_table(embedding_table(x, np.full(len(x), np.nan)), str(tmp_path / "nan.parquet"))
    _error(run_tool("gal-photoz", "fit", emb, "-o", tmp_path / "x.model"), 65,
           "all 400 values of 'z_spec' are NaN or null")


@pytest.mark.slow
def test_error_fewer_labels_than_bins(small, tmp_path):
    _, _, _, x, z = small
    z = z.copy()
    z[100:] = np.nan
    emb = write_table(embedding_table(x, z), str(tmp_path / "few.parquet"))
    _error(run_tool("gal-photoz", "fit", emb, "-o", tmp_path / "x.model"), 65,
           "only 100 rows have a 'z_spec', fewer than the 180 redshift bins", "fewer --bins")
    assert run_tool("gal-photoz", "fit", emb, "--bins", "50", "--max-epochs", "1", "-o", tmp_path / "ok.model").returncode == 0


def test_error_embedding_size_differs_from_the_model(small, tmp_path):
    _, _, model, x, z = small
    emb = write_table(embedding_table(np.hstack([x, x]), z), str(tmp_path / "wide.parquet"))
    _error(run_tool("gal-photoz", "predict", emb, "--model", model, "-o", tmp_path / "p.parquet"), 65,
           "has 32-d embeddings but", "was fitted on 16-d ones")
    assert not (tmp_path / "p.parquet").exists()


def test_error_embeddings_of_another_encoder(small, tmp_path):
    _, _, model, x, z = small
    emb = write_table(embedding_table(x, z), str(tmp_path / "other.parquet"), **{"galtools.model_sha256": "ef" * 32})
    _error(run_tool("gal-photoz", "predict", emb, "--model", model, "-o", tmp_path / "p.parquet"), 65,
           "embedded by another encoder")


def test_error_model_file_from_another_tool_or_not_a_model(small, tmp_path):
    from galtools.heads import save_head

    _, emb, *_ = small
    other = tmp_path / "classify.model"
    save_head(str(other), {"w0": np.zeros((16, 3), np.float32)}, tool="gal-classify", kind="classify-linear",
              embedding_dim=16, model_sha256=ENCODER)
    _error(run_tool("gal-photoz", "predict", emb, "--model", other, "-o", tmp_path / "p.parquet"), 65,
           "is a gal-classify model, not a gal-photoz one")
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"\x80\x04definitely not a model")
    _error(run_tool("gal-photoz", "predict", emb, "--model", junk, "-o", tmp_path / "p.parquet"), 65,
           "not a galtools model file")
    _error(run_tool("gal-photoz", "predict", emb, "--model", tmp_path / "absent.model", "-o", tmp_path / "p.parquet"),
           66, "no such model file")


def test_error_nan_embedding_and_existing_model(small, tmp_path):
    folder, emb, model, x, z = small
    x = x.copy()
    x[3, 2] = np.nan
    bad = write_table(embedding_table(x, z), str(tmp_path / "bad.parquet"), **{"galtools.model_sha256": ENCODER})
    _error(run_tool("gal-photoz", "fit", bad, "-o", tmp_path / "x.model"), 65, "NaN or infinite")
    _error(run_tool("gal-photoz", "predict", bad, "--model", model, "-o", tmp_path / "p.parquet"), 65,
           "object_id 7003")
    _error(run_tool("gal-photoz", "fit", emb, "-o", model), 1, "already exists", "--overwrite")


def test_help_has_an_example_and_does_not_import_torch():
    code = ("import sys; from galtools.cli.photoz import main; sys.argv = ['gal-photoz', 'fit', '--help']\n"
            "try: main()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, env=tool_env())
    assert result.returncode == 0, result.stderr.decode()
    assert b"Example:" in result.stdout and b"gal-photoz fit emb.parquet" in result.stdout

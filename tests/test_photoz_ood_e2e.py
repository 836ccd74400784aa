"""gal-photoz and gal-ood end to end, as a user runs them: gal-sim cutouts (5% anomalies), a tiny encoder
pre-trained by gal-train (MoCo v2, 200 steps on the CPU), gal-embed; then two catalogues of spectroscopic redshifts:
- as in a survey, only the bright normal galaxies of one part of the sky (the labelled set), the rest unlabelled:
  the trust and anomaly tests;
- a random 70% of the normal galaxies (the random split), the other 30% held out: the photo-z quality tests.

The floors here are wide: they hold over data seeds, training seeds and CPUs (MoCo on CPUs is not bit-reproducible
across CPU families, so one CPU's run is one draw among many). Each test records its figure (``record_property``);
the tighter targets, measured with gal-sim seeds 7, 8 and 9 and training seeds 0 and 1, live in ``benchmarks/bench_e2e_quality.py``, which runs
this file over several data and training seeds, checks them on every run and appends the range to
benchmarks/RESULTS.md. Each floor below states its tolerance against that target.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from conftest import ROOT, write_table
from galtools.io import open_table, vectors_of

pytestmark = pytest.mark.slow  # end to end: gal-sim, MoCo pre-training, gal-embed, heads (minutes)

PYTHON = shlex.quote(sys.executable)
N_OBJECTS = 5000
SEED = int(os.environ.get("GALTOOLS_E2E_SEED", "7"))
# MoCo on CPUs is not bit-reproducible across CPU families: another CPU follows another training trajectory.
# Another training seed does the same on this one, so the floors below were measured over both seeds.
TRAIN_SEED = int(os.environ.get("GALTOOLS_E2E_TRAIN_SEED", "0"))
# MoCo v2 on the tiny encoder, sized for a short CPU run: m=0.99 and a queue of a fifth of the table (gal-train's
# notes say why); no reddening augmentation: invariance to it costs colour, i.e. redshift, at this scale
TRAINING = ("--arch tiny --crop 32 --steps 200 --batch-size 64 --lr 0.3 --queue-size 1024 --key-momentum 0.99 "
            "--ops rotate,jitter,psf,noise --log-every 10 --device cpu --loader-threads 1 -q")
RANDOM_LABELLED_SHARE = 0.7
LABELLED_SHARE = 2 / 3


def _run(command: str, cwd) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, cwd=cwd, timeout=600,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, f"{command}\n{result.stderr.decode()}"
    return result


def _tool(name: str) -> str:
    return f"{PYTHON} -m galtools.cli.{name}"


def _read(path) -> pa.Table:
    with open_table(str(path)) as table:
        return table.read_all(), table.metadata


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    _run(f"{_tool('sim')} -n {N_OBJECTS} --seed {SEED} --anomaly-fraction 0.05 -j 2 -q -o sim.parquet", folder)
    _run(f"{_tool('train')} fit sim.parquet --out run {TRAINING} --seed {TRAIN_SEED}", folder)
    _run(f"{_tool('embed')} sim.parquet --model run/encoder.onnx -q -o emb.parquet", folder)
    _split_catalogue(folder)
    # photo-z and trust: both learnt from the labelled set, applied to everything else
    _run(f"{_tool('photoz')} fit labelled.parquet --z-column z_spec --bins 60 -q -o photoz.model", folder)
    _run(f"{_tool('ood')} fit labelled.parquet -k 10 -q -o trust.model", folder)
    _run(f"{_tool('photoz')} predict target.parquet --model photoz.model --truth z_true | "
         f"{_tool('ood')} score - --model trust.model -o scored.parquet", folder)
    trust = _run(f"{_tool('ood')} eval scored.parquet --error-column abs_dz --json --plot trust.png", folder)
    photoz = _run(f"{_tool('photoz')} eval scored.parquet --truth z_true --json", folder)
    # anomalies: a reference of known-normal objects, and a held-out part of the sky
    _run(f"{_tool('ood')} fit normal.parquet -k 10 -q -o anomalies.model", folder)
    _run(f"{_tool('ood')} score holdout.parquet --model anomalies.model -o holdout-scored.parquet", folder)
    detection = _run(f"{_tool('ood')} eval holdout-scored.parquet --truth is_anomaly --json", folder)
    scored, _ = _read(folder / "scored.parquet")
    labels, _ = _read(folder / "labelled.parquet")
    return {"folder": folder, "scored": scored, "labelled": labels, "trust": json.loads(trust.stdout)["trust"],
            "photoz": json.loads(photoz.stdout), "detection": json.loads(detection.stdout)["detection"]}


def _split_catalogue(folder):
    """labelled: normal galaxies brighter than the median in the first two thirds, with z_spec; target: all other
    rows; normal: every normal galaxy of the first two thirds; holdout: the last third."""
    emb, metadata = _read(folder / "emb.parquet")
    rows = np.arange(emb.num_rows)
    first = rows < int(LABELLED_SHARE * emb.num_rows)
    normal = first & ~emb.column("is_anomaly").to_numpy(zero_copy_only=False)
    magnitude = emb.column("mag_r").to_numpy()
    labelled = normal & (magnitude < np.median(magnitude))
    emb = emb.append_column("z_spec", pc.if_else(pa.array(labelled), emb.column("z_true"),
                                                 pa.nulls(emb.num_rows, pa.float32())))
    model = {"galtools.model_sha256": metadata["galtools.model_sha256"]}
    all_normal = ~emb.column("is_anomaly").to_numpy(zero_copy_only=False)
    drawn = np.random.default_rng(SEED).random(emb.num_rows) < RANDOM_LABELLED_SHARE
    for name, mask in (("labelled", labelled), ("target", ~labelled), ("normal", normal), ("holdout", ~first),
                       ("random-labelled", all_normal & drawn), ("random-test", all_normal & ~drawn)):
        write_table(emb.filter(pa.array(mask)), str(folder / f"{name}.parquet"), bands="u,g,r,i,z", **model)


def test_pipeline_keeps_every_target_row_and_column(pipeline):
    scored = pipeline["scored"]
    assert scored.num_rows + pipeline["labelled"].num_rows == N_OBJECTS
    for column in ("object_id", "z_true", "mag_r", "is_anomaly", "embedding", "z_phot", "z_phot_std", "z_pdf",
                   "abs_dz", "ood_score", "trusted", "nearest_reference_id"):
        assert column in scored.column_names, column
    reference_ids = set(pipeline["labelled"].column("object_id").to_pylist())
    assert set(scored.column("nearest_reference_id").to_pylist()) <= reference_ids
    assert (pipeline["folder"] / "trust.png").stat().st_size > 0
    assert pipeline["photoz"]["n"] == scored.num_rows


# ------------------------------------------------------------------------------------ pre-training and photo-z

def test_pretraining_lowers_the_loss_and_beats_a_random_encoder(pipeline, tmp_path, record_property):
    """MoCo on gal-sim: the loss falls, and a ridge probe of z_true on the learned representation beats the same
    probe on the same network with random weights, embedded the same way."""
    import torch

    from galtools.models import build_encoder
    from galtools.train.export import export_encoder, read_metadata
    from test_train import ridge_probe_r2

    folder = pipeline["folder"]
    losses = [r["loss"] for r in map(json.loads, open(folder / "run" / "metrics.jsonl")) if "loss" in r]
    # the first record (step 10) is while the queue still holds random vectors, easy negatives; it is full of real
    # keys after 1024 / 64 = 16 steps: from the next record on (step 20), the loss must fall
    record_property("loss_step20_end", (losses[1], losses[-1]))
    record_property("loss_drop", losses[1] - float(np.mean(losses[-5:])))
    assert np.mean(losses[-5:]) < losses[1] - 0.25, losses            # half the benchmark's target drop, 0.5

    torch.manual_seed(0)
    export_encoder(build_encoder("tiny", 5), str(tmp_path / "random.onnx"),
                   read_metadata(str(folder / "run" / "encoder.onnx")), 32)
    _run(f"{_tool('embed')} sim.parquet --model {tmp_path / 'random.onnx'} -q -o {tmp_path / 'random.parquet'}", folder)
    learned, _ = _read(folder / "emb.parquet")
    random, _ = _read(tmp_path / "random.parquet")
    normal = ~learned.column("is_anomaly").to_numpy(zero_copy_only=False)
    z_true = learned.column("z_true").to_numpy().astype(np.float64)[normal]
    r2_learned = ridge_probe_r2(vectors_of(learned)[normal].astype(np.float64), z_true)
    r2_random = ridge_probe_r2(vectors_of(random)[normal].astype(np.float64), z_true)
    record_property("ridge_r2_learned_random", (r2_learned, r2_random))
    record_property("ridge_r2_gain", r2_learned - r2_random)
    assert r2_learned > r2_random + 0.03, (r2_learned, r2_random)     # the benchmark's target gain: 0.1


@pytest.fixture(scope="module")
def random_split(pipeline):
    """Photo-z heads fitted on the random split's labels and applied to its held-out 30%."""
    folder = pipeline["folder"]
    heads = {"linear-onehot": "", "linear": "--label-smoothing 2", "mlp": "--label-smoothing 2 --hidden 128"}
    results = {}
    for name, flags in heads.items():
        _run(f"{_tool('photoz')} fit random-labelled.parquet --z-column z_true {flags} -q -o {name}.model", folder)
        _run(f"{_tool('photoz')} predict random-test.parquet --model {name}.model -q -o {name}-pred.parquet", folder)
        evaluation = _run(f"{_tool('photoz')} eval {name}-pred.parquet --truth z_true --json", folder)
        results[name] = (json.loads(evaluation.stdout), _read(folder / f"{name}-pred.parquet")[0])
    labelled, _ = _read(folder / "random-labelled.parquet")
    results["training_median"] = float(np.median(labelled.column("z_true").to_numpy()))
    results["folder"] = folder
    return results


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_probe_beats_the_training_median_by_a_wide_margin(random_split, head, record_property):
    from galtools.photoz.metrics import photoz_metrics

    evaluation, predictions = random_split[head]
    z_true = predictions.column("z_true").to_numpy().astype(np.float64)
    median = photoz_metrics(np.full(len(z_true), random_split["training_median"]), z_true)
    # gal-photoz eval against the formulas written out
    dz = (predictions.column("z_phot").to_numpy() - z_true) / (1 + z_true)
    assert evaluation["sigma_mad"] == pytest.approx(1.4826 * np.median(np.abs(dz - np.median(dz))), rel=1e-5)
    assert evaluation["eta"] == pytest.approx(100 * np.mean(np.abs(dz) > 0.05), rel=1e-6)
    record_property("sigma_mad_probe_median", (evaluation["sigma_mad"], median["sigma_mad"]))
    record_property("eta_probe_median", (evaluation["eta"], median["eta"]))
    record_property("sigma_mad_ratio", evaluation["sigma_mad"] / median["sigma_mad"])
    record_property("eta_ratio", evaluation["eta"] / median["eta"])
    record_property("bias", evaluation["bias"])
    # the benchmark's targets: sigma_MAD < 0.7 x the median's, eta < 0.5 x, |bias| < 0.01
    assert evaluation["sigma_mad"] < 0.85 * median["sigma_mad"], (evaluation, median)
    assert evaluation["eta"] < 0.75 * median["eta"], (evaluation, median)
    assert abs(evaluation["bias"]) < 0.02


def test_label_smoothing_is_recorded_and_does_not_hurt_the_probe(random_split, record_property):
    smoothed, one_hot = random_split["linear"][0], random_split["linear-onehot"][0]
    record_property("sigma_mad_smoothed_onehot", (smoothed["sigma_mad"], one_hot["sigma_mad"]))
    record_property("smoothing_ratio", smoothed["sigma_mad"] / one_hot["sigma_mad"])
    # the benchmark's target: 0.95 (smoothing helps); here only: it does not hurt by more than 2%
    assert smoothed["sigma_mad"] < 1.02 * one_hot["sigma_mad"], (smoothed, one_hot)
    with np.load(random_split["folder"] / "linear.model", allow_pickle=False) as data:
        assert json.loads(str(data["__galtools__"]))["settings"]["label_smoothing"] == 2.0


def test_predicted_spread_is_larger_where_the_error_is(random_split, record_property):
    from scipy.stats import spearmanr

    correlations, quarter_ratios = {}, {}
    for head in ("linear", "mlp"):
        predictions = random_split[head][1]
        z_true = predictions.column("z_true").to_numpy().astype(np.float64)
        abs_dz = np.abs(predictions.column("z_phot").to_numpy() - z_true) / (1 + z_true)
        spread = predictions.column("z_phot_std").to_numpy()
        correlations[head] = float(spearmanr(spread, abs_dz).statistic)
        narrow, wide = np.quantile(spread, [0.25, 0.75])
        quarter_ratios[head] = float(np.median(abs_dz[spread > wide]) / np.median(abs_dz[spread < narrow]))
    record_property("spearman_std_abs_dz", correlations)
    record_property("widest_narrowest_quarter_error_ratio", quarter_ratios)
    record_property("spearman_mlp", correlations["mlp"])
    record_property("spearman_linear", correlations["linear"])
    record_property("quarter_ratio", min(quarter_ratios.values()))
    # The magnitude, the main driver of the error in gal-sim, correlates with |dz| at Spearman 0.19-0.21 (seeds
    # 7-9): the predicted spread does about as well (0.19-0.26 mlp, 0.19-0.22 linear over data seeds 7-9 and
    # training seeds 0-1).  The quarter of objects with the widest pdfs has 1.5-1.8 times the median error of the
    # quarter with the narrowest.  The benchmark's targets: Spearman > 0.2
    # (mlp) and > 0.15 (linear), ratio > 1.4; here half the correlations and a ratio above 1.2.
    assert correlations["mlp"] > 0.1, correlations
    assert correlations["linear"] > 0.075, correlations
    assert min(quarter_ratios.values()) > 1.2, quarter_ratios


def test_linear_probe_beats_the_training_median_on_fainter_targets(pipeline, record_property):
    """Labels for the bright half only: the probe still beats the median on the fainter rest, by less (sigma_MAD
    ratio 0.74-0.81 over data seeds 7-9 and training seeds 0-1).  Its z_phot_std does not grow for the faint
    objects it never saw (its Spearman correlation with the error is recorded): telling those apart is gal-ood's job, tested below."""
    from scipy.stats import spearmanr

    from galtools.photoz.metrics import photoz_metrics

    scored = pipeline["scored"]
    normal = ~scored.column("is_anomaly").to_numpy(zero_copy_only=False)
    z_true = scored.column("z_true").to_numpy().astype(np.float64)[normal]
    z_phot = scored.column("z_phot").to_numpy()[normal]
    training_median = float(np.median(pipeline["labelled"].column("z_spec").to_numpy()))
    probe = photoz_metrics(z_phot, z_true)
    median = photoz_metrics(np.full(len(z_true), training_median), z_true)
    record_property("sigma_mad_probe", probe["sigma_mad"])
    record_property("sigma_mad_median", median["sigma_mad"])
    record_property("faint_sigma_mad_ratio", probe["sigma_mad"] / median["sigma_mad"])
    record_property("faint_bias", probe["bias"])
    record_property("spearman_std_error", spearmanr(scored.column("z_phot_std").to_numpy()[normal],
                                                    np.abs(z_phot - z_true)).statistic)
    # the benchmark's targets: ratio < 0.85, |bias| < 0.03
    assert probe["sigma_mad"] < 0.92 * median["sigma_mad"], (probe, median)
    assert abs(probe["bias"]) < 0.05


def test_untrusted_predictions_are_the_worse_ones(pipeline, record_property):
    trust = pipeline["trust"]
    record_property("median_abs_dz_trusted", trust["trusted"]["median_error"])
    record_property("median_abs_dz_untrusted", trust["untrusted"]["median_error"])
    record_property("trust_ratio", trust["untrusted"]["median_error"] / trust["trusted"]["median_error"])
    assert trust["untrusted"]["n"] >= 20 and trust["trusted"]["n"] >= 200
    # data seeds 7-9 x training seeds 0-1: 1.34-1.55; the benchmark's target 1.3
    assert trust["untrusted"]["median_error"] > 1.15 * trust["trusted"]["median_error"], trust
    bins = trust["bins"]
    assert bins[-1]["median_error"] > bins[0]["median_error"]        # strangest tenth vs most typical tenth


def test_anomalies_score_above_chance(pipeline, record_property):
    detection = pipeline["detection"]
    record_property("auroc", detection["auroc"])
    assert detection["n_anomalies"] >= 10
    assert detection["auroc"] > 0.6, detection            # seeds 7-9 x 0-1: 0.71-0.83; the target 0.65


def test_network_options_need_a_checkpoint(pipeline):
    result = subprocess.run([sys.executable, "-m", "galtools.cli.photoz", "fit", "labelled.parquet", "--from-scratch",
                             "-o", "x.model"], capture_output=True, cwd=pipeline["folder"],
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 2
    assert "need --checkpoint" in result.stderr.decode()

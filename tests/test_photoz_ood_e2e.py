"""gal-photoz and gal-ood end to end, as a user runs them: gal-sim cutouts (5% anomalies), a tiny encoder from
gal-train, gal-embed; then, as in a survey, spectroscopic redshifts only for the bright normal galaxies of one part
of the sky (the labelled set) and the rest unlabelled.

The encoder is trained for two steps (the test budget), so its representation is little better than a random
convolutional network's.  The floors below are what such an encoder supports, measured over gal-sim seeds 7-9 and
900-2000 objects (sigma_MAD ratio to the training median 0.84-0.95, untrusted/trusted median |dz| 1.34-2.0, AUROC
of anomalies 0.54-0.81); the correlation of z_phot_std with the error, which needs a representation that knows
its uncertainty, is checked on synthetic embeddings in test_photoz.py, and only recorded here.
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
from galtools.io import open_table

PYTHON = shlex.quote(sys.executable)
N_OBJECTS = 900
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
    _run(f"{_tool('sim')} -n {N_OBJECTS} --seed 7 --anomaly-fraction 0.05 -j 2 -q -o sim.parquet", folder)
    _run(f"{_tool('train')} fit sim.parquet --out run --arch tiny --crop 32 --steps 2 --batch-size 32 "
         "--queue-size 64 --device cpu --loader-threads 1 -q", folder)
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
    for name, mask in (("labelled", labelled), ("target", ~labelled), ("normal", normal), ("holdout", ~first)):
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


def test_linear_probe_beats_the_training_median(pipeline, record_property):
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
    record_property("spearman_std_error", spearmanr(scored.column("z_phot_std").to_numpy()[normal],
                                                    np.abs(z_phot - z_true)).statistic)
    assert probe["sigma_mad"] < 0.97 * median["sigma_mad"], (probe, median)
    assert abs(probe["bias"]) < 0.03


def test_untrusted_predictions_are_the_worse_ones(pipeline, record_property):
    trust = pipeline["trust"]
    record_property("median_abs_dz_trusted", trust["trusted"]["median_error"])
    record_property("median_abs_dz_untrusted", trust["untrusted"]["median_error"])
    assert trust["untrusted"]["n"] >= 20 and trust["trusted"]["n"] >= 200
    assert trust["untrusted"]["median_error"] > 1.2 * trust["trusted"]["median_error"], trust
    bins = trust["bins"]
    assert bins[-1]["median_error"] > bins[0]["median_error"]        # strangest tenth vs most typical tenth


def test_anomalies_score_above_chance(pipeline, record_property):
    detection = pipeline["detection"]
    record_property("auroc", detection["auroc"])
    assert detection["n_anomalies"] >= 10
    assert detection["auroc"] > 0.55, detection


# -------------------------------------------------------------------------------- fine-tuning the gal-train encoder

@pytest.fixture(scope="module")
def finetuned(pipeline):
    folder = pipeline["folder"]
    _run(f"{_tool('photoz')} fit labelled.parquet --finetune --checkpoint run/last.pt --images sim.parquet "
         "--bins 60 --max-epochs 1 --seed 2 -q -o finetuned.model", folder)
    _run(f"{_tool('photoz')} predict holdout.parquet --model finetuned.model --truth z_true -o ft-emb-refused.parquet "
         "2> refused.txt; echo $? > refused.code; true", folder)
    # predicting straight from cutouts: the model's own encoder embeds them on the way
    _run(f"{_tool('photoz')} predict sim.parquet --model finetuned.model --drop-embedding -o ft-pred.parquet", folder)
    return folder


def test_finetuned_model_carries_its_encoder_and_predicts_cutouts(finetuned):
    import hashlib

    import onnxruntime as ort

    from galtools.photoz.bins import RedshiftBins, summarise_pdf
    from galtools.preprocess import Preprocess
    from galtools.train.data import centre_crop

    with np.load(finetuned / "finetuned.model", allow_pickle=False) as data:
        meta = json.loads(str(data["__galtools__"]))
        onnx_bytes = data["encoder_onnx"].tobytes()
        w0, b0 = data["w0"], data["b0"]
    assert meta["kind"] == "photoz-finetuned" and meta["mode"] == "finetune" and meta["seed"] == 2
    assert meta["model_sha256"] == hashlib.sha256(onnx_bytes).hexdigest()
    assert meta["checkpoint"] == "run/last.pt" and meta["input_size"] == 32
    # an independent path: ONNX Runtime on the centre crop + the stored preprocessing, then the head in numpy
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    preprocess = Preprocess.from_json(props["galtools.preprocess"])
    with open_table(str(finetuned / "sim.parquet")) as table:
        sim = table.read_all()
        bands = table.bands
    from galtools.io import images_of

    raw = images_of(sim)[:, [bands.index(b) for b in preprocess.bands]]
    features = session.run(["embedding"], {"image": preprocess.apply_numpy(centre_crop(raw, 32))})[0]
    logits = features @ w0 + b0
    pdf = np.exp(logits - logits.max(axis=1, keepdims=True))
    pdf /= pdf.sum(axis=1, keepdims=True)
    expected = summarise_pdf(pdf, RedshiftBins(60, 0.4).centres)[0]
    predicted, metadata = _read(finetuned / "ft-pred.parquet")
    assert predicted.num_rows == N_OBJECTS and "embedding" not in predicted.column_names
    assert np.allclose(predicted.column("z_phot").to_numpy(), expected, atol=1e-5)
    assert metadata["galtools.model_sha256"] == meta["model_sha256"]


def test_finetuned_model_refuses_embeddings_of_the_pretrained_encoder(finetuned):
    assert (finetuned / "refused.code").read_text().strip() == "65"
    assert "embedded by another encoder" in (finetuned / "refused.txt").read_text()
    assert not (finetuned / "ft-emb-refused.parquet").exists()


def test_label_curve_with_finetuning_and_from_scratch(pipeline):
    result = _run(f"{_tool('photoz')} curve labelled.parquet --images sim.parquet --checkpoint run/last.pt "
                  "--bins 30 --fractions 1 --max-epochs 1 --json --plot curve.png", pipeline["folder"])
    rows = json.loads(result.stdout)["rows"]
    methods = {(r["method"], r["fraction"]) for r in rows}
    assert methods == {(m, 1.0) for m in ("median", "linear", "finetune", "scratch")}
    test_sizes = {r["n_test"] for r in rows}
    assert len(test_sizes) == 1                                   # one test set for every point
    for row in rows:
        assert np.isfinite(row["sigma_mad"]) and 0 <= row["eta"] <= 100
    assert (pipeline["folder"] / "curve.png").stat().st_size > 0


def test_network_options_need_a_checkpoint(pipeline):
    result = subprocess.run([sys.executable, "-m", "galtools.cli.photoz", "fit", "labelled.parquet", "--from-scratch",
                             "-o", "x.model"], capture_output=True, cwd=pipeline["folder"],
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 2
    assert "need --checkpoint" in result.stderr.decode()

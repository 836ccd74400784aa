"""gal-embed on what gal-train really exports, checked against the training checkpoint's torch encoder.

One short gal-train run (tiny encoder, a few steps: conftest's trained_run) makes RUN/last.pt and
RUN/encoder.onnx; then the pipe users run, ``gal-sim | gal-embed - --model RUN/encoder.onnx | gal-info -``, and its
embeddings are compared with the checkpoint's backbone fed the training preprocessing (galtools.train's centre
crop, then Preprocess.apply_torch).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from test_embed import embed, embeddings, read

pytestmark = pytest.mark.slow  # a real gal-train run (conftest's trained_run)


def checkpoint_embeddings(run, table) -> np.ndarray:
    """The training side: the checkpoint's query backbone, training's centre crop and apply_torch."""
    import torch

    from galtools.io import images_of
    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess
    from galtools.train import checkpoint
    from galtools.train.config import TrainConfig
    from galtools.train.data import centre_crop

    state = checkpoint.load(str(run / "last.pt"))
    config = TrainConfig.from_json(state["config"])
    bands = list(state["bands"])
    backbone = build_encoder(config.arch, len(bands), width=config.width)
    backbone.load_state_dict(checkpoint.backbone_state(state["model"]))
    backbone.eval()
    preprocess = Preprocess.from_json(state["preprocess"])
    table_bands = table.schema.metadata[b"galtools.bands"].decode().split(",")
    raw = images_of(table)[:, [table_bands.index(b) for b in bands]]
    views = torch.from_numpy(np.ascontiguousarray(centre_crop(raw, config.crop)))
    with torch.no_grad():
        return backbone.forward_features(preprocess.apply_torch(views)).numpy()


def test_gal_sim_into_gal_embed_into_gal_info_matches_the_checkpoint(trained_run, tmp_path):
    python, model = sys.executable, trained_run / "encoder.onnx"
    pipe = (f"'{python}' -m galtools.cli.sim -n 200 --seed 5 -o - | tee '{tmp_path}/sim.arrows' "
            f"| '{python}' -m galtools.cli.embed - --model '{model}' | tee '{tmp_path}/emb.arrows' "
            f"| '{python}' -m galtools.cli.info --json -")
    result = subprocess.run(["bash", "-o", "pipefail", "-c", pipe], capture_output=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["rows"] == 200

    cutouts, embedded = read(str(tmp_path / "sim.arrows")), read(str(tmp_path / "emb.arrows"))
    carried = [c for c in cutouts.column_names if c != "image"]
    assert embedded.column_names == carried + ["embedding"]
    for name in carried:
        assert embedded.column(name).equals(cutouts.column(name)), name
    expected = checkpoint_embeddings(trained_run, cutouts)
    got = embeddings(embedded)
    assert np.abs(got - expected).max() <= 1e-4
    assert np.abs(expected).max() > 0.05
    assert embedded.schema.metadata[b"galtools.model_arch"] == b"tiny"

    fp16_out = tmp_path / "fp16.parquet"
    fp16 = embed(tmp_path / "sim.arrows", "--model", model, "-o", fp16_out, "--precision", "fp16",
                 env_extra={"GALTOOLS_CACHE_DIR": str(tmp_path / "cache")})
    assert fp16.returncode == 0, fp16.stderr.decode()
    half = embeddings(read(str(fp16_out)))
    cosine = (half * expected).sum(1) / np.linalg.norm(half, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > 0.999

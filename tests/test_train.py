"""gal-train's library: synthetic galaxies to learn from, data order and reading, schedule, and that MoCo training
learns something a linear probe can use (better than a randomly initialised encoder)."""
from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

from galtools.io import images_of, open_output, open_table, tensor_column  # noqa: E402

BANDS = ("u", "g", "r", "i", "z")


def galaxy_table(n: int, size: int = 24, seed: int = 0, bands=BANDS) -> pa.Table:
    """Elliptical Gaussian galaxies whose size, flux and colour follow a hidden ``t_true`` in [0, 1] (a stand-in
    for redshift: farther is smaller, fainter and redder), at random orientation, ellipticity and centring, with
    unit Gaussian sky noise; ``morph_class`` is t_true in three bins."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    sigma = 3.5 - 2.0 * t
    axis_ratio = rng.uniform(0.35, 1.0, n)
    angle = rng.uniform(0, np.pi, n)
    flux = 1500.0 * (1 - 0.6 * t)
    colour = np.exp(np.outer(t, np.linspace(-1.0, 1.0, len(bands))))
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    dx = xx[None] - rng.uniform(-1.5, 1.5, n)[:, None, None]
    dy = yy[None] - rng.uniform(-1.5, 1.5, n)[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (cos * dx + sin * dy) / sigma[:, None, None]
    v = (-sin * dx + cos * dy) / (sigma * axis_ratio)[:, None, None]
    profile = np.exp(-0.5 * (u**2 + v**2)) / (2 * np.pi * sigma**2 * axis_ratio)[:, None, None]
    images = flux[:, None, None, None] * colour[:, :, None, None] * profile[:, None]
    images = (images + rng.normal(0, 1.0, images.shape)).astype(np.float32)
    return pa.table({
        "object_id": pa.array(np.arange(10_000, 10_000 + n, dtype=np.int64)),
        "t_true": pa.array(t),
        "morph_class": pa.array(np.minimum((t * 3).astype(np.int64), 2)),
        **{f"psf_fwhm_{b}": pa.array(np.full(n, 1.2)) for b in bands},
        "image": tensor_column(images),
    })


def write_galaxies(path, n: int, size: int = 24, seed: int = 0, bands=BANDS, fmt=None, nan_row=None,
                   row_group_size=None) -> str:
    table = galaxy_table(max(n, 1), size, seed, bands).slice(0, n)   # n = 0: an empty table with the columns
    if nan_row is not None:
        images = images_of(table).copy()
        images[nan_row, 0, 2, 2] = np.nan
        table = table.set_column(table.schema.get_field_index("image"), "image", tensor_column(images))
    meta = {"galtools.bands": ",".join(bands), "galtools.pixscale_arcsec": "0.396", "galtools.flux_unit": "nanomaggy"}
    if row_group_size or n == 0:   # written directly: several row groups, or no rows (galtools refuses to)
        import pyarrow.parquet as pq
        from galtools.io.meta import encode

        pq.write_table(table.replace_schema_metadata(encode(meta)), str(path), row_group_size=row_group_size or 1024)
        return str(path)
    with open_output(str(path), metadata=meta, tool="test", fmt=fmt) as out:
        out.write(table)
    return str(path)


@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    return write_galaxies(tmp_path_factory.mktemp("galaxies") / "galaxies.fits", 2048)


# -- data -----------------------------------------------------------------------------------------------------
def test_memmapped_fits_parquet_blocks_and_arrow_read_the_same_rows(tmp_path):
    from galtools.train.data import ArrowRows, BlockRows, CutoutData, MemmapCube

    fits = write_galaxies(tmp_path / "g.fits", 300, size=12)
    parquet = write_galaxies(tmp_path / "g.parquet", 300, size=12, row_group_size=64)
    arrow = write_galaxies(tmp_path / "g.arrow", 300, size=12)
    expected = images_of(open_table(fits).read_all())
    rows = np.array([299, 0, 5, 64, 63, 128, 5, 200])
    kinds = {}
    for path in (fits, parquet, arrow):
        data = CutoutData([path])
        kinds[path] = type(data.readers[0])
        np.testing.assert_array_equal(data.read(rows), expected[rows])
        assert data.bands == list(BANDS) and data.image_shape == (5, 12, 12)
        data.close()
    assert kinds == {fits: MemmapCube, parquet: BlockRows, arrow: ArrowRows}
    data = CutoutData([parquet])
    assert data.readers[0].blocks[:2] == [(0, 64), (64, 128)]   # Parquet row groups are the blocks
    # two tables read as one sequence of rows
    both = CutoutData([fits, parquet])
    assert both.num_rows == 600
    np.testing.assert_array_equal(both.read(np.array([310, 2])), expected[[10, 2]])


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch(tmp_path):
    from galtools.train.data import CutoutData

    for path in (write_galaxies(tmp_path / "g.fits", 300, size=8),
                 write_galaxies(tmp_path / "g.parquet", 300, size=8, row_group_size=50)):
        data = CutoutData([path])
        first = data.epoch_order(seed=3, epoch=0, batch_size=16)
        assert sorted(first.tolist()) == list(range(300))
        np.testing.assert_array_equal(first, data.epoch_order(seed=3, epoch=0, batch_size=16))
        assert not np.array_equal(first, data.epoch_order(seed=3, epoch=1, batch_size=16))
        assert not np.array_equal(first, data.epoch_order(seed=4, epoch=0, batch_size=16))


def test_ranks_split_each_global_batch_and_resume_reads_the_same_batches(tmp_path):
    from galtools.train.data import BatchLoader, CutoutData

    data = CutoutData([write_galaxies(tmp_path / "g.fits", 100, size=8)])
    held_out = np.arange(0, 100, 10)
    train_rows = np.setdiff1d(np.arange(100), held_out)
    single = BatchLoader(data, train_rows, 16, seed=1, start_step=0, total_steps=12)
    assert single.steps_per_epoch == 90 // 16
    batches = [b.rows for b in single]
    assert all(len(rows) == 16 for rows in batches)
    assert not np.isin(np.concatenate(batches), held_out).any()
    first_epoch = np.concatenate(batches[:5])
    assert len(np.unique(first_epoch)) == 80                    # no repeats inside an epoch
    ranks = [list(BatchLoader(data, train_rows, 16, 1, 0, 12, rank=r, world=2)) for r in range(2)]
    for step in range(12):
        np.testing.assert_array_equal(np.concatenate([ranks[0][step].rows, ranks[1][step].rows]), batches[step])
        np.testing.assert_array_equal(ranks[1][step].images, data.read(batches[step][8:]))
    resumed = [b.rows for b in BatchLoader(data, train_rows, 16, 1, start_step=7, total_steps=12)]
    for got, expected in zip(resumed, batches[7:]):
        np.testing.assert_array_equal(got, expected)


def test_warmup_cosine_schedule_formula():
    from galtools.train.loop import WarmupCosine

    schedule = WarmupCosine(warmup=4, total=20)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    for step in (4, 9, 13, 19):
        assert schedule(step) == pytest.approx(0.5 * (1 + math.cos(math.pi * (step - 4) / 16)))
    assert schedule(20) == pytest.approx(0.0)


def test_checkpoints_refuse_pickled_code(tmp_path):
    from galtools.errors import BadData
    from galtools.train import checkpoint

    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "step": Payload()}, path)
    with pytest.raises(BadData, match="not a readable gal-train checkpoint"):
        checkpoint.load(str(path))


# -- learning -------------------------------------------------------------------------------------------------
def ridge_probe_r2(features: np.ndarray, target: np.ndarray) -> float:
    """R^2 on the second half of a ridge regression fitted on the first half (standardised features)."""
    half = len(target) // 2
    mean, std = features[:half].mean(0), features[:half].std(0) + 1e-6
    x = np.c_[(features - mean) / std, np.ones(len(features))]
    weights = np.linalg.solve(x[:half].T @ x[:half] + np.eye(x.shape[1]), x[:half].T @ target[:half])
    residual = x[half:] @ weights - target[half:]
    return float(1 - np.mean(residual**2) / np.var(target[half:]))


def embed_with_onnx(onnx_path: str, table: pa.Table) -> np.ndarray:
    """What gal-embed does: centre crop, the model's preprocessing, ONNX Runtime."""
    import onnxruntime as ort

    from galtools.preprocess import Preprocess
    from galtools.train.data import centre_crop
    from galtools.train.export import read_metadata

    meta = read_metadata(onnx_path)
    images = centre_crop(images_of(table), int(meta["galtools.input_size"]))
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"image": Preprocess.from_json(meta["galtools.preprocess"]).apply_numpy(images)})[0]


@pytest.mark.slow  # trains MoCo
def test_moco_loss_falls_and_linear_probe_beats_a_random_encoder(galaxies, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny convolutions: threads cost more than they give, more so on a busy machine
    try:
        learned, baseline, losses = _train_and_probe(galaxies, tmp_path)
    finally:
        torch.set_num_threads(threads)
    # The queue starts as random vectors (easy negatives) and is full of real keys after 128/32 = 4 steps:
    # from then on the loss must fall.
    assert np.mean(losses[-3:]) < losses[1] - 0.05, losses
    assert learned > baseline + 0.1, (learned, baseline)


def _train_and_probe(galaxies, tmp_path):
    from galtools.models import build_encoder
    from galtools.train import TrainConfig, read_metadata, train
    from galtools.train.export import export_encoder

    run = tmp_path / "run"
    config = TrainConfig(inputs=[galaxies], out=str(run), arch="tiny", width=0.5, crop=16, steps=50, batch_size=32,
                         queue_size=128, key_momentum=0.99, lr=0.5, ops="rotate,jitter:max_shift=2",
                         log_every=5, device="cpu", loader_threads=2)
    train(config)
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    losses = [r["loss"] for r in records if "loss" in r]
    assert all(r["images_per_s"] > 0 for r in records) and records[-1]["lr"] == pytest.approx(0.0)  # cosine ends at 0
    assert records[0]["lr"] == pytest.approx(0.5 * 32 / 256 * 0.5 * (1 + math.cos(math.pi * (5 - 2) / 48)))

    table = open_table(galaxies).read_all()
    target = table.column("t_true").to_numpy()
    learned = ridge_probe_r2(embed_with_onnx(str(run / "encoder.onnx"), table), target)
    torch.manual_seed(0)
    random_encoder = build_encoder("tiny", 5, width=0.5)
    export_encoder(random_encoder, str(tmp_path / "random.onnx"), read_metadata(str(run / "encoder.onnx")), 16)
    baseline = ridge_probe_r2(embed_with_onnx(str(tmp_path / "random.onnx"), table), target)
    return learned, baseline, losses

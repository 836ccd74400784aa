"""galtools.preprocess: arcsinh compression + per-band normalisation, numpy and torch paths agree."""
import json
import subprocess
import sys

import numpy as np
import pytest

from galtools.errors import BadData
from galtools.preprocess import Preprocess, border_pixels, robust_sigma

BANDS = ["u", "g", "r", "i", "z"]
SKY_SIGMA = np.array([0.4, 0.1, 0.08, 0.12, 0.3])


def galaxies_on_sky(n=40, size=48, seed=1):
    """Gaussian blobs of varied brightness on Gaussian sky noise of a known level per band."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * 4.0**2))
    flux = rng.lognormal(2.0, 1.0, size=(n, len(BANDS)))
    images = flux[:, :, None, None] * blob + rng.normal(size=(n, len(BANDS), size, size)) * SKY_SIGMA[None, :, None, None]
    return images.astype(np.float32)


def test_fit_measures_the_sky_noise_and_standardises_each_band():
    sample = galaxies_on_sky()
    pre = Preprocess.fit(sample, BANDS)
    # the softening scale is the sky noise, measured on the outer frame despite the bright galaxies
    np.testing.assert_allclose(pre.scale, SKY_SIGMA, rtol=0.05)
    out = pre.apply_numpy(sample)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1.0, rtol=1e-4)


def test_apply_is_the_written_out_formula():
    sample = galaxies_on_sky(n=8)
    pre = Preprocess(tuple(BANDS), (0.5, 0.1, 0.2, 0.3, 1.0), (0.1, 0.2, -0.3, 0.0, 1.5), (1.5, 2.0, 0.7, 1.0, 3.0))
    x = sample.astype(np.float64)
    s, m, d = (np.asarray(v)[None, :, None, None] for v in (pre.scale, pre.mean, pre.std))
    u = x / s
    by_hand = (np.log(u + np.sqrt(u * u + 1.0)) - m) / d  # asinh written out
    np.testing.assert_allclose(pre.apply_numpy(sample), by_hand, rtol=1e-5, atol=1e-5)


def test_numpy_and_torch_give_the_same_numbers():
    torch = pytest.importorskip("torch")
    sample = galaxies_on_sky(n=16)
    pre = Preprocess.fit(sample, BANDS)
    from_numpy = pre.apply_numpy(sample)
    from_torch = pre.apply_torch(torch.from_numpy(sample)).numpy()
    assert from_torch.dtype == np.float32
    np.testing.assert_allclose(from_torch, from_numpy, rtol=1e-6, atol=1e-6)


def test_json_round_trip_is_exact():
    pre = Preprocess.fit(galaxies_on_sky(n=10), BANDS)
    text = pre.to_json()
    assert json.loads(text)["kind"] == "arcsinh-standardise"
    again = Preprocess.from_json(text)
    assert again == pre
    sample = galaxies_on_sky(n=3, seed=5)
    np.testing.assert_array_equal(again.apply_numpy(sample), pre.apply_numpy(sample))


def test_noiseless_band_gets_a_usable_scale():
    sample = galaxies_on_sky(n=6)
    sample[:, 2] = np.clip(sample[:, 2] - 10.0, 0, None)  # sky exactly zero in band r
    pre = Preprocess.fit(sample, BANDS)
    assert pre.scale[2] > 0
    assert np.isfinite(pre.apply_numpy(sample)).all()


@pytest.mark.parametrize("text, fragment", [
    ("not json", "not valid JSON"),
    ('{"kind": "other"}', "kind"),
    ('{"kind": "arcsinh-standardise", "version": 99}', "version"),
    ('{"kind": "arcsinh-standardise", "version": 1, "bands": ["g"], "scale": [1], "mean": [0]}', "incomplete"),
    ('{"kind": "arcsinh-standardise", "version": 1, "bands": ["g", "r"], "scale": [1], "mean": [0], "std": [1]}',
     "one value per band"),
    ('{"kind": "arcsinh-standardise", "version": 1, "bands": ["g"], "scale": [0], "mean": [0], "std": [1]}',
     "positive"),
])
def test_bad_json_is_bad_data(text, fragment):
    with pytest.raises(BadData, match=fragment):
        Preprocess.from_json(text)


def test_wrong_band_count_is_bad_data():
    pre = Preprocess.fit(galaxies_on_sky(n=4), BANDS)
    with pytest.raises(BadData, match="have 3 bands, expected 5"):
        pre.apply_numpy(np.zeros((2, 3, 8, 8), np.float32))


def test_band_indices_select_and_reorder():
    pre = Preprocess(("g", "r", "i"), (1, 1, 1), (0, 0, 0), (1, 1, 1))
    assert pre.band_indices(["u", "g", "r", "i", "z"]) == [1, 2, 3]
    assert pre.band_indices(["i", "r", "g"]) == [2, 1, 0]
    with pytest.raises(BadData, match="lacks band"):
        pre.band_indices(["u", "g", "r"])


def test_border_pixels_and_robust_sigma():
    images = np.arange(2 * 1 * 6 * 6, dtype=np.float32).reshape(2, 1, 6, 6)
    frame = border_pixels(images, border=1)
    assert frame.shape == (2, 1, 20)  # 6*6 - 4*4 pixels in the outer ring
    inner = images[:, :, 1:5, 1:5].reshape(2, 1, -1)
    assert set(frame[0, 0].tolist()).isdisjoint(inner[0, 0].tolist())
    values = np.random.default_rng(0).normal(0, 2.0, size=100_000)
    values[:500] = 1e6  # a bright star does not move it
    assert robust_sigma(values) == pytest.approx(2.0, rel=0.02)


def test_module_does_not_import_torch():
    code = "import sys, galtools.preprocess; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

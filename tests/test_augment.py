"""Each augmentation against a hand-written reference, and determinism of the whole chain."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from galtools.augment import AugmentPipeline, ops  # noqa: E402
from galtools.errors import BadData, UsageProblem  # noqa: E402

BANDS = ["u", "g", "r", "i", "z"]
PIXSCALE = 0.396
SDSS_R = np.array([4.239, 3.303, 2.285, 1.698, 1.263])  # written out again here on purpose


def elliptical_gaussian(size, sigma_major, sigma_minor, angle_deg, centre=None, flux=1000.0):
    """A galaxy-like blob whose major axis points at angle_deg counter-clockwise from +x as displayed (row 0 on top)."""
    c = (size - 1) / 2 if centre is None else centre
    y, x = np.mgrid[:size, :size].astype(np.float64)
    dx, dy_up = x - c, -(y - c)  # displayed "up" is decreasing row index
    t = np.deg2rad(angle_deg)
    along = dx * np.cos(t) + dy_up * np.sin(t)
    across = -dx * np.sin(t) + dy_up * np.cos(t)
    image = np.exp(-0.5 * ((along / sigma_major) ** 2 + (across / sigma_minor) ** 2))
    return flux * image / image.sum()


def batch_of(images_2d, bands=len(BANDS)):
    arr = np.stack([np.stack([im] * bands) for im in images_2d]).astype(np.float32)
    return torch.from_numpy(arr)


def second_moment_fwhm(image):
    """FWHM of a round Gaussian from its second moments: 2.3548 x sqrt((Ixx + Iyy) / 2)."""
    y, x = np.mgrid[:image.shape[0], :image.shape[1]]
    total = image.sum()
    cx, cy = (image * x).sum() / total, (image * y).sum() / total
    var = ((image * ((x - cx) ** 2 + (y - cy) ** 2)).sum() / total) / 2
    return 2 * math.sqrt(2 * math.log(2)) * math.sqrt(var)


def position_angle(image):
    """Major-axis angle from second moments, degrees counter-clockwise from +x as displayed."""
    y, x = np.mgrid[:image.shape[0], :image.shape[1]]
    up = -y
    total = image.sum()
    cx, cu = (image * x).sum() / total, (image * up).sum() / total
    ixx = (image * (x - cx) ** 2).sum() / total
    iuu = (image * (up - cu) ** 2).sum() / total
    ixu = (image * (x - cx) * (up - cu)).sum() / total
    return math.degrees(0.5 * math.atan2(2 * ixu, ixx - iuu))


# ------------------------------------------------------------------------------------------------ rotation
def test_quarter_turns_equal_torch_rot90():
    x = torch.randn(4, 5, 107, 107)
    for k, angle in enumerate((0.0, 90.0, 180.0, 270.0)):
        assert torch.equal(ops.rotate(x, angle), torch.rot90(x, k, dims=(-2, -1)))
    assert torch.equal(ops.rotate(x, [450.0, -90.0, 180.0, 0.0])[1], torch.rot90(x[1], 3, dims=(-2, -1)))
    even = torch.randn(2, 3, 64, 64)
    assert torch.equal(ops.rotate(even, 90.0), torch.rot90(even, 1, dims=(-2, -1)))


def test_interpolated_path_agrees_with_rot90_too():
    """The bilinear path (used for any angle) at 90 degrees: same as rot90 up to float rounding of the grid."""
    x = torch.randn(2, 5, 65, 65)
    matrix = ops.rotation_matrices([90.0, 90.0])
    centre = np.array([32.0, 32.0])
    offset = centre[None, :] - matrix @ centre
    bilinear = ops._warp_bilinear(x, matrix, offset, (65, 65))
    torch.testing.assert_close(bilinear, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4, rtol=0)


def test_pipeline_quarter_turns_are_rot90_of_the_input():
    x = torch.randn(40, 5, 48, 48)
    pipe = AugmentPipeline.from_spec("rotate:step=90", out_size=48, bands=BANDS)
    out = pipe(x, np.arange(40), seed=3)
    turns = []
    for i in range(40):
        matches = [k for k in range(4) if torch.equal(out[i], torch.rot90(x[i], k, dims=(-2, -1)))]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {0, 1, 2, 3}


@pytest.mark.parametrize("angle", [17.0, 45.0, 123.4, 301.0])
def test_rotation_turns_the_galaxy_and_keeps_its_flux(angle):
    size = 71
    galaxy = elliptical_gaussian(size, 6.0, 2.5, angle_deg=10.0)
    rotated = ops.rotate(batch_of([galaxy], bands=1), angle)[0, 0].numpy()
    expected = elliptical_gaussian(size, 6.0, 2.5, angle_deg=10.0 + angle)   # the reference, drawn rotated
    assert rotated.sum() == pytest.approx(galaxy.sum(), rel=0.01)
    assert np.abs(rotated - expected).max() < 0.03 * expected.max()  # bilinear interpolation softens the peak
    turned_by = (position_angle(rotated) - (10.0 + angle) + 90.0) % 180.0 - 90.0  # axes are defined modulo 180
    assert turned_by == pytest.approx(0, abs=0.5)
    # ... and not the other way round
    wrong_way = elliptical_gaussian(size, 6.0, 2.5, angle_deg=10.0 - angle)
    assert np.abs(rotated - wrong_way).max() > 0.1 * expected.max()


def test_rotated_corners_hold_reflected_sky_not_zeros():
    rng = np.random.default_rng(0)
    sky = torch.from_numpy(rng.normal(5.0, 1.0, size=(1, 1, 64, 64)).astype(np.float32))
    rotated = ops.rotate(sky, 45.0)[0, 0]
    corner = rotated[:6, :6]
    assert corner.min() > 0 and abs(float(corner.mean()) - 5.0) < 1.0


def test_flip_is_a_left_right_mirror_and_off_by_default():
    x = torch.randn(6, 5, 32, 32)
    mirrored = AugmentPipeline.from_spec("flip:p=1", out_size=32, bands=BANDS)(x, np.arange(6))
    assert torch.equal(mirrored, torch.flip(x, dims=[-1]))
    unchanged = AugmentPipeline.from_spec("flip:p=0", out_size=32, bands=BANDS)(x, np.arange(6))
    assert torch.equal(unchanged, x) and unchanged.data_ptr() != x.data_ptr()  # a new tensor, never the input
    plain = AugmentPipeline.from_spec("rotate:step=90", out_size=32, bands=BANDS)(x, np.arange(6))
    for i in range(6):  # without flip every view is a pure rotation, never a mirror image
        assert any(torch.equal(plain[i], torch.rot90(x[i], k, dims=(-2, -1))) for k in range(4))


# ------------------------------------------------------------------------------------------------ jitter, scale
def test_jitter_stays_within_J_and_is_an_exact_shifted_crop():
    size, out, shift = 81, 64, 7
    x = torch.zeros(300, 1, size, size)
    x[:, 0, 40, 40] = 1.0   # a point at the input centre
    pipe = AugmentPipeline.from_spec(f"jitter:max_shift={shift}", out_size=out, bands=["r"])
    views = pipe(x, np.arange(300), seed=11)
    start = (size - out) // 2
    offsets = []
    for view in views[:, 0]:
        assert float(view.sum()) == 1.0           # copied, not interpolated
        row, col = divmod(int(view.argmax()), out)
        offsets.append((col - (40 - start), row - (40 - start)))
    offsets = np.array(offsets)
    assert np.abs(offsets).max() <= shift
    assert set(offsets[:, 0]) == set(range(-shift, shift + 1)) == set(offsets[:, 1])


def test_without_jitter_the_output_is_the_centre_crop():
    x = torch.randn(3, 5, 107, 107)
    out = AugmentPipeline.from_spec("", out_size=64, bands=BANDS)(x, np.arange(3))
    assert torch.equal(out, x[:, :, 21:85, 21:85])


def test_scale_enlarges_by_the_factor():
    galaxy = elliptical_gaussian(81, 4.0, 4.0, 0.0)
    pipe = AugmentPipeline.from_spec("scale:min_factor=1.25:max_factor=1.25", out_size=81, bands=["r"])
    scaled = pipe(batch_of([galaxy], bands=1), [0])[0, 0].numpy()
    assert second_moment_fwhm(scaled) == pytest.approx(1.25 * second_moment_fwhm(galaxy), rel=0.02)
    assert scaled.max() == pytest.approx(galaxy.max(), rel=0.02)  # surface brightness is kept


def test_fused_geometry_equals_the_steps_one_after_the_other():
    """rotate then jitter resample once; the result is ops.rotate followed by ops.jitter_crop with the same draws."""
    from galtools.augment import streams

    x = galaxy_batch(6)
    ids = np.arange(6)
    fused = AugmentPipeline.from_spec("rotate,jitter:max_shift=7", out_size=64, bands=BANDS)(x, ids, view=2, seed=8)
    keys = streams.object_keys(ids)
    angles = 360.0 * streams.uniforms(streams.stream_keys(8, keys, 2, "rotate#0"), 1)[:, 0]
    shifts = np.floor(15 * streams.uniforms(streams.stream_keys(8, keys, 2, "jitter#0"), 2)) - 7
    stepwise = ops.jitter_crop(ops.rotate(x, angles), shifts, 64)
    torch.testing.assert_close(fused, stepwise, atol=1e-4 * float(x.abs().max()), rtol=0)


def test_scaling_widens_the_psf_that_the_psf_step_starts_from():
    import galsim

    size = 81
    star = galsim.Gaussian(fwhm=0.8, flux=10.0).drawImage(nx=size, ny=size, scale=PIXSCALE, method="no_pixel").array
    x = torch.from_numpy(np.stack([star] * 5)[None].astype(np.float32))
    scaled_only = AugmentPipeline.from_spec("scale:min_factor=2:max_factor=2", out_size=size, bands=BANDS)(x, [0])
    measured = galsim.Image(scaled_only[0, 2].numpy().astype(np.float64), scale=PIXSCALE).calculateFWHM()
    assert measured == pytest.approx(1.6, rel=0.05)
    pipe = AugmentPipeline.from_spec("scale:min_factor=2:max_factor=2,psf:fwhm_min=2.2:fwhm_max=2.2:fwhm_in=0.8",
                                     out_size=size, bands=BANDS, pixscale=PIXSCALE)
    out = pipe(x, [0])[0, 2].numpy().astype(np.float64)
    assert galsim.Image(out, scale=PIXSCALE).calculateFWHM() == pytest.approx(2.2, rel=0.05)


# ------------------------------------------------------------------------------------------------ reddening
def test_reddening_follows_the_formula_exactly():
    x = torch.from_numpy(np.random.default_rng(1).uniform(1, 10, size=(8, 5, 16, 16)).astype(np.float32))
    pipe = AugmentPipeline.from_spec("redden:ebv_min=0.3:ebv_max=0.3", out_size=16, bands=BANDS)
    ratio = (pipe(x, np.arange(8)) / x).numpy()
    expected = 10 ** (-0.4 * SDSS_R * 0.3)
    np.testing.assert_allclose(ratio, np.broadcast_to(expected[None, :, None, None], ratio.shape), rtol=1e-6)


def test_sampled_reddening_is_one_ebv_per_object_within_range():
    x = torch.ones(200, 5, 8, 8)
    views = AugmentPipeline.from_spec("redden", out_size=8, bands=BANDS)(x, np.arange(200), seed=2)
    ebv = -2.5 * np.log10(views[:, :, 0, 0].numpy().astype(np.float64)) / SDSS_R[None, :]
    np.testing.assert_allclose(ebv, ebv[:, :1].repeat(5, axis=1), atol=1e-6)  # the same E(B-V) in every band
    assert ebv.min() >= -1e-6 and ebv.max() <= 0.5 + 1e-6
    assert ebv[:, 0].max() - ebv[:, 0].min() > 0.4                           # spread over the range


def test_gain_changes_brightness_and_colours_within_their_ranges():
    x = torch.ones(400, 5, 8, 8)
    views = AugmentPipeline.from_spec("gain:mag=0.4:colour=0.1", out_size=8, bands=BANDS)(x, np.arange(400), seed=3)
    magnitudes = -2.5 * np.log10(views[:, :, 0, 0].numpy().astype(np.float64))
    np.testing.assert_allclose(views.numpy(), np.broadcast_to(views[:, :, :1, :1].numpy(), views.shape))  # flat
    assert np.abs(magnitudes).max() <= 0.5 + 1e-5                        # |m| <= 0.4 and |c_b| <= 0.1
    colours = magnitudes - magnitudes.mean(axis=1, keepdims=True)        # each band against the cutout's mean
    assert np.abs(colours).max() <= 0.2 + 1e-5 and colours.std() > 0.03  # the bands move apart, within range
    common = magnitudes.mean(axis=1)
    assert common.max() - common.min() > 0.6                             # the brightness spreads over its range
    again = AugmentPipeline.from_spec("gain:mag=0.4:colour=0.1", out_size=8, bands=BANDS)(x, np.arange(400), seed=3)
    assert torch.equal(views, again)                                     # keyed by object id and seed


def test_dereddening_undoes_the_catalogue_extinction():
    rng = np.random.default_rng(2)
    intrinsic = rng.uniform(1, 10, size=(6, 5, 8, 8))
    ebv = rng.uniform(0, 0.4, size=6)
    observed = intrinsic * 10 ** (-0.4 * SDSS_R[None, :, None, None] * ebv[:, None, None, None])
    pipe = AugmentPipeline.from_spec("deredden", out_size=8, bands=BANDS)
    restored = pipe(torch.from_numpy(observed.astype(np.float32)), np.arange(6), ebv=ebv)
    np.testing.assert_allclose(restored.numpy(), intrinsic, rtol=1e-5)


def test_other_bands_need_their_coefficients():
    with pytest.raises(UsageProblem, match="no default extinction coefficient for band.*Y"):
        AugmentPipeline.from_spec("redden", out_size=8, bands=["g", "r", "Y"])
    pipe = AugmentPipeline.from_spec("redden:ebv_min=0.1:ebv_max=0.1:r=3.2/2.2/1.1", out_size=8, bands=["g", "r", "Y"])
    out = pipe(torch.ones(1, 3, 8, 8), [0])
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), 10 ** (-0.04 * np.array([3.2, 2.2, 1.1])), rtol=1e-6)
    assert "r=3.2/2.2/1.1" in pipe.spec


# ------------------------------------------------------------------------------------------------ noise
def test_noise_reaches_the_target_on_a_blank_image():
    blank = torch.zeros(40, 5, 64, 64)
    target = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    spec = "noise:sigma_min={0}:sigma_max={0}".format("/".join(map(str, target)))
    views = AugmentPipeline.from_spec(spec, out_size=64, bands=BANDS)(blank, np.arange(40), seed=5).numpy()
    measured = views.std(axis=(2, 3))
    assert np.all(np.abs(measured / target[None, :] - 1) < 0.05)
    assert np.all(np.abs(views.mean(axis=(2, 3))) < 0.05 * measured)


def test_noise_adds_the_difference_in_quadrature():
    rng = np.random.default_rng(3)
    sigma_in = np.array([0.5, 0.1, 0.1, 0.2, 0.4])
    sky = torch.from_numpy((rng.normal(size=(40, 5, 64, 64)) * sigma_in[None, :, None, None]).astype(np.float32))
    given = "noise:factor_min=2:factor_max=2:sigma_in=" + "/".join(map(str, sigma_in))
    total = AugmentPipeline.from_spec(given, out_size=64, bands=BANDS)(sky, np.arange(40), seed=4)
    added = (total - sky).numpy().std(axis=(2, 3))
    np.testing.assert_allclose(added.mean(axis=0), math.sqrt(3) * sigma_in, rtol=0.02)  # sqrt(2^2 - 1^2)
    assert np.all(np.abs(total.numpy().std(axis=(2, 3)) / (2 * sigma_in) - 1) < 0.05)
    # the input noise measured on the cutouts' frames instead of given: the same within the estimate's precision
    measured = AugmentPipeline.from_spec("noise:factor_min=2:factor_max=2", out_size=64, bands=BANDS)(
        sky, np.arange(40), seed=4).numpy().std(axis=(2, 3)) / (2 * sigma_in)
    assert abs(measured.mean() - 1) < 0.01 and np.all(np.abs(measured - 1) < 0.08)


def test_sampled_noise_targets_lie_in_range():
    blank = torch.zeros(60, 5, 64, 64)
    pipe = AugmentPipeline.from_spec("noise:sigma_min=0.1/0.2/0.3/0.4/0.5:sigma_max=0.2/0.4/0.6/0.8/1.0",
                                     out_size=64, bands=BANDS)
    ratio = pipe(blank, np.arange(60), seed=5).numpy().std(axis=(2, 3)) / np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    assert ratio.min() > 0.95 and ratio.max() < 2 * 1.05 and ratio.max() - ratio.min() > 0.8


def test_noise_is_not_added_above_the_target():
    x = torch.from_numpy(np.random.default_rng(6).normal(size=(4, 5, 32, 32)).astype(np.float32))
    pipe = AugmentPipeline.from_spec("noise:sigma_in=1:factor_min=0.5:factor_max=1", out_size=32, bands=BANDS)
    assert torch.equal(pipe(x, np.arange(4)), x)


def test_noise_estimate_ignores_the_galaxy():
    rng = np.random.default_rng(7)
    galaxy = elliptical_gaussian(64, 8.0, 5.0, 30.0, flux=1e5)
    images = galaxy[None, None] + rng.normal(0, 0.3, size=(20, 5, 64, 64))
    estimate = ops.estimate_noise(torch.from_numpy(images.astype(np.float32)), border=4).numpy()
    assert np.all(np.abs(estimate / 0.3 - 1) < 0.08) and abs(estimate.mean() / 0.3 - 1) < 0.01


# ------------------------------------------------------------------------------------------------ PSF
def test_blurring_a_point_source_gives_the_target_fwhm():
    import galsim

    size = 65
    point = np.zeros((size, size))
    point[32, 32] = 100.0
    target = 1.6  # arcsec
    pipe = AugmentPipeline.from_spec(f"psf:fwhm_min={target}:fwhm_max={target}:fwhm_in=0", out_size=size,
                                     bands=BANDS, pixscale=PIXSCALE)
    blurred = pipe(batch_of([point]), [0])[0].numpy()
    for band in blurred:
        assert band.sum() == pytest.approx(100.0, rel=0.01)                       # flux kept
        measured = galsim.Image(band.astype(np.float64), scale=PIXSCALE).calculateFWHM()
        assert measured == pytest.approx(target, rel=0.05)
        assert second_moment_fwhm(band) * PIXSCALE == pytest.approx(target, rel=0.05)


def test_psf_adds_in_quadrature_from_the_catalogue_psf():
    import galsim

    size = 65
    catalogue_fwhm = np.array([1.4, 1.1, 1.0, 0.9, 2.2])  # arcsec; z is already worse than the target
    stars = []
    for fwhm in catalogue_fwhm:
        stars.append(galsim.Gaussian(fwhm=fwhm, flux=50.0).drawImage(nx=size, ny=size, scale=PIXSCALE,
                                                                     method="no_pixel").array)
    x = torch.from_numpy(np.stack(stars)[None].astype(np.float32))
    target = 1.8
    pipe = AugmentPipeline.from_spec(f"psf:fwhm_min={target}:fwhm_max={target}", out_size=size, bands=BANDS,
                                     pixscale=PIXSCALE)
    assert pipe.needs == {"psf_fwhm"}
    blurred = pipe(x, [0], psf_fwhm=catalogue_fwhm[None, :])[0].numpy()
    for b in range(4):
        measured = galsim.Image(blurred[b].astype(np.float64), scale=PIXSCALE).calculateFWHM()
        assert measured == pytest.approx(target, rel=0.05)
        assert blurred[b].sum() == pytest.approx(50.0, rel=0.01)
    assert np.array_equal(blurred[4], stars[4].astype(np.float32))  # worse than the target: left alone


def test_blur_keeps_flux_away_from_edges_and_sampled_targets_lie_in_range():
    size = 81
    galaxies = [elliptical_gaussian(size, 3.0 + i % 3, 2.0, 20.0 * i) for i in range(30)]
    x = batch_of(galaxies)
    pipe = AugmentPipeline.from_spec("psf:fwhm_min=1.2:fwhm_max=2.4:fwhm_in=0", out_size=size, bands=BANDS,
                                     pixscale=PIXSCALE)
    blurred = pipe(x, np.arange(30), seed=9).numpy()
    np.testing.assert_allclose(blurred.sum(axis=(2, 3)), x.numpy().sum(axis=(2, 3)), rtol=0.01)
    # a point source through the same pipeline and ids shows the sampled targets: in range and spread out
    points = torch.zeros(30, 5, 65, 65)
    points[:, :, 32, 32] = 1.0
    psfs = AugmentPipeline.from_spec("psf:fwhm_min=1.2:fwhm_max=2.4:fwhm_in=0", out_size=65, bands=BANDS,
                                     pixscale=PIXSCALE)(points, np.arange(30), seed=9).numpy()
    fwhm = np.array([second_moment_fwhm(p[2]) * PIXSCALE for p in psfs])
    assert fwhm.min() > 1.2 * 0.97 and fwhm.max() < 2.4 * 1.03 and fwhm.max() - fwhm.min() > 0.6


def test_gaussian_kernels_have_the_requested_variance():
    sigma = np.array([0.0, 0.8, 1.5, 3.0])
    kernels = ops.gaussian_kernels(sigma, radius=12)
    offsets = np.arange(-12, 13)
    np.testing.assert_allclose(kernels.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose((kernels * offsets**2).sum(axis=1), sigma**2, rtol=2e-3, atol=1e-12)


# ------------------------------------------------------------------------------------------------ the chain
CHAIN = "rotate,scale,jitter:max_shift=7,psf:fwhm_in=1.0,redden:ebv_max=0.5,noise"


def galaxy_batch(n=12, size=107, seed=0):
    rng = np.random.default_rng(seed)
    images = [elliptical_gaussian(size, rng.uniform(3, 8), rng.uniform(1.5, 3), rng.uniform(0, 180))
              for _ in range(n)]
    noisy = np.stack([np.stack([im * f for f in (0.3, 1, 1.5, 2, 2.2)]) for im in images])
    noisy += rng.normal(0, 0.05, size=noisy.shape)
    return torch.from_numpy(noisy.astype(np.float32))


def test_the_chain_is_the_same_whatever_the_batch_composition():
    x = galaxy_batch()
    ids = np.arange(1000, 1012)
    pipe = AugmentPipeline.from_spec(CHAIN, out_size=64, bands=BANDS, pixscale=PIXSCALE)
    full = pipe(x, ids, view=1, seed=42)
    assert full.shape == (12, 5, 64, 64) and full.dtype == torch.float32
    # the same draws per object; the pixels equal to float32 rounding (the PSF convolution's kernel, chosen by
    # the batch shape, may round differently on another CPU)
    close = dict(rtol=0, atol=1e-5 * float(full.abs().max()))
    order = np.array([7, 3, 11, 0])
    partial = pipe(x[order], ids[order], view=1, seed=42)
    torch.testing.assert_close(partial, full[order], **close)
    with_strangers = pipe(torch.cat([galaxy_batch(5, seed=9), x[5:6]]), np.r_[np.arange(5), ids[5]], view=1, seed=42)
    torch.testing.assert_close(with_strangers[-1], full[5], **close)
    # another view, another seed or another id is another augmentation
    assert not torch.allclose(pipe(x, ids, view=0, seed=42), full)
    assert not torch.allclose(pipe(x, ids, view=1, seed=43), full)
    assert not torch.allclose(pipe(x, ids + 1, view=1, seed=42), full)


def test_string_ids_and_numpy_input():
    x = galaxy_batch(3)
    pipe = AugmentPipeline.from_spec(CHAIN, out_size=64, bands=BANDS, pixscale=PIXSCALE)
    ids = np.array(["J0001", "J0002", "J0003"])
    a = pipe(x.numpy(), ids, seed=1)
    b = pipe(x[1:], ids[1:], seed=1)
    torch.testing.assert_close(a[1:], b, rtol=0, atol=1e-5 * float(a.abs().max()))   # float32 rounding


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cpu_and_gpu_agree():
    x = galaxy_batch()
    pipe = AugmentPipeline.from_spec(CHAIN, out_size=64, bands=BANDS, pixscale=PIXSCALE)
    on_cpu = pipe(x, np.arange(12), seed=5)
    on_gpu = pipe(x.cuda(), np.arange(12), seed=5).cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=1e-4 * float(on_cpu.abs().max()), rtol=1e-4)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_are_clear_errors():
    pipe = AugmentPipeline.from_spec("rotate,jitter", out_size=64, bands=BANDS)
    with pytest.raises(BadData, match="smaller than the output size 64"):
        pipe(torch.zeros(2, 5, 48, 48), [0, 1])
    with pytest.raises(BadData, match="have 3 bands"):
        pipe(torch.zeros(2, 3, 64, 64), [0, 1])
    with pytest.raises(BadData, match="3 object ids for 2 cutouts"):
        pipe(torch.zeros(2, 5, 64, 64), [0, 1, 2])
    with pytest.raises(UsageProblem, match="pixel scale"):
        AugmentPipeline.from_spec("psf", out_size=64, bands=BANDS)
    psf = AugmentPipeline.from_spec("psf", out_size=64, bands=BANDS, pixscale=PIXSCALE)
    with pytest.raises(UsageProblem, match="input PSF"):
        psf(torch.zeros(2, 5, 64, 64), [0, 1])
    with pytest.raises(BadData, match="psf_fwhm holds NaN"):
        psf(torch.zeros(2, 5, 64, 64), [0, 1], psf_fwhm=[1.0, float("nan")])
    deredden = AugmentPipeline.from_spec("deredden", out_size=64, bands=BANDS)
    assert deredden.needs == {"ebv"}
    with pytest.raises(UsageProblem, match="catalogue E\\(B-V\\)"):
        deredden(torch.zeros(2, 5, 64, 64), [0, 1])
    with pytest.raises(BadData, match="ebv has 1 values for 2"):
        deredden(torch.zeros(2, 5, 64, 64), [0, 1], ebv=[0.1])
    with pytest.raises(UsageProblem, match="3 values for 5 bands"):
        AugmentPipeline.from_spec("noise:sigma_in=1/2/3", out_size=64, bands=BANDS)

"""gal-sim's library: physics checked against formulas written out here, astropy and GalSim itself."""
from __future__ import annotations

import os

import numpy as np
import pytest

galsim = pytest.importorskip("galsim")

from galtools.sim import BANDS, EXTINCTION_COEFFS, SimConfig, object_scene, render_range  # noqa: E402
from galtools.sim import cosmology  # noqa: E402
from galtools.sim.filters import response_table, sdss_bandpass  # noqa: E402
from galtools.sim.photometry import SED_TYPES, kcorrection, mag_to_nanomaggy  # noqa: E402
from galtools.sim.population import build_bulge_disk, draw_scene  # noqa: E402
from galtools.sim.profiles import combined_half_light_radius  # noqa: E402
from galtools.sim.render import render_scene  # noqa: E402
from galtools.sim.scene import PointSource, Scene  # noqa: E402

PIXSCALE = 0.396
R, G = BANDS.index("r"), BANDS.index("g")


@pytest.fixture(scope="module")
def clean_sample():
    """Normal galaxies only (no anomalies, no neighbours): 160 cutouts of 64x64."""
    return render_range(SimConfig(seed=11, size=64, anomaly_fraction=0.0, neighbour_rate=0.0), 0, 160)


# ---------------------------------------------------------------------------------- ingredients

def test_distances_match_astropy():
    from astropy.cosmology import FlatLambdaCDM

    reference = FlatLambdaCDM(H0=70, Om0=0.3, Tcmb0=0)
    z = np.array([0.01, 0.1, 0.25, 0.4, 1.5])
    np.testing.assert_allclose(cosmology.luminosity_distance_mpc(z), reference.luminosity_distance(z).value, rtol=1e-6)
    np.testing.assert_allclose(cosmology.angular_diameter_distance_mpc(z),
                               reference.angular_diameter_distance(z).value, rtol=1e-6)
    np.testing.assert_allclose(cosmology.distance_modulus(z), reference.distmod(z).value, atol=1e-5)


def test_sdss_bandpasses_have_the_published_effective_wavelengths():
    # SDSS DR7 documentation: lambda_eff = 3551, 4686, 6166, 7480, 8932 Angstrom
    published_nm = [355.1, 468.6, 616.6, 748.0, 893.2]
    for band, expected in zip(BANDS, published_nm):
        assert abs(sdss_bandpass(band).effective_wavelength / expected - 1) < 0.012, band


def _hand_ab_magnitude(wave_a, fnu, band):
    """AB magnitude of an f_nu spectrum through a photon-counting response: int f_nu R dlnl / int 3631 Jy R dlnl."""
    w, response = response_table(band)
    f = np.interp(w, wave_a, fnu)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz   # numpy 2 renamed trapz
    return -2.5 * np.log10(trapezoid(f * response / w, w) / trapezoid(3631e-23 * response / w, w))


@pytest.mark.parametrize("z", [0.05, 0.2, 0.4])
def test_kcorrections_match_a_hand_written_integral(z):
    """K_br(z) = m_b(observed) - M_r - DM (Hogg et al. 2002 eq. 13), with f_nu,obs = (1+z) L_nu(nu (1+z))."""
    wave, flambda = np.loadtxt(os.path.join(galsim.meta_data.share_dir, "SEDs", "CWW_E_ext.sed")).T
    fnu_rest = flambda * wave**2  # constant factors cancel in the difference
    rest_r = _hand_ab_magnitude(wave, fnu_rest, "r")
    expected = [_hand_ab_magnitude(wave * (1 + z), (1 + z) * fnu_rest, band) - rest_r for band in BANDS]
    np.testing.assert_allclose(kcorrection(SED_TYPES.index("E"), z), expected, atol=0.01)


def test_combined_half_light_radius_matches_galsim_profiles():
    """Half of the light of GalSim's own bulge + disk profiles, integrated numerically (2 pi r I(r) dr)."""
    bulge = galsim.DeVaucouleurs(half_light_radius=0.8, trunc=6.4)
    disk = galsim.Exponential(half_light_radius=2.0)
    radius = np.concatenate([[0.0], np.geomspace(1e-5, 100.0, 6000)])
    brightness = np.array([0.3 * bulge.xValue(galsim.PositionD(r, 0)) + 0.7 * disk.xValue(galsim.PositionD(r, 0))
                           for r in radius])
    integrand = 2 * np.pi * radius * brightness
    enclosed = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(radius))])
    reference = np.interp(0.5, enclosed / enclosed[-1], radius)
    assert combined_half_light_radius(0.3, 0.8, 2.0) == pytest.approx(reference, rel=2e-3)


def test_fast_renderer_matches_galsim_drawimage():
    """The k-space fast path against GalSim's plain Convolve().drawImage() of the same scenes."""
    config = SimConfig(seed=3, size=64, anomaly_fraction=0.0, neighbour_rate=0.5)
    for index in range(12):
        scene, _ = object_scene(config, index)
        fast = render_scene(scene, 64, PIXSCALE, noise=False, method="kspace")
        reference = render_scene(scene, 64, PIXSCALE, noise=False, method="galsim")
        assert np.abs(fast - reference).max() < 3e-3 * np.abs(reference).max(), index
        np.testing.assert_allclose(fast.sum(axis=(1, 2)), reference.sum(axis=(1, 2)), rtol=5e-3)


# ------------------------------------------------------------------------------------ population

def test_redshifts_and_magnitudes_follow_the_main_galaxy_sample():
    labels = [draw_scene(np.random.default_rng([7, k]), 64, PIXSCALE, 0.0, 0.0).labels for k in range(800)]
    z = np.array([row["z_true"] for row in labels])
    mag_r = np.array([row["mag_r"] for row in labels])
    assert np.all(mag_r < 17.77) and np.all(mag_r >= 14.0)
    assert np.mean((z > 0.02) & (z < 0.25)) > 0.9
    assert 0.07 < np.median(z) < 0.13  # SDSS MGS median ~0.1
    assert z.max() < 0.45
    classes = {row["morph_class"] for row in labels}
    assert classes == {"elliptical", "disk", "edge_on"}
    for row in labels:  # the class is what its bulge fraction and shape say
        assert (row["morph_class"] == "elliptical") == (row["bulge_frac"] >= 0.6)


def test_every_anomaly_kind_is_drawn_at_the_requested_rate():
    from galtools.sim import ANOMALY_KINDS

    config = SimConfig(seed=5, anomaly_fraction=0.3)
    kinds = [object_scene(config, k)[0].labels["anomaly_kind"] for k in range(700)]
    anomalous = np.mean([kind != "none" for kind in kinds])
    assert abs(anomalous - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 700)
    assert set(kinds) == {"none", *ANOMALY_KINDS}


# --------------------------------------------------------------------------------------- physics

def test_elliptical_g_minus_r_reddens_with_redshift(clean_sample):
    labels = clean_sample.labels
    flux = clean_sample.images.sum(axis=(2, 3)).astype(np.float64)
    elliptical = (labels["sed_type"] == "E") & (flux[:, G] > 0)
    assert elliptical.sum() >= 30
    z = labels["z_true"][elliptical]
    colour = -2.5 * np.log10(flux[elliptical, G] / flux[elliptical, R])
    edges = np.quantile(z, [0, 1 / 3, 2 / 3, 1])
    means = [colour[(z >= lo) & (z <= hi)].mean() for lo, hi in zip(edges[:-1], edges[1:])]
    assert means[0] < means[1] < means[2], means
    # and the slope is the template's: ~ +2 mag of g-r per unit z near z = 0.1
    slope = np.polyfit(z, colour, 1)[0]
    assert 1.0 < slope < 4.5


def test_total_flux_matches_catalogue_magnitude(clean_sample):
    labels = clean_sample.labels
    compact = labels["half_light_arcsec"] < 2.0  # most of the light inside the 25" stamp
    assert compact.sum() >= 20
    for b, band in enumerate(BANDS):
        expected = mag_to_nanomaggy(labels[f"mag_{band}"] + EXTINCTION_COEFFS[b] * labels["ebv"])[compact]
        measured = clean_sample.images[compact, b].sum(axis=(1, 2)).astype(np.float64)
        noise = np.sqrt(64 * 64) * labels[f"sky_sigma_{band}"][compact] + 0.02 * expected
        assert np.all(measured - expected < 5 * noise), band
        assert np.all(measured - expected > -5 * noise - 0.05 * expected), band  # light beyond the stamp
        # pooled over objects: the sky noise of the sum shrinks, light outside the stamp stays ~1-2%
        pooled_noise = np.sqrt(np.sum((np.sqrt(64 * 64) * labels[f"sky_sigma_{band}"][compact]) ** 2))
        tolerance = 0.03 + 4 * pooled_noise / expected.sum()
        assert measured.sum() / expected.sum() == pytest.approx(1.0, abs=tolerance), band


def _moffat_pixels(fwhm, beta, cx, cy, size, sub=3):
    """A unit-flux circular Moffat integrated over pixels (sub x sub samples), written out here."""
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    steps = (np.arange(size * sub) + 0.5) / sub
    x, y = np.meshgrid(steps - cx, steps - cy)
    profile = (1 + (x**2 + y**2) / alpha**2) ** -beta
    pixels = profile.reshape(size, sub, size, sub).sum(axis=(1, 3))
    return pixels / pixels.sum()


def _fit_fwhm(stamp):
    """PSF FWHM (pixels) of a star by least squares over FWHM and beta, flux solved linearly."""
    size = stamp.shape[0]
    weights = np.clip(stamp, 0, None)
    cy, cx = [float((weights * grid).sum() / weights.sum()) for grid in np.mgrid[:size, :size] + 0.5]
    best = (np.inf, None)
    for beta in (2.5, 3.0, 3.5, 4.5, 6.0):
        for fwhm in np.arange(1.5, 7.0, 0.02):
            model = _moffat_pixels(fwhm, beta, cx, cy, size)
            flux = (model * stamp).sum() / (model * model).sum()
            residual = ((stamp - flux * model) ** 2).sum()
            best = min(best, (residual, fwhm))
    return best[1]


@pytest.mark.slow
def test_star_psf_fwhm_matches_its_label():
    config = SimConfig(seed=2, size=64, anomaly_fraction=1.0, neighbour_rate=0.0)
    stars = [k for k in range(80) if object_scene(config, k)[0].labels["anomaly_kind"] == "star"][:2]
    assert len(stars) == 2
    chunk_images = [render_range(config, k, k + 1) for k in stars]
    for chunk in chunk_images:
        for b, band in enumerate(BANDS):
            stamp = chunk.images[0, b, 20:44, 20:44].astype(np.float64)
            measured = _fit_fwhm(stamp) * PIXSCALE
            label = float(chunk.labels[f"psf_fwhm_{band}"][0])
            assert abs(measured / label - 1) < 0.10, (band, measured, label)


def test_extinction_dims_u_more_than_z_by_the_coefficient_ratio():
    fluxes = {}
    for ebv in (0.0, 0.2):
        rng = np.random.default_rng(4)  # the same galaxy twice, only E(B-V) differs
        galaxy, _ = build_bulge_disk(rng, 1, 0.08, -21.0, 0.3, ebv)
        scene = Scene(sources=[galaxy], psf_fwhm=np.full(5, 1.3))
        fluxes[ebv] = render_scene(scene, 64, PIXSCALE, noise=False).sum(axis=(1, 2)).astype(np.float64)
    dimming = -2.5 * np.log10(fluxes[0.2] / fluxes[0.0])
    u, z = BANDS.index("u"), BANDS.index("z")
    assert dimming[u] > dimming[z] > 0
    assert dimming[u] / dimming[z] == pytest.approx(4.239 / 1.263, rel=2e-3)
    np.testing.assert_allclose(dimming, 0.2 * np.array([4.239, 3.303, 2.285, 1.698, 1.263]), rtol=2e-3)


def test_every_kind_renders_finite_pixels_and_its_signature():
    config = SimConfig(seed=9, size=64, anomaly_fraction=1.0, neighbour_rate=0.3)
    chunk = render_range(config, 0, 40)
    assert np.isfinite(chunk.images).all()
    kinds = chunk.labels["anomaly_kind"]
    assert len(set(kinds)) >= 6
    sky = np.stack([chunk.labels[f"sky_sigma_{band}"] for band in BANDS], axis=1)
    for k, kind in enumerate(kinds):
        image = chunk.images[k]
        if kind == "bad_column":  # one column of one band stands out from its neighbours
            column_means = image.mean(axis=1)  # (bands, columns)
            neighbour_median = np.median(column_means, axis=1, keepdims=True)
            assert (np.abs(column_means - neighbour_median) / sky[k][:, None]).max() > 3
        if kind == "star":
            assert chunk.labels["half_light_arcsec"][k] == 0 and chunk.labels["z_true"][k] == 0
        if kind == "high_z":
            assert chunk.labels["z_true"][k] > 0.45


def test_same_object_whatever_the_chunking():
    config = SimConfig(seed=1, size=64, anomaly_fraction=0.2)
    whole = render_range(config, 0, 6)
    part = render_range(config, 4, 6)
    assert whole.images[4:].tobytes() == part.images.tobytes()
    assert list(whole.labels["z_true"][4:]) == list(part.labels["z_true"])


def test_point_source_lands_where_galsim_puts_it():
    star = PointSource(flux=np.full(5, 100.0), x=0.3, y=-0.2)
    scene = Scene(sources=[star], psf_fwhm=np.full(5, 1.2))
    fast = render_scene(scene, 64, PIXSCALE, noise=False)[R]
    psf = galsim.Moffat(beta=3.5, fwhm=1.2)
    reference = (psf * 100.0).shift(0.3, -0.2).drawImage(nx=64, ny=64, scale=PIXSCALE).array
    assert np.abs(fast - reference).max() < 2e-3 * reference.max()

"""Random draws of what one SDSS-like cutout contains: the central galaxy (or anomaly), field
neighbours and the observing conditions, with the true labels written alongside.

Galaxies follow a flux-limited sample like the SDSS Main Galaxy Sample: type, redshift (uniform in
comoving volume) and rest-frame absolute magnitude (a Schechter function per type) are drawn
jointly and kept when the extinction-corrected r magnitude is inside MAG_R_LIMITS, so the
redshift distribution (median ~0.1, tail to ~0.35) and the type mix with redshift follow from the
selection instead of being imposed. Sizes follow the size-luminosity relations of Shen et al.
(2003). Every draw uses the one numpy Generator of the object, so an object depends only on
(seed, object index).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from galtools.sim import cosmology
from galtools.sim.filters import BANDS
from galtools.sim.photometry import (
    EXTINCTION_COEFFS,
    SED_TYPES,
    kcorrection,
    mag_to_nanomaggy,
    sky_noise_model,
    star_colours,
)
from galtools.sim.profiles import combined_half_light_radius
from galtools.sim.scene import (
    BadColumn,
    BulgeDisk,
    CosmicRay,
    LensedSource,
    PointSource,
    SatelliteTrail,
    Scene,
)

ANOMALY_KINDS = ("star", "satellite_trail", "cosmic_ray", "bad_column", "merger", "lens", "high_z")
MORPH_CLASSES = ("elliptical", "disk", "edge_on")

MAG_R_LIMITS = (14.0, 17.77)  # SDSS MGS: extinction-corrected r < 17.77; bright end ~14 (saturation)
Z_RANGE = (0.005, 0.45)  # the selection leaves almost nothing beyond 0.4
ABS_MAG_RANGE = (-24.5, -16.0)
LUMINOSITY_EVOLUTION_Q = 1.6  # M*(z) = M*(0.1) - Q (z - 0.1), Blanton et al. (2003) for SDSS r
TYPE_PRIOR = np.array([0.15, 0.4, 0.3, 0.15])  # E, Sbc, Scd, Im per unit volume
# Schechter (M*, alpha) per type in rest-frame r at z = 0.1 (AB, H0 = 70): bright red galaxies, faint blue ones.
SCHECHTER = np.array([[-21.3, -0.6], [-21.2, -1.0], [-20.8, -1.1], [-20.3, -1.4]])
BULGE_FRAC_RANGE = np.array([[0.7, 1.0], [0.1, 0.6], [0.0, 0.2], [0.0, 0.05]])
DISK_THICKNESS = np.array([0.3, 0.15, 0.15, 0.3])  # intrinsic axis ratio of an edge-on disk
ELLIPTICAL_BULGE_FRAC = 0.6  # bulge_frac at or above this: "elliptical"
EDGE_ON_INCLINATION_DEG = 70.0  # a disk galaxy seen at or beyond this: "edge_on"
PSF_FWHM_RANGE = (0.9, 2.2)  # arcsec
FOOTPRINT_RA = (110.0, 260.0)  # roughly the SDSS Legacy northern cap
FOOTPRINT_DEC = (-5.0, 65.0)
_EARLY_TYPE = 0


@lru_cache(maxsize=1)
def _inverse_cdfs():
    """Tabulated inverse CDFs: redshift (uniform in comoving volume) and M_r per type."""
    z_grid = np.linspace(Z_RANGE[0], Z_RANGE[1], 4001)
    z_cdf = np.cumsum(cosmology.comoving_volume_density(z_grid))
    z_cdf = (z_cdf - z_cdf[0]) / (z_cdf[-1] - z_cdf[0])
    m_grid = np.linspace(ABS_MAG_RANGE[0], ABS_MAG_RANGE[1], 4001)
    m_cdfs = []
    for m_star, alpha in SCHECHTER:
        x = 10.0 ** (0.4 * (m_star - m_grid))
        density = x ** (alpha + 1.0) * np.exp(-x)  # per unit magnitude
        cdf = np.cumsum(density)
        m_cdfs.append((cdf - cdf[0]) / (cdf[-1] - cdf[0]))
    return z_grid, z_cdf, m_grid, np.array(m_cdfs)


def _draw_redshift(rng, n):
    z_grid, z_cdf, _, _ = _inverse_cdfs()
    return np.interp(rng.random(n), z_cdf, z_grid)


def _draw_abs_mag(rng, type_index):
    _, _, m_grid, m_cdfs = _inverse_cdfs()
    u = rng.random(len(type_index))
    abs_mag = np.empty(len(type_index))
    for t in range(len(m_cdfs)):
        chosen = type_index == t
        abs_mag[chosen] = np.interp(u[chosen], m_cdfs[t], m_grid)
    return abs_mag


def _draw_bulge_frac(rng, type_index):
    low, high = BULGE_FRAC_RANGE[type_index].T
    return low + (high - low) * rng.random(len(type_index))


def composite_magnitudes(abs_mag_r, z, type_index, bulge_frac):
    """Extinction-free apparent ugriz of a galaxy whose bulge has the E spectrum and whose disk has
    its type's spectrum; returns (mags (..., 5), bulge share of the flux per band (..., 5))."""
    abs_mag_r, z, type_index, bulge_frac = np.broadcast_arrays(abs_mag_r, z, type_index, bulge_frac)
    bulge_light = bulge_frac[..., None] * 10.0 ** (-0.4 * kcorrection(np.zeros_like(type_index), z))
    disk_light = (1.0 - bulge_frac[..., None]) * 10.0 ** (-0.4 * kcorrection(type_index, z))
    mags = (abs_mag_r + cosmology.distance_modulus(z))[..., None] - 2.5 * np.log10(bulge_light + disk_light)
    return mags, bulge_light / (bulge_light + disk_light)


def draw_flux_limited_galaxy(rng, batch=512, max_batches=1000):
    """(type index, z, M_r, bulge_frac) of one galaxy passing the MGS selection, by rejection."""
    for _ in range(max_batches):
        type_index = rng.choice(len(SED_TYPES), size=batch, p=TYPE_PRIOR)
        z = _draw_redshift(rng, batch)
        # galaxies were brighter in the past: the luminosity function slides with z
        abs_mag = _draw_abs_mag(rng, type_index) - LUMINOSITY_EVOLUTION_Q * (z - 0.1)
        bulge_frac = _draw_bulge_frac(rng, type_index)
        mags, _ = composite_magnitudes(abs_mag, z, type_index, bulge_frac)
        mag_r = mags[:, BANDS.index("r")]
        accepted = np.flatnonzero((mag_r >= MAG_R_LIMITS[0]) & (mag_r < MAG_R_LIMITS[1]))
        if accepted.size:
            k = accepted[0]
            return int(type_index[k]), float(z[k]), float(abs_mag[k]), float(bulge_frac[k])
    raise RuntimeError("no galaxy passed the magnitude limit")  # unreachable with these priors


def draw_half_light_kpc(rng, abs_mag_r, early_type: bool) -> float:
    """Shen et al. (2003) r-band size-luminosity relations with their log-normal scatter."""
    if early_type:
        log_r = -0.4 * 0.65 * abs_mag_r - 5.06
        sigma_ln = 0.34
    else:
        m0 = -20.52
        log_r = -0.4 * 0.21 * abs_mag_r + (0.53 - 0.21) * np.log10(1.0 + 10.0 ** (-0.4 * (abs_mag_r - m0))) - 1.31
        sigma_ln = 0.25 + (0.48 - 0.25) / (1.0 + 10.0 ** (-0.8 * (abs_mag_r - m0)))
    return float(10.0**log_r * np.exp(sigma_ln * rng.standard_normal()))


def build_bulge_disk(rng, type_index, z, abs_mag_r, bulge_frac, ebv, x=0.0, y=0.0):
    """A BulgeDisk with shape and fluxes, plus the labels describing it."""
    mags, bulge_share = composite_magnitudes(abs_mag_r, z, type_index, bulge_frac)
    observed_flux = mag_to_nanomaggy(mags + ebv * EXTINCTION_COEFFS)
    half_light = float(cosmology.kpc_to_arcsec(draw_half_light_kpc(rng, abs_mag_r, type_index == _EARLY_TYPE), z))
    half_light = max(half_light, 0.1)
    # Bulges are smaller than disks; in ellipticals the "disk" is a faint, wider envelope.
    bulge_to_disk_size = rng.uniform(0.45, 0.85) if type_index == _EARLY_TYPE else rng.uniform(0.2, 0.5)
    disk_hlr = half_light / float(combined_half_light_radius(bulge_frac, bulge_to_disk_size, 1.0))
    bulge_hlr = bulge_to_disk_size * disk_hlr
    cos_incl = rng.random()
    thickness = DISK_THICKNESS[type_index]
    disk_q = float(np.sqrt(cos_incl**2 * (1.0 - thickness**2) + thickness**2))
    bulge_q = float(np.clip(rng.normal(0.75, 0.15), 0.35, 1.0)) if type_index == _EARLY_TYPE else rng.uniform(0.65, 1.0)
    pa_deg = rng.uniform(0.0, 180.0)
    galaxy = BulgeDisk(
        bulge_flux=observed_flux * bulge_share, disk_flux=observed_flux * (1.0 - bulge_share),
        bulge_hlr=bulge_hlr, disk_hlr=disk_hlr, bulge_q=bulge_q, disk_q=disk_q, pa_deg=pa_deg, x=x, y=y)
    inclination = np.degrees(np.arccos(cos_incl))
    if bulge_frac >= ELLIPTICAL_BULGE_FRAC:
        morph_class = "elliptical"
    elif inclination >= EDGE_ON_INCLINATION_DEG:
        morph_class = "edge_on"
    else:
        morph_class = "disk"
    labels = {
        "z_true": z, "sed_type": SED_TYPES[type_index], "bulge_frac": bulge_frac, "morph_class": morph_class,
        "half_light_arcsec": half_light, "axis_ratio": bulge_q if bulge_frac >= 0.5 else disk_q,
        "position_angle_deg": pa_deg, "abs_mag_r": abs_mag_r,
        **{f"mag_{band}": float(mags[b]) for b, band in enumerate(BANDS)},
    }
    return galaxy, labels


def draw_conditions(rng, pixscale: float):
    """Per-band PSF FWHM, sky level, sky noise and gain of one SDSS field, and its E(B-V)."""
    base_sky, gain = sky_noise_model(pixscale)
    wavelength = np.array([3551.0, 4686.0, 6166.0, 7480.0, 8932.0])
    # Kolmogorov seeing scales as lambda^-0.2; the u band is also worse from its focus/atmosphere.
    fwhm_r = float(np.clip(1.3 * np.exp(0.15 * rng.standard_normal()), 0.95, 1.9))
    fwhm = fwhm_r * (wavelength[2] / wavelength) ** 0.2 * (1.0 + 0.03 * rng.standard_normal(5))
    fwhm[0] += 0.08
    fwhm = np.clip(fwhm, *PSF_FWHM_RANGE)
    sky_mag_offset = 0.2 * rng.standard_normal() + 0.1 * rng.standard_normal(5)  # moon, airmass, twilight
    sky_level = base_sky * 10.0 ** (-0.4 * sky_mag_offset)
    sky_sigma = np.sqrt(sky_level / gain)
    ebv = float(np.clip(0.03 * np.exp(0.6 * rng.standard_normal()), 0.005, 0.25))
    return fwhm, sky_level, sky_sigma, gain, ebv


def _draw_sky_position(rng):
    ra = rng.uniform(*FOOTPRINT_RA)
    sin_dec = rng.uniform(np.sin(np.radians(FOOTPRINT_DEC[0])), np.sin(np.radians(FOOTPRINT_DEC[1])))
    return ra, float(np.degrees(np.arcsin(sin_dec)))


def _star_flux(rng, mag_r_range, ebv):
    temperature = rng.uniform(3500.0, 10000.0)
    mags = rng.uniform(*mag_r_range) + star_colours(temperature)
    return mag_to_nanomaggy(mags + ebv * EXTINCTION_COEFFS), mags


def _neighbour(rng, size, pixscale, ebv):
    """A fainter field star or background galaxy away from the centre."""
    half = size / 2.0 - 3.0
    while True:
        x, y = rng.uniform(-half, half, 2)
        if np.hypot(x, y) >= 10.0:
            break
    x, y = x * pixscale, y * pixscale
    if rng.random() < 0.5:
        flux, _ = _star_flux(rng, (16.0, 21.5), ebv)
        return PointSource(flux=flux, x=x, y=y)
    type_index = int(rng.integers(1, len(SED_TYPES)))
    z = rng.uniform(0.15, 0.6)
    mags, _ = composite_magnitudes(0.0, z, type_index, 0.0)
    mags = mags - mags[BANDS.index("r")] + rng.uniform(18.0, 21.5)
    hlr = rng.uniform(0.3, 1.2)
    q = float(np.sqrt(rng.random() ** 2 * (1 - 0.15**2) + 0.15**2))
    return BulgeDisk(bulge_flux=np.zeros(5), disk_flux=mag_to_nanomaggy(mags + ebv * EXTINCTION_COEFFS),
                     bulge_hlr=hlr, disk_hlr=hlr, bulge_q=1.0, disk_q=q, pa_deg=rng.uniform(0, 180), x=x, y=y)


def _centre_offset(rng, pixscale):
    """Sub-pixel position of the central object (catalogue positions are not pixel-aligned)."""
    return tuple(rng.uniform(-0.5, 0.5, 2) * pixscale)


def draw_scene(rng, size: int, pixscale: float, anomaly_fraction: float, neighbour_rate: float) -> Scene:
    """Everything in one cutout, drawn from the object's own generator."""
    fwhm, sky_level, sky_sigma, gain, ebv = draw_conditions(rng, pixscale)
    scene = Scene(psf_fwhm=fwhm, sky_level=sky_level, sky_sigma=sky_sigma, gain=gain)
    ra, dec = _draw_sky_position(rng)
    kind = ANOMALY_KINDS[int(rng.integers(len(ANOMALY_KINDS)))] if rng.random() < anomaly_fraction else "none"
    x0, y0 = _centre_offset(rng, pixscale)

    if kind == "star":
        flux, mags = _star_flux(rng, (14.0, 18.0), ebv)
        scene.sources.append(PointSource(flux=flux, x=x0, y=y0))
        labels = {"z_true": 0.0, "sed_type": "star", "bulge_frac": float("nan"), "morph_class": "star",
                  "half_light_arcsec": 0.0, "axis_ratio": 1.0, "position_angle_deg": 0.0, "abs_mag_r": float("nan"),
                  **{f"mag_{band}": float(mags[b]) for b, band in enumerate(BANDS)}}
    else:
        if kind == "high_z":
            type_index = int(rng.choice([0, 1], p=[0.6, 0.4]))
            z, abs_mag = rng.uniform(0.45, 0.8), rng.uniform(-23.5, -22.5)
            bulge_frac = float(_draw_bulge_frac(rng, np.array([type_index]))[0])
        elif kind == "lens":
            type_index, z, abs_mag = 0, rng.uniform(0.08, 0.25), rng.uniform(-23.0, -22.0)
            bulge_frac = float(_draw_bulge_frac(rng, np.array([0]))[0])
        else:
            type_index, z, abs_mag, bulge_frac = draw_flux_limited_galaxy(rng)
        galaxy, labels = build_bulge_disk(rng, type_index, z, abs_mag, bulge_frac, ebv, x0, y0)
        scene.sources.append(galaxy)
        if kind == "merger":
            _add_merger(rng, scene, galaxy, labels, ebv, size, pixscale)
        elif kind == "lens":
            _add_lensed_source(rng, scene, galaxy, ebv)
        elif kind == "satellite_trail":
            _add_trail(rng, scene, size, pixscale)
        elif kind == "cosmic_ray":
            _add_cosmic_rays(rng, scene, size)
        elif kind == "bad_column":
            _add_bad_column(rng, scene, size)

    n_neighbours = int(rng.random() < neighbour_rate)
    for _ in range(n_neighbours):
        scene.sources.append(_neighbour(rng, size, pixscale, ebv))

    scene.labels = {
        "ra": ra, "dec": dec, **labels, "ebv": ebv,
        **{f"psf_fwhm_{band}": float(fwhm[b]) for b, band in enumerate(BANDS)},
        **{f"sky_sigma_{band}": float(sky_sigma[b]) for b, band in enumerate(BANDS)},
        "n_neighbors": n_neighbours, "is_anomaly": kind != "none", "anomaly_kind": kind,
    }
    return scene


def _add_merger(rng, scene, primary, labels, ebv, size, pixscale):
    """A companion at the same redshift, both stretched along the line joining them, and a tail."""
    type_index = int(rng.choice(len(SED_TYPES), p=TYPE_PRIOR))
    bulge_frac = float(_draw_bulge_frac(rng, np.array([type_index]))[0])
    abs_mag = labels["abs_mag_r"] + rng.uniform(0.0, 1.5)
    direction = rng.uniform(0.0, 2 * np.pi)
    companion, companion_labels = build_bulge_disk(rng, type_index, labels["z_true"], abs_mag, bulge_frac, ebv)
    separation = rng.uniform(0.8, 1.6) * (labels["half_light_arcsec"] + companion_labels["half_light_arcsec"])
    separation = float(np.clip(separation, 2.0, 0.3 * size * pixscale))
    companion.x = primary.x + separation * np.cos(direction)
    companion.y = primary.y + separation * np.sin(direction)
    for galaxy in (primary, companion):
        galaxy.tidal_g = rng.uniform(0.1, 0.3)
        galaxy.tidal_beta_deg = float(np.degrees(direction))
    side = rng.choice([-1.0, 1.0])
    tail_angle = direction + side * np.radians(rng.uniform(20.0, 50.0))
    tail_distance = separation * rng.uniform(1.0, 1.4)
    tail_hlr = 1.5 * companion.disk_hlr
    tail = BulgeDisk(bulge_flux=np.zeros(5), disk_flux=0.15 * (companion.bulge_flux + companion.disk_flux),
                     bulge_hlr=tail_hlr, disk_hlr=tail_hlr, bulge_q=1.0, disk_q=0.12,
                     pa_deg=float(np.degrees(tail_angle)) + 90.0,
                     x=primary.x + tail_distance * np.cos(tail_angle), y=primary.y + tail_distance * np.sin(tail_angle))
    scene.sources.extend([companion, tail])


def _add_lensed_source(rng, scene, deflector, ebv):
    """A compact blue star-forming galaxy at z 0.6-1.5 behind the elliptical: arcs or a ring at the
    Einstein radius (brighter and wider than most SDSS lenses, so that it can be seen)."""
    z_source = rng.uniform(0.6, 1.5)
    mags, _ = composite_magnitudes(0.0, z_source, SED_TYPES.index("Im"), 0.0)
    mags = mags - mags[BANDS.index("r")] + rng.uniform(19.0, 20.5)
    einstein_radius = rng.uniform(1.5, 3.0)
    offset_radius, offset_angle = rng.uniform(0.0, 0.4) * einstein_radius, rng.uniform(0, 2 * np.pi)
    scene.sources.append(LensedSource(
        flux=mag_to_nanomaggy(mags + ebv * EXTINCTION_COEFFS), hlr=rng.uniform(0.15, 0.4), q=rng.uniform(0.5, 1.0),
        pa_deg=rng.uniform(0, 180), source_x=offset_radius * np.cos(offset_angle),
        source_y=offset_radius * np.sin(offset_angle), einstein_radius=einstein_radius,
        lens_x=deflector.x, lens_y=deflector.y))


def _add_trail(rng, scene, size, pixscale):
    offset = rng.uniform(-0.3, 0.3) * size * pixscale
    drift = rng.uniform(-0.25, 0.25, 5) * size * pixscale
    present = rng.random(5) < 0.8
    present[rng.integers(5)] = True
    brightness = rng.uniform(5.0, 40.0) * scene.sky_sigma * present
    scene.trails.append(SatelliteTrail(angle_deg=rng.uniform(0, 180), offsets_arcsec=offset + drift,
                                       surface_brightness=brightness))


def _add_cosmic_rays(rng, scene, size):
    band = int(rng.integers(5))
    for _ in range(int(rng.integers(1, 4))):
        start = rng.uniform(2, size - 2, 2)
        length, angle = rng.uniform(1.0, 12.0), rng.uniform(0, 2 * np.pi)
        end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), 0, size - 1)
        scene.detector_defects.append(CosmicRay(band=band, start=tuple(start), end=tuple(end),
                                                amplitude=float(rng.uniform(20.0, 200.0) * scene.sky_sigma[band])))


def _add_bad_column(rng, scene, size):
    band = int(rng.integers(5))
    column = int(rng.integers(size // 4, 3 * size // 4))  # through the galaxy's part of the stamp
    if rng.random() < 0.5:
        scene.detector_defects.append(BadColumn(band=band, column=column, kind="dead"))
    else:
        scene.detector_defects.append(BadColumn(band=band, column=column, kind="hot",
                                                amplitude=float(rng.uniform(10.0, 50.0) * scene.sky_sigma[band])))


__all__ = ["ANOMALY_KINDS", "MORPH_CLASSES", "MAG_R_LIMITS", "draw_scene", "composite_magnitudes",
           "build_bulge_disk", "draw_flux_limited_galaxy", "draw_conditions"]

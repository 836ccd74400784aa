"""Magnitudes from spectral templates: K-corrections of the CWW galaxy SEDs shipped with GalSim
through the SDSS bandpasses, blackbody star colours, extinction, nanomaggies and SDSS-like depth.

All magnitudes are AB. A galaxy of rest-frame absolute magnitude M_r (AB, rest-frame SDSS r) at
redshift z has apparent magnitude in band b

    m_b = M_r + DM(z) + K_br(z),   K_br(z) = m_b[SED observed at z] - m_r[SED at rest]

(Hogg et al. 2002, eq. 13). GalSim's ``SED.atRedshift`` stretches wavelengths while keeping the
photon density per unit wavelength, which is exactly the (1+z) f_nu(nu(1+z)) observed shape that
eq. 13 needs, so the difference of the two GalSim magnitudes is the K-correction with no extra term.
The K-corrections are computed once on a redshift grid and interpolated (GalSim integrals per
object would be ~50x slower than the whole rendering).
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from galtools.sim.filters import BANDS, sdss_bandpass

SED_TYPES = ("E", "Sbc", "Scd", "Im")
# Schlafly & Finkbeiner (2011) A_b / E(B-V) for SDSS ugriz, as used by the SDSS pipelines.
EXTINCTION_COEFFS = np.array([4.239, 3.303, 2.285, 1.698, 1.263])
NANOMAGGY_ZEROPOINT = 22.5  # m = 22.5 - 2.5 log10(flux / nanomaggy)

# Observing conditions of the SDSS imaging survey (Stoughton et al. 2002; Abazajian et al. 2004):
# dark-sky brightness per band (AB mag / arcsec^2) and 95%-completeness point-source depth (AB)
# at the median seeing. Pixel noise and gain follow from these in sky_noise_model().
SKY_BRIGHTNESS = np.array([22.1, 21.8, 20.9, 20.2, 18.9])
POINT_SOURCE_DEPTH = np.array([22.0, 22.2, 22.2, 21.3, 20.5])
MEDIAN_PSF_FWHM = np.array([1.5, 1.4, 1.3, 1.25, 1.25])

_Z_GRID = np.round(np.arange(0.0, 2.0 + 1e-9, 0.005), 6)
_TEMPERATURE_GRID = np.linspace(3000.0, 12000.0, 91)


def mag_to_nanomaggy(mag):
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - NANOMAGGY_ZEROPOINT))


def cww_sed(sed_type: str):
    """One of GalSim's Coleman-Wu-Weedman templates (extended to UV and IR), per unit wavelength."""
    import galsim

    path = os.path.join(galsim.meta_data.share_dir, "SEDs", f"CWW_{sed_type}_ext.sed")
    return galsim.SED(path, wave_type="Angstrom", flux_type="flambda")


@lru_cache(maxsize=1)
def kcorrection_table() -> np.ndarray:
    """K_br(z) for every SED type and band on _Z_GRID: array (types, bands, len(_Z_GRID))."""
    bandpasses = [sdss_bandpass(band) for band in BANDS]
    table = np.empty((len(SED_TYPES), len(BANDS), len(_Z_GRID)))
    for t, sed_type in enumerate(SED_TYPES):
        sed = cww_sed(sed_type)
        rest_r = sed.calculateMagnitude(bandpasses[BANDS.index("r")])
        for k, z in enumerate(_Z_GRID):
            shifted = sed.atRedshift(float(z))
            for b, bandpass in enumerate(bandpasses):
                table[t, b, k] = shifted.calculateMagnitude(bandpass) - rest_r
    return table


def kcorrection(type_index, z) -> np.ndarray:
    """K_br(z) for all five bands: shape (..., 5) for array-like type_index and z."""
    table = kcorrection_table()
    type_index = np.asarray(type_index)
    z = np.asarray(z, dtype=np.float64)
    position = np.clip(z / (_Z_GRID[1] - _Z_GRID[0]), 0, len(_Z_GRID) - 1.000001)
    lower = position.astype(np.int64)
    weight = position - lower
    below = table[type_index, :, lower]
    above = table[type_index, :, lower + 1]
    return below + (above - below) * weight[..., None]


def blackbody_sed(temperature_k: float):
    """Planck spectrum (arbitrary normalisation) as a GalSim SED."""
    import galsim

    hc_over_k_nm = 1.438777e7  # h c / k_B in nm K

    def flambda(wave_nm):
        return wave_nm ** -5.0 / np.expm1(hc_over_k_nm / (wave_nm * temperature_k))

    return galsim.SED(galsim.LookupTable(np.linspace(250.0, 1200.0, 951), flambda(np.linspace(250.0, 1200.0, 951))),
                      wave_type="nm", flux_type="flambda")


@lru_cache(maxsize=1)
def star_colour_table() -> np.ndarray:
    """m_b - m_r of blackbody stars on _TEMPERATURE_GRID: array (temperatures, bands)."""
    bandpasses = [sdss_bandpass(band) for band in BANDS]
    table = np.empty((len(_TEMPERATURE_GRID), len(BANDS)))
    for k, temperature in enumerate(_TEMPERATURE_GRID):
        sed = blackbody_sed(float(temperature))
        mags = np.array([sed.calculateMagnitude(bp) for bp in bandpasses])
        table[k] = mags - mags[BANDS.index("r")]
    return table


def star_colours(temperature_k: float) -> np.ndarray:
    """m_b - m_r of a blackbody star, interpolated; shape (5,)."""
    table = star_colour_table()
    return np.array([np.interp(temperature_k, _TEMPERATURE_GRID, table[:, b]) for b in range(len(BANDS))])


def sky_noise_model(pixscale_arcsec: float):
    """(sky level in nanomaggies per pixel, electrons per nanomaggy) per band.

    The gain is set so that a point source at POINT_SOURCE_DEPTH has S/N = 5 in a Gaussian PSF of
    MEDIAN_PSF_FWHM on the dark sky: pixel noise sigma = F_5 / (5 sqrt(N_eff)), N_eff = 4 pi sigma_psf^2,
    and sky-limited Poisson noise sigma^2 = sky / gain.
    """
    sky_level = mag_to_nanomaggy(SKY_BRIGHTNESS) * pixscale_arcsec**2
    psf_sigma_pixels = MEDIAN_PSF_FWHM / 2.3548 / pixscale_arcsec
    effective_pixels = 4.0 * np.pi * psf_sigma_pixels**2
    pixel_sigma = mag_to_nanomaggy(POINT_SOURCE_DEPTH) / (5.0 * np.sqrt(effective_pixels))
    return sky_level, sky_level / pixel_sigma**2

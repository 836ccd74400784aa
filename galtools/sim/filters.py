"""SDSS ugriz photometric response functions as GalSim bandpasses.

GalSim ships LSST, HST and Roman bandpasses but no SDSS ones, so the SDSS 2.5 m imager's
reference responses (Doi et al. 2010, AJ 139, 1628, Table 4: filter x CCD x telescope x
1.3-airmass APO atmosphere, photon-counting) are read from the package's data file data/sdss_ugriz_response.csv. Wavelengths are in Angstrom;
the response is zero outside each table. The u table keeps the filter's small red leak near 7700 A.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

BANDS = ("u", "g", "r", "i", "z")

DATA_FILE = "sdss_ugriz_response.csv"   # in galtools/sim/data: band, wavelength (Angstrom), response


@lru_cache(maxsize=1)
def _tables() -> dict[str, np.ndarray]:
    from importlib.resources import files

    text = files("galtools.sim").joinpath("data", DATA_FILE).read_text()
    rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")][1:]
    return {band: np.array([[float(w), float(r)] for b, w, r in rows if b == band]) for band in BANDS}


def response_table(band: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength in Angstrom, photon-counting response) of one SDSS band."""
    values = _tables()[band]
    return values[:, 0].copy(), values[:, 1].copy()


@lru_cache(maxsize=None)
def sdss_bandpass(band: str):
    """GalSim Bandpass of an SDSS band with the AB zeropoint set (magnitudes are AB)."""
    import galsim

    wave, response = response_table(band)
    table = galsim.LookupTable(wave, response, interpolant="linear")
    return galsim.Bandpass(table, wave_type="Angstrom").withZeropoint("AB")

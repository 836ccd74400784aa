"""What one cutout contains: sources (in arcsec and nanomaggies), detector artefacts and the
observing conditions. population.py fills these in from random draws; render.py draws them."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class BulgeDisk:
    """A de Vaucouleurs bulge plus an exponential disk sharing one centre and position angle."""

    bulge_flux: np.ndarray  # (5,) nanomaggies as observed, after Galactic extinction
    disk_flux: np.ndarray  # (5,)
    bulge_hlr: float  # arcsec, of the bulge truncated at BULGE_TRUNCATION half-light radii
    disk_hlr: float  # arcsec
    bulge_q: float  # axis ratio b/a
    disk_q: float
    pa_deg: float  # major axis, degrees counter-clockwise from the +x (column) axis
    x: float = 0.0  # arcsec offset of the centre from the stamp centre
    y: float = 0.0
    tidal_g: float = 0.0  # extra shear of an interacting galaxy (mergers), along tidal_beta_deg
    tidal_beta_deg: float = 0.0


@dataclass
class PointSource:
    """A star: the PSF scaled to a flux."""

    flux: np.ndarray  # (5,) nanomaggies
    x: float = 0.0
    y: float = 0.0


@dataclass
class LensedSource:
    """An exponential background source behind a singular isothermal sphere lens."""

    flux: np.ndarray  # (5,) unlensed nanomaggies
    hlr: float  # arcsec, of the unlensed source
    q: float
    pa_deg: float
    source_x: float  # source-plane position relative to the lens centre, arcsec
    source_y: float
    einstein_radius: float  # arcsec
    lens_x: float = 0.0
    lens_y: float = 0.0


@dataclass
class SatelliteTrail:
    """A straight streak of a satellite or aircraft. SDSS scans the five bands at different
    times, so the streak sits at a different perpendicular offset in each band."""

    angle_deg: float
    offsets_arcsec: np.ndarray  # (5,) signed distance of the line from the stamp centre
    surface_brightness: np.ndarray  # (5,) peak nanomaggies per pixel (0: absent in that band)


@dataclass
class CosmicRay:
    """A sharp track from a charged particle in one band's CCD (not blurred by the PSF)."""

    band: int
    start: tuple[float, float]  # (x, y) pixels
    end: tuple[float, float]
    amplitude: float  # nanomaggies per pixel along the track


@dataclass
class BadColumn:
    """A hot column (charge offset) or a dead column (no charge: minus the subtracted sky)."""

    band: int
    column: int
    kind: str  # "hot" or "dead"
    amplitude: float = 0.0  # nanomaggies per pixel added to a hot column


@dataclass
class Scene:
    sources: list = field(default_factory=list)
    trails: list = field(default_factory=list)  # photons: added before noise
    detector_defects: list = field(default_factory=list)  # CosmicRay / BadColumn: after noise
    psf_fwhm: np.ndarray = None  # (5,) arcsec
    sky_level: np.ndarray = None  # (5,) nanomaggies per pixel (already subtracted from the image)
    sky_sigma: np.ndarray = None  # (5,) nanomaggies per pixel
    gain: np.ndarray = None  # (5,) electrons per nanomaggy, for the sources' own Poisson noise
    labels: dict = field(default_factory=dict)

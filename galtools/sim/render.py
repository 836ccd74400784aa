"""Draw a Scene into a (5, size, size) float32 cutout in nanomaggies per pixel, sky-subtracted.

Profiles are achromatic within a component: each band draws the same bulge and disk shapes with
that band's fluxes, convolved with that band's PSF and the pixel response. Colour enters through
per-band, per-component fluxes computed from the SEDs rather than GalSim's chromatic drawing.

The fast path (method="kspace") asks GalSim for each component's Fourier transform once, on one
fixed grid, then forms each band as pixel x PSF_band x sum(flux x component) and inverse-FFTs it:
one GalSim k-space draw per component instead of one full FFT convolution per component and band.
It equals GalSim's own drawImage (method="galsim", kept as the reference and benchmark baseline)
to ~1e-4 of the peak; the difference is light folded from beyond ~1.5 stamp widths.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from galtools.sim.profiles import BULGE_TRUNCATION
from galtools.sim.scene import BadColumn, BulgeDisk, CosmicRay, LensedSource, PointSource, SatelliteTrail, Scene

PSF_MOFFAT_BETA = 3.5  # SDSS PSF cores are well fit by a Moffat with beta ~ 3-4
_LENS_SUBSAMPLING = 4  # sub-pixels per pixel side when evaluating the lensed source
_GOOD_FFT_FACTORS = (2, 3, 5)
# Radii, in half-light radii along the major axis, beyond which a component's folded light is
# negligible in the stamp (< 1e-3 of the peak): the exponential has 1% of its light beyond 4, the
# truncated de Vaucouleurs 4% beyond 5, spread thinly over a wide annulus.
DISK_EXTENT = 4.0
BULGE_EXTENT = 5.0


@lru_cache(maxsize=1)
def _gsparams():
    import galsim

    # Folding threshold a little looser than GalSim's default (5e-3): keeps the FFTs of the
    # reference path small for large, nearby galaxies; the folded light is < 1%.
    return galsim.GSParams(folding_threshold=1e-2, maximum_fft_size=16384)


@lru_cache(maxsize=64)
def psf_profile(fwhm_arcsec: float):
    import galsim

    return galsim.Moffat(beta=PSF_MOFFAT_BETA, fwhm=fwhm_arcsec, gsparams=_gsparams())


def _bulge_disk_components(galaxy: BulgeDisk):
    """[(unit-flux profile, flux per band)] of the bulge and disk, sheared and placed."""
    import galsim

    gsparams = _gsparams()
    beta = galaxy.pa_deg * galsim.degrees
    components = []
    if np.any(galaxy.bulge_flux > 0):
        bulge = galsim.DeVaucouleurs(half_light_radius=galaxy.bulge_hlr, trunc=BULGE_TRUNCATION * galaxy.bulge_hlr,
                                     gsparams=gsparams)
        components.append((bulge.shear(q=galaxy.bulge_q, beta=beta), galaxy.bulge_flux))
    if np.any(galaxy.disk_flux > 0):
        disk = galsim.Exponential(half_light_radius=galaxy.disk_hlr, gsparams=gsparams)
        components.append((disk.shear(q=galaxy.disk_q, beta=beta), galaxy.disk_flux))
    placed = []
    for profile, flux in components:
        if galaxy.tidal_g:
            profile = profile.shear(g=galaxy.tidal_g, beta=galaxy.tidal_beta_deg * galsim.degrees)
        placed.append((profile.shift(galaxy.x, galaxy.y), np.asarray(flux, dtype=np.float64)))
    return placed


def _pixel_coordinates(size: int, pixscale: float, subsampling: int = 1):
    """x, y (arcsec) of (sub)pixel centres relative to the stamp centre, which GalSim puts at the
    corner shared by the four central pixels of an even-sized stamp."""
    steps = (np.arange(size * subsampling) + 0.5) / subsampling - size / 2.0
    return np.meshgrid(steps * pixscale, steps * pixscale)


def lensed_surface_brightness(source: LensedSource, size: int, pixscale: float) -> np.ndarray:
    """Unit-flux (unlensed) source seen through a singular isothermal sphere, integrated over
    pixels: the lens equation beta = theta - theta_E theta/|theta| maps each sub-pixel back to the
    source plane, where the exponential profile is evaluated (lensing conserves surface brightness,
    so the total is the magnification)."""
    x, y = _pixel_coordinates(size, pixscale, _LENS_SUBSAMPLING)
    x, y = x - source.lens_x, y - source.lens_y
    radius = np.maximum(np.hypot(x, y), 1e-9)
    beta_x = x - source.einstein_radius * x / radius - source.source_x
    beta_y = y - source.einstein_radius * y / radius - source.source_y
    angle = np.radians(source.pa_deg)
    along = beta_x * np.cos(angle) + beta_y * np.sin(angle)
    across = -beta_x * np.sin(angle) + beta_y * np.cos(angle)
    # GalSim's shear(q) convention: semi-axes a = r/sqrt(q), b = r sqrt(q) (area-preserving)
    elliptical_radius = np.sqrt(along**2 * source.q + across**2 / source.q)
    scale_radius = source.hlr / 1.6783469900166608
    surface_brightness = np.exp(-elliptical_radius / scale_radius) / (2 * np.pi * scale_radius**2)
    sub_pixels = surface_brightness * (pixscale / _LENS_SUBSAMPLING) ** 2
    return sub_pixels.reshape(size, _LENS_SUBSAMPLING, size, _LENS_SUBSAMPLING).sum(axis=(1, 3))


# ------------------------------------------------------------------------------- fast path: k space

def _good_fft_size(minimum: int) -> int:
    n = minimum + minimum % 2
    while True:
        rest = n
        for factor in _GOOD_FFT_FACTORS:
            while rest % factor == 0:
                rest //= factor
        if rest == 1:
            return n
        n += 2


@dataclass(frozen=True)
class KGrid:
    """The Fourier grid of a padded stamp: rows ky = (j - n/2) dk as GalSim draws them, columns
    kx = 0..n/2 dk (numpy's rfft2 half plane). Keeping GalSim's row order saves a roll per
    component; it multiplies the inverse FFT's row m by (-1)^m, undone by ``row_sign``.
    The real-space period is n pixels, so light further than n - size/2 pixels from the centre
    would fold into the stamp: grid_size_for() makes n large enough that no source has light there."""

    size: int
    pixscale: float
    n: int
    dk: float
    centre_shift: float  # arcsec: moves the stamp centre to the FFT origin's pixel layout
    kx: np.ndarray  # (1, n//2+1) radians per arcsec
    ky: np.ndarray  # (n, 1)
    pixel_response: np.ndarray  # (n, n//2+1): Fourier transform of the square pixel
    row_sign: np.ndarray  # (size, 1): (-1)^m


@lru_cache(maxsize=32)
def k_grid(size: int, pixscale: float, n: int) -> KGrid:
    dk = 2.0 * np.pi / (n * pixscale)
    ky = ((np.arange(n) - n // 2) * dk)[:, None]
    kx = (np.arange(n // 2 + 1) * dk)[None, :]
    pixel_response = np.sinc(kx * pixscale / (2 * np.pi)) * np.sinc(ky * pixscale / (2 * np.pi))
    row_sign = np.where(np.arange(size) % 2 == 0, 1.0, -1.0)[:, None]
    return KGrid(size, pixscale, n, dk, (size / 2.0 - 0.5) * pixscale, kx, ky, pixel_response, row_sign)


def _light_extent(source, psf_fwhm_max: float) -> float:
    """Distance (arcsec) from the stamp centre beyond which a source's light no longer matters."""
    if isinstance(source, BulgeDisk):
        bulge = BULGE_EXTENT * source.bulge_hlr / np.sqrt(source.bulge_q) if np.any(source.bulge_flux > 0) else 0.0
        disk = DISK_EXTENT * source.disk_hlr / np.sqrt(source.disk_q) if np.any(source.disk_flux > 0) else 0.0
        stretch = (1.0 + source.tidal_g) / (1.0 - source.tidal_g)
        return float(np.hypot(source.x, source.y) + max(bulge, disk) * stretch + 3.0 * psf_fwhm_max)
    if isinstance(source, PointSource):
        return float(np.hypot(source.x, source.y) + 6.0 * psf_fwhm_max)
    return 0.0  # lensed maps live inside the stamp


def grid_size_for(scene: Scene, size: int, pixscale: float) -> int:
    """FFT size: at least 1.5x the stamp, more when a large galaxy's light would fold back in."""
    extent = max((_light_extent(source, float(np.max(scene.psf_fwhm))) for source in scene.sources), default=0.0)
    return _good_fft_size(max(int(np.ceil(1.5 * size)), int(np.ceil(size / 2.0 + extent / pixscale))))


def _profile_transform(profile, grid: KGrid, place: bool = True) -> np.ndarray:
    """Fourier transform of a GalSim profile on the grid's half plane; ``place`` moves the stamp
    centre to the layout of the inverse FFT (sources yes, the PSF kernel no)."""
    import galsim

    if place:
        profile = profile.shift(grid.centre_shift, grid.centre_shift)
    half = galsim.ImageCD(galsim.BoundsI(0, grid.n // 2, -(grid.n // 2), grid.n // 2 - 1), scale=grid.dk)
    profile.drawKImage(image=half, recenter=False)
    return half.array


def _point_transform(x: float, y: float, grid: KGrid) -> np.ndarray:
    """Fourier transform of a unit delta function at (x, y): exp(-i k.x), GalSim's sign convention."""
    return np.exp(-1j * (grid.kx * (x + grid.centre_shift) + grid.ky * (y + grid.centre_shift)))


def _image_transform(image: np.ndarray, grid: KGrid) -> np.ndarray:
    padded = np.zeros((grid.n, grid.n))
    padded[: grid.size, : grid.size] = image
    return np.roll(np.fft.rfft2(padded), grid.n // 2, axis=0)  # to GalSim's row order


def _render_kspace(scene: Scene, size: int, pixscale: float) -> np.ndarray:
    grid = k_grid(size, pixscale, grid_size_for(scene, size, pixscale))
    bands = len(scene.psf_fwhm)
    unpixelised = np.zeros((bands, grid.n, grid.n // 2 + 1), np.complex128)
    pixelised = np.zeros_like(unpixelised)  # lensed maps are integrated over pixels already
    for source in scene.sources:
        if isinstance(source, BulgeDisk):
            for profile, flux in _bulge_disk_components(source):
                unpixelised += flux[:, None, None] * _profile_transform(profile, grid)
        elif isinstance(source, PointSource):
            unpixelised += np.asarray(source.flux)[:, None, None] * _point_transform(source.x, source.y, grid)
        elif isinstance(source, LensedSource):
            lensed = _image_transform(lensed_surface_brightness(source, size, pixscale), grid)
            pixelised += np.asarray(source.flux)[:, None, None] * lensed
        else:
            raise TypeError(f"unknown source {type(source).__name__}")
    cube = np.empty((bands, size, size))
    for band in range(bands):
        psf = _profile_transform(psf_profile(float(scene.psf_fwhm[band])), grid, place=False)
        transform = psf * (unpixelised[band] * grid.pixel_response + pixelised[band])
        cube[band] = np.fft.irfft2(transform, s=(grid.n, grid.n))[:size, :size] * grid.row_sign
    return cube


# -------------------------------------------------------------- reference path: GalSim's drawImage

def _render_galsim(scene: Scene, size: int, pixscale: float) -> np.ndarray:
    import galsim

    psfs = [psf_profile(float(fwhm)) for fwhm in scene.psf_fwhm]
    images = [galsim.ImageD(size, size, scale=pixscale) for _ in psfs]
    for source in scene.sources:
        for band, (psf, image) in enumerate(zip(psfs, images)):
            if isinstance(source, BulgeDisk):
                parts = [profile * float(flux[band]) for profile, flux in _bulge_disk_components(source) if flux[band] > 0]
                if parts:
                    galsim.Convolve(galsim.Add(parts), psf).drawImage(image=image, add_to_image=True)
            elif isinstance(source, PointSource):
                (psf * float(source.flux[band])).shift(source.x, source.y).drawImage(image=image, add_to_image=True)
            elif isinstance(source, LensedSource):
                lensed = lensed_surface_brightness(source, size, pixscale)
                # The map is integrated over pixels already: sample the PSF without the pixel response.
                kernel = psf.drawImage(nx=size, ny=size, scale=pixscale, method="no_pixel", use_true_center=False)
                image.array[:] += source.flux[band] * _convolve_same(lensed, kernel.array)
            else:
                raise TypeError(f"unknown source {type(source).__name__}")
    return np.stack([image.array for image in images])


def _convolve_same(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Linear (zero-padded) convolution with a kernel centred on pixel (size/2, size/2)."""
    size = image.shape[0]
    padded = 2 * size
    full = np.fft.irfft2(np.fft.rfft2(image, (padded, padded)) * np.fft.rfft2(kernel, (padded, padded)),
                         (padded, padded))
    return full[size // 2: size // 2 + size, size // 2: size // 2 + size]


# ---------------------------------------------------------------------- artefacts, noise, the cutout

def _add_trail(trail: SatelliteTrail, cube: np.ndarray, psf_fwhm, pixscale):
    x, y = _pixel_coordinates(cube.shape[-1], pixscale)
    angle = np.radians(trail.angle_deg)
    distance = -x * np.sin(angle) + y * np.cos(angle)  # signed distance from a line through the centre
    for band in range(cube.shape[0]):
        if trail.surface_brightness[band] > 0:
            sigma = psf_fwhm[band] / 2.3548
            cube[band] += trail.surface_brightness[band] * np.exp(-0.5 * ((distance - trail.offsets_arcsec[band]) / sigma) ** 2)


def _deposit_cosmic_ray(ray: CosmicRay, cube: np.ndarray):
    """Spread the track over the pixels it crosses with bilinear weights (0.25-pixel steps)."""
    size = cube.shape[-1]
    start, end = np.array(ray.start), np.array(ray.end)
    length = float(np.hypot(*(end - start)))
    points = start + np.linspace(0.0, 1.0, max(int(np.ceil(length * 4)), 1) + 1)[:, None] * (end - start)
    weight_per_point = ray.amplitude * max(length, 1.0) / len(points)
    for px, py in points:
        x0, y0 = int(np.floor(px)), int(np.floor(py))
        fx, fy = px - x0, py - y0
        for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            if 0 <= x0 + dx < size and 0 <= y0 + dy < size:
                cube[ray.band, y0 + dy, x0 + dx] += weight_per_point * w


def _apply_bad_column(column: BadColumn, cube: np.ndarray, sky_level):
    if column.kind == "dead":
        cube[column.band, :, column.column] = -sky_level[column.band]  # no charge, then sky subtraction
    else:
        cube[column.band, :, column.column] += column.amplitude


def render_scene(scene: Scene, size: int, pixscale: float, rng: np.random.Generator | None = None,
                 noise: bool = True, method: str = "kspace") -> np.ndarray:
    """The cutout of one scene: (5, size, size) float32. ``rng`` draws the noise (not needed
    without noise); ``method`` is "kspace" (fast) or "galsim" (plain drawImage, the reference)."""
    if method == "kspace":
        cube = _render_kspace(scene, size, pixscale)
    elif method == "galsim":
        cube = _render_galsim(scene, size, pixscale)
    else:
        raise ValueError(f"unknown method {method!r}")
    for trail in scene.trails:
        _add_trail(trail, cube, scene.psf_fwhm, pixscale)
    if noise:
        # Sky-limited Gaussian noise plus the sources' own Poisson noise (gain in e-/nanomaggy).
        variance = scene.sky_sigma[:, None, None] ** 2 + np.maximum(cube, 0.0) / scene.gain[:, None, None]
        cube = cube + rng.standard_normal(cube.shape, dtype=np.float32) * np.sqrt(variance)
    for defect in scene.detector_defects:
        if isinstance(defect, CosmicRay):
            _deposit_cosmic_ray(defect, cube)
        else:
            _apply_bad_column(defect, cube, scene.sky_level)
    return cube.astype(np.float32)

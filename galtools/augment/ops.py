"""Batched augmentation operations on torch tensors (n, bands, H, W), given their per-object parameters.

The functions here are deterministic: the random parameters are drawn by the pipeline (galtools.augment.pipeline)
from per-object streams and passed in as numpy arrays.  Each function treats every object on its own, so an
object's result does not depend on the rest of the batch.

Coordinates: x is the column index, y the row index, in pixels; pixel centres are integers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from galtools.preprocess import centre_crop_start

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))  # 2.3548...
KERNEL_RADIUS_SIGMAS = 4.0   # Gaussian kernels are cut at 4 sigma (the tail holds 6e-5 of the flux)
MAD_TO_SIGMA = 1.4826


def host_to_device(array: np.ndarray, device) -> torch.Tensor:
    """A numpy array of per-object parameters on ``device``.  To a GPU it goes through pinned memory without
    waiting: a copy from ordinary (pageable) memory makes the host wait for every kernel queued before it, and a
    batch's augmentation copies about ten such arrays per view."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


# ------------------------------------------------------------------------------------------------ geometry
def rotation_matrices(angles_deg) -> np.ndarray:
    """(n, 2, 2) float64 matrices that map output offsets from the centre to input offsets for a rotation.

    Rotating the image counter-clockwise (as displayed, row 0 at the top) by theta samples the input at
    R(theta) @ offset with R = [[cos, -sin], [sin, cos]] in (x, y) = (column, row) coordinates; theta = 90 equals
    torch.rot90(k=1).  Values within 1e-12 of 0 or +-1 are snapped so quarter turns are exact pixel moves.
    """
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cos, sin = _snap(np.cos(theta)), _snap(np.sin(theta))
    return np.stack([np.stack([cos, -sin], axis=-1), np.stack([sin, cos], axis=-1)], axis=-2)


def _snap(values: np.ndarray) -> np.ndarray:
    values = np.where(np.abs(values) < 1e-12, 0.0, values)
    return np.where(np.abs(np.abs(values) - 1.0) < 1e-12, np.sign(values), values)


def reflect_index(index, size: int):
    """Reflect integer pixel indices into [0, size-1] about the edge pixels' centres (as grid_sample does)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - index, index)


def _is_pixel_move(matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Which objects' maps send pixel centres to pixel centres (signed permutations, integer offsets)."""
    entries_ok = np.all(np.isin(matrix, (-1.0, 0.0, 1.0)), axis=(1, 2))
    return entries_ok & np.all(offset == np.round(offset), axis=1)


def warp(images, matrix: np.ndarray, offset: np.ndarray, out_hw: tuple[int, int]):
    """Resample each object: output pixel (x, y) takes the input at matrix @ (x, y) + offset.

    Objects whose map moves whole pixels (crops, integer shifts, quarter turns, mirrors) are copied exactly by
    index; the others are interpolated bilinearly (grid_sample).  Outside the input both reflect about the edge
    pixels, so rotated corners hold mirrored sky instead of zeros.
    """
    n = images.shape[0]
    out_h, out_w = out_hw
    result = images.new_empty((n, images.shape[1], out_h, out_w))
    exact = _is_pixel_move(matrix, offset)
    for chosen, method in ((np.flatnonzero(exact), _warp_by_index), (np.flatnonzero(~exact), _warp_bilinear)):
        if len(chosen) == len(exact):
            return method(images, matrix, offset, out_hw)
        if len(chosen):
            index = host_to_device(chosen, images.device)
            result[index] = method(images[index], matrix[chosen], offset[chosen], out_hw)
    return result


def _output_grid(device, out_hw, dtype):
    ys, xs = torch.meshgrid(torch.arange(out_hw[0], device=device, dtype=dtype),
                            torch.arange(out_hw[1], device=device, dtype=dtype), indexing="ij")
    return xs, ys


def _warp_by_index(images, matrix, offset, out_hw):
    n, bands, height, width = images.shape
    xs, ys = _output_grid(images.device, out_hw, torch.int64)
    m = host_to_device(np.rint(matrix).astype(np.int64), images.device)[:, :, :, None, None]
    b = host_to_device(np.rint(offset).astype(np.int64), images.device)[:, :, None, None]
    src_x = reflect_index(m[:, 0, 0] * xs + m[:, 0, 1] * ys + b[:, 0], width)
    src_y = reflect_index(m[:, 1, 0] * xs + m[:, 1, 1] * ys + b[:, 1], height)
    flat = (src_y * width + src_x).reshape(n, 1, -1).expand(n, bands, -1)
    return torch.gather(images.reshape(n, bands, height * width), 2, flat).reshape(n, bands, *out_hw)


def _warp_bilinear(images, matrix, offset, out_hw):
    n, _, height, width = images.shape
    xs, ys = _output_grid(images.device, out_hw, torch.float32)
    # fold the normalisation of grid_sample (align_corners=True: -1 and +1 are the edge pixels' centres) into the
    # affine map, so the grid is computed in one pass on the images' device
    to_unit = np.array([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    m = host_to_device((matrix * to_unit[None, :, None]).astype(np.float32), images.device)
    b = host_to_device((offset * to_unit[None, :] - 1.0).astype(np.float32), images.device)
    grid_x = m[:, 0, 0, None, None] * xs + m[:, 0, 1, None, None] * ys + b[:, 0, None, None]
    grid_y = m[:, 1, 0, None, None] * xs + m[:, 1, 1, None, None] * ys + b[:, 1, None, None]
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def rotate(images, angles_deg):
    """Rotate each object by its angle (degrees, counter-clockwise as displayed) about the cutout centre."""
    height, width = images.shape[-2:]
    matrix = rotation_matrices(np.broadcast_to(np.asarray(angles_deg, dtype=np.float64), (images.shape[0],)))
    centre = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    offset = centre[None, :] - matrix @ centre
    return warp(images, matrix, offset, (height, width))


def jitter_crop(images, shifts_xy: np.ndarray, out_size: int):
    """Shift each object by its integer (dx, dy) (content moves right/down), then centre-crop to out_size."""
    height, width = images.shape[-2:]
    n = images.shape[0]
    start = np.array([centre_crop_start(width, out_size), centre_crop_start(height, out_size)], dtype=np.float64)
    offset = start[None, :] - np.asarray(shifts_xy, dtype=np.float64)
    return warp(images, np.broadcast_to(np.eye(2), (n, 2, 2)).copy(), offset, (out_size, out_size))


# ------------------------------------------------------------------------------------------------ photometry
def extinction_factors(ebv: np.ndarray, r_values) -> np.ndarray:
    """(n, bands) flux factors 10^(-0.4 R_b E(B-V)) of Galactic extinction."""
    return 10.0 ** (-0.4 * np.asarray(ebv, dtype=np.float64)[:, None] * np.asarray(r_values, dtype=np.float64)[None, :])


def scale_bands(images, factors: np.ndarray):
    """Multiply each object's band b by factors[object, b]."""
    f = host_to_device(np.asarray(factors, dtype=np.float32), images.device)
    return images * f[:, :, None, None]


CLIP_SIGMAS = 3.0
CLIPPED_STD_OF_UNIT_GAUSSIAN = 0.98658  # std of a unit Gaussian cut at +-3 sigma


def _lower_median(values):
    """torch.median along the last axis, kept (the lower of the two middle values for an even count).

    median() with indices refuses to run on CUDA under torch.use_deterministic_algorithms (gal-train
    --deterministic); there a sort gives the same value.  Elsewhere median() stays: on the CPU it is about three
    times faster than the sort."""
    if values.is_cuda and torch.are_deterministic_algorithms_enabled():
        middle = (values.shape[-1] - 1) // 2
        return values.sort(dim=-1).values[..., middle:middle + 1]
    return values.median(dim=-1, keepdim=True).values


def estimate_noise(images, border: int = 4):
    """(n, bands) robust sky noise of each cutout, from the pixels of its outer frame (galaxies barely touch it).

    A first guess from the median absolute deviation (1.4826 x MAD), then the standard deviation of the pixels
    within 3 of those sigmas of the median, corrected for the cut: as robust as the MAD against a bright
    neighbour, and twice as precise (the MAD alone wastes 63% of the pixels' information).
    """
    height, width = images.shape[-2:]
    border = max(1, min(border, height // 2, width // 2))
    n, bands = images.shape[:2]
    frame = torch.cat([
        images[..., :border, :].reshape(n, bands, -1),
        images[..., height - border:, :].reshape(n, bands, -1),
        images[..., border:height - border, :border].reshape(n, bands, -1),
        images[..., border:height - border, width - border:].reshape(n, bands, -1),
    ], dim=-1).to(torch.float64)
    median = _lower_median(frame)
    mad_sigma = MAD_TO_SIGMA * _lower_median((frame - median).abs())
    kept = ((frame - median).abs() <= CLIP_SIGMAS * mad_sigma).to(torch.float64)
    count = kept.sum(dim=-1, keepdim=True).clamp(min=2.0)
    mean = (frame * kept).sum(dim=-1, keepdim=True) / count
    variance = (((frame - mean) ** 2) * kept).sum(dim=-1, keepdim=True) / (count - 1.0)
    sigma = torch.sqrt(variance) / CLIPPED_STD_OF_UNIT_GAUSSIAN
    return torch.where(mad_sigma > 0, sigma, torch.zeros_like(sigma)).squeeze(-1).to(torch.float32)


def add_noise_to_level(images, current_sigma, target_sigma, unit_normals):
    """Add sqrt(target^2 - current^2) x unit_normals per object and band (nothing where the target is lower)."""
    current = torch.as_tensor(current_sigma, dtype=torch.float32, device=images.device)
    target = torch.as_tensor(target_sigma, dtype=torch.float32, device=images.device)
    extra = torch.sqrt(torch.clamp(target * target - current * current, min=0.0))
    return images + extra[:, :, None, None] * unit_normals


def gaussian_kernels(sigma_px: np.ndarray, radius: int) -> np.ndarray:
    """(m, 2*radius+1) normalised 1-D Gaussians sampled at integer offsets, each cut at its own 4 sigma.

    Cutting each kernel at its own radius (not the batch's) keeps an object's result independent of the batch;
    sigma = 0 gives the identity kernel.  For sigma >= 0.7 px the sampled kernel's variance is sigma^2 to better
    than 0.1%, so blurs add in quadrature as intended.
    """
    sigma = np.asarray(sigma_px, dtype=np.float64).reshape(-1)
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    own_radius = np.ceil(KERNEL_RADIUS_SIGMAS * sigma)
    safe_sigma = np.where(sigma > 0, sigma, 1.0)
    kernels = np.exp(-0.5 * (offsets[None, :] / safe_sigma[:, None]) ** 2)
    kernels = np.where(np.abs(offsets)[None, :] <= own_radius[:, None], kernels, 0.0)
    kernels = np.where(sigma[:, None] > 0, kernels, (offsets == 0)[None, :].astype(np.float64))
    return kernels / kernels.sum(axis=1, keepdims=True)


def gaussian_blur(images, sigma_px: np.ndarray):
    """Blur band b of object i with a Gaussian of sigma_px[i, b] pixels (separable, reflect padding)."""
    n, bands, height, width = images.shape
    sigma = np.broadcast_to(np.asarray(sigma_px, dtype=np.float64), (n, bands))
    if not np.any(sigma > 0):
        return images
    radius = int(np.ceil(KERNEL_RADIUS_SIGMAS * sigma.max()))
    radius = max(1, min(radius, height - 1, width - 1))  # reflect padding needs radius < size
    kernels = host_to_device(gaussian_kernels(sigma, radius).astype(np.float32), images.device)
    planes = images.reshape(1, n * bands, height, width)
    planes = F.pad(planes, (radius, radius, 0, 0), mode="reflect")
    planes = F.conv2d(planes, kernels[:, None, None, :], groups=n * bands)
    planes = F.pad(planes, (0, 0, radius, radius), mode="reflect")
    planes = F.conv2d(planes, kernels[:, None, :, None], groups=n * bands)
    return planes.reshape(n, bands, height, width)

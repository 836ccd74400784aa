"""AugmentPipeline: a parsed spec applied to whole batches, one independent random stream per object and view.

    pipe = AugmentPipeline.from_spec("rotate,jitter:max_shift=7,noise,redden,psf", out_size=64,
                                     bands=["u", "g", "r", "i", "z"], pixscale=0.396)
    views = pipe(images, object_ids, view=0, seed=0, ebv=None, psf_fwhm=None)   # (N,B,H,W) -> (N,B,64,64)

Every random parameter of object i is drawn from the stream (seed, object_ids[i], view, step), so a view is the
same whatever else is in the batch and whichever device runs it (the draws are made in exact integer arithmetic;
the image arithmetic on a GPU agrees with the CPU to float tolerance).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from galtools.augment import streams
from galtools.augment.spec import OPS, SDSS_EXTINCTION_R, Step, canonical_spec, parse_spec
from galtools.errors import BadData, UsageProblem
from galtools.preprocess import centre_crop_start


@dataclass
class _Geometry:
    """The pending geometric map: frame pixel (x, y) samples the last materialised image at matrix @ (x,y) + offset.

    Geometric steps compose into it; a photometric step (or the end) materialises it with one resampling.
    """
    matrix: np.ndarray      # (n, 2, 2) float64
    offset: np.ndarray      # (n, 2) float64
    frame_hw: tuple[int, int]
    source_hw: tuple[int, int]

    @classmethod
    def identity(cls, n: int, hw: tuple[int, int]) -> "_Geometry":
        return cls(np.broadcast_to(np.eye(2), (n, 2, 2)).copy(), np.zeros((n, 2)), hw, hw)

    @property
    def centre(self) -> np.ndarray:
        return np.array([(self.frame_hw[1] - 1) / 2.0, (self.frame_hw[0] - 1) / 2.0])

    def then(self, matrix: np.ndarray, offset: np.ndarray, frame_hw: tuple[int, int] | None = None) -> None:
        """Append a step whose inverse maps new-frame pixels q to old-frame pixels matrix @ q + offset."""
        self.offset = np.einsum("nij,nj->ni", self.matrix, offset) + self.offset
        self.matrix = self.matrix @ matrix
        if frame_hw is not None:
            self.frame_hw = frame_hw

    def about_centre(self, matrix: np.ndarray) -> None:
        """Append a linear map about the frame centre (rotation, mirror, scaling)."""
        centre = self.centre
        self.then(matrix, centre[None, :] - matrix @ centre)

    def is_identity(self) -> bool:
        return (self.frame_hw == self.source_hw and np.array_equal(self.matrix, np.broadcast_to(np.eye(2), self.matrix.shape))
                and not self.offset.any())


class AugmentPipeline:
    """A sequence of augmentation steps; call it on a batch of raw-flux cutouts."""

    def __init__(self, steps: list[Step], out_size: int = 64, bands=None, pixscale: float | None = None):
        if int(out_size) < 1:
            raise UsageProblem(f"output size must be positive, got {out_size}")
        self.steps = list(steps)
        self.out_size = int(out_size)
        self.bands = [str(b) for b in bands] if bands is not None else None
        self.pixscale = float(pixscale) if pixscale is not None else None
        if self.pixscale is not None and not self.pixscale > 0:
            raise UsageProblem(f"pixel scale must be positive, got {pixscale}")
        self.steps = [self._resolve(step) for step in self.steps]

    @classmethod
    def from_spec(cls, spec: str, out_size: int = 64, bands=None, pixscale: float | None = None) -> "AugmentPipeline":
        return cls(parse_spec(spec), out_size=out_size, bands=bands, pixscale=pixscale)

    @property
    def spec(self) -> str:
        """Canonical spec with every parameter (band-dependent defaults resolved): stored as galtools.augment."""
        return canonical_spec(self.steps)

    @property
    def needs(self) -> set[str]:
        """Catalogue inputs the steps read: 'ebv' (deredden) and 'psf_fwhm' (psf, unless fwhm_in is given)."""
        wanted = set()
        for step in self.steps:
            for need in OPS[step.name].needs:
                if need == "psf_fwhm" and step.params.get("fwhm_in") is not None:
                    continue
                wanted.add(need)
        return wanted

    def __repr__(self) -> str:
        return f"AugmentPipeline({self.spec!r}, out_size={self.out_size}, bands={self.bands})"

    # -- checks made once, when the pipeline is built ---------------------------------------------------------
    def _resolve(self, step: Step) -> Step:
        params = dict(step.params)
        if step.name in ("redden", "deredden"):
            params["r"] = self._extinction_r(step.name, params["r"])
        for key, param in OPS[step.name].params.items():
            if param.kind == "floats" and params[key] is not None and self.bands is not None:
                if len(params[key]) not in (1, len(self.bands)):
                    raise UsageProblem(f"{step.name}:{key} has {len(params[key])} values for {len(self.bands)} bands",
                                       "give one value, or one per band separated by '/'")
        if step.name == "psf" and self.pixscale is None:
            raise UsageProblem("the psf augmentation needs the pixel scale",
                               "the table's metadata galtools.pixscale_arcsec, or --pixscale")
        return Step(step.name, params, step.tag)

    def _extinction_r(self, name: str, given):
        if given is not None:
            return given
        if self.bands is None:
            raise UsageProblem(f"the {name} augmentation needs the band names to choose R_b",
                               f"give the bands, or {name}:r=R1/R2/... with one value per band")
        unknown = [b for b in self.bands if b not in SDSS_EXTINCTION_R]
        if unknown:
            raise UsageProblem(f"no default extinction coefficient for band(s) {','.join(unknown)}",
                               f"give {name}:r=R1/R2/... with one A_b/E(B-V) per band ({','.join(self.bands)})")
        return tuple(SDSS_EXTINCTION_R[b] for b in self.bands)

    # -- application ---------------------------------------------------------------------------------------------
    def __call__(self, images, object_ids, view: int = 0, seed: int = 0, ebv=None, psf_fwhm=None):
        """Augment a batch of raw-flux cutouts (torch (N,B,H,W)) into (N,B,out_size,out_size) float32 views.

        object_ids: N ids (ints or strings) that key the random streams; ebv: N catalogue E(B-V) for deredden;
        psf_fwhm: catalogue PSF FWHM in arcsec, N values or (N,B), for psf.
        """
        import torch

        from galtools.augment import ops

        x = self._check_images(images)
        n, bands, height, width = x.shape
        keys = streams.object_keys(object_ids)
        if len(keys) != n:
            raise BadData(f"{len(keys)} object ids for {n} cutouts", "give one object id per cutout")
        state = _State(geometry=_Geometry.identity(n, (height, width)), zoom=np.ones(n),
                       psf_px=None, psf_catalogue=psf_fwhm, ebv=ebv)
        cropped = False
        for step in self.steps:
            draws = streams.uniforms(streams.stream_keys(seed, keys, view, step.tag), _draw_count(step, bands))
            if OPS[step.name].geometric:
                cropped |= self._compose(step, draws, state)
                continue
            x = self._materialise(x, state)
            x = getattr(self, f"_{step.name}")(x, step, draws, state, keys, seed, view, ops)
        if not cropped:
            start = np.array([centre_crop_start(state.geometry.frame_hw[1], self.out_size),
                              centre_crop_start(state.geometry.frame_hw[0], self.out_size)], dtype=np.float64)
            state.geometry.then(np.broadcast_to(np.eye(2), (n, 2, 2)).copy(), np.broadcast_to(start, (n, 2)).copy(),
                                (self.out_size, self.out_size))
        x = self._materialise(x, state)
        if x is images:  # nothing changed the cutouts: still hand back a new tensor, never the caller's own
            return x.to(torch.float32).contiguous().clone()
        return x.contiguous() if x.dtype == torch.float32 else x.to(torch.float32).contiguous()

    def _check_images(self, images):
        import torch

        x = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.array(images, dtype=np.float32))
        if x.ndim != 4:
            raise BadData(f"cutouts must have shape (N, bands, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if self.bands is not None and x.shape[1] != len(self.bands):
            raise BadData(f"cutouts have {x.shape[1]} bands, the pipeline was built for {len(self.bands)} "
                          f"({','.join(self.bands)})", "check the table's galtools.bands")
        if min(x.shape[-2:]) < self.out_size:
            raise BadData(f"cutouts of {x.shape[-2]}x{x.shape[-1]} are smaller than the output size {self.out_size}",
                          "choose a smaller --size")
        return x

    def _materialise(self, x, state: "_State"):
        from galtools.augment import ops

        geometry = state.geometry
        if not geometry.is_identity():
            x = ops.warp(x, geometry.matrix, geometry.offset, geometry.frame_hw)
        state.geometry = _Geometry.identity(x.shape[0], tuple(x.shape[-2:]))
        return x

    # -- geometric steps: compose into the pending map; return True when the step crops to the output size --
    def _compose(self, step: Step, draws: np.ndarray, state: "_State") -> bool:
        from galtools.augment import ops

        geometry, p, n = state.geometry, step.params, draws.shape[0]
        if step.name == "rotate":
            span = p["max_angle"] - p["min_angle"]
            if p["step"] > 0:
                choices = max(1, int(np.ceil(span / p["step"] - 1e-9)))
                angles = p["min_angle"] + np.floor(draws[:, 0] * choices) * p["step"]
            else:
                angles = p["min_angle"] + draws[:, 0] * span
            geometry.about_centre(ops.rotation_matrices(angles))
        elif step.name == "flip":
            mirror = np.where(draws[:, 0] < p["p"], -1.0, 1.0)
            matrix = np.zeros((n, 2, 2))
            matrix[:, 0, 0], matrix[:, 1, 1] = mirror, 1.0
            geometry.about_centre(matrix)
        elif step.name == "scale":
            factor = p["min_factor"] + draws[:, 0] * (p["max_factor"] - p["min_factor"])
            geometry.about_centre(np.eye(2)[None, :, :] / factor[:, None, None])
            state.zoom = state.zoom * factor
            if state.psf_px is not None:
                state.psf_px = state.psf_px * factor[:, None]
        elif step.name == "jitter":
            span = 2 * p["max_shift"] + 1
            shifts = np.minimum(np.floor(draws[:, :2] * span), span - 1) - p["max_shift"]
            height, width = geometry.frame_hw
            start = np.array([centre_crop_start(width, self.out_size), centre_crop_start(height, self.out_size)])
            geometry.then(np.broadcast_to(np.eye(2), (n, 2, 2)).copy(), start[None, :] - shifts,
                          (self.out_size, self.out_size))
            return True
        return False

    # -- photometric steps ---------------------------------------------------------------------------------------
    def _redden(self, x, step, draws, state, keys, seed, view, ops):
        p = step.params
        ebv = p["ebv_min"] + draws[:, 0] * (p["ebv_max"] - p["ebv_min"])
        return ops.scale_bands(x, ops.extinction_factors(ebv, _bandwise(p["r"], x.shape[1])))

    def _gain(self, x, step, draws, state, keys, seed, view, ops):
        p = step.params
        magnitudes = (2 * draws[:, :1] - 1) * p["mag"] + (2 * draws[:, 1:] - 1) * p["colour"]
        return ops.scale_bands(x, 10.0 ** (-0.4 * magnitudes))

    def _deredden(self, x, step, draws, state, keys, seed, view, ops):
        if state.ebv is None:
            raise UsageProblem("the deredden augmentation needs the catalogue E(B-V)", "an ebv column, or --ebv-column")
        ebv = _per_object(state.ebv, x.shape[0], "ebv")
        return ops.scale_bands(x, 1.0 / ops.extinction_factors(ebv, _bandwise(step.params["r"], x.shape[1])))

    def _noise(self, x, step, draws, state, keys, seed, view, ops):
        import torch

        p, (n, bands) = step.params, x.shape[:2]
        if p["sigma_in"] is not None:
            current = ops.host_to_device(np.broadcast_to(_bandwise(p["sigma_in"], bands), (n, bands))
                                         .astype(np.float32), x.device)
        else:   # measured on the device and kept there: no host round trip (a GPU sync) per batch
            current = ops.estimate_noise(x, p["border"]).to(torch.float32)
        fraction = ops.host_to_device(np.asarray(draws, dtype=np.float32), x.device)
        if p["sigma_min"] is not None:
            low, high = (ops.host_to_device(np.asarray(_bandwise(p[k], bands), dtype=np.float32), x.device)
                         for k in ("sigma_min", "sigma_max"))
            target = low[None, :] + fraction * (high - low)[None, :]
        else:
            target = (p["factor_min"] + fraction * (p["factor_max"] - p["factor_min"])) * current
        # the pixels' own stream, so the per-object draws above do not shift when the image size changes
        pixel_streams = streams.stream_keys(seed, keys, view, step.tag + "/pixels")
        normals = streams.normal_field(pixel_streams, tuple(x.shape[1:]), x.device)
        return ops.add_noise_to_level(x, current, target, normals)

    def _psf(self, x, step, draws, state, keys, seed, view, ops):
        p, (n, bands) = step.params, x.shape[:2]
        if state.psf_px is None:
            if state.psf_catalogue is not None:
                fwhm_arcsec = _per_band(state.psf_catalogue, n, bands, "psf_fwhm")
            elif p["fwhm_in"] is not None:
                fwhm_arcsec = np.broadcast_to(_bandwise(p["fwhm_in"], bands), (n, bands))
            else:
                raise UsageProblem("the psf augmentation needs the input PSF FWHM",
                                   "psf_fwhm_<band> columns, or psf:fwhm_in=ARCSEC")
            state.psf_px = np.asarray(fwhm_arcsec, dtype=np.float64) / self.pixscale * state.zoom[:, None]
        target_px = (p["fwhm_min"] + draws[:, 0] * (p["fwhm_max"] - p["fwhm_min"]))[:, None] / self.pixscale
        blur_fwhm = np.sqrt(np.clip(target_px**2 - state.psf_px**2, 0.0, None))
        state.psf_px = np.maximum(state.psf_px, target_px)
        return ops.gaussian_blur(x, blur_fwhm / ops.FWHM_PER_SIGMA)


@dataclass
class _State:
    geometry: _Geometry
    zoom: np.ndarray                  # (n,) how many times larger objects appear than in the input
    psf_px: np.ndarray | None         # (n, bands) current PSF FWHM in output pixels, once known
    psf_catalogue: object             # catalogue PSF FWHM of the input, arcsec, (n,) or (n, bands); checked when used
    ebv: object                       # (n,) catalogue E(B-V); checked when used


def _draw_count(step: Step, bands: int) -> int:
    return {"jitter": 2, "noise": bands, "gain": 1 + bands}.get(step.name, 1)


def _bandwise(values, bands: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 1:
        return np.full(bands, values[0])
    if values.size != bands:
        raise UsageProblem(f"{values.size} per-band values for {bands} bands", "give one value per band")
    return values


def _as_numpy(values):
    if values is None:
        return None
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _per_object(values, n: int, name: str):
    values = _as_numpy(values)
    if values is None:
        return None
    values = values.reshape(-1)
    if values.size != n:
        raise BadData(f"{name} has {values.size} values for {n} cutouts", f"give one {name} per cutout")
    if not np.all(np.isfinite(values)):
        raise BadData(f"{name} holds NaN or infinite values", f"fill or drop the rows with a missing {name}")
    return values


def _per_band(values, n: int, bands: int, name: str):
    values = _as_numpy(values)
    if values is None:
        return None
    if values.ndim == 1:
        values = values[:, None]
    if values.shape[0] != n or values.shape[1] not in (1, bands):
        raise BadData(f"{name} has shape {values.shape} for {n} cutouts of {bands} bands",
                      f"give {name} per cutout, or per cutout and band")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise BadData(f"{name} holds NaN, infinite or negative values", f"fill or drop the rows with a bad {name}")
    return np.broadcast_to(values, (n, bands)).astype(np.float64)

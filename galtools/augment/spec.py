"""The augmentation pipeline spec: every operation, its parameters, their defaults and documentation, in one place.

A spec is the text given to ``gal-augment --ops`` and ``gal-train --ops`` and stored in output metadata
(``galtools.augment``)::

    rotate,jitter:max_shift=7,noise,redden:ebv_max=0.5,psf
    redden:ebv_min=0.1:ebv_max=0.3          # parameters of one operation separated by ':' ...
    redden:ebv_min=0.1,ebv_max=0.3          # ... or by ',' (a ',' item without an operation name continues it)
    redden:r=4.239/3.303/2.285/1.698/1.263  # per-band lists separated by '/'

Operations run in the order given.  Consecutive geometric operations (rotate, flip, scale, jitter) are fused into
one resampling of the cutout, so a chain interpolates once.  ``jitter`` crops to the output size; without it the
output is centre-cropped after the last operation.

This module does not import torch: tools can check a spec before they load it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from galtools.errors import UsageProblem

# Galactic extinction A_b / E(B-V) for SDSS ugriz (Schlafly & Finkbeiner 2011, R_V = 3.1), as in the SDSS catalogues.
SDSS_EXTINCTION_R = {"u": 4.239, "g": 3.303, "r": 2.285, "i": 1.698, "z": 1.263}


@dataclass(frozen=True)
class Param:
    default: object          # float | int | tuple[float, ...] | None (None: unset, see doc)
    kind: str                # "float", "int" or "floats" (one value per band, or one for all bands)
    doc: str
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Op:
    geometric: bool
    doc: str
    params: dict[str, Param] = field(default_factory=dict)
    ordered: tuple[tuple[str, str], ...] = ()   # pairs (low, high) that must satisfy low <= high
    needs: tuple[str, ...] = ()                 # catalogue inputs the operation reads ("ebv", "psf_fwhm")


OPS: dict[str, Op] = {
    "rotate": Op(True, "rotation by a random angle about the cutout centre, counter-clockwise as displayed "
                       "(angle 90 = torch.rot90); reflect padding, so no empty corners", {
        "min_angle": Param(0.0, "float", "smallest angle, degrees"),
        "max_angle": Param(360.0, "float", "largest angle (excluded), degrees; angles are uniform in between"),
        "step": Param(0.0, "float", "if > 0, angles are min_angle + k*step (step=90: lossless quarter turns)",
                      minimum=0.0),
    }, ordered=(("min_angle", "max_angle"),)),
    "flip": Op(True, "left-right mirror with probability p (off unless listed: a mirror turns a clockwise "
                     "spiral into an anticlockwise one); with rotate it covers all mirror images", {
        "p": Param(0.5, "float", "probability of the mirror", minimum=0.0, maximum=1.0),
    }),
    "scale": Op(True, "size scaling by a random factor about the centre (surface brightness kept; the object "
                      "appears factor times larger)", {
        "min_factor": Param(0.9, "float", "smallest factor", minimum=1e-3),
        "max_factor": Param(1.1, "float", "largest factor; factors are uniform in between", minimum=1e-3),
    }, ordered=(("min_factor", "max_factor"),)),
    "jitter": Op(True, "random integer shift of up to max_shift pixels in x and y, then a centre crop to the "
                       "output size", {
        "max_shift": Param(7, "int", "largest shift J in pixels; shifts are uniform integers in [-J, J]",
                           minimum=0),
    }),
    "noise": Op(False, "Gaussian noise added so that each band's total noise reaches a sampled target "
                       "(only the difference in quadrature is added; nothing is added where the target is below "
                       "the noise already there)", {
        "factor_min": Param(1.0, "float", "target = factor x input noise; smallest factor", minimum=0.0),
        "factor_max": Param(2.0, "float", "largest factor; drawn uniformly per band", minimum=0.0),
        "sigma_min": Param(None, "floats", "absolute target range instead of factors: smallest target noise "
                                          "per band, flux units (use with sigma_max)", minimum=0.0),
        "sigma_max": Param(None, "floats", "largest absolute target noise per band, flux units", minimum=0.0),
        "sigma_in": Param(None, "floats", "noise already in the input per band, flux units; unset: measured as "
                                         "1.4826 x MAD of the outer frame of each cutout", minimum=0.0),
        "border": Param(4, "int", "width in pixels of the outer frame used to measure the input noise",
                        minimum=1),
    }, ordered=(("factor_min", "factor_max"), ("sigma_min", "sigma_max"))),
    "redden": Op(False, "Galactic reddening: each band multiplied by 10^(-0.4 R_b E(B-V)), E(B-V) uniform in "
                        "[ebv_min, ebv_max]", {
        "ebv_min": Param(0.0, "float", "smallest E(B-V), magnitudes", minimum=0.0),
        "ebv_max": Param(0.5, "float", "largest E(B-V), magnitudes", minimum=0.0),
        "r": Param(None, "floats", "R_b = A_b/E(B-V) per band; unset: SDSS values for u,g,r,i,z "
                                  "(4.239,3.303,2.285,1.698,1.263), required for other band names"),
    }, ordered=(("ebv_min", "ebv_max"),)),
    "gain": Op(False, "brightness and colour jitter: each band multiplied by 10^(-0.4 (m + c_b)), one m uniform "
                      "in [-mag, mag] per cutout and one c_b uniform in [-colour, colour] per band (for images "
                      "whose brightness and colours are a display choice, such as 8-bit composites)", {
        "mag": Param(0.3, "float", "largest change of the whole cutout's brightness, magnitudes", minimum=0.0),
        "colour": Param(0.1, "float", "largest change of each band against the others, magnitudes", minimum=0.0),
    }),
    "deredden": Op(False, "removes the catalogue's Galactic extinction: each band multiplied by "
                          "10^(+0.4 R_b E(B-V)) with the object's E(B-V) (column ebv)", {
        "r": Param(None, "floats", "R_b per band; unset: SDSS ugriz values, required for other band names"),
    }, needs=("ebv",)),
    "psf": Op(False, "Gaussian blur that brings each band's PSF to a sampled target FWHM (the blur's FWHM is the "
                     "difference in quadrature; bands already worse than the target are left alone)", {
        "fwhm_min": Param(1.0, "float", "smallest target FWHM, arcsec", minimum=0.0),
        "fwhm_max": Param(2.0, "float", "largest target FWHM, arcsec; one target per object for all bands",
                          minimum=0.0),
        "fwhm_in": Param(None, "floats", "PSF FWHM of the input per band, arcsec; used when no catalogue PSF "
                                        "(psf_fwhm_<band> columns) is given", minimum=0.0),
    }, ordered=(("fwhm_min", "fwhm_max"),), needs=("psf_fwhm",)),
}

DEFAULT_SPEC = "rotate,jitter,psf,redden,noise"


@dataclass(frozen=True)
class Step:
    name: str
    params: dict[str, object]
    tag: str   # names the step's random stream: operation name and occurrence, e.g. "noise#0"


def describe_ops() -> str:
    """Every operation and parameter with its default, for --help and the README."""
    lines = []
    for name, op in OPS.items():
        lines.append(f"{name}: {op.doc}")
        for key, param in op.params.items():
            default = "unset" if param.default is None else format_value(param.default)
            lines.append(f"    {key}={default}  {param.doc}")
    return "\n".join(lines)


def format_value(value) -> str:
    """Shortest text that reads back to the same value: 7, 0.5, 4.239/3.303."""
    if isinstance(value, (tuple, list)):
        return "/".join(format_value(v) for v in value)
    if isinstance(value, float):
        if value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    return str(value)


def _parse_value(op_name: str, key: str, param: Param, text: str):
    where = f"{op_name}:{key}={text}"
    try:
        if param.kind == "int":
            as_float = float(text)
            if as_float != int(as_float):
                raise ValueError
            values = [int(as_float)]
        elif param.kind == "float":
            values = [float(text)]
        else:
            values = [float(v) for v in text.split("/")]
    except ValueError:
        expected = {"int": "an integer", "float": "a number", "floats": "numbers separated by '/'"}[param.kind]
        raise UsageProblem(f"bad augmentation parameter {where!r}: expected {expected}") from None
    for v in values:
        if v != v or v in (float("inf"), float("-inf")):
            raise UsageProblem(f"bad augmentation parameter {where!r}: not a finite number")
        if param.minimum is not None and v < param.minimum:
            raise UsageProblem(f"bad augmentation parameter {where!r}: must be >= {format_value(param.minimum)}")
        if param.maximum is not None and v > param.maximum:
            raise UsageProblem(f"bad augmentation parameter {where!r}: must be <= {format_value(param.maximum)}")
    return tuple(values) if param.kind == "floats" else values[0]


def _split_items(spec: str) -> list[tuple[str, list[str]]]:
    """'a:k=1,k2=2,b' -> [('a', ['k=1', 'k2=2']), ('b', [])]."""
    items: list[tuple[str, list[str]]] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        head, *assignments = [p.strip() for p in token.split(":")]
        if "=" in head:  # a parameter continuing the previous operation
            if not items:
                raise UsageProblem(f"augmentation spec {spec!r} starts with a parameter {head!r}",
                                   "name the operation first, e.g. jitter:max_shift=7")
            items[-1][1].extend([head, *assignments])
        else:
            items.append((head, assignments))
    return items


def parse_spec(spec: str) -> list[Step]:
    """Parse a spec into steps with every parameter filled (defaults where not given); errors name the fix."""
    steps: list[Step] = []
    occurrences: dict[str, int] = {}
    for name, assignments in _split_items(spec or ""):
        op = OPS.get(name.lower())
        if op is None:
            raise UsageProblem(f"unknown augmentation {name!r}", f"choose from {', '.join(OPS)}")
        name = name.lower()
        params = {key: p.default for key, p in op.params.items()}
        for assignment in assignments:
            if not assignment:
                continue
            key, sep, text = assignment.partition("=")
            key = key.strip()
            if not sep or key not in op.params:
                raise UsageProblem(f"unknown parameter {assignment!r} for augmentation {name!r}",
                                   f"{name} takes {', '.join(k + '=' for k in op.params)}")
            params[key] = _parse_value(name, key, op.params[key], text.strip())
        for low, high in op.ordered:
            lo, hi = params[low], params[high]
            if lo is None or hi is None:
                if (lo is None) != (hi is None):
                    raise UsageProblem(f"augmentation {name!r} needs both {low} and {high}")
                continue
            lo_values = lo if isinstance(lo, tuple) else (lo,)
            hi_values = hi if isinstance(hi, tuple) else (hi,)
            if len(lo_values) != len(hi_values) or any(a > b for a, b in zip(lo_values, hi_values)):
                raise UsageProblem(f"augmentation {name!r}: {low} must not exceed {high} "
                                   f"(got {format_value(lo)} and {format_value(hi)})")
        steps.append(Step(name, params, f"{name}#{occurrences.get(name, 0)}"))
        occurrences[name] = occurrences.get(name, 0) + 1
    return steps


def canonical_spec(steps: list[Step]) -> str:
    """Every step with every set parameter, in declaration order: parse_spec(canonical) gives the same steps."""
    parts = []
    for step in steps:
        values = [f"{key}={format_value(value)}" for key, value in step.params.items() if value is not None]
        parts.append(":".join([step.name, *values]))
    return ",".join(parts)

"""Counter-based random streams: one independent stream per (seed, object_id, view, operation).

A stateful generator shared by a batch would make an object's view depend on which objects came before it in the
batch, and torch's CPU and CUDA generators produce different numbers.  Here every random number is a pure function
of (seed, object_id, view, operation, counter), computed with the splitmix64 finaliser (Steele, Lea & Flood 2014)
in 64-bit integer arithmetic, which is exact and the same on every device: numpy uint64 for the few per-object
parameters, torch int64 (two's complement, wrapping) for per-pixel noise on the images' own device.
"""
from __future__ import annotations

import hashlib

import numpy as np

GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX_1 = 0xBF58476D1CE4E5B9
MIX_2 = 0x94D049BB133111EB
MASK_64 = (1 << 64) - 1


def _as_signed(value: int) -> int:
    """A 64-bit pattern as the signed int64 that torch arithmetic uses."""
    value &= MASK_64
    return value - (1 << 64) if value >= 1 << 63 else value


def splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 of each uint64: advance by the golden gamma, then mix (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = x + np.uint64(GOLDEN_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX_1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX_2)
        return z ^ (z >> np.uint64(31))


def hash_text(text: str) -> int:
    """A stable 64-bit number for a string (object ids that are strings, operation names)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def object_keys(object_ids) -> np.ndarray:
    """uint64 key per object: integer ids as their two's-complement bits, string ids by hash."""
    ids = np.asarray(object_ids)
    if ids.ndim != 1:
        ids = ids.reshape(-1)
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64).view(np.uint64) if ids.dtype.kind == "i" else ids.astype(np.uint64)
    if ids.dtype.kind == "b":
        return ids.astype(np.uint64)
    keys = []
    for value in ids.tolist():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            keys.append(int(value) & MASK_64)
        else:
            keys.append(hash_text(str(value)))
    return np.asarray(keys, dtype=np.uint64)


def stream_keys(seed: int, keys: np.ndarray, view: int, tag: str) -> np.ndarray:
    """The key of each object's stream for one operation of one view."""
    with np.errstate(over="ignore"):
        h = splitmix64(np.uint64(int(seed) & MASK_64))
        h = splitmix64(np.asarray(keys, dtype=np.uint64) ^ h)
        h = splitmix64(h ^ np.uint64(int(view) & MASK_64))
        return splitmix64(h ^ np.uint64(hash_text(tag)))


def uniforms(stream: np.ndarray, count: int) -> np.ndarray:
    """(n, count) float64 uniforms in [0, 1): draw k of object i is a function of (stream[i], k) only."""
    counters = np.arange(count, dtype=np.uint64) * np.uint64(GOLDEN_GAMMA)
    with np.errstate(over="ignore"):
        bits = splitmix64(np.asarray(stream, dtype=np.uint64)[:, None] + counters[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


# --------------------------------------------------------------------------------------------------------------
# torch: per-pixel Gaussian noise, on the images' device
CPU_CHUNK = 16384  # int64 elements hashed at a time on CPU: the dozen passes of splitmix64 stay in cache (3-4x faster)


def _shift_right_logical(x, bits: int, out=None):
    """x >>> bits on int64 (torch's >> is arithmetic: mask off the sign fill)."""
    shifted = torch_module().bitwise_right_shift(x, bits, out=out) if out is not None else x >> bits
    return shifted.bitwise_and_((1 << (64 - bits)) - 1)


def torch_module():
    import torch

    return torch


def splitmix64_torch(x, scratch=None):
    """splitmix64 of an int64 tensor, in place; bit-identical to :func:`splitmix64` on the same 64-bit patterns."""
    scratch = scratch if scratch is not None else x.new_empty(x.shape)
    x.add_(_as_signed(GOLDEN_GAMMA))
    x.bitwise_xor_(_shift_right_logical(x, 30, out=scratch)).mul_(_as_signed(MIX_1))
    x.bitwise_xor_(_shift_right_logical(x, 27, out=scratch)).mul_(_as_signed(MIX_2))
    return x.bitwise_xor_(_shift_right_logical(x, 31, out=scratch))


def _box_muller(bits, out_pairs):
    """Two 24-bit uniforms in (0, 1) from each hash (exact in float32), hence two standard normals."""
    torch = torch_module()
    scale = 2.0**-24
    u1 = (_shift_right_logical(bits, 40).to(torch.float32) + 0.5) * scale
    u2 = ((_shift_right_logical(bits, 16) & 0xFFFFFF).to(torch.float32) + 0.5) * scale
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * np.pi) * u2
    out_pairs[:, 0] = radius * torch.cos(angle)
    out_pairs[:, 1] = radius * torch.sin(angle)


def normal_field(stream: np.ndarray, shape: tuple[int, ...], device):
    """(n, *shape) float32 standard normals; object i's field depends only on stream[i] (Box-Muller on hashes)."""
    torch = torch_module()
    device = torch.device(device)
    n = len(stream)
    size = int(np.prod(shape))
    pairs = (size + 1) // 2
    from galtools.augment.ops import host_to_device

    keys = host_to_device(np.asarray(stream, dtype=np.uint64).view(np.int64).copy(), device)
    counters = torch.arange(pairs, dtype=torch.int64, device=device) * _as_signed(GOLDEN_GAMMA)
    bits = (keys[:, None] + counters[None, :]).reshape(-1)
    chunk = CPU_CHUNK if device.type == "cpu" else bits.numel()
    scratch = bits.new_empty(min(chunk, bits.numel()))
    for start in range(0, bits.numel(), chunk):
        part = bits[start:start + chunk]
        splitmix64_torch(part, scratch[:part.numel()])
    field = torch.empty((n * pairs, 2), dtype=torch.float32, device=device)
    _box_muller(bits, field)  # the transcendental functions run best on the whole field at once
    return field.reshape(n, 2 * pairs)[:, :size].reshape(n, *shape)

"""Augmentation speed: a batch of 512 cutouts 5x107x107 (Hayat et al. 2021's SDSS size) to 64x64 through the full chain,
against baselines measured in the same run:

- CPU: a plain torch centre crop + copy of the same batch (the least any loader does) and a forward pass of the
  tiny encoder on the 64x64 result;
- GPU (``--device cuda``): one MoCo-like training step of resnet50-hayat (query forward+backward with bf16 autocast,
  key forward, SGD) on batch 512, which the two augmented views of a batch must cost under 5% of.

    python benchmarks/bench_augment.py [--threads 2] [--device cpu|cuda] [--batch 512]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _record import median_seconds, record  # noqa: E402

BANDS = ["u", "g", "r", "i", "z"]
PIXSCALE = 0.396
CHAINS = {
    "default": "rotate,jitter,psf,redden,noise",                            # gal-augment's and gal-train's default
    "strong": "rotate,jitter:max_shift=7,noise,redden:ebv_max=0.5,psf",     # wider shifts and reddening, PSF last
}


def galaxy_batch(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Elliptical Gaussian galaxies with SDSS-like colours on Gaussian sky noise, float32 (n, 5, size, size)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    out = np.empty((n, 5, size, size), np.float32)
    colours = np.array([0.3, 1.0, 1.6, 2.0, 2.3])
    for i in range(n):
        angle, major, minor = rng.uniform(0, np.pi), rng.uniform(3, 12), rng.uniform(1.5, 4)
        along, across = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
        blob = np.exp(-0.5 * ((along / major) ** 2 + (across / minor) ** 2))
        out[i] = colours[:, None, None] * blob * rng.lognormal(0, 1) + rng.normal(0, 0.05, (5, size, size))
    return out


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(func, device, repeats):
    func()  # warm-up: allocator, kernels, caches
    sync(device)

    def once():
        func()
        sync(device)

    return median_seconds(once, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--size", type=int, default=107)
    parser.add_argument("--out", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import torch

    from galtools.augment import AugmentPipeline
    from galtools.models import registry

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.from_numpy(galaxy_batch(args.batch, args.size)).to(device)
    ids = np.arange(args.batch)
    psf = np.random.default_rng(1).uniform(0.9, 1.6, size=(args.batch, 5))
    where = f"{args.batch} x 5x{args.size}x{args.size} -> {args.out}x{args.out}, {device.type}" + \
            (f" {args.threads} threads, load average {os.getloadavg()[0]:.1f}" if device.type == "cpu" else "")

    start = (args.size - args.out) // 2
    crop = timed(lambda: images[:, :, start:start + args.out, start:start + args.out].contiguous(), device,
                 args.repeats)
    chain_times = {}
    for label, spec in CHAINS.items():
        pipe = AugmentPipeline.from_spec(spec, out_size=args.out, bands=BANDS, pixscale=PIXSCALE)
        chain_times[label] = timed(lambda: pipe(images, ids, view=0, seed=1, psf_fwhm=psf), device, args.repeats)
        steps, previous = spec.split(","), 0.0
        for k in range(1, len(steps) + 1):   # the chain's prefixes: each difference is what one step adds
            prefix = AugmentPipeline.from_spec(",".join(steps[:k]), out_size=args.out, bands=BANDS, pixscale=PIXSCALE)
            seconds = timed(lambda: prefix(images, ids, view=0, seed=1, psf_fwhm=psf), device, 3)
            print(f"  + {steps[k - 1]:<24} {(seconds - previous) * 1000:8.1f} ms  (prefix {seconds * 1000:.1f} ms)")
            previous = seconds
        print(f"{label} chain ({spec}): {chain_times[label] * 1000:.1f} ms")

    chain = chain_times["default"]
    for label, spec in CHAINS.items():
        seconds = chain_times[label]
        record(f"bench_augment: {label} chain {spec}, {where}",
               f"{seconds * 1000:.0f} ms ({args.batch / seconds:.0f} cutouts/s)",
               f"torch centre crop + copy: {crop * 1000:.1f} ms", f"{seconds / crop:.0f}")

    if device.type == "cpu":
        encoder = registry.build_encoder("tiny", in_chans=5).eval()
        batch64 = images[:, :, start:start + args.out, start:start + args.out].contiguous()

        def forward():
            with torch.inference_mode():
                encoder(batch64)

        tiny = timed(forward, device, args.repeats)
        record(f"bench_augment: default chain vs tiny encoder forward, {where}", f"{chain * 1000:.0f} ms",
               f"tiny encoder forward (inference): {tiny * 1000:.0f} ms", f"{chain / tiny:.2f}")
    else:
        step = moco_like_step_seconds(registry, args, device)
        two_views = 2 * chain
        record(f"bench_augment: two views of the default chain vs a resnet50-hayat MoCo step, {where}",
               f"{two_views * 1000:.1f} ms", f"bf16 training step, batch {args.batch}: {step * 1000:.0f} ms",
               f"{two_views / step:.3f} (goal < 0.05)")


def moco_like_step_seconds(registry, args, device) -> float:
    """Query encoder forward+backward and key encoder forward on one batch, bf16 autocast, SGD: a bare MoCo step."""
    import torch

    query = registry.build_encoder("resnet50-hayat", in_chans=5).to(device).to(memory_format=torch.channels_last)
    key = registry.build_encoder("resnet50-hayat", in_chans=5).to(device).to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(query.parameters(), lr=0.03, momentum=0.9)
    views = [torch.randn(args.batch, 5, args.out, args.out, device=device).contiguous(memory_format=torch.channels_last)
             for _ in range(2)]      # channels_last needs 4-d tensors: one per view

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            q = query(views[0])
            with torch.no_grad():
                k = key(views[1])
            loss = -(torch.nn.functional.normalize(q.float(), dim=1) *
                     torch.nn.functional.normalize(k.float(), dim=1)).sum(dim=1).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    return timed(step, device, args.repeats)


if __name__ == "__main__":
    main()

"""Render a range of objects, in parallel over processes, deterministically.

Object k of a run with seed s is drawn from its own generator, seeded by (s, k), so its pixels and
labels do not depend on how the range is split into chunks, workers (-j) or shards.
"""
from __future__ import annotations

import multiprocessing
import os
from collections import deque
from itertools import islice
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from galtools.sim.filters import BANDS
from galtools.sim.population import draw_scene
from galtools.sim.render import render_scene

SDSS_PIXSCALE = 0.396  # arcsec per pixel
SIZE_RANGE = (64, 128)
_SEED_DOMAIN = 0x6A15  # keeps gal-sim's streams apart from other tools' streams of the same --seed

# Label columns in output order, with their numpy types.
LABEL_COLUMNS = (
    [("ra", np.float64), ("dec", np.float64), ("z_true", np.float32), ("sed_type", str),
     ("morph_class", str), ("bulge_frac", np.float32), ("half_light_arcsec", np.float32),
     ("axis_ratio", np.float32), ("position_angle_deg", np.float32), ("abs_mag_r", np.float32)]
    + [(f"mag_{band}", np.float32) for band in BANDS]
    + [("ebv", np.float32)]
    + [(f"psf_fwhm_{band}", np.float32) for band in BANDS]
    + [(f"sky_sigma_{band}", np.float32) for band in BANDS]
    + [("n_neighbors", np.int16), ("is_anomaly", np.bool_), ("anomaly_kind", str)]
)


@dataclass(frozen=True)
class SimConfig:
    seed: int = 0
    size: int = 64
    anomaly_fraction: float = 0.0
    neighbour_rate: float = 0.2
    pixscale: float = SDSS_PIXSCALE

    def __post_init__(self):
        if not SIZE_RANGE[0] <= self.size <= SIZE_RANGE[1]:
            raise ValueError(f"size {self.size} outside {SIZE_RANGE[0]}..{SIZE_RANGE[1]}")
        if not 0.0 <= self.anomaly_fraction <= 1.0:
            raise ValueError("anomaly_fraction must be in 0..1")
        if not 0.0 <= self.neighbour_rate <= 1.0:
            raise ValueError("neighbour_rate must be in 0..1")
        if self.seed < 0:
            raise ValueError("seed must be >= 0")


def object_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_SEED_DOMAIN, seed, index]))


def object_scene(config: SimConfig, index: int):
    """(scene, generator positioned after the scene's draws) of object ``index``."""
    rng = object_rng(config.seed, index)
    scene = draw_scene(rng, config.size, config.pixscale, config.anomaly_fraction, config.neighbour_rate)
    return scene, rng


def render_object(config: SimConfig, index: int) -> tuple[np.ndarray, dict]:
    """(image (5, size, size) float32 in nanomaggies, labels) of object ``index``."""
    scene, rng = object_scene(config, index)
    image = render_scene(scene, config.size, config.pixscale, rng)
    return image, scene.labels


@dataclass
class Chunk:
    """Rendered objects start..stop-1: images (n, 5, size, size) and label columns (numpy arrays)."""

    start: int
    stop: int
    images: np.ndarray
    labels: dict


def render_range(config: SimConfig, start: int, stop: int) -> Chunk:
    images = np.empty((stop - start, len(BANDS), config.size, config.size), np.float32)
    rows = []
    for k, index in enumerate(range(start, stop)):
        images[k], labels = render_object(config, index)
        rows.append(labels)
    columns = {"object_id": np.arange(start, stop, dtype=np.int64)}
    for name, dtype in LABEL_COLUMNS:
        values = [row[name] for row in rows]
        columns[name] = np.array(values, dtype=object if dtype is str else dtype)
    return Chunk(start, stop, images, columns)


def _render_task(task):
    config, start, stop = task
    return render_range(config, start, stop)


def _warm_tables():
    """Fill the per-process tables (K-corrections, star colours) once, before the first chunk."""
    from galtools.sim.photometry import kcorrection_table, star_colour_table

    kcorrection_table()
    star_colour_table()


def iter_chunks(config: SimConfig, start: int, stop: int, jobs: int = 1, chunk_size: int = 64) -> Iterator[Chunk]:
    """Chunks of objects start..stop-1 in order; with jobs > 1 they render in worker processes."""
    tasks = [(config, s, min(s + chunk_size, stop)) for s in range(start, stop, chunk_size)]
    _warm_tables()
    if jobs <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _render_task(task)
        return
    # Not fork: the caller may already run threads (pyarrow's writer, BLAS pools), and a child forked while one of
    # them holds a lock waits for it forever (a run hung that way once, its output written but one worker stuck).
    # A fork server starts from a fresh interpreter; its workers fork from that, so they start fast and clean.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    workers = min(jobs, len(tasks))
    with context.Pool(processes=workers) as pool:
        # At most two chunks per worker in flight: memory stays bounded however large the run.
        queued = iter(tasks)
        pending = deque(pool.apply_async(_render_task, (task,)) for task in islice(queued, 2 * workers))
        while pending:
            chunk = pending.popleft().get()
            for task in islice(queued, 1):
                pending.append(pool.apply_async(_render_task, (task,)))
            yield chunk


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1

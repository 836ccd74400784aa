"""gal-sim's run: render a range of objects into a sink, keeping the first ones for a montage, and draw it."""
from __future__ import annotations

import contextlib
import itertools

from galtools.sim.simulate import iter_chunks

MONTAGE_COLUMNS = 8


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, amount: int = 1) -> None:
        """Nothing to show."""


def render_to(config, start: int, stop: int, jobs: int, sink=None, keep: int = 0, progress=None):
    """Render objects start..stop-1 with ``jobs`` worker processes into ``sink`` (galtools.io.sink; None: nothing
    written) and return the first ``keep`` (images, labels) for the montage. ``progress(total)`` may give a
    context manager with ``advance(n)`` (a progress bar); it is entered after the workers start (fork before its
    thread exists)."""
    from galtools.sim.table import chunk_record_batch, output_schema

    kept_images, kept_labels = [], []
    if sink is not None:
        sink.expect_schema(output_schema(config.size))
    with contextlib.ExitStack() as stack:
        chunks = iter_chunks(config, start, stop, jobs=jobs)
        stack.callback(chunks.close)  # stops the workers at once on an error or a closed pipe
        first = next(chunks, None)    # the first chunk starts the worker processes
        with (progress or (lambda total: _NoProgress()))(stop - start) as bar:
            for chunk in itertools.chain([first] if first is not None else [], chunks):
                if sink is not None:
                    sink.write(chunk_record_batch(chunk))
                _keep(chunk, keep, kept_images, kept_labels)
                bar.advance(chunk.stop - chunk.start)
    return kept_images, kept_labels


def _keep(chunk, keep, kept_images, kept_labels):
    have = sum(len(images) for images in kept_images)
    if have < keep:
        take = min(keep - have, chunk.stop - chunk.start)
        kept_images.append(chunk.images[:take])
        kept_labels.append({name: values[:take] for name, values in chunk.labels.items()})


def montage_caption(labels: dict, k: int) -> str:
    """Two lines under a cutout: redshift and class, then the anomaly kind if any."""
    first = f"z={labels['z_true'][k]:.3f} {labels['morph_class'][k]}"
    kind = labels["anomaly_kind"][k]
    return first + (f"\n{kind}" if kind != "none" else f"\nr={labels['mag_r'][k]:.2f}")


def draw_sim_montage(kept, path, config) -> int:
    """The kept cutouts as gri composites, MONTAGE_COLUMNS a row, with redshift and class under each."""
    import numpy as np

    from galtools.errors import BadData
    from galtools.sim import BANDS
    from galtools.viz import rgb_composite, save_montage

    kept_images, kept_labels = kept
    if not kept_images:
        raise BadData("no cutouts to draw: this shard is empty", "use fewer shards or a larger -n")
    images = np.concatenate(kept_images)
    labels = {name: np.concatenate([part[name] for part in kept_labels]) for name in kept_labels[0]}
    pictures = rgb_composite(images, list(BANDS))
    rows, captions = [], []
    for first in range(0, len(pictures), MONTAGE_COLUMNS):
        indices = range(first, min(first + MONTAGE_COLUMNS, len(pictures)))
        rows.append([pictures[k] for k in indices])
        captions.append([montage_caption(labels, k) for k in indices])
    save_montage(rows, path, captions=captions, cell=max(96, config.size),
                 title=f"gal-sim --seed {config.seed} --size {config.size}: gri, arcsinh stretch")
    return len(pictures)

"""gal-sim: mock SDSS ugriz cutouts with known truth, rendered with GalSim."""
from __future__ import annotations

import contextlib
import itertools
import sys

import click

from galtools.cli.common import galtools_command, log, output_options, progress_bar, seed_option, shard_option

EXAMPLE = """gal-sim -n 20000 -j 2 -o cutouts.fits
gal-sim -n 2000 --anomaly-fraction 0.05 --montage sample.png -o mixed.parquet
gal-sim -n 100 | gal-info -
gal-sim -n 100000 --shard 3/10 -o 'parts/sim-{shard}.parquet'"""

MONTAGE_COLUMNS = 8


@galtools_command("gal-sim", example=EXAMPLE)
@click.option("-n", "--count", type=click.IntRange(1), required=True, help="Objects to simulate (before --shard).")
@seed_option
@click.option("--size", type=click.IntRange(64, 128), default=64, show_default=True,
              help="Cutout width and height in pixels (0.396 arcsec each).")
@click.option("--anomaly-fraction", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Fraction of objects that are anomalies: stars, satellite trails, cosmic rays, bad columns, "
                   "mergers, strong lenses, galaxies beyond the z range (see docs/anomalies.md).")
@click.option("--neighbour-rate", type=click.FloatRange(0.0, 1.0), default=0.2, show_default=True,
              help="Fraction of cutouts with a field star or faint background galaxy beside the target.")
@click.option("-j", "--jobs", type=click.IntRange(0), default=0, show_default=True,
              help="Worker processes (0: every usable core). Outputs do not depend on it.")
@shard_option
@click.option("--montage", metavar="PNG", help="Also draw the first objects as gri composites labelled with "
              "z and class. From a terminal without -o, only the montage is made.")
@click.option("--montage-count", type=click.IntRange(1, 400), default=32, show_default=True,
              help="Objects drawn in the montage.")
@output_options()
def cli(count, seed, size, anomaly_fraction, neighbour_rate, jobs, shard, montage, montage_count,
        output, fmt, overwrite):
    """Simulate COUNT cutouts of SDSS Main-Galaxy-Sample-like galaxies in u,g,r,i,z.

    Bulge + disk galaxies with CWW spectra at their redshift (colours, sizes and fluxes follow
    z, K-corrections and distances in flat LCDM with H0=70, Om=0.3), r < 17.77, a PSF, sky noise
    and Galactic extinction per object, fluxes in nanomaggies. The true labels are columns:
    z_true, sed_type, morph_class, bulge_frac, half_light_arcsec, mag_<band>, ebv,
    psf_fwhm_<band>, is_anomaly, anomaly_kind, ra, dec and more. Object k depends only on
    (--seed, k): -j and --shard never change the output.
    """
    from galtools.cli.common import resolve_shard
    from galtools.io import check_output_path
    from galtools.sim import SimConfig

    ctx = click.get_current_context()
    output_given = ctx.get_parameter_source("output") != click.core.ParameterSource.DEFAULT
    montage_only = bool(montage) and not output_given and sys.stdout.isatty() and fmt is None
    part = resolve_shard(shard)
    start, stop = part.bounds(count) if part is not None else (0, count)
    if part is not None and "{shard}" in output:
        output = part.format_path(output)
    if not montage_only:
        check_output_path(output, overwrite)
    if montage:
        check_output_path(montage, overwrite)
    if seed < 0:
        from galtools.errors import UsageProblem

        raise UsageProblem(f"--seed {seed} is negative", "give a seed >= 0")
    config = SimConfig(seed=seed, size=size, anomaly_fraction=anomaly_fraction, neighbour_rate=neighbour_rate)
    workers = jobs or _usable_cores()
    if montage_only:
        stop = min(stop, start + montage_count)
        kept = _render(config, count, start, stop, workers, None, fmt, overwrite, keep=montage_count)
    else:
        kept = _render(config, count, start, stop, workers, output, fmt, overwrite,
                       keep=montage_count if montage else 0)
    if montage:
        _draw_montage(kept, montage, config)


def _usable_cores() -> int:
    from galtools.sim import default_jobs

    return default_jobs()


def _render(config, count, start, stop, workers, output, fmt, overwrite, keep):
    """Render objects start..stop-1, writing them to ``output`` (None: montage only); returns the
    first ``keep`` (images, labels) for the montage."""
    from galtools.io import open_output
    from galtools.sim import iter_chunks
    from galtools.sim.table import chunk_record_batch, output_schema, table_metadata

    kept_images, kept_labels = [], []
    log.debug(f"rendering objects {start}..{stop - 1} of {count} with {workers} worker(s)")
    with contextlib.ExitStack() as stack:
        out = None
        if output is not None:
            out = stack.enter_context(open_output(output, overwrite=overwrite, fmt=fmt, tool="gal-sim",
                                                  metadata=table_metadata(config, count), seed=config.seed))
            out.expect_schema(output_schema(config.size))
        chunks = iter_chunks(config, start, stop, jobs=workers)
        stack.callback(chunks.close)  # stops the workers at once on an error or a closed pipe
        # The first chunk starts the worker processes: fork them before the progress bar's thread exists.
        first = next(chunks, None)
        with progress_bar(stop - start, "simulating") as bar:
            for chunk in itertools.chain([first] if first is not None else [], chunks):
                if out is not None:
                    out.write(chunk_record_batch(chunk))
                _keep(chunk, keep, kept_images, kept_labels)
                bar.advance(chunk.stop - chunk.start)
    if out is not None:
        log.info(f"{out.rows} cutouts written to {'stdout' if output == '-' else output}")
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


def _draw_montage(kept, path, config):
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
    log.info(f"montage of {len(pictures)} cutouts written to {path}")


main = cli

if __name__ == "__main__":
    main()

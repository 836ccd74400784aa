"""gal-sim: mock SDSS ugriz cutouts with known truth, rendered with GalSim."""
from __future__ import annotations

import functools

import click

from galtools.cli.common import (galtools_command, log, montage_options, output_options, prepare_output,
                                 progress_bar, seed_option, shard_option)

EXAMPLE = """gal-sim -n 20000 -j 2 -o cutouts.fits
gal-sim -n 2000 --anomaly-fraction 0.05 --montage sample.png -o mixed.parquet
gal-sim -n 100 | gal-info -
gal-sim -n 100000 --shard 3/10 -o 'parts/sim-{shard}.parquet'"""


@galtools_command("gal-sim", example=EXAMPLE)
@click.option("-n", "--count", type=click.IntRange(1), required=True, help="Objects to simulate (before --shard).")
@seed_option
@click.option("--size", type=click.IntRange(64, 128), default=64, show_default=True,
              help="Cutout width and height in pixels (0.396 arcsec each).")
@click.option("--anomaly-fraction", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Fraction of objects that are anomalies: stars, satellite trails, cosmic rays, bad columns, "
                   "mergers, strong lenses, galaxies beyond the z range (see docs/anomalies.md).")
@click.option("--neighbor-rate", "neighbor_rate", type=click.FloatRange(0.0, 1.0), default=0.2, show_default=True,
              help="Fraction of cutouts with a field star or faint background galaxy beside the target.")
@click.option("--neighbour-rate", "neighbor_rate", type=click.FloatRange(0.0, 1.0), hidden=True,
              help="Old spelling of --neighbor-rate.")
@click.option("-j", "--jobs", type=click.IntRange(0), default=0, show_default=True,
              help="Worker processes (0: every usable core). Outputs do not depend on it.")
@shard_option
@montage_options("the first objects as gri composites labelled with z and class", "--montage-count", 400, 32,
                 "Objects drawn in the montage.")
@output_options()
def cli(count, seed, size, anomaly_fraction, neighbor_rate, jobs, shard, montage, montage_count,
        output, fmt, overwrite):
    """Simulate COUNT cutouts of SDSS Main-Galaxy-Sample-like galaxies in u,g,r,i,z.

    Bulge + disk galaxies with CWW spectra at their redshift (colours, sizes and fluxes follow
    z, K-corrections and distances in flat LCDM with H0=70, Om=0.3), r < 17.77, a PSF, sky noise
    and Galactic extinction per object, fluxes in nanomaggies. The true labels are columns:
    z_true, sed_type, morph_class, bulge_frac, half_light_arcsec, mag_<band>, ebv,
    psf_fwhm_<band>, is_anomaly, anomaly_kind, ra, dec and more. Object k depends only on
    (--seed, k): -j and --shard never change the output.
    """
    from galtools.sim import SimConfig, default_jobs
    from galtools.sim.run import draw_sim_montage, render_to
    from galtools.sim.table import table_metadata

    if seed < 0:
        from galtools.errors import UsageProblem

        raise UsageProblem(f"--seed {seed} is negative", "give a seed >= 0")
    writing = prepare_output(output, fmt, overwrite, shard, pictures=[montage],
                             terminal="default" if montage else None)
    start, stop = writing.shard.bounds(count) if writing.shard is not None else (0, count)
    config = SimConfig(seed=seed, size=size, anomaly_fraction=anomaly_fraction, neighbour_rate=neighbor_rate)
    workers = jobs or default_jobs()
    keep = montage_count if montage else 0
    bar = functools.partial(progress_bar, description="simulating")
    log.debug(f"rendering objects {start}..{stop - 1} of {count} with {workers} worker(s)")
    if not writing.table:   # a terminal and no -o: the montage alone
        kept = render_to(config, start, min(stop, start + montage_count), workers, None, keep, bar)
    else:
        with writing.open(table_metadata(config, count), seed=seed) as out:
            kept = render_to(config, start, stop, workers, out, keep, bar)
        log.info(f"{out.rows} cutouts written to {writing.name}")
    if montage:
        log.info(f"montage of {draw_sim_montage(kept, montage, config)} cutouts written to {montage}")

main = cli

if __name__ == "__main__":
    main()

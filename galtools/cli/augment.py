"""gal-augment: write N augmented views of every cutout, and a montage to judge them by eye."""
from __future__ import annotations

import click

from galtools.cli.common import (device_option, galtools_command, input_argument, log, output_options,
                                 montage_options, prepare_output, progress, seed_option, shard_option)
from galtools.augment.spec import DEFAULT_SPEC   # the spec module imports nothing heavy: --help stays fast

EXAMPLE = """gal-augment cutouts.fits --views 2 -o views.parquet
gal-augment cutouts.fits --views 4 --ops 'rotate,jitter:max_shift=4,noise:factor_max=3' --montage aug.png
gal-sim -n 100 | gal-augment - --views 2 --seed 7 | gal-info -
gal-augment --list-ops"""


def _list_ops(ctx, _param, value):
    if value and not ctx.resilient_parsing:
        from galtools.augment.spec import describe_ops

        click.echo(describe_ops())
        ctx.exit(0)


@galtools_command("gal-augment", example=EXAMPLE)
@input_argument()
@click.option("--views", type=click.IntRange(1, 1000), default=2, show_default=True,
              help="Augmented views written per object (view 0, 1, ...).")
@click.option("--ops", "spec", default=DEFAULT_SPEC, show_default=True, metavar="SPEC",
              help="Augmentations in order, with op:key=value parameters (see --list-ops).")
@click.option("--size", type=click.IntRange(1), default=64, show_default=True,
              help="Output cutout size in pixels (the network input).")
@seed_option
@montage_options("objects by row and their views by column (gri colour)", "--montage-rows", 200, 8,
                 "Objects drawn in the montage (the first ones).")
@click.option("--pixscale", type=click.FloatRange(min=0, min_open=True), default=None, metavar="ARCSEC",
              help="Pixel scale for psf (default: the table's galtools.pixscale_arcsec).")
@click.option("--ebv-column", default="ebv", show_default=True, metavar="COLUMN",
              help="Catalogue E(B-V) read by the deredden augmentation.")
@click.option("--psf-columns", default="psf_fwhm_{band}", show_default=True, metavar="PATTERN",
              help="Catalogue PSF FWHM (arcsec) per band read by psf; a name without {band} is one value for all bands.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True, help="Cutouts augmented at a time.")
@device_option
@shard_option
@click.option("--list-ops", is_flag=True, expose_value=False, is_eager=True, callback=_list_ops,
              help="List every augmentation and its parameters, then exit.")
@output_options()
def cli(input, views, spec, size, seed, montage, montage_rows, pixscale, ebv_column, psf_columns, batch_size,
        device, shard, output, fmt, overwrite):
    """Augment every cutout of INPUT (a cutout table, or '-') into --views views of --size pixels.

    The augmentations are those gal-train applies (same spec, same code): each object's views depend only on
    (--seed, object_id, view), not on the batch or the device. Output: object_id, view, image and the input's
    other columns (which still describe the original object); metadata galtools.augment holds the canonical spec.
    """
    from galtools.augment.views import ViewPlan, draw_views_montage, first_objects, views_metadata, write_views
    from galtools.io import open_table

    writing = prepare_output(output, fmt, overwrite, shard, pictures=[montage],
                             terminal="default" if montage else None)
    with open_table(input, shard=writing.shard) as table:
        plan = ViewPlan.make(table, spec, size, pixscale, ebv_column, psf_columns, device)
        log.debug(f"augment {table.name}: {plan.pipe.spec} on {plan.device}, {views} views of {size}x{size}")
        if not writing.table:   # a terminal and no -o: the montage alone
            drawn = first_objects(table, montage_rows, batch_size)
        else:
            with writing.open(views_metadata(table, plan, views), seed=seed) as out:
                drawn = write_views(table, plan, views, seed, batch_size, out, keep=montage_rows if montage else 0,
                                    track=lambda items, total: progress(items, total=total, description="augmenting"))
            log.info(f"{out.rows} views of {out.rows // views} objects written to {writing.name}")
        if montage:
            count = draw_views_montage(drawn, plan, views, seed, montage)
            log.info(f"montage of {count} objects x {views} views written to {montage}")


main = cli

if __name__ == "__main__":
    main()

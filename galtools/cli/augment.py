"""gal-augment: write N augmented views of every cutout, and a montage to judge them by eye."""
from __future__ import annotations

import sys

import click

from galtools.cli.common import (device_option, galtools_command, input_argument, log, output_options, progress,
                                 seed_option, shard_option)

DEFAULT_OPS = "rotate,jitter,psf,redden,noise"  # galtools.augment.spec.DEFAULT_SPEC (kept literal: no import at --help)

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
@click.option("--ops", "spec", default=DEFAULT_OPS, show_default=True, metavar="SPEC",
              help="Augmentations in order, with op:key=value parameters (see --list-ops).")
@click.option("--size", type=click.IntRange(1), default=64, show_default=True,
              help="Output cutout size in pixels (the network input).")
@seed_option
@click.option("--montage", metavar="PNG", help="Also draw objects by row and their views by column (gri colour). "
              "From a terminal without -o, only the montage is made.")
@click.option("--montage-rows", type=click.IntRange(1, 200), default=8, show_default=True,
              help="Objects drawn in the montage (the first ones).")
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
    from galtools.cli.common import resolve_shard
    from galtools.io import check_output_path, open_table

    ctx = click.get_current_context()
    output_given = ctx.get_parameter_source("output") != click.core.ParameterSource.DEFAULT
    montage_only = bool(montage) and not output_given and sys.stdout.isatty() and fmt is None
    part = resolve_shard(shard)
    if part is not None and "{shard}" in output:
        output = part.format_path(output)
    if not montage_only:
        check_output_path(output, overwrite)
    if montage:
        check_output_path(montage, overwrite)

    with open_table(input, shard=part) as table:
        plan = _Plan.make(table, spec, size, pixscale, ebv_column, psf_columns, device)
        log.debug(f"augment {table.name}: {plan.pipe.spec} on {plan.device}, {views} views of {size}x{size}")
        if montage_only:
            rows = _first_objects(table, montage_rows, batch_size)
            _draw_montage(rows, plan, views, seed, montage)
            return
        drawn = _write_views(table, plan, views, seed, batch_size, output, fmt, overwrite,
                             keep=montage_rows if montage else 0)
    if montage:
        _draw_montage(drawn, plan, views, seed, montage)


# ----------------------------------------------------------------------------------------------------- pieces

class _Plan:
    """The pipeline and where its inputs come from, checked against the table before any pixel is read."""

    def __init__(self, pipe, device, bands, ebv_column, psf_names, spec_text):
        self.pipe, self.device, self.bands, self.spec_text = pipe, device, bands, spec_text
        self.ebv_column, self.psf_names = ebv_column, psf_names

    @classmethod
    def make(cls, table, spec, size, pixscale, ebv_column, psf_pattern, device_text):
        from galtools.augment import AugmentPipeline
        from galtools.errors import BadData, UsageProblem
        from galtools.io import PIXSCALE
        from galtools.train.runtime import resolve_device

        bands_count, height, width = table.require_images()
        if min(height, width) < size:
            raise BadData(f"{table.name}: cutouts of {height}x{width} are smaller than the output size {size}",
                          "choose a smaller --size")
        if "object_id" not in table.schema.names:
            raise BadData(f"{table.name}: has no object_id column", "each view is keyed by its object's object_id")
        if "view" in table.schema.names:
            raise BadData(f"{table.name}: already has a view column (is it gal-augment output?)",
                          "augment the original cutouts")
        bands = table.bands
        if bands is not None and len(bands) != bands_count:
            raise BadData(f"{table.name}: metadata names {len(bands)} bands ({','.join(bands)}) but the images have "
                          f"{bands_count}", "fix galtools.bands (gal-pack --bands)")
        if pixscale is None and table.metadata.get(PIXSCALE):
            try:
                pixscale = float(table.metadata[PIXSCALE])
            except ValueError:
                raise BadData(f"{table.name}: galtools.pixscale_arcsec is {table.metadata[PIXSCALE]!r}, not a number",
                              "pass --pixscale") from None
        pipe = AugmentPipeline.from_spec(spec, out_size=size, bands=bands, pixscale=pixscale)
        names = table.schema.names
        if "ebv" in pipe.needs and ebv_column not in names:
            raise UsageProblem(f"the deredden augmentation needs E(B-V): {table.name} has no column {ebv_column!r}",
                               "name it with --ebv-column, or drop deredden from --ops")
        psf_names = _psf_columns(psf_pattern, bands, names)
        if "psf_fwhm" in pipe.needs and psf_names is None:
            expected = psf_pattern if "{band}" not in psf_pattern or not bands else \
                ", ".join(psf_pattern.format(band=b) for b in bands)
            raise UsageProblem(f"the psf augmentation needs the input PSF: {table.name} has no column(s) {expected}",
                               "name them with --psf-columns, or give psf:fwhm_in=ARCSEC in --ops")
        return cls(pipe, resolve_device(device_text), bands, ebv_column if ebv_column in names else None, psf_names,
                   spec)

    def augment(self, batch, views, seed):
        """(n*views, bands, S, S) numpy views of a record batch, object-major (object 0 views 0..V-1 first)."""
        import numpy as np
        import torch

        from galtools.errors import BadData
        from galtools.io import images_of

        ids = batch.column("object_id").to_numpy(zero_copy_only=False)
        images = torch.from_numpy(np.array(images_of(batch), dtype=np.float32)).to(self.device)  # writable copy
        finite = torch.isfinite(images).flatten(1).all(dim=1).cpu().numpy()
        if not finite.all():
            raise BadData(f"the cutout of object_id {ids[int(np.argmin(finite))]} holds NaN or infinite pixels",
                          "fill them, e.g. gal-pack IN --fill-nan 0 -o OUT")
        ebv = batch.column(self.ebv_column).to_numpy(zero_copy_only=False) if self.ebv_column else None
        psf = self._psf_of(batch)
        out = [self.pipe(images, ids, view=v, seed=seed, ebv=ebv, psf_fwhm=psf) for v in range(views)]
        return torch.stack(out, dim=1).flatten(0, 1).cpu().numpy(), ids

    def _psf_of(self, batch):
        import numpy as np

        if not self.psf_names:
            return None
        columns = [batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64) for name in self.psf_names]
        return np.stack(columns, axis=1)


def _psf_columns(pattern, bands, names):
    """The catalogue PSF columns present: one per band from a {band} pattern, or a single column; else None."""
    if "{band}" in pattern:
        if not bands:
            return None
        wanted = [pattern.format(band=b) for b in bands]
        return wanted if all(w in names for w in wanted) else None
    return [pattern] if pattern in names else None


def _write_views(table, plan, views, seed, batch_size, output, fmt, overwrite, keep):
    import numpy as np
    import pyarrow as pa

    from galtools.io import open_output, tensor_column

    metadata = dict(table.metadata)
    metadata["galtools.augment"] = plan.pipe.spec
    metadata["galtools.augment_views"] = str(views)
    kept = []
    batches = table.iter_batches(batch_size=batch_size)
    total = None if table.num_rows is None else -(-table.num_rows // batch_size)
    with open_output(output, overwrite=overwrite, fmt=fmt, metadata=metadata, tool="gal-augment", seed=seed) as out:
        out.expect_schema(_output_schema(table.schema, views, plan.pipe.out_size))
        for batch in progress(batches, total=total, description="augmenting"):
            if batch.num_rows == 0:
                continue
            images, ids = plan.augment(batch, views, seed)
            repeat = np.repeat(np.arange(batch.num_rows), views)
            carried = batch.drop_columns(["object_id", "image"]).take(pa.array(repeat))
            columns = {"object_id": batch.column("object_id").take(pa.array(repeat)),
                       "view": pa.array(np.tile(np.arange(views, dtype=np.int32), batch.num_rows)),
                       "image": tensor_column(images)}
            columns.update({name: carried.column(name) for name in carried.schema.names})
            out.write(pa.RecordBatch.from_pydict(columns))
            if len(kept) < keep:
                kept.extend(_montage_rows(batch, images, ids, views, keep - len(kept), plan.pipe.out_size))
    log.info(f"{out.rows} views of {out.rows // views} objects written to {'stdout' if output == '-' else output}")
    return kept


def _output_schema(schema, views, size):
    import pyarrow as pa

    image = schema.field("image").type
    fields = [schema.field("object_id"), pa.field("view", pa.int32()),
              pa.field("image", pa.fixed_shape_tensor(image.value_type, (image.shape[0], size, size)))]
    fields += [f for f in schema if f.name not in ("object_id", "image")]
    return pa.schema(fields)


def _montage_rows(batch, views_np, ids, views, count, size):
    """[(object_id, original centre crop, [view images])] for the first ``count`` objects of a batch."""
    from galtools.augment.ops import centre_crop_start
    from galtools.io import images_of

    originals = images_of(batch.slice(0, count))
    rows = []
    for i in range(min(count, batch.num_rows)):
        start_y = centre_crop_start(originals.shape[-2], size)
        start_x = centre_crop_start(originals.shape[-1], size)
        crop = originals[i, :, start_y:start_y + size, start_x:start_x + size]
        rows.append((ids[i], crop, list(views_np[i * views:(i + 1) * views])))
    return rows


def _first_objects(table, count, batch_size):
    """Montage-only: read just the objects that will be drawn."""
    batches, have = [], 0
    for batch in table.iter_batches(batch_size=min(batch_size, count)):
        batches.append(batch.slice(0, count - have))
        have += batches[-1].num_rows
        if have >= count:
            break
    return batches


def _draw_montage(rows_or_batches, plan, views, seed, path):
    import numpy as np
    import pyarrow as pa

    from galtools.errors import BadData
    from galtools.viz import rgb_composite, save_montage

    if rows_or_batches and isinstance(rows_or_batches[0], pa.RecordBatch):
        rows = []
        for batch in rows_or_batches:
            images, ids = plan.augment(batch, views, seed)
            rows.extend(_montage_rows(batch, images, ids, views, batch.num_rows, plan.pipe.out_size))
    else:
        rows = rows_or_batches
    if not rows:
        raise BadData("no cutouts to draw: the input has no rows", "check the input and any --shard")
    pictures, captions, titles = [], [], []
    for object_id, original, view_images in rows:
        stack = np.stack([original, *view_images])
        pictures.append(list(rgb_composite(stack, plan.bands)))
        captions.append(["input"] + [f"view {v}" for v in range(views)])
        titles.append(str(object_id))
    save_montage(pictures, path, captions=captions, row_titles=titles,
                 title=f"gal-augment --seed {seed} --ops {plan.spec_text}"[:160])
    log.info(f"montage of {len(rows)} objects x {views} views written to {path}")


main = cli

if __name__ == "__main__":
    main()

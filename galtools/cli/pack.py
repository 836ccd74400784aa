"""gal-pack: build a cutout table from stamps and a catalogue, or convert/crop/resize an existing one."""
from __future__ import annotations

import os

import click

from galtools.cli.common import galtools_command, log, output_options, prepare_output, progress_bar, shard_option
from galtools.cli.readers import read_options

EXAMPLE = """gal-pack labels.csv --crop 212 --resize 64 --bands i,r,g -o gz.fits
gal-pack stamps/ --resize 64 -o cutouts.parquet
gal-pack real_galaxy_catalog_23.5.fits --file-column GAL_FILENAME --hdu-column GAL_HDU --id-column IDENT \\
    --bands F814W --resize 64 --stamp-pixscale PIXEL_SCALE -o hst.fits
gal-pack cutouts.fits --bands g,r,i --crop 48 -o gri48.parquet
gal-pack big.fits -o - | gal-info -
gal-pack Galaxy10_DECals.h5 --bands g,r,z --crop 152 --resize 64 -o g10.parquet"""


def _band_list(text: str | None):
    return [b.strip() for b in text.split(",") if b.strip()] if text else None


@galtools_command("gal-pack", example=EXAMPLE)
@click.argument("source", metavar="SOURCE")
@output_options()
@click.option("--file-column", default="file", show_default=True, help="Catalogue column naming each stamp "
              "(relative to the catalogue's folder; a '{band}' in it means one file per band; 'f.fits[3]' or "
              "'f.fits[SCI]' names the FITS extension).")
@click.option("--hdu-column", default=None, metavar="COL", help="Catalogue column giving each stamp's FITS "
              "extension (a number, 0 the primary, or an EXTNAME), e.g. GAL_HDU.")
@click.option("--id-column", default=None, help="Catalogue column that becomes object_id (default: first of object_id, objid, id).")
@click.option("--crop", type=click.IntRange(1), default=None, help="Centre-crop stamps to N x N pixels (before "
              "--resize; the pixel scale is kept).")
@click.option("--resize", type=click.IntRange(1), default=None, help="Area-weighted resample to N x N pixels. A pixel "
              "holding flux (nanomaggy, counts) gets the sum of the flux it covers, so the unit stays true and the "
              "total flux is kept; 8-bit pictures and surface brightness units (per sr, per arcsec^2) are averaged. "
              "The pixel scale grows by the (cropped) size over N.")
@click.option("--bands", default=None, help="Band names of the stamps' planes (e.g. i,r,g for SDSS gri composites), "
              "or, converting a cutout table, the bands to keep in that order (or the names of a table's unnamed "
              "planes). Without it, pictures' planes are red,green,blue (gray for one), FITS planes b0,b1,...")
@click.option("--pixscale", type=float, default=None, help="The output's pixel scale in arcsec, where the input does "
              "not say its own. gal-pack derives it itself from the input's scale (FITS header of the HDU read, "
              "--stamp-pixscale, or the table's metadata) and --crop/--resize; a --pixscale more than 1% from "
              "that is refused.")
@click.option("--stamp-pixscale", default=None, metavar="ARCSEC|COLUMN",
              help="The input's own pixel scale before --crop/--resize: one number, or for stamps a catalogue column "
                   "(default: each FITS stamp's header, or the table's metadata). Stamps whose scales after "
                   "--crop/--resize differ (several sizes resized to one) get their own in a pixscale_arcsec "
                   "column; one --pixscale for them is refused.")
@click.option("--skip-bad", is_flag=True, help="Leave out objects whose stamp is missing, unreadable, differs in shape "
              "or is smaller than --crop (they are listed on stderr) instead of stopping.")
@click.option("--fill-nan", type=float, default=None, help="Replace NaN/inf pixels by this value instead of refusing them.")
@click.option("-j", "--jobs", type=click.IntRange(1), default=4, show_default=True, help="Threads decoding stamps.")
@read_options(bands=False, id_column=False)
@shard_option
def cli(source, output, fmt, overwrite, file_column, id_column, crop, resize, bands, pixscale, stamp_pixscale, skip_bad,
        fill_nan, jobs, shard, read_opts, hdu_column=None):
    """Pack stamps into a cutout table, or convert one.

    SOURCE is a catalogue (CSV, FITS or Parquet) with a file column, a folder of FITS/PNG/JPEG stamps (object_id
    from the file names), or an existing cutout table (any format, an HDF5 file, a partitioned Parquet folder, or
    '-') to convert, crop, resize or subset. 8-bit images become float32 in [0, 1]. An HDF5 file's --bands name
    its planes when its attributes do not, and --id-column names the dataset that becomes object_id.

    What is not given is said on stderr: object_id comes from --id-column, else the catalogue's object_id, objid
    or id column, else the row number (a folder: the file names); without --bands the planes of colour pictures
    are red,green,blue (gray for one plane), of FITS stamps b0,b1,... The pixel scale written is the stamps' own
    (FITS header of the HDU read, or --stamp-pixscale) after --crop/--resize.
    """
    import dataclasses

    from galtools.pack import PackOptions, PackReport

    options = PackOptions(crop=crop, resize=resize, bands=_band_list(bands), skip_bad=skip_bad,
                          fill_nan=fill_nan, jobs=jobs, pixscale=pixscale)
    report = PackReport()
    writing = prepare_output(output, fmt, overwrite, shard)   # before any work: a clash should cost nothing
    shard = writing.shard
    read_opts = dataclasses.replace(read_opts, bands=tuple(options.bands) if options.bands else None,
                                    id_column=id_column)
    with writing.open() as out:
        if _is_cutout_table(source, read_opts):
            _convert(source, out, options, report, shard, read_opts, stamp_pixscale)
        else:
            _pack_stamps(source, out, options, report, file_column, id_column, shard, stamp_pixscale, hdu_column)
    for object_id, reason in report.skipped:
        log.warning(f"skipped object {object_id}: {reason}")
    log.info(f"wrote {report.written} cutouts to {writing.name}"
             + (f", skipped {len(report.skipped)}" if report.skipped else ""))
    for note in report.notes:
        log.info(note)


def _is_cutout_table(source: str, read_opts=None) -> bool:
    from galtools.errors import BadData
    from galtools.io import partitioned, sources

    if source == "-":
        return True
    if os.path.isdir(source) and partitioned.partition_root(source):
        return True
    if os.path.isdir(source) or not os.path.isfile(source.split("[", 1)[0]):
        return False
    try:
        sources.sniff_path(source.split("[", 1)[0])
    except BadData:
        return False   # text: a CSV catalogue
    from galtools.io import open_table

    with open_table(source, options=read_opts) as table:
        return table.image_shape is not None


def _convert(source, out, options, report, shard, read_opts=None, stamp_pixscale=None):
    from galtools.io import BANDS, open_table
    from galtools.pack import convert_batches, converted_metadata, converted_schema

    with open_table(source, shard=shard, options=read_opts) as table:
        table.require_images()
        out.expect_schema(converted_schema(table, options))   # no rows in, an empty table out
        out.metadata.update({k: v for k, v in table.metadata.items() if k != "galtools.history"})
        out.metadata["galtools.history"] = _merged_history(table.metadata, out.metadata)
        if options.bands:
            out.metadata[BANDS] = ",".join(options.bands)
        out.metadata.update(converted_metadata(table, options, stamp_pixscale))
        with progress_bar(table.num_rows, "converting") as bar:
            for batch in convert_batches(table, options, report):
                out.write(batch)
                bar.advance(batch.num_rows)


def _merged_history(source_metadata: dict, out_metadata: dict) -> str:
    """The input's history followed by this run (open_output already appended this run to an empty history)."""
    import json

    from galtools.io import history_of

    return json.dumps(history_of(source_metadata) + history_of(out_metadata)[-1:], separators=(",", ":"))


def _pack_stamps(source, out, options, report, file_column, id_column, shard, stamp_pixscale=None, hdu_column=None):
    from galtools.errors import InputMissing
    from galtools.io import check_unique_ids
    from galtools.pack import (StampJob, StampPacker, band_names_for, id_column_of, ids_from_names,
                               read_catalogue, resize_sums, stamp_jobs, stamp_metadata, stamps_in_folder)

    if os.path.isdir(source):
        names = stamps_in_folder(source)
        jobs = [StampJob(i, [os.path.join(source, n)]) for i, n in zip(ids_from_names(names), names)]
        import pyarrow as pa

        extra = pa.table({"file": pa.array(names)})
        report.notes.append("object_id: the file names without their extension (numbers where all are numbers)")
    elif os.path.isfile(source):
        catalogue = read_catalogue(source)
        key = id_column_of(catalogue, id_column)
        ids = catalogue.column(key).to_pylist() if key else list(range(catalogue.num_rows))
        report.notes.append(f"object_id: the catalogue's column {key}" if key else
                            "object_id: the row number (no object_id, objid or id column; name one with --id-column)")
        jobs = stamp_jobs(catalogue, os.path.dirname(os.path.abspath(source)), file_column, ids, options.bands,
                          hdu_column)
        extra = catalogue.drop_columns([c for c in (file_column, key, hdu_column) if c])
    else:
        raise InputMissing(f"{source}: no such file or folder", "check the path")

    if shard is not None:
        lo, hi = shard.bounds(len(jobs))
        jobs, extra = jobs[lo:hi], extra.slice(lo, hi - lo)
    check_unique_ids([job.object_id for job in jobs], source)
    packer = StampPacker(jobs, extra, options, report)
    packer.check_missing()
    plan = _stamp_pixscales(packer, options, stamp_pixscale)
    packer.sum_flux = resize_sums(plan.unit)
    band_planes = None if any(len(j.paths) > 1 for j in jobs) else options.bands
    with progress_bar(len(packer.jobs), "packing") as bar:
        for batch in packer.batches(bar.advance):
            if out.rows == 0:
                bands = options.bands if band_planes is None else band_names_for(packer.raw_bands, band_planes, packer.from_8bit)
                named = bool(bands)
                bands = bands or band_names_for(packer.raw_bands, None, packer.from_8bit)
                out.metadata.update(stamp_metadata(bands, packer.from_8bit, plan.single, plan.unit))
                if not named:
                    report.notes.append(f"bands {','.join(bands)}: {_unnamed_planes(packer.from_8bit)}; name them with --bands "
                             f"(e.g. --bands {','.join('irg'[:len(bands)] if packer.from_8bit else 'grz'[:len(bands)])})")
            out.write(batch)


def _unnamed_planes(from_8bit: bool) -> str:
    return ("the colour planes of the pictures, in their order" if from_8bit
            else "the stamps' planes, in their order, by number")


def _is_number(value) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _stamp_pixscales(packer, options, stamp_pixscale):
    """The stamps' pixel scales after --crop/--resize: one for the metadata, one per object (stamps of several
    sizes resized to one, or several scales), or nothing known; --pixscale must agree with what is known."""
    from galtools.errors import BadData, UsageProblem
    from galtools.pack import PixscalePlan, plan_pixscales

    native = None
    if stamp_pixscale is not None:
        try:
            native = [float(stamp_pixscale)] * len(packer.jobs)
        except ValueError:
            if packer.extra is None or stamp_pixscale not in packer.extra.column_names:
                raise BadData(f"--stamp-pixscale {stamp_pixscale}: neither a number nor a catalogue column",
                              "give the stamps' pixel scale in arcsec, or the column holding it") from None
            native = packer.extra.column(stamp_pixscale).to_pylist()
            wrong = next((v for v in native if v is not None and not _is_number(v)), None)
            if wrong is not None:
                raise BadData(f"--stamp-pixscale {stamp_pixscale}: the column holds {wrong!r}, not a pixel scale",
                              "give a column of numbers (arcsec per pixel)")
            native = [None if v is None else float(v) for v in native]
    if not packer.jobs:
        return PixscalePlan(single=options.pixscale)
    plan = plan_pixscales(packer.jobs, options, native)
    if plan.per_object is None:
        return plan
    sizes = plan.sizes
    shown = " and ".join(f"{h}x{w}" for h, w in sorted(sizes)[:3]) + (" ..." if len(sizes) > 3 else "")
    resized = f" resized to {options.resize}" if options.resize else ""
    if options.pixscale:
        raise UsageProblem(f"--pixscale {options.pixscale:g} gives one pixel scale, but stamps of {shown} pixels"
                           f"{resized} have different ones",
                           "leave out --pixscale: each object's own scale is written to a pixscale_arcsec column "
                           "(from the FITS headers or --stamp-pixscale)")
    if plan.unknown:
        log.warning(f"stamps of {shown} pixels{resized}: the pixel scale of {plan.unknown} of them is "
                    "unknown (no FITS header scale); pass --stamp-pixscale")
    packer.pixscales = plan.per_object
    return plan


main = cli

if __name__ == "__main__":
    main()

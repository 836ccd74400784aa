"""gal-pack: build a cutout table from stamps and a catalogue, or convert/crop/resize an existing one."""
from __future__ import annotations

import os

import click

from galtools.cli.common import galtools_command, log, output_options, prepare_output, progress_bar, shard_option
from galtools.cli.readers import read_options

EXAMPLE = """gal-pack labels.csv --crop 212 --resize 64 --bands i,r,g -o gz.fits
gal-pack stamps/ --resize 64 -o cutouts.parquet
gal-pack real_galaxy_catalog.fits --file-column GAL_FILENAME --hdu-column GAL_HDU --id-column IDENT -o real.fits
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
@click.option("--crop", type=click.IntRange(1), default=None, help="Centre-crop stamps to N x N pixels (before --resize).")
@click.option("--resize", type=click.IntRange(1), default=None, help="Area-average resample to N x N pixels.")
@click.option("--bands", default=None, help="Band names of the stamps' planes (e.g. i,r,g for SDSS gri composites), "
              "or, converting a cutout table, the bands to keep in that order.")
@click.option("--pixscale", type=float, default=None, help="Pixel scale in arcsec, recorded in the metadata.")
@click.option("--stamp-pixscale", default=None, metavar="ARCSEC|COLUMN",
              help="The stamps' own pixel scale before --resize: one number or a catalogue column (default: from "
                   "each FITS stamp's header). Stamps of several sizes resized to one get their own scale in a "
                   "pixscale_arcsec column; one --pixscale for them is refused.")
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
            _convert(source, out, options, report, shard, read_opts)
        else:
            _pack_stamps(source, out, options, report, file_column, id_column, shard, stamp_pixscale, hdu_column)
    for object_id, reason in report.skipped:
        log.warning(f"skipped object {object_id}: {reason}")
    log.info(f"wrote {report.written} cutouts to {writing.name}"
             + (f", skipped {len(report.skipped)}" if report.skipped else ""))


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


def _convert(source, out, options, report, shard, read_opts=None):
    from galtools.io import BANDS, open_table
    from galtools.pack import convert_batches, converted_schema

    with open_table(source, shard=shard, options=read_opts) as table:
        table.require_images()
        out.expect_schema(converted_schema(table, options))   # no rows in, an empty table out
        out.metadata.update({k: v for k, v in table.metadata.items() if k != "galtools.history"})
        out.metadata["galtools.history"] = _merged_history(table.metadata, out.metadata)
        if options.bands:
            out.metadata[BANDS] = ",".join(options.bands)
        if options.pixscale:
            out.metadata["galtools.pixscale_arcsec"] = repr(options.pixscale)
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
                               read_catalogue, stamp_jobs, stamp_metadata, stamps_in_folder)

    if os.path.isdir(source):
        names = stamps_in_folder(source)
        jobs = [StampJob(i, [os.path.join(source, n)]) for i, n in zip(ids_from_names(names), names)]
        import pyarrow as pa

        extra = pa.table({"file": pa.array(names)})
    elif os.path.isfile(source):
        catalogue = read_catalogue(source)
        key = id_column_of(catalogue, id_column)
        ids = catalogue.column(key).to_pylist() if key else list(range(catalogue.num_rows))
        if not key:
            log.info("no object_id/objid/id column: object_id is the row number")
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
    if options.resize and not options.crop:
        _per_object_pixscales(packer, options, stamp_pixscale)
    band_planes = None if any(len(j.paths) > 1 for j in jobs) else options.bands
    with progress_bar(len(packer.jobs), "packing") as bar:
        for batch in packer.batches(bar.advance):
            if out.rows == 0:
                bands = options.bands if band_planes is None else band_names_for(packer.raw_bands, band_planes, packer.from_8bit)
                bands = bands or band_names_for(packer.raw_bands, None, packer.from_8bit)
                out.metadata.update(stamp_metadata(bands, packer.from_8bit, options.pixscale))
            out.write(batch)


def _per_object_pixscales(packer, options, stamp_pixscale) -> None:
    """Stamps of several sizes resized to one size have as many pixel scales: one per object, or a refusal."""
    from galtools.errors import BadData, UsageProblem
    from galtools.pack import pixscales_after_resize

    native = None
    if stamp_pixscale is not None:
        try:
            native = [float(stamp_pixscale)] * len(packer.jobs)
        except ValueError:
            if packer.extra is None or stamp_pixscale not in packer.extra.column_names:
                raise BadData(f"--stamp-pixscale {stamp_pixscale}: neither a number nor a catalogue column",
                              "give the stamps' pixel scale in arcsec, or the column holding it") from None
            native = packer.extra.column(stamp_pixscale).to_pylist()
    scales, sizes = pixscales_after_resize(packer.jobs, options.resize, native)
    if scales is None:
        return
    shown = " and ".join(f"{h}x{w}" for h, w in sorted(sizes)[:3]) + (" ..." if len(sizes) > 3 else "")
    if options.pixscale:
        raise UsageProblem(f"--pixscale {options.pixscale:g} gives one pixel scale, but stamps of {shown} pixels "
                           f"resized to {options.resize} have different ones",
                           "leave out --pixscale: each object's own scale is written to a pixscale_arcsec column "
                           "(from the FITS headers or --stamp-pixscale)")
    unknown = sum(s is None for s in scales)
    if unknown:
        log.warning(f"stamps of {shown} pixels resized to {options.resize}: the pixel scale of {unknown} of them is "
                    "unknown (no FITS header scale); pass --stamp-pixscale")
    packer.pixscales = scales


main = cli

if __name__ == "__main__":
    main()

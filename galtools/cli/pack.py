"""gal-pack: build a cutout table from stamps and a catalogue, or convert/crop/resize an existing one."""
from __future__ import annotations

import click

from galtools.cli.common import galtools_command, log, output_options, prepare_output, shard_option
from galtools.cli.pack_source import convert, is_cutout_table, pack_stamps
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
        if is_cutout_table(source, read_opts):
            convert(source, out, options, report, shard, read_opts, stamp_pixscale)
        else:
            pack_stamps(source, out, options, report, file_column, id_column, shard, stamp_pixscale, hdu_column)
    for object_id, reason in report.skipped:
        log.warning(f"skipped object {object_id}: {reason}")
    log.info(f"wrote {report.written} cutouts to {writing.name}"
             + (f", skipped {len(report.skipped)}" if report.skipped else ""))
    for note in report.notes:
        log.info(note)


main = cli

if __name__ == "__main__":
    main()

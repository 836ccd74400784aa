"""What gal-pack does with its SOURCE: convert an existing cutout table, or pack the stamps a catalogue or a folder
names (with their pixel scales after --crop/--resize).  The library work is galtools.pack's; this module reads the
command's options into it and writes into the command's open output.
"""
from __future__ import annotations

import os

from galtools.cli.common import log, progress_bar


def is_cutout_table(source: str, read_opts=None) -> bool:
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


def convert(source, out, options, report, shard, read_opts=None, stamp_pixscale=None):
    from galtools.io import BANDS, HISTORY, open_table
    from galtools.pack import convert_batches, converted_metadata, converted_schema

    with open_table(source, shard=shard, options=read_opts) as table:
        table.require_images()
        out.expect_schema(converted_schema(table, options))   # no rows in, an empty table out
        out.metadata.update({k: v for k, v in table.metadata.items() if k != HISTORY})
        out.metadata[HISTORY] = _merged_history(table.metadata, out.metadata)
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


def pack_stamps(source, out, options, report, file_column, id_column, shard, stamp_pixscale=None, hdu_column=None):
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


def _stamp_pixscales(packer, options, stamp_pixscale):
    """The stamps' pixel scales after --crop/--resize: one for the metadata, one per object (stamps of several
    sizes resized to one, or several scales), or nothing known; --pixscale must agree with what is known."""
    from galtools.errors import UsageProblem
    from galtools.pack import PixscalePlan, native_pixscales, plan_pixscales

    native = native_pixscales(packer, stamp_pixscale)
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

"""gal-embed: embed cutouts with a trained encoder.onnx on ONNX Runtime (no torch)."""
from __future__ import annotations

import click

from galtools.cli.common import (device_option, galtools_command, input_argument, is_verbose, log, output_options,
                                 prepare_output, progress_bar, shard_option)
from galtools.cli.readers import read_options

EXAMPLE = """gal-embed cutouts.fits --model run/encoder.onnx -o emb.parquet
gal-embed cutouts.fits --model run/encoder.onnx --precision auto -o emb.parquet
gal-sim -n 200 -o - | gal-embed - --model run/encoder.onnx | gal-info -
gal-embed big.parquet --model m.onnx --device cuda --precision fp16 --shard 3/16 -o 'emb/part-{shard}.parquet'
gal-embed survey_hats/ --model m.onnx --shard 3/16 -o survey_emb/         # a HATS catalogue in, one out
gal-embed Galaxy10_DECals.h5 --bands g,r,z --model m.onnx --strict -o emb.parquet
gal-embed hst.fits --model m.onnx --band-map 'g=F814W,r=F814W,i=F814W' -o emb.parquet"""


@galtools_command("gal-embed", example=EXAMPLE)
@input_argument()
@click.option("-m", "--model", required=True, metavar="ENCODER.onnx",
              help="The encoder exported by gal-train (its metadata gives bands, size and preprocessing).")
@output_options()
@device_option
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "bf16", "auto"]), default="fp32",
              show_default=True,
              help="Arithmetic of the encoder. int8 (CPUs; fast with VNNI/AMX) is quantized once, calibrated on the "
                   "input's first 256 cutouts; int8 and bf16 (ARM64 CPUs with BF16) are used only if they match fp32 "
                   "on those cutouts (cosine >= 0.99 per embedding, kNN overlap@10 >= 0.9), else exit 65; bf16 "
                   "where the CPU or ONNX Runtime lacks it exits 69. auto takes the fastest that passes, measured "
                   "once on this machine. fp16 pays off on GPUs. Converted models and choices are cached in "
                   "$GALTOOLS_CACHE_DIR or ~/.cache/galtools.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage type of the embedding column (float16 halves the file; not for FITS).")
@click.option("-b", "--batch-size", type=click.IntRange(1), default=256, show_default=True,
              help="Cutouts per inference call; memory grows with it, not with the input.")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads (default: this job's CPU allocation, from its affinity and SLURM_CPUS_PER_TASK).")
@click.option("--strict", is_flag=True, help="Stop (exit 65) when the table's pixel scale is more than 10% from the "
              "model's or its flux unit differs, instead of warning.")
@click.option("--band-map", default=None, metavar="MODEL=TABLE,...",
              help="Feed model bands from differently named planes on purpose, e.g. 'g=F814W,r=F814W,i=F814W' puts "
                   "a one-band survey through a three-band encoder (recorded in the output's metadata).")
@read_options()
@shard_option
def cli(input, model, output, fmt, overwrite, device, precision, dtype, batch_size, threads, strict, band_map, read_opts,
        shard):
    """Embed the cutouts of INPUT with the encoder MODEL.

    Applies the model's own preprocessing (band selection and order, centre crop to its input size, arcsinh
    compression and per-band normalisation, all read from the model's metadata) and writes object_id, the input's
    other columns and 'embedding' in the input's row order. INPUT is a FITS, Parquet, Arrow or HDF5 file, '-'
    for stdin, a folder or a quoted glob of parts, or a partitioned Parquet folder (a HATS catalogue: --shard then
    gives each task whole files). A HATS catalogue INPUT with a folder as OUTPUT (a name ending in '/' or without
    a table extension) makes a HATS catalogue with the same partitions, which lsdb opens and cross-matches: the
    tasks of a Slurm array write their partitions into the same folder, and the last to finish writes its
    properties and metadata files; a folder holding another catalogue needs --overwrite. The table's pixel scale
    and flux unit are compared with the model's (a warning, or exit 65 with --strict); a band the model needs and
    the table lacks is exit 65 unless --band-map says which plane feeds it.

    --device auto takes a GPU when one is usable (else the CPU); cuda[:N] insists on one (exit 69 with the reason
    otherwise); tensorrt[:N] uses ONNX Runtime's TensorRT provider where it is installed.
    """
    import time

    from galtools.embed import EmbedSettings, embed_table, load_encoder, output_metadata
    from galtools.embed import precision as precisions
    from galtools.embed.checks import parse_band_map
    from galtools.errors import UsageProblem
    from galtools.io import display_name, open_table
    from galtools.io import meta
    from galtools.io.output import format_for

    writing = prepare_output(output, fmt, overwrite, shard, source=input)   # before loading anything
    mapping = parse_band_map(band_map)
    if dtype == "float16" and not writing.catalogue and format_for(writing.path, fmt) == "fits":
        raise UsageProblem("FITS tables cannot hold float16 embeddings", "write Parquet or Arrow, or use --dtype float32")

    encoder = load_encoder(model, EmbedSettings(device=device, precision=precision, batch_size=batch_size,
                                                threads=threads, verbose=is_verbose()))
    notes_shown = list(encoder.notes)
    for note in notes_shown:
        log.warning(note)
    log.debug(f"model {model}: {encoder.info.arch}, bands {','.join(encoder.info.bands)}, "
              f"{encoder.info.input_size}x{encoder.info.input_size} -> {encoder.info.embedding_dim}-d, "
              f"sha256 {encoder.info.sha256[:12]}; {encoder.provider} {precision}, {encoder.threads} CPU threads")

    with open_table(input, shard=writing.shard, options=read_opts) as table:
        metadata = output_metadata(table.metadata, encoder, display_name(input))
        if mapping:
            metadata[meta.EMBED_BAND_MAP] = ",".join(f"{k}={v}" for k, v in mapping.items())
        with writing.open(metadata) as out, progress_bar(table.num_rows, "embedding") as bar:
            first_batch = []

            def on_rows(rows: int) -> None:
                if not first_batch:
                    first_batch.extend([_process_age(), time.process_time()])
                bar.advance(rows)

            stats = embed_table(table, encoder, out, dtype=dtype, batch_size=batch_size, on_rows=on_rows,
                                strict=strict, band_map=mapping)
    if first_batch and first_batch[0] is not None:
        log.debug(f"first batch written {first_batch[0]:.2f} s after the process started "
                  f"(CPU {first_batch[1]:.2f} s)")
    for note in encoder.notes[len(notes_shown):]:
        log.warning(note)
    checked = f"; parity {encoder.parity.summary()}" if encoder.parity is not None else ""
    log.info(f"embedded {stats.rows} cutouts ({stats.images_per_second:,.0f} images/s on {encoder.provider}, "
             f"{encoder.precision}{checked}) to {writing.name}")
    if precision == "fp32" and encoder.provider.startswith("CPU") and stats.rows >= precisions.HINT_ROWS:
        hint = precisions.int8_hint()
        if hint:
            log.info(f"hint: {hint}")


def _process_age() -> float | None:
    """Seconds since this process started (Linux; None elsewhere): the start-up figure -v reports."""
    import os

    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as handle:
            uptime = float(handle.read().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


main = cli

if __name__ == "__main__":
    main()

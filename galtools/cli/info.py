"""gal-info: what a galtools table holds."""
from __future__ import annotations

import click

from galtools.cli.common import galtools_command, input_argument
from galtools.cli.readers import read_options


@galtools_command("gal-info", example="gal-info cutouts.fits\ngal-sim -n 100 | gal-info -\ngal-info --json emb.parquet | jq .rows\n"
                                      "gal-info Galaxy10_DECals.h5\n"
                                      "gal-info --system          # versions, providers, threads: for a bug report")
@input_argument(required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON, for scripts.")
@click.option("--pixels", is_flag=True, help="Also scan every image: per-band min/median/max and non-finite pixels "
                                              "(exit 65 if any pixel is NaN or infinite).")
@click.option("--system", is_flag=True, help="Describe this installation instead of a table: galtools, Python and "
                                              "package versions, ONNX Runtime providers and whether the GPU ones "
                                              "start, CPU threads, the cache folder. Paste it into bug reports.")
@read_options()
def cli(input, as_json, pixels, system, read_opts):
    """Summarise a table: rows, columns with types, image shape and bands, metadata and history.

    INPUT is a FITS, Parquet, Arrow or HDF5 file, '-' for stdin, a folder or a quoted glob of parts, or a
    partitioned Parquet folder (a HATS catalogue).
    """
    from galtools.errors import BadData, UsageProblem

    if system:
        if input is not None or pixels:
            raise UsageProblem("--system describes the installation and takes no INPUT or --pixels",
                               "run 'gal-info --system' on its own")
        from galtools.info import render_json
        from galtools.system import render_system_text, system_report

        report = system_report()
        click.echo(render_json(report) if as_json else render_system_text(report))
        return
    if input is None:
        raise UsageProblem("missing INPUT", "give a table, '-' for stdin, or --system")
    from galtools.info import render_json, render_text, summarize
    from galtools.io import display_name, open_table

    with open_table(input, options=read_opts) as table:
        if pixels:
            table.require_images()
        info = summarize(table, display_name(input), pixels=pixels)
    click.echo(render_json(info) if as_json else render_text(info))
    if pixels and info.get("pixels", {}).get("nonfinite_pixels"):
        pix = info["pixels"]
        raise BadData(f"{pix['images_with_nonfinite']} images hold {pix['nonfinite_pixels']} NaN or infinite pixels "
                      f"(first: object_id {pix['first_nonfinite_object_id']})",
                      "fill them, e.g. gal-pack IN --fill-nan 0 -o OUT")


main = cli

if __name__ == "__main__":
    main()

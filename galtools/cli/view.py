"""gal-view: a local web server over the tables the other tools write: search, map, filters; or a static export."""
from __future__ import annotations

import click

from galtools.cli.common import galtools_command, input_argument, log
from galtools.cli.view_serve import open_catalogue, require_server_packages, serve

EXAMPLE = """gal-view emb.parquet --images cutouts.arrow --map map.parquet --label morph_class --columns z_true,mag_r
gal-view emb.parquet --images cutouts.arrow --index emb.faiss --port 8800 --open
gal-view emb.parquet --images cutouts.arrow --export site/ --queries ids.txt -k 12"""


@galtools_command("gal-view", example=EXAMPLE)
@input_argument("emb")
@click.option("--images", required=True, metavar="CUTOUTS",
              help="The cutout table the embeddings came from (read by row; an Arrow IPC file is fastest).")
@click.option("--map", "map_path", metavar="MAP", help="A map from gal-map (default: PCA of the embeddings).")
@click.option("--index", "index_path", metavar="FAISS", help="Search through this gal-knn index (default: exact "
              "search; refused, exit 65, if it was built from other embeddings). An ivfpq/ivfsq8 index serves a "
              "survey: EMB is read by row, never whole, and the map is a PCA of --sample objects.")
@click.option("--sample", type=click.IntRange(2), default=100_000, show_default=True,
              help="With an ivfpq/ivfsq8 --index: objects drawn for the map, its filters and selections (search "
                   "covers every object).")
@click.option("--label", metavar="COLUMN", help="A column shown under every tile and used to colour the map.")
@click.option("--columns", metavar="A,B", default="", help="More columns shown under every tile.")
@click.option("--rgb", metavar="R,G,B", help="Bands shown as red, green, blue (default: i,r,g as in the montages).")
@click.option("-k", "k", type=click.IntRange(1, 500), default=10, show_default=True, help="Neighbors per query.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback lets other machines browse the tables.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port to listen on (default: a free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in the default web browser.")
@click.option("--export", "export_folder", metavar="FOLDER", help="Write static HTML pages and PNGs instead of "
              "serving (needs --queries).")
@click.option("--queries", metavar="FILE", help="--export: object_ids to export, one a line (or a CSV with an "
              "object_id column).")
@click.option("--least", is_flag=True, help="--export: the least similar instead of the most similar.")
@click.option("--filter", "expression", metavar="EXPR", help='--export: only neighbors matching EXPR, e.g. '
              '\'z_true < 0.1 and morph_class == "disk"\'.')
@click.option("--overwrite", is_flag=True, help="--export: replace FOLDER if it exists.")
@click.option("--labels", "labels_path", metavar="LABELS", help="Mark objects interesting or not: each mark is "
              "appended to this table (CSV or Parquet of object_id,label,time; created if absent) at once, and the "
              "objects to label next ('gal-ood rank') are shown.")
def cli(emb, images, map_path, index_path, sample, label, columns, rgb, k, host, port, open_browser, export_folder,
        queries, least, expression, overwrite, labels_path):
    """Look at the representation in a browser: type or click a galaxy to see its nearest neighbors (or least
    similar ones), pan and zoom the 2-D map (pictures appear when zoomed in; a click is a search), and restrict
    both with a filter on any column, whose selection downloads as a CSV of object_ids.

    EMB is an embedding table from gal-embed (held in memory, as gal-knn holds it); CUTOUTS is read one row at a
    time and never whole. The URL is printed on stdout. Ctrl-C or SIGTERM stops the server (exit 0). Nothing is
    written, and no request reaches a file other than these tables, except with --labels: each mark (the
    "interesting" / "not" buttons under a picture) is written to LABELS before it is acknowledged (a new file
    renamed over the old, so killing the server loses no mark), and the page shows the objects to label next.

    \b
    Filters: comparisons (== != < <= > >=) of columns with numbers, "quoted text" or true/false, joined
    with and, or, not and parentheses, e.g.  mag_r < 19 and not (morph_class == "merger")

    \b
    Exit codes: 0 stopped by Ctrl-C/SIGTERM, or export written; 1 the export folder exists (use
    --overwrite); 2 bad option, filter or port in use; 65 bad table, unknown query id, stale index or bad
    --labels file; 66 a table is missing; 74 cannot write the export or the labels.
    """
    from galtools.errors import UsageProblem

    if bool(export_folder) != bool(queries):
        raise UsageProblem("--export FOLDER and --queries FILE go together", "give both, or neither to serve")
    if export_folder and labels_path:
        raise UsageProblem("--labels marks objects in the browser", "serve without --export to label")
    if not export_folder and (least or expression or overwrite):
        raise UsageProblem("--least, --filter and --overwrite apply to --export",
                           "in the browser, use the page's controls")
    if images == "-" or map_path == "-":
        raise UsageProblem("only EMB may be read from stdin", "write the cutouts and the map to files")
    if not export_folder:
        require_server_packages()
    if export_folder:
        from galtools.view.export import read_queries
        from galtools.view.filters import parse

        if expression:
            parse(expression)   # a filter that cannot parse fails before the tables are read
        query_ids = read_queries(queries)

    from galtools.io import open_table

    shown = tuple(c.strip() for c in columns.split(",") if c.strip())
    with open_table(images) as cutouts:
        catalogue = open_catalogue(emb, cutouts, rgb, map_path, index_path, label, shown, sample, bool(labels_path))
        if export_folder:
            from galtools.view.export import export_site

            tiles = export_site(catalogue, query_ids, export_folder, k, least, expression, overwrite)
            log.info(f"wrote {export_folder}: {len(query_ids)} queries, {tiles} pictures")
            return
        labelling = None
        if labels_path:
            from galtools.view.labelling import Labelling

            labelling = Labelling(labels_path, catalogue)
        serve(catalogue, host, port, k, open_browser, labelling)


main = cli

if __name__ == "__main__":
    main()

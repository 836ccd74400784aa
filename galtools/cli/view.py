"""gal-view: a local web server over the tables the other tools write: search, map, filters; or a static export."""
from __future__ import annotations

import sys

import click

from galtools.cli.common import galtools_command, input_argument, log

EXAMPLE = """gal-view emb.parquet --images cutouts.arrow --map map.parquet --label morph_class --columns z_true,mag_r
gal-view emb.parquet --images cutouts.arrow --index emb.faiss --port 8800 --open
gal-view emb.parquet --images cutouts.arrow --export site/ --queries ids.txt -k 12"""

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@galtools_command("gal-view", example=EXAMPLE)
@input_argument("emb")
@click.option("--images", required=True, metavar="CUTOUTS",
              help="The cutout table the embeddings came from (read by row; an Arrow IPC file is fastest).")
@click.option("--map", "map_path", metavar="MAP", help="A map from gal-map (default: PCA of the embeddings).")
@click.option("--index", "index_path", metavar="FAISS", help="Search through this gal-knn index (default: exact "
              "search; refused, exit 65, if it was built from other embeddings).")
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
def cli(emb, images, map_path, index_path, label, columns, rgb, k, host, port, open_browser, export_folder, queries,
        least, expression, overwrite, labels_path):
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
        _require_server_packages()
    if export_folder:
        from galtools.view.export import read_queries
        from galtools.view.filters import parse

        if expression:
            parse(expression)   # a filter that cannot parse fails before the tables are read
        query_ids = read_queries(queries)

    from galtools.io import display_name, open_table
    from galtools.search.table import load_embeddings
    from galtools.view.catalogue import Catalogue
    from galtools.view.images import CutoutReader

    with open_table(emb) as table:
        embeddings = load_embeddings(table, checksum=bool(index_path), name=display_name(emb))
    map_table = None
    if map_path:
        with open_table(map_path) as table:
            map_table = table.read_all()
    index = None
    if index_path:
        from galtools.search import FaissIndex

        index = FaissIndex.load(index_path)
    shown = tuple(c.strip() for c in columns.split(",") if c.strip())
    with open_table(images) as cutouts:
        catalogue = Catalogue(embeddings, CutoutReader(cutouts, rgb), map_table, index, label, shown)
        if export_folder:
            from galtools.view.export import export_site

            tiles = export_site(catalogue, query_ids, export_folder, k, least, expression, overwrite)
            log.info(f"wrote {export_folder}: {len(query_ids)} queries, {tiles} pictures")
            return
        labelling = None
        if labels_path:
            from galtools.view.labelling import Labelling

            labelling = Labelling(labels_path, catalogue)
        _serve(catalogue, host, port, k, open_browser, labelling)


def _require_server_packages() -> None:
    import importlib.util

    from galtools.errors import UsageProblem

    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageProblem(f"gal-view's server needs {' and '.join(missing)}", "pip install 'galtools[view]'")


def _serve(catalogue, host, port, k, open_browser, labelling=None) -> None:
    from galtools.view.server import allowed_hosts_for, bind, make_app, serve

    if host not in LOOPBACK:
        log.warning(f"listening on {host}: anyone who can reach this machine can browse these tables "
                    "(there is no password)")
    app = make_app(catalogue, default_k=k, allowed_hosts=allowed_hosts_for(host), labelling=labelling)
    sock = bind(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{sock.getsockname()[1]}/"
    click.echo(url)
    sys.stdout.flush()
    log.info(f"serving {catalogue.count} objects at {url} (Ctrl-C to stop)")
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        stopped_by = serve(app, sock)
    finally:
        sock.close()
    log.info(f"stopped{f' by {stopped_by}' if stopped_by else ''}")


main = cli

if __name__ == "__main__":
    main()

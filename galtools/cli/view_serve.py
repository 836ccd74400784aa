"""The steps of gal-view (cli/view): opening the tables as a catalogue (in memory, or a survey through a
compressed index), and serving it."""
from __future__ import annotations

import sys

import click

from galtools.cli.common import log

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def open_catalogue(emb, cutouts, rgb, map_path, index_path, label, shown, sample, labels):
    """A Catalogue of EMB held in memory, or, through an ivfpq/ivfsq8 index, a SurveyCatalogue of EMB read by row
    (its map a PCA of ``sample`` objects). ``cutouts``: the open cutout table."""
    from galtools.io import display_name, open_table
    from galtools.search.scale import is_scale_sidecar, read_sidecar
    from galtools.view.catalogue import Catalogue
    from galtools.view.images import CutoutReader, SurveyCutoutReader

    if index_path and is_scale_sidecar(read_sidecar(index_path) or {}):
        from galtools.errors import UsageProblem
        from galtools.search.queries import load_for_index
        from galtools.view.survey import SurveyCatalogue

        if map_path or labels:
            raise UsageProblem("--map and --labels are for tables held in memory", "through a compressed --index "
                               "the map is a PCA of --sample objects: drop them")
        base, index = load_for_index(emb, index_path)
        return SurveyCatalogue(base, index, SurveyCutoutReader(cutouts, rgb), label, shown, sample)
    from galtools.search.table import load_embeddings

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
    return Catalogue(embeddings, CutoutReader(cutouts, rgb), map_table, index, label, shown)


def require_server_packages() -> None:
    import importlib.util

    from galtools.errors import UsageProblem

    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageProblem(f"gal-view's server needs {' and '.join(missing)}", "pip install 'galtools[view]'")


def serve(catalogue, host, port, k, open_browser, labelling=None) -> None:
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

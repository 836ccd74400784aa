"""A static export of gal-view's search: plain HTML pages and PNG tiles for a list of queries, no server needed.

    site/index.html            the queries, each a link to its page
    site/query-0001.html ...   a query and its neighbours (tiles, similarity, label, columns)
    site/tiles/ROW.png         one PNG per galaxy shown (file names are row numbers: ids never become paths)
    site/style.css

The folder is written next to its final place and renamed into it, so a failed export leaves nothing half-made.
"""
from __future__ import annotations

import html
import os

from galtools.errors import GalError, OutputError
from galtools.io.files import atomic_folder

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><link rel="stylesheet" href="style.css"></head>
<body><header><h1>{title}</h1><span>{summary}</span></header><main><section id="results">
{body}
</section></main></body></html>
"""


def _caption(item: dict, similarity: float | None = None) -> str:
    lines = [f'<div class="id">{html.escape(str(item["id"]))}</div>']
    if similarity is not None:
        lines.append(f'<div class="similarity">sim {similarity:.4f}</div>')
    if item.get("label") is not None:
        lines.append(f'<div class="label">{html.escape(str(item["label"]))}</div>')
    for name, value in item.get("columns", {}).items():
        shown = "–" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
        lines.append(f'<div class="muted">{html.escape(name)} {html.escape(shown)}</div>')
    return "".join(lines)


def export_site(catalogue, query_texts: list[str], folder: str, k: int = 10, least: bool = False,
                expression: str | None = None, overwrite: bool = False) -> int:
    """Write the static site for ``query_texts`` into ``folder``; returns the number of PNG tiles written."""
    from galtools.view.server import static_files

    if not query_texts:
        raise GalError("no queries to export", "give a file of object_ids with --queries")
    folder = os.path.abspath(folder)
    if os.path.exists(folder) and not overwrite:
        raise GalError(f"{folder} already exists", "pass --overwrite to replace it")
    parent = os.path.dirname(folder)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot write {folder}: folder {parent} does not exist", "create it first")
    catalogue.rows_of(query_texts)   # every query known before anything is written
    results = []
    for start in range(0, len(query_texts), 100):
        results += catalogue.search(query_texts[start:start + 100], k, least, expression)
    with atomic_folder(folder) as building:
        os.makedirs(os.path.join(building, "tiles"))
        tiles = _write_pages(catalogue, results, building, k, least, expression)
        with open(os.path.join(building, "style.css"), "wb") as handle:
            handle.write(static_files()["style.css"][0])
    return tiles


def _write_pages(catalogue, results, building, k, least, expression) -> int:
    written: dict = {}

    def picture(item) -> str:
        row = int(catalogue.rows_of([item["id"]])[0])
        if row not in written:
            png = catalogue.cutouts.tile(catalogue.parse_id(item["id"]))
            written[row] = png is not None
            if png is not None:
                with open(os.path.join(building, "tiles", f"{row}.png"), "wb") as handle:
                    handle.write(png)
        if not written[row]:
            return '<div class="no-image">no cutout</div>'
        return f'<img src="tiles/{row}.png" alt="object {html.escape(str(item["id"]))}">'

    which = "least similar" if least else "most similar"
    summary = html.escape(f"{catalogue.count} objects, {catalogue.info()['search']} search"
                          + (f", filter: {expression}" if expression else ""))
    links = []
    for number, result in enumerate(results, start=1):
        query = result["query"]
        cells = [f'<div class="tile query">{picture(query)}{_caption(query)}</div>']
        cells += [f'<div class="tile neighbour">{picture(n)}{_caption(n, n["similarity"])}</div>'
                  for n in result["neighbors"]]
        title = f"{len(result['neighbors'])} {which} to {query['id']}"
        body = (f'<div class="result"><h2>{html.escape(title)}</h2><div class="grid">{"".join(cells)}</div></div>'
                '<p><a href="index.html">all queries</a></p>')
        name = f"query-{number:04d}.html"
        with open(os.path.join(building, name), "w", encoding="utf-8") as handle:
            handle.write(PAGE.format(title=html.escape(title), summary=summary, body=body))
        links.append(f'<div class="tile query"><a href="{name}">{picture(query)}</a>{_caption(query)}</div>')
    index_body = (f'<div class="result"><h2>{len(results)} queries, k={k}</h2>'
                  f'<div class="grid">{"".join(links)}</div></div>')
    with open(os.path.join(building, "index.html"), "w", encoding="utf-8") as handle:
        handle.write(PAGE.format(title="gal-view export", summary=summary, body=index_body))
    return sum(written.values())


def read_queries(path: str) -> list[str]:
    """object_ids from a text file: one a line (blank lines and # comments skipped), or a CSV whose header has an
    object_id column."""
    import csv

    from galtools.errors import BadData, InputMissing

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise InputMissing(f"cannot read --queries {path} ({exc.strerror})", "check the path") from None
    except UnicodeDecodeError:
        raise BadData(f"--queries {path} is not a text file", "give object_ids one a line, or a CSV with an "
                      "object_id column") from None
    lines = [line for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if lines and "object_id" in next(csv.reader([lines[0]])):
        column = next(csv.reader([lines[0]])).index("object_id")
        return [row[column].strip() for row in csv.reader(lines[1:]) if len(row) > column and row[column].strip()]
    return [line.strip() for line in lines]

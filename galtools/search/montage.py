"""The neighbor montage: one row per query, the query then its neighbors in rank order, similarity and a label
under each picture (cf. Stein et al. Fig. 1)."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from galtools.errors import UsageProblem
from galtools.search.show import format_cell

log = logging.getLogger("galtools")


def draw_neighbor_montage(kept, base, plan, images_source: str, label: str | None, path: str,
                           least: bool = False) -> int:
    """Draw ``kept`` (search.neighbors.Kept.queries) with pictures from the cutout table ``images_source``.
    The query pictures of embedded cutouts come with the plan. Returns the rows drawn."""
    from galtools.io import images_by_id
    from galtools.viz import rgb_composite, save_montage

    if not kept:
        log.info("no queries: no montage")
        return 0
    wanted = set()
    for query_id, rows, _ in kept:
        if plan.images is None:  # embedded cutouts bring their own pictures
            wanted.add(query_id)
        wanted.update(base.ids_of(rows[rows >= 0]).to_pylist())
    found = images_by_id(images_source, sorted(wanted, key=str), columns=[label] if label else [],
                         what=f"--images {images_source}")
    bands = found.bands
    if plan.images is not None:
        found.images.update({query_id: image for (query_id, _, _), image in zip(kept, plan.images)})
        bands = bands or plan.bands
    found.stack(sorted(wanted, key=str))   # BadData (65) if any picture is missing
    from_cutouts = found.values.get(label) if label else None
    if label and label not in base.carried.column_names and from_cutouts is None:
        raise UsageProblem(f"--label {label}: no such column in EMB or --images",
                           f"EMB columns: {', '.join(base.carried.column_names)}")

    def label_of(object_id, row=None):
        if not label:
            return ""
        if row is not None and label in base.carried.column_names:
            return format_cell(base.carried_rows(pa.array([int(row)]), [label]).column(label)[0].as_py())
        if from_cutouts is not None:
            return format_cell(from_cutouts.get(object_id))
        return ""

    query_rows = {}
    if plan.rows is not None:
        query_rows = dict(zip(plan.ids.to_pylist(), plan.rows))
    grid, captions = [], []
    for query_id, rows, scores in kept:
        query_row = base.rows_of([query_id])[0] if plan.all_rows is not None else query_rows.get(query_id)
        found_rows = rows[rows >= 0]
        order_ids = [query_id] + base.ids_of(found_rows).to_pylist()
        grid.append(list(rgb_composite(found.stack(order_ids), bands)))
        captions.append([f"{query_id}\nquery\n{label_of(query_id, query_row)}"]
                        + [f"{nid}\n{score:.3f}\n{label_of(nid, row)}"
                           for nid, score, row in zip(order_ids[1:], scores[rows >= 0], found_rows)])
    title = "least similar" if least else "most similar"
    save_montage(grid, path, captions=captions, title=f"query, then its {title} (cosine similarity)")
    log.info(f"wrote montage of {len(grid)} queries to {path}")
    return len(grid)

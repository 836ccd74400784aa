"""Reading the embeddings for a map and writing the map table.

The map table is the embedding table's ``object_id`` and carried columns (labels, ra/dec, predictions ...) with
``map_x`` and ``map_y`` (float32) instead of the embedding; its metadata ``galtools.map`` records the method and
its parameters, so the picture can be redrawn or the map remade.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from galtools.errors import BadData, UsageProblem
from galtools.io import display_name, open_table
from galtools.io import meta

log = logging.getLogger("galtools")

MAP_KEY = meta.MAP
MAP_COLUMNS = ("map_x", "map_y")
METHODS = ("pca", "umap")


@dataclass
class Map:
    ids: pa.Array              # object_id, one chunk
    xy: np.ndarray             # (n, 2) float64
    carried: pa.Table          # the other columns, row-aligned
    metadata: dict             # the embedding table's metadata
    method: dict               # {"method": ..., parameters ...}


def make_map(source: str, method: str, seed: int, colour: str | None = None, n_neighbors: int = 15,
             min_dist: float = 0.1) -> Map:
    """Read an embedding table (whole: the map needs every row) and project its unit vectors to 2-D."""
    from galtools.maps.project import pca, umap_map
    from galtools.search.table import load_embeddings

    if method not in METHODS:
        raise UsageProblem(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    name = display_name(source)
    with open_table(source) as table:
        if colour and colour not in table.schema.names:
            raise BadData(f"{name} has no '{colour}' column to colour by (columns: {', '.join(table.schema.names)})",
                          "name a column of EMB with --color")
        embeddings = load_embeddings(table, name=name)
    carried = embeddings.carried.drop_columns([c for c in MAP_COLUMNS if c in embeddings.carried.column_names])
    log.info(f"mapping {embeddings.count} {embeddings.dim}-d embeddings with {method}")
    if method == "pca":
        xy, info = pca(embeddings.vectors)
        details = {"explained_variance_ratio": [round(v, 6) for v in info["explained_variance_ratio"]]}
        log.info("the two axes explain {:.1%} and {:.1%} of the variance".format(*info["explained_variance_ratio"]))
    else:
        xy, details = umap_map(embeddings.vectors, seed, n_neighbors, min_dist)
    return Map(embeddings.ids, xy, carried, embeddings.metadata, {"method": method, "seed": seed, **details})


def map_metadata(result: Map) -> dict:
    """The embeddings' metadata with how the map was made."""
    metadata = dict(result.metadata)
    metadata[MAP_KEY] = json.dumps(result.method)
    return metadata


def write_map(result: Map, sink) -> None:
    """object_id, the carried columns, map_x and map_y to ``sink`` (galtools.io.sink)."""
    columns = {"object_id": result.ids, **{c: result.carried.column(c) for c in result.carried.column_names},
               "map_x": pa.array(result.xy[:, 0], pa.float32()), "map_y": pa.array(result.xy[:, 1], pa.float32())}
    table = pa.table(columns)
    sink.expect_schema(table.schema)
    sink.write(table)

"""Fetching the cutouts of a few objects (the strangest ones) from a cutout table, by object_id, streaming it."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from galtools.errors import BadData
from galtools.io import IMAGE, images_of, open_table


def images_for(source: str, ids: list) -> tuple[np.ndarray, list[str] | None]:
    """The (len(ids), bands, H, W) images of ``ids`` in the order given, and the table's band names."""
    name = "stdin" if source == "-" else source
    with open_table(source) as table:
        table.require_images()
        if "object_id" not in table.schema.names:
            raise BadData(f"{name} has no object_id column", "give the cutout table the embeddings were made from")
        id_type = table.schema.field("object_id").type
        wanted = pa.array(ids).cast(id_type) if pa.types.is_integer(id_type) else pa.array([str(i) for i in ids])
        found: dict = {}
        for batch in table.iter_batches(columns=["object_id", IMAGE]):
            hits = np.flatnonzero(pc.is_in(batch.column("object_id"), value_set=wanted).to_numpy(zero_copy_only=False))
            if hits.size:
                chosen = batch.take(pa.array(hits))
                pictures = images_of(chosen)
                for key, picture in zip(chosen.column("object_id").to_pylist(), pictures):
                    found.setdefault(key, picture.copy())
            if len(found) == len(set(wanted.to_pylist())):
                break
        bands = table.bands
    missing = [i for i in wanted.to_pylist() if i not in found]
    if missing:
        raise BadData(f"{len(missing)} of the objects to draw are not in {name} (e.g. object_id {missing[0]!r})",
                      "give the cutout table the embeddings were made from")
    return np.stack([found[i] for i in wanted.to_pylist()]), bands

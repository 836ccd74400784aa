"""Table I/O shared by every galtools command: FITS, Parquet and Arrow IPC, files, pipes, folders of parts.

    with open_table("cutouts.fits") as table:           # or "-", a folder, "parts/*.parquet"
        for batch in table.iter_batches():              # pyarrow RecordBatches, bounded memory
            images = images_of(batch)                    # (n, bands, H, W) float32
    with open_output("out.parquet", metadata=table.metadata, tool="gal-xxx") as out:
        out.write(batch)                                 # atomic; history appended

A library that produces rows writes them to a *sink* (``galtools.io.sink``): any object with
``expect_schema(schema)`` and ``write(batch)``; ``Output`` is one, ``CollectingSink`` keeps rows in memory.
``galtools.io.lookup`` reads a few columns, a list of ids, or the images of chosen objects.
"""
from galtools.io.files import atomic_file, usual_mode
from galtools.io.ids import UniqueIds, check_unique_ids
from galtools.io.meta import BANDS, FLUX_UNIT, HISTORY, MODEL_SHA256, PIXSCALE, bands_of, history_of
from galtools.io.output import Output, check_output_path, open_output
from galtools.io.shard import Shard
from galtools.io.table import Table, open_table
from galtools.io.tensor import IMAGE, EMBEDDING, images_of, tensor_column, vector_column, vectors_of
from galtools.io.sink import CollectingSink, Sink
from galtools.io.lookup import FoundImages, display_name, images_by_id, read_columns, read_ids

__all__ = [
    "atomic_file", "usual_mode", "UniqueIds", "check_unique_ids", "BANDS", "FLUX_UNIT", "HISTORY", "MODEL_SHA256", "PIXSCALE", "bands_of", "history_of",
    "Output", "check_output_path", "open_output", "Shard", "Table", "open_table",
    "IMAGE", "EMBEDDING", "images_of", "tensor_column", "vector_column", "vectors_of",
    "CollectingSink", "Sink", "FoundImages", "display_name", "images_by_id", "read_columns", "read_ids",
]

"""Rendered chunks as Arrow record batches in the galtools cutout-table format."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from galtools.sim.filters import BANDS
from galtools.sim.simulate import LABEL_COLUMNS, Chunk, SimConfig

_ARROW_TYPES = {np.float64: pa.float64(), np.float32: pa.float32(), np.int16: pa.int16(), np.bool_: pa.bool_(),
                str: pa.string()}


def output_schema(size: int) -> pa.Schema:
    fields = [pa.field("object_id", pa.int64()),
              pa.field("image", pa.fixed_shape_tensor(pa.float32(), (len(BANDS), size, size)))]
    fields += [pa.field(name, _ARROW_TYPES[dtype]) for name, dtype in LABEL_COLUMNS]
    return pa.schema(fields)


def chunk_record_batch(chunk: Chunk) -> pa.RecordBatch:
    from galtools.io import tensor_column

    schema = output_schema(chunk.images.shape[-1])
    columns = [pa.array(chunk.labels["object_id"], pa.int64()), tensor_column(chunk.images)]
    columns += [pa.array(chunk.labels[name], type=_ARROW_TYPES[dtype]) for name, dtype in LABEL_COLUMNS]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def table_metadata(config: SimConfig, count: int) -> dict[str, str]:
    """Metadata of a gal-sim table: the cutout conventions and everything needed to re-make it."""
    from galtools.io.meta import BANDS as BANDS_KEY, FLUX_UNIT, PIXSCALE, SIM

    settings = {"count": count, "seed": config.seed, "size": config.size,
                "anomaly_fraction": config.anomaly_fraction, "neighbor_rate": config.neighbour_rate}
    return {BANDS_KEY: ",".join(BANDS), PIXSCALE: repr(config.pixscale), FLUX_UNIT: "nanomaggy",
            SIM: json.dumps(settings, sort_keys=True)}

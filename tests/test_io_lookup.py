"""galtools.io's readers of parts of a table (ids, numeric columns, images by id) and the sink protocol."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from conftest import make_cutouts, write_table
from galtools.errors import BadData
from galtools.io import CollectingSink, Sink, images_by_id, open_output, read_columns, read_ids


def test_images_by_id_streams_in_small_batches_and_keeps_the_order_asked(tmp_path, monkeypatch):
    table = make_cutouts(n=30)
    path = write_table(table, str(tmp_path / "c.parquet"))
    import galtools.io.table as io_table

    monkeypatch.setattr(io_table, "BATCH_BYTES", 4096)   # several batches: the lookup must cross them
    found = images_by_id(path, ["1017", 1003, 1029, 1003, "x"], columns=["label", "absent"])
    ids = table.column("object_id").to_pylist()
    images = table.column("image").combine_chunks().to_numpy_ndarray()
    assert found.requested == [1017, 1003, 1029, 1003]   # "x" cannot be an integer id
    np.testing.assert_array_equal(found.stack(), images[[ids.index(i) for i in (1017, 1003, 1029, 1003)]])
    assert found.bands == ["g", "r", "i"] and list(found.values) == ["label"]
    assert found.values["label"][1029] == table.column("label")[29].as_py()
    with pytest.raises(BadData, match="1 objects are not in"):
        images_by_id(path, [1003, 999]).stack()


def test_read_ids_tells_a_table_from_text_by_its_bytes(tmp_path):
    write_table(pa.table({"object_id": pa.array([5, 6], pa.int64())}), str(tmp_path / "t.fits"))
    (tmp_path / "q.csv").write_text("x,object_id\n1,5\n2,6\n")
    (tmp_path / "q.txt").write_text("5\n6\n")
    assert read_ids(str(tmp_path / "t.fits")) == [5, 6]
    assert read_ids(str(tmp_path / "q.csv")) == read_ids(str(tmp_path / "q.txt")) == ["5", "6"]
    (tmp_path / "e.txt").write_text("\n")
    with pytest.raises(BadData, match="is empty"):
        read_ids(str(tmp_path / "e.txt"))


def test_read_columns_roles_optional_and_nulls(tmp_path):
    path = write_table(pa.table({"z": pa.array([0.1, None, 0.3]), "n": pa.array([1, 2, 3], pa.int16()),
                                 "s": pa.array(["a", "b", "c"])}), str(tmp_path / "t.parquet"))
    arrays, metadata = read_columns(path, {"truth": "z", "pred_column": None}, optional={"mag": "n", "x": "q"})
    assert set(arrays) == {"truth", "mag"} and metadata["galtools.bands"] == "g,r,i"
    np.testing.assert_array_equal(arrays["truth"], [0.1, np.nan, 0.3])
    assert arrays["mag"].dtype == np.float64 and arrays["mag"].tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(BadData, match="not numeric") as caught:
        read_columns(path, {"truth": "s"})
    assert "--truth" in caught.value.hint


def test_output_and_collecting_sink_follow_the_sink_protocol(tmp_path):
    sink = CollectingSink()
    schema = pa.schema([("a", pa.int64())])
    sink.expect_schema(schema)
    assert sink.table().equals(schema.empty_table())
    sink.write(pa.record_batch([pa.array([1, 2])], schema=schema))
    sink.write(pa.table({"a": pa.array([3], pa.int64())}))
    assert sink.table().column("a").to_pylist() == [1, 2, 3] and sink.rows == 3
    with open_output(str(tmp_path / "o.parquet")) as out:
        assert isinstance(out, Sink) and isinstance(sink, Sink)
        out.write(sink.table())

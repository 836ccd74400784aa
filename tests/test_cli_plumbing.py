"""Plumbing every command shares: the implied default sub-command, old option spellings, the output prologue."""
from __future__ import annotations

import json

import numpy as np

from conftest import run_tool
from galtools.io import open_table


def test_old_neighbour_rate_spelling_is_a_hidden_alias(tmp_path):
    new = run_tool("gal-sim", "-n", 2, "--seed", 3, "--neighbor-rate", 1.0, "-o", tmp_path / "new.parquet", "-j", 1)
    old = run_tool("gal-sim", "-n", 2, "--seed", 3, "--neighbour-rate", 1.0, "-o", tmp_path / "old.parquet", "-j", 1)
    assert new.returncode == 0 and old.returncode == 0, (new.stderr.decode(), old.stderr.decode())
    tables = []
    for name in ("new", "old"):
        with open_table(str(tmp_path / f"{name}.parquet")) as table:
            assert json.loads(table.metadata["galtools.sim"])["neighbor_rate"] == 1.0
            tables.append(table.read_all())
    assert tables[0].column("n_neighbors").to_pylist() == [1, 1]
    np.testing.assert_array_equal(tables[0].column("image").combine_chunks().to_numpy_ndarray(),
                                  tables[1].column("image").combine_chunks().to_numpy_ndarray())
    helped = run_tool("gal-sim", "--help").stdout.decode()
    assert "--neighbor-rate" in helped and "--neighbour-rate" not in helped


def test_default_sub_command_is_implied_the_same_way_for_knn_and_train():
    for tool, default, word in (("gal-knn", "search", "EMB"), ("gal-train", "fit", "CUTOUTS")):
        group = run_tool(tool, "--help")
        assert group.returncode == 0 and "COMMAND [ARGS]" in group.stdout.decode()
        implied = run_tool(tool, "some-input", "--help")
        named = run_tool(tool, default, "--help")
        assert implied.returncode == named.returncode == 0
        assert implied.stdout == named.stdout and word in named.stdout.decode()
        bare = run_tool(tool)
        assert bare.returncode == 2 and "Usage:" in bare.stderr.decode()
    # past the group's own options a sub-command name is still seen; an option value is never taken for one
    assert run_tool("gal-knn", "-q", "index", "--help").stdout == run_tool("gal-knn", "index", "--help").stdout
    odd = run_tool("gal-knn", "--label", "index", "--help")
    assert odd.returncode == 0 and odd.stdout == run_tool("gal-knn", "search", "--help").stdout


def test_shard_placeholder_and_existing_output_are_settled_before_work(tmp_path):
    (tmp_path / "sim-1-of-2.parquet").write_bytes(b"taken")
    clash = run_tool("gal-sim", "-n", 4, "--shard", "1/2", "-o", tmp_path / "sim-{shard}.parquet")
    assert clash.returncode == 1 and "sim-1-of-2.parquet already exists" in clash.stderr.decode()
    run_tool("gal-sim", "-n", 4, "--shard", "0/2", "-j", 1, "-o", tmp_path / "sim-{shard}.parquet", check=True)
    with open_table(str(tmp_path / "sim-0-of-2.parquet")) as table:
        assert table.read_all().column("object_id").to_pylist() == [0, 1]
        assert table.history[-1]["tool"] == "gal-sim"

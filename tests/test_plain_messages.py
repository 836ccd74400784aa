"""Messages that must not mislead, as a user meets them from a shell: an empty table's pixel statistics, and a
dangling symlink where the output goes."""
from __future__ import annotations

import json
import os

import pytest

from conftest import make_cutouts, run_tool, write_table


def _no_constants(name):
    raise AssertionError(f"{name} in the JSON")


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_pixels_of_an_empty_table_say_there_are_no_rows(tmp_path, suffix):
    empty = write_table(make_cutouts(n=4).slice(0, 0), str(tmp_path / ("empty" + suffix)))
    result = run_tool("gal-info", "--pixels", empty)
    text = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "0 rows" in text and "pixels: none to scan (the table has no rows)" in text, text
    assert "inf" not in text and "nan" not in text
    result = run_tool("gal-info", "--pixels", "--json", empty)
    pixels = json.loads(result.stdout, parse_constant=_no_constants)["pixels"]   # strict JSON: no Infinity, NaN
    assert pixels["images"] == 0 and pixels["min"] is None and pixels["max"] is None
    # a table with rows still gets its numbers
    full = write_table(make_cutouts(n=4), str(tmp_path / ("full" + suffix)))
    pixels = json.loads(run_tool("gal-info", "--pixels", "--json", full).stdout, parse_constant=_no_constants)
    assert pixels["pixels"]["images"] == 4 and len(pixels["pixels"]["min"]) == 3


def test_a_dangling_symlink_at_the_output_is_an_existing_output(tmp_path):
    cutouts = write_table(make_cutouts(n=4), str(tmp_path / "cutouts.parquet"))
    link = tmp_path / "out.parquet"
    os.symlink(tmp_path / "elsewhere" / "target.parquet", link)     # points nowhere
    result = run_tool("gal-pack", cutouts, "-o", link)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert lines[0] == (f"gal-pack: error: {link} already exists (a symlink to {tmp_path}/elsewhere/target.parquet, "
                        "which does not exist) (pass --overwrite to replace it)")
    assert os.path.islink(link) and os.readlink(link) == str(tmp_path / "elsewhere" / "target.parquet")
    assert sorted(os.listdir(tmp_path)) == ["cutouts.parquet", "out.parquet"]
    assert run_tool("gal-pack", cutouts, "-o", link, "--overwrite").returncode == 0
    assert not os.path.islink(link) and os.path.getsize(link) > 0

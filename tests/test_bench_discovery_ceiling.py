"""benchmarks/bench_discovery.py --ceiling-of / --defect-stats, run as a person runs it: the every-label probe per
anomaly kind of an embedding table, and the detector-defect statistics of a gal-sim cutout table as one.

The reference is independent of both: gal-sim's own anomaly_kind column.  Floor: on gal-sim seeds 1, 2 and 3
(800 cutouts, --anomaly-fraction 0.5) the defect statistics gave bad columns AUPRC 0.954, 0.934 and 0.995 against a
chance of about 0.05; the test asserts 0.75 on seed 2."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT, run_tool
from galtools.io import open_table, vectors_of

BENCH = os.path.join(ROOT, "benchmarks", "bench_discovery.py")
RESULTS = os.path.join(ROOT, "benchmarks", "RESULTS.md")


def _auprcs(line: str) -> dict[str, float]:
    return {kind: float(value) for kind, value in re.findall(r"(\w+) AUPRC ([0-9.]+)", line)}


def test_defect_statistics_find_bad_columns_and_the_ceiling_reads_any_embedding_table(tmp_path):
    cutouts = tmp_path / "sim.arrow"
    run_tool("gal-sim", "-n", 800, "--seed", 2, "--anomaly-fraction", 0.5, "-j", 1, "-q", "-o", cutouts, check=True)
    before = open(RESULTS).read() if os.path.exists(RESULTS) else None
    result = subprocess.run([sys.executable, BENCH, "--no-record", "--defect-stats", str(cutouts)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    made = tmp_path / "sim-defects.parquet"
    with open_table(str(cutouts)) as table:
        ids, kinds = (table.read_all().column(c).to_pylist() for c in ("object_id", "anomaly_kind"))
    with open_table(str(made)) as table:
        written = table.read_all()
    assert written.column("object_id").to_pylist() == ids and written.column("anomaly_kind").to_pylist() == kinds
    assert vectors_of(written).shape == (800, 30)     # 6 statistics x 5 bands
    line = result.stdout.strip().splitlines()[-1]
    assert line.startswith("detector-defect statistics"), result.stdout
    scores = _auprcs(line)
    assert set(scores) == set(kinds) - {"none"}, scores
    assert scores["bad_column"] >= 0.75, scores

    # the same table given by --ceiling-of with a recipe name: the same figures, under that name
    again = subprocess.run([sys.executable, BENCH, "--no-record", "--ceiling-of", f"{made}=pixels, by hand"],
                           capture_output=True, text=True, timeout=300, check=True)
    assert again.stdout.startswith("pixels, by hand: ") and _auprcs(again.stdout) == scores, again.stdout
    assert (open(RESULTS).read() if os.path.exists(RESULTS) else None) == before    # --no-record wrote nothing

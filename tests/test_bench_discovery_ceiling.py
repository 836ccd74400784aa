"""benchmarks/bench_discovery.py --ceiling-of / --defect-stats / --reader, run as a person runs it: the every-label
probe per anomaly kind of an embedding table, the detector-defect statistics of a gal-sim cutout table as one, and
nonlinear readers against the linear probe; and the loop's runs file (resumed per table).

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


def test_a_nonlinear_reader_reads_an_xor_shaped_kind_that_the_linear_probe_cannot(tmp_path):
    """--reader: a toy embedding table whose wanted kind sits in the two 'odd' quadrants of a plane (XOR: no
    hyperplane separates it from the normal objects of the two 'even' quadrants, by construction) is read by the
    kernel and tree readers and not by the linear probe, in one process, one line per reader."""
    import numpy as np
    import pyarrow as pa

    from conftest import write_table
    from galtools.io import vector_column

    rng = np.random.default_rng(5)
    signs = rng.choice([-1.0, 1.0], size=(600, 2))
    wanted = np.r_[np.zeros(540, bool), np.ones(60, bool)]
    signs[:, 1] = np.where(wanted, -signs[:, 0], signs[:, 0])     # wanted: (+, -) or (-, +); normal: same signs
    vectors = np.c_[signs + rng.normal(0, 0.25, signs.shape), np.ones(600), rng.normal(0, 0.25, (600, 5))]
    emb = write_table(pa.table({"object_id": pa.array(np.arange(600)),
                                "anomaly_kind": pa.array(np.where(wanted, "xor", "none")),
                                "embedding": vector_column(vectors.astype(np.float32))}), str(tmp_path / "xor.parquet"))
    result = subprocess.run([sys.executable, BENCH, "--no-record", "--ceiling-of", f"{emb}=toy", "--reader", "linear",
                             "--reader", "kernel", "--reader", "trees"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["toy", "toy [kernel reader]", "toy [trees reader]"], lines
    linear, kernel, trees = (_auprcs(line)["xor"] for line in lines)
    # seeds 1, 2, 3, 5 gave linear 0.07-0.31 (chance 0.05: 28 of 568 wanted), kernel 1.00, trees 0.95-1.00
    assert kernel >= 0.85 and trees >= 0.85, lines     # the quadrants are 8 noise widths apart
    assert linear <= 0.5, lines


def test_the_runs_file_resumes_a_table_and_never_lends_its_runs_to_another(tmp_path):
    """The loop's runs are kept in a JSON-lines file as they end, so an interrupted benchmark resumes; a run of one
    embedding table must not be taken for another table's run with the same settings (two encoders' tables
    benchmarked with one --json)."""
    import numpy as np
    import pyarrow as pa

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench_discovery as bd
    from conftest import write_table
    from galtools.io import vector_column

    rng = np.random.default_rng(3)
    kinds = np.r_[np.full(300, "none"), np.full(20, "x")]
    tables = []
    for name, offset in (("found.parquet", 4.0), ("hidden.parquet", 0.0)):   # the kind apart, or mixed in
        vectors = rng.normal(size=(320, 8)) + np.where(kinds == "x", offset, 0.0)[:, None] * np.eye(8)[0]
        tables.append(write_table(pa.table({"object_id": pa.array(np.arange(320)), "anomaly_kind": pa.array(kinds),
                                            "embedding": vector_column(vectors.astype(np.float32))}),
                                  str(tmp_path / name)))
    done, config = str(tmp_path / "runs.jsonl"), dict(bd.BASE)

    def auprc(path):
        runs = bd.sim_runs(path, (0.05,), (5,), (1,), config, log=lambda *_: None, done=done)[(0.05, 5)]
        return [run["ours"]["auprc"] for run in runs]

    found, hidden = auprc(tables[0]), auprc(tables[1])
    assert found[0] > 0.9 and hidden[0] < 0.5, (found, hidden)     # chance is about 0.05
    with open(done) as handle:
        assert len(handle.readlines()) == 2                          # the second table's run was computed
    assert auprc(tables[0]) == found                                 # and the first table's is resumed as it was
    with open(done) as handle:
        assert len(handle.readlines()) == 2

"""An Arrow stream cut short must never read as a whole table: a producer killed between two batches leaves a stream
that looks complete up to there, and only the end-of-stream marker tells it apart. Real pipes, real kills."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from conftest import run_tool, shell, tool_command, write_table
from galtools.io import open_table, vector_column

ENCODER = "cd" * 32
DIM = 8
ROWS_PER_BATCH = 50

# A producer that writes its table through galtools' own output (an Arrow stream on stdout), batch by batch, and
# is killed with SIGKILL after BATCHES batches (or finishes, with KILL=0).
PRODUCER = textwrap.dedent(f"""
    import os, signal, sys
    import numpy as np, pyarrow as pa
    from galtools.io import open_output, tensor_column, vector_column
    batches, kill = int(sys.argv[1]), sys.argv[2] == "1"
    rng = np.random.default_rng(0)
    out = open_output("-", fmt="arrow-stream", tool="producer",
                      metadata={{"galtools.model_sha256": "{ENCODER}", "galtools.bands": "g,r,i"}})
    for b in range(batches):
        ids = np.arange(b * {ROWS_PER_BATCH}, (b + 1) * {ROWS_PER_BATCH}, dtype=np.int64)
        vectors = rng.standard_normal(({ROWS_PER_BATCH}, {DIM})).astype(np.float32)
        images = rng.standard_normal(({ROWS_PER_BATCH}, 3, 8, 8)).astype(np.float32)
        out.write(pa.record_batch({{"object_id": ids, "embedding": vector_column(vectors),
                                   "image": tensor_column(images)}}))
        sys.stdout.buffer.flush()
    if kill:
        os.kill(os.getpid(), signal.SIGKILL)
    out.commit(pa.schema([("object_id", pa.int64())]))
""")


def producer(batches: int, kill: bool) -> str:
    return f"{sys.executable} -c {_quote(PRODUCER)} {batches} {int(kill)}"


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def stream_bytes(batches: int, kill: bool) -> bytes:
    result = subprocess.run(["bash", "-c", producer(batches, kill)], capture_output=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.returncode == (-signal.SIGKILL if kill else 0) or result.returncode == (137 if kill else 0)
    return result.stdout


@pytest.fixture(scope="module")
def ood_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stream-end")
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((400, DIM)).astype(np.float32)
    reference = write_table(pa.table({"object_id": pa.array(np.arange(400, dtype=np.int64)),
                                      "embedding": vector_column(vectors)}),
                            str(folder / "reference.parquet"), **{"galtools.model_sha256": ENCODER})
    model = folder / "ood.model"
    run_tool("gal-ood", "fit", reference, "-o", model, check=True)
    return model


def _refused(result, out=None):
    stderr = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    assert result.returncode == 65, stderr
    assert "end-of-stream marker" in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    if out is not None:
        assert not os.path.exists(out), "a downstream output was left behind"


def test_killed_producer_in_a_pipe_fails_the_reader_and_leaves_no_output(ood_model, tmp_path):
    """The audit's case: producer | gal-ood score - -o scored.parquet, the producer killed mid-stream."""
    scored = tmp_path / "scored.parquet"
    result = shell(f"{producer(5, kill=True)} | gal-ood score - --model {ood_model} -o {scored}; "
                   "echo \"exit codes ${PIPESTATUS[*]}\" >&2; exit ${PIPESTATUS[1]}")
    stderr = result.stderr.decode()
    assert "exit codes 137 65" in stderr, stderr
    assert "end-of-stream marker" in stderr and "250 rows" in stderr, stderr
    assert not scored.exists()
    assert not [p for p in os.listdir(tmp_path) if p != "ood.model"], os.listdir(tmp_path)

    # the same producer left to finish: the whole table comes through
    result = shell(f"{producer(5, kill=False)} | gal-ood score - --model {ood_model} -o {scored}")
    assert result.returncode == 0, result.stderr.decode()
    with open_table(str(scored)) as table:
        assert table.read_all().column("object_id").to_pylist() == list(range(250))


@pytest.mark.parametrize("reader", ["info", "pack", "knn", "ood"])
def test_every_reader_refuses_a_stream_cut_between_batches(reader, ood_model, tmp_path):
    cut = stream_bytes(3, kill=True)
    whole = stream_bytes(3, kill=False)
    assert whole.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00") and len(whole) == len(cut) + 8
    out = tmp_path / "out.parquet"
    args = {"info": ["-"],
            "pack": ["-", "-o", out],
            "knn": ["-", "--all", "-k", "3", "-o", out],
            "ood": ["score", "-", "--model", ood_model, "-o", out]}[reader]
    tool = {"info": "gal-info", "pack": "gal-pack", "knn": "gal-knn", "ood": "gal-ood"}[reader]
    _refused(run_tool(tool, *args, input=cut), out)
    assert run_tool(tool, *args, input=whole).returncode == 0


def test_stream_saved_to_a_file_cut_or_joined_is_refused(tmp_path):
    """An Arrow stream kept in a file (`-o part.arrows`, or a copy of a pipe) gets the same check, and so do two
    streams joined by cat, which would otherwise read as the first alone."""
    whole, cut = tmp_path / "whole.arrows", tmp_path / "cut.arrows"
    whole.write_bytes(stream_bytes(2, kill=False))
    cut.write_bytes(stream_bytes(2, kill=True))
    assert run_tool("gal-info", whole).returncode == 0
    _refused(run_tool("gal-info", cut))
    joined = tmp_path / "joined.arrows"
    joined.write_bytes(whole.read_bytes() * 2)
    result = run_tool("gal-info", joined)
    assert result.returncode == 65 and "data follows the end of the Arrow stream" in result.stderr.decode()
    result = run_tool("gal-info", "-", input=joined.read_bytes())
    assert result.returncode == 65 and "data follows the end of the Arrow stream" in result.stderr.decode()


def test_a_stream_of_no_rows_is_whole_with_its_marker(tmp_path):
    empty = stream_bytes(0, kill=False)
    result = run_tool("gal-info", "-", input=empty)
    assert result.returncode == 0, result.stderr.decode()
    _refused(run_tool("gal-info", "-", input=empty[:-8]))


def test_a_real_tool_stopped_by_sigterm_mid_stream(tmp_path):
    """gal-sim writing to a pipe, stopped by SIGTERM once its first rows have arrived: whatever it had written,
    the next tool refuses it."""
    process = subprocess.Popen(tool_command("gal-sim") + ["-n", "600", "-j", "1", "--size", "64", "-o", "-"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received = process.stdout.read(1 << 20)
    process.send_signal(signal.SIGTERM)
    received += process.stdout.read()
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert len(received) >= 1 << 20
    result = run_tool("gal-info", "-", input=received)
    assert result.returncode == 65, result.stderr.decode()
    assert "truncated" in result.stderr.decode() or "end-of-stream marker" in result.stderr.decode()


def test_a_fits_table_cut_short_on_stdin_is_refused_and_named_as_stdin(tmp_path):
    """FITS says how long its tables are: a copy cut short on stdin is refused, naming stdin (not the temporary
    copy gal-info keeps of it)."""
    whole = tmp_path / "whole.fits"
    table = pa.table({"object_id": pa.array(np.arange(2000, dtype=np.int64)),
                      "embedding": vector_column(np.ones((2000, DIM), np.float32))})
    write_table(table, str(whole))
    data = whole.read_bytes()
    result = run_tool("gal-info", "-", input=data[:len(data) // 2 // 2880 * 2880])
    stderr = result.stderr.decode()
    assert result.returncode == 65, stderr
    assert stderr.startswith("gal-info: error: stdin: FITS file is truncated"), stderr
    assert run_tool("gal-info", "-", input=data).returncode == 0

"""Outputs that nothing can lose or corrupt in silence: FIFOs and devices, SIGTERM/SIGHUP mid-write, full disks.

Run as real processes, as a shell pipeline or a Slurm job would run them."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time

import pyarrow as pa
import pytest

from conftest import make_cutouts, run_tool, tool_command, write_table
from galtools.io import open_table


def one_error_line(result_or_err: bytes | subprocess.CompletedProcess) -> str:
    err = result_or_err if isinstance(result_or_err, bytes) else result_or_err.stderr
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err.decode(), err.decode()
    return lines[0]


# ------------------------------------------------------------------------------------------- FIFOs and devices

def _read_fifo(path: str, into: list) -> threading.Thread:
    def reader():
        with open(path, "rb") as handle:
            into.append(handle.read())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_fifo_is_written_into_and_never_replaced(tmp_path, cutouts, overwrite):
    path, table = cutouts
    fifo = str(tmp_path / "f")
    os.mkfifo(fifo)
    got: list[bytes] = []
    thread = _read_fifo(fifo, got)
    args = ["--overwrite"] if overwrite else []
    result = run_tool("gal-pack", path, "-o", fifo, "--format", "parquet", *args)
    thread.join(60)
    assert result.returncode == 0, result.stderr.decode()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)            # still the FIFO, not a regular file
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(got[0])
    with open_table(str(copy)) as written:
        assert written.read_all().column("object_id").to_pylist() == table.column("object_id").to_pylist()
    assert sorted(os.listdir(tmp_path)) == ["copy.parquet", "cutouts.fits", "f"]


def test_a_fifo_without_an_extension_gets_an_arrow_stream(tmp_path, cutouts):
    path, table = cutouts
    fifo = str(tmp_path / "pipe")
    os.mkfifo(fifo)
    got: list[bytes] = []
    thread = _read_fifo(fifo, got)
    result = run_tool("gal-pack", path, "-o", fifo)
    thread.join(60)
    assert result.returncode == 0, result.stderr.decode()
    reader = pa.ipc.open_stream(got[0])
    assert reader.read_all().column("object_id").to_pylist() == table.column("object_id").to_pylist()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_character_device_is_written_into_not_replaced(tmp_path, cutouts, overwrite):
    path, _ = cutouts
    null = str(tmp_path / "null")
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))   # the same device as /dev/null
    except PermissionError:
        pytest.skip("mknod needs root")
    before = os.stat(null)
    args = ["--overwrite"] if overwrite else []
    result = run_tool("gal-pack", path, "-o", null, "--format", "fits", *args)
    assert result.returncode == 0, result.stderr.decode()
    after = os.stat(null)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert sorted(os.listdir(tmp_path)) == ["cutouts.fits", "null"]


def test_dev_null_needs_no_overwrite_and_dev_stdout_is_stdout(tmp_path, cutouts):
    path, table = cutouts
    if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
        pytest.skip("/dev/null on this machine is not a device (something replaced it)")
    result = run_tool("gal-pack", path, "-o", "/dev/null")
    assert result.returncode == 0, result.stderr.decode()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    result = run_tool("gal-pack", path, "-o", "/dev/stdout", "--format", "parquet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr.decode()
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(result.stdout)
    with open_table(str(copy)) as written:
        assert written.num_rows == table.num_rows
    assert sorted(os.listdir(tmp_path)) == ["copy.parquet", "cutouts.fits"]


# ---------------------------------------------------------------------------------------- SIGTERM and SIGHUP

def _writing_in(folder) -> bool:
    """Whether a file in ``folder`` exists or is held open by a process: an output on Linux is an unnamed file
    (O_TMPFILE) until complete, seen only in /proc/PID/fd."""
    if os.listdir(folder):
        return True
    prefix = os.path.abspath(folder) + "/"
    for pid in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix) for fd in os.listdir(f"/proc/{pid}/fd")):
                return True
        except OSError:
            continue
    return False


def _signals_as_from_a_terminal():
    for signum in (signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


def _kill_mid_write(tmp_path, args: list[str], signum: int, wait_for, stdin: bytes | None = None,
                    timeout: float = 120):
    """Start a tool, give it ``stdin`` (left open, so the tool waits for more), wait until ``wait_for()`` says it is
    writing, send ``signum``; the exit status and stderr."""
    # the tool starts with SIGHUP and SIGINT at their defaults, as from a terminal, even when this suite runs under
    # nohup or in a background job, which start with them ignored (the tools keep a signal ignored that their parent
    # ignores: Ctrl-C would then never stop the tool, and the test would wait out its timeout)
    process = subprocess.Popen(tool_command(args[0]) + args[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=tmp_path, preexec_fn=_signals_as_from_a_terminal)
    try:
        if stdin:
            process.stdin.write(stdin)
            process.stdin.flush()
        deadline = time.time() + timeout
        while not wait_for() and time.time() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, process.communicate()[1].decode()
        assert wait_for(), "the tool never started writing"
        process.send_signal(signum)
        process.wait(timeout=120)
    finally:
        process.stdin.close()
        if process.poll() is None:
            process.kill()
    return process.returncode, process.stderr.read()


def _one_batch_of_a_stream(n: int = 64) -> bytes:
    """The start of an Arrow stream of cutouts: one batch, no end-of-stream marker (more would follow)."""
    table = make_cutouts(n=n, size=16)
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, table.schema.with_metadata({b"galtools.bands": b"g,r,i"}))
    writer.write_table(table)
    return sink.getvalue().to_pybytes()   # the writer is not closed: no end-of-stream marker


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_fits_write_removes_the_partial_output_and_its_spool(tmp_path, signum):
    """gal-pack writing FITS from a stream that stalls halfway: the image spool exists, then the signal comes;
    nothing may be left in the output's folder."""
    out = tmp_path / "out"
    out.mkdir()

    def spooling():
        return any(name.endswith(".images") for name in os.listdir(out))

    code, err = _kill_mid_write(tmp_path, ["gal-pack", "-", "-o", str(out / "packed.fits")], signum, spooling,
                                stdin=_one_batch_of_a_stream())
    assert code == 128 + signum, err.decode()
    line = one_error_line(err)
    assert line.startswith("gal-pack: error: stopped by ") and signal.Signals(signum).name in line
    assert line.endswith("; the partial output was removed")   # Ctrl-C says what SIGTERM says
    assert ("(Ctrl-C)" in line) == (signum == signal.SIGINT)
    assert os.listdir(out) == []


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_sigterm_while_waiting_for_input_leaves_nothing(tmp_path, suffix):
    """gal-pack stopped after it opened its output and before its first row leaves no hidden temporary."""
    out = tmp_path / "out"
    out.mkdir()
    code, err = _kill_mid_write(tmp_path, ["gal-pack", "-", "-o", str(out / ("packed" + suffix))], signal.SIGTERM,
                                lambda: _writing_in(out))
    assert code == 143, err.decode()
    assert "stopped by SIGTERM" in one_error_line(err)
    assert os.listdir(out) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_gal_sim_stopped_mid_run_leaves_nothing(tmp_path, signum):
    pytest.importorskip("galsim")
    out = tmp_path / "out"
    out.mkdir()

    def spooling():
        return any(name.endswith(".images") for name in os.listdir(out))

    code, err = _kill_mid_write(tmp_path, ["gal-sim", "-n", "100000", "-j", "1", "-o", str(out / "sim.fits")],
                                signum, spooling)
    assert code == 128 + signum, err.decode()
    assert signal.Signals(signum).name in one_error_line(err)
    assert os.listdir(out) == []


# ---------------------------------------------------------------------------------------------- full disks

def test_stdout_on_dev_full_is_exit_74(cutouts):
    path, _ = cutouts
    with open("/dev/full", "wb") as full:
        result = subprocess.run(tool_command("gal-pack") + [path, "-o", "-"], stdout=full, stderr=subprocess.PIPE,
                                timeout=120)
    assert result.returncode == 74, result.stderr.decode()
    assert "no space left on device while writing standard output" in one_error_line(result)
    with open("/dev/full", "wb") as full:   # a FITS table goes through a temporary file first, then to stdout
        result = subprocess.run(tool_command("gal-pack") + [path, "-o", "-", "--format", "fits"], stdout=full,
                                stderr=subprocess.PIPE, timeout=120)
    assert result.returncode == 74 and "no space left on device while writing standard output" in \
        one_error_line(result), result.stderr.decode()
    result = run_tool("gal-pack", path, "-o", "/dev/full", "--format", "parquet")
    assert result.returncode == 74 and "no space left on device while writing /dev/full" in one_error_line(result)
    with open("/dev/full", "wb") as full:
        result = subprocess.run(tool_command("gal-info") + [path], stdout=full, stderr=subprocess.PIPE, timeout=120)
    assert result.returncode == 74 and "no space left on" in one_error_line(result), result.stderr.decode()


@pytest.mark.parametrize("suffix", [".fits", ".parquet", ".arrow"])
def test_a_full_disk_is_exit_74_naming_it_and_leaves_nothing(tmp_path, small_tmpfs, suffix):
    path = write_table(make_cutouts(n=300, size=24), str(tmp_path / "big.parquet"))   # ~2 MB of images
    out = os.path.join(small_tmpfs, "out" + suffix)
    result = run_tool("gal-pack", path, "-o", out)
    assert result.returncode == 74, result.stderr.decode()
    line = one_error_line(result)
    assert f"no space left on {small_tmpfs} while writing {out}" in line, line
    assert os.listdir(small_tmpfs) == []


def test_a_full_disk_while_renaming_a_figure_is_exit_74(tmp_path, small_tmpfs):
    """Files other than tables (a PNG montage here) go through the same check, and leave nothing either."""
    pytest.importorskip("galsim")
    with open(os.path.join(small_tmpfs, "filler"), "wb") as handle:
        handle.write(b"\0" * (200 << 10))   # leaves ~56 kB: less than the montage needs
    montage = os.path.join(small_tmpfs, "sample.png")
    result = run_tool("gal-sim", "-q", "-n", "64", "--montage", montage, "--montage-count", "64",
                      "-o", str(tmp_path / "sim.parquet"))
    assert result.returncode == 74, result.stderr.decode()
    assert f"no space left on {small_tmpfs} while writing {montage}" in one_error_line(result)
    assert os.listdir(small_tmpfs) == ["filler"]


def _mean_encoder(path: str, bands=("g", "r", "i"), size: int = 16) -> str:
    """The encoder.onnx contract at its smallest, built without torch: the embedding is each band's mean."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from galtools.preprocess import FORMAT_VERSION, KIND

    node = helper.make_node("ReduceMean", ["image"], ["embedding"], axes=[2, 3], keepdims=0)
    graph = helper.make_graph([node], "mean", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                              ["batch", len(bands), size, size])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", len(bands)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    preprocess = {"kind": KIND, "version": FORMAT_VERSION, "bands": list(bands), "scale": [1.0] * len(bands),
                  "mean": [0.0] * len(bands), "std": [1.0] * len(bands)}
    helper.set_model_props(model, {"galtools.bands": ",".join(bands), "galtools.input_size": str(size),
                                   "galtools.preprocess": json.dumps(preprocess), "galtools.embedding_dim":
                                   str(len(bands)), "galtools.arch": "mean", "galtools.version": "test",
                                   "galtools.train_config": "{}", "galtools.augment": ""})
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_gal_embed_stopped_mid_stream_leaves_nothing(tmp_path, signum):
    pytest.importorskip("onnxruntime")
    model = _mean_encoder(str(tmp_path / "encoder.onnx"))
    done = run_tool("gal-embed", "-", "--model", model, "-o", tmp_path / "whole.parquet",
                    input=_one_batch_of_a_stream() + b"\xff\xff\xff\xff\x00\x00\x00\x00", check=True)
    assert done.returncode == 0   # the model works: what follows is the signal, not a broken model
    out = tmp_path / "out"
    out.mkdir()
    code, err = _kill_mid_write(tmp_path, ["gal-embed", "-", "--model", model, "-o", str(out / "emb.parquet")],
                                signum, lambda: _writing_in(out), stdin=_one_batch_of_a_stream())
    assert code == 128 + signum, err.decode()
    assert f"stopped by {signal.Signals(signum).name}" in one_error_line(err)
    assert os.listdir(out) == []

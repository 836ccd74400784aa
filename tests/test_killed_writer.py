"""A writer killed with SIGKILL (an OOM kill, a Slurm job past its time) cannot clean up: its output is an unnamed
file (O_TMPFILE) until complete, so the kernel frees it and the output folder holds nothing afterwards; an existing
file it was replacing (--overwrite) stays whole.  The fallback for file systems without unnamed files
(GALTOOLS_NAMED_TEMPORARIES forces it) writes the same bytes through a hidden named temporary."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from conftest import run_tool, tool_command, tool_env
from galtools.io.files import NAMED_ONLY, Temporary

needs_tmpfile = pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="unnamed files (O_TMPFILE) are Linux-only")


def _bytes_being_written(pid: int, folder: str) -> int:
    """The bytes process ``pid`` has written in ``folder`` so far: into a file open there, named or not."""
    written = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(folder + "/"):
                written += os.stat(f"/proc/{pid}/fd/{fd}").st_size
        except OSError:
            continue
    return written


def _kill_mid_write(folder: str, *args) -> None:
    """Run gal-sim, SIGKILL it once its output holds some bytes, and wait for it."""
    process = subprocess.Popen(tool_command("gal-sim") + [str(a) for a in args], env=tool_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _bytes_being_written(process.pid, folder) == 0:
            assert process.poll() is None, "gal-sim ended before it was killed"
            assert time.monotonic() < deadline, "gal-sim never began writing its output"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL


@needs_tmpfile
def test_a_killed_writer_leaves_nothing_and_a_finished_one_the_whole_file(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    _kill_mid_write(str(folder), "-n", "3000", "-j", "1", "--size", "64", "-q", "-o", folder / "sims.parquet")
    assert os.listdir(folder) == []
    run_tool("gal-sim", "-n", "30", "-j", "1", "--size", "64", "-q", "-o", folder / "sims.parquet", check=True)
    assert os.listdir(folder) == ["sims.parquet"]
    # the reference: the same run through the named temporary of the fallback
    env = {**tool_env(), NAMED_ONLY: "1"}
    run_tool("gal-sim", "-n", "30", "-j", "1", "--size", "64", "-q", "-o", tmp_path / "named.parquet", env=env,
             check=True)
    assert pq.read_table(folder / "sims.parquet").equals(pq.read_table(tmp_path / "named.parquet"))


@needs_tmpfile
def test_overwrite_killed_keeps_the_old_file_and_finished_replaces_it(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "sims.parquet"
    run_tool("gal-sim", "-n", "10", "-j", "1", "--size", "64", "-q", "-o", path, check=True)
    old = path.read_bytes()
    _kill_mid_write(str(folder), "-n", "3000", "-j", "1", "--size", "64", "-q", "--overwrite", "-o", path)
    assert os.listdir(folder) == ["sims.parquet"] and path.read_bytes() == old
    run_tool("gal-sim", "-n", "20", "-j", "1", "--size", "64", "-q", "--overwrite", "-o", path, check=True)
    assert os.listdir(folder) == ["sims.parquet"] and pq.read_table(path).num_rows == 20


def test_the_named_fallback_is_taken_when_asked_or_unsupported(tmp_path, monkeypatch):
    """Where O_TMPFILE is refused (EOPNOTSUPP on NFS or Lustre) the temporary is a hidden file beside its name,
    and it is still put in place whole or removed."""
    import errno

    real_open = os.open

    def refusing(path, flags, *rest, **kw):
        if flags & getattr(os, "O_TMPFILE", 0):
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_open(path, flags, *rest, **kw)

    monkeypatch.setattr(os, "open", refusing)
    for name in ("a.parquet", "b.parquet"):
        temporary = Temporary(str(tmp_path / name))
        assert not temporary.unnamed and os.path.basename(temporary.path).startswith(f".{name}.")
        with open(temporary.path, "wb") as handle:
            handle.write(name.encode())
        if name == "a.parquet":
            temporary.commit()
        else:
            temporary.discard()
    assert os.listdir(tmp_path) == ["a.parquet"] and (tmp_path / "a.parquet").read_bytes() == b"a.parquet"


@needs_tmpfile
def test_an_unnamed_temporary_replaces_a_file_in_one_step(tmp_path, monkeypatch):
    monkeypatch.delenv(NAMED_ONLY, raising=False)
    path = tmp_path / "model.npz"
    path.write_bytes(b"old")
    inode = path.stat().st_ino
    temporary = Temporary(str(path))
    assert temporary.unnamed and os.listdir(tmp_path) == ["model.npz"]
    with open(temporary.path, "wb") as handle:
        handle.write(b"new")
    temporary.commit()
    assert path.read_bytes() == b"new" and path.stat().st_ino != inode and os.listdir(tmp_path) == ["model.npz"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

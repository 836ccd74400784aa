"""galtools.io.files, the one atomic write: a file (or a folder) appears whole under its name or not at all, and
nothing is left beside it."""
from __future__ import annotations

import os
import stat

import pytest

from galtools.errors import OutputError
from galtools.io.files import NAMED_ONLY, atomic_file, atomic_folder, replacing, write_bytes


@pytest.fixture(params=["unnamed", "named"], autouse=True)
def temporaries(request, monkeypatch):
    """Each test twice: with unnamed temporaries (O_TMPFILE, Linux) and with the named fallback."""
    if request.param == "named":
        monkeypatch.setenv(NAMED_ONLY, "1")
    else:
        monkeypatch.delenv(NAMED_ONLY, raising=False)
    return request.param


def _left(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_a_failed_block_leaves_the_old_file_and_no_temporary(tmp_path, temporaries):
    path = tmp_path / "model.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(str(path)) as temporary:
            if temporaries == "named" or not hasattr(os, "O_TMPFILE"):
                assert os.path.dirname(temporary) == str(tmp_path) and temporary.endswith(".npz")
            else:
                assert temporary.startswith("/proc/self/fd/") and _left(tmp_path) == ["model.npz"]
            with open(temporary, "wb") as handle:
                handle.write(b"half")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and _left(tmp_path) == ["model.npz"]
    with atomic_file(str(path)) as temporary, open(temporary, "wb") as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new" and _left(tmp_path) == ["model.npz"]


def test_a_missing_folder_is_output_error_but_oserror_for_replacing(tmp_path):
    with pytest.raises(OutputError, match="cannot write in"):
        with atomic_file(str(tmp_path / "nope" / "x.png")):
            pass
    with pytest.raises(OSError):
        write_bytes(str(tmp_path / "nope" / "x.json"), b"{}")   # a cache falls back on this


def test_durable_rewrite_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"object_id,label\n")
    os.chmod(path, 0o640)
    write_bytes(str(path), b"object_id,label\n1,true\n", durable=True)
    assert path.read_bytes().endswith(b"1,true\n") and stat.S_IMODE(os.stat(path).st_mode) == 0o640
    mask = os.umask(0)
    os.umask(mask)
    with replacing(str(tmp_path / "fresh.bin")) as temporary, open(temporary, "wb") as handle:
        handle.write(b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "fresh.bin").st_mode) == 0o666 & ~mask   # not mkstemp's private 0600


def test_a_folder_is_replaced_whole(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "old.html").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_folder(str(site)) as building:
            open(os.path.join(building, "index.html"), "w").close()
            raise RuntimeError("failed half way")
    assert _left(site) == ["old.html"] and _left(tmp_path) == ["site"]
    with atomic_folder(str(site)) as building:
        with open(os.path.join(building, "index.html"), "w") as handle:
            handle.write("new")
    assert _left(site) == ["index.html"] and _left(tmp_path) == ["site"]

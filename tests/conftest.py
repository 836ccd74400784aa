"""Shared test helpers: run tools as real processes, make small tables."""
from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `make test` runs the tests in pytest-xdist workers, one per CPU: each worker's torch and BLAS take one thread
# (tools started by the tests inherit it), so the workers do not fight over the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")

# Converted and optimised models go to a cache folder of the run's own, not the user's ~/.cache/galtools
# (tests that care about the cache set GALTOOLS_CACHE_DIR themselves).
if "GALTOOLS_CACHE_DIR" not in os.environ:
    os.environ["GALTOOLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="galtools-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GALTOOLS_CACHE_DIR"], True)
SHARED_GZ1 = os.path.join(ROOT, "..", "shared", "data", "gz1-sdss")


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per CPU this job may use (its affinity mask, capped by SLURM_CPUS_PER_TASK), not
    every CPU of the node."""
    from galtools.embed.providers import cpu_allocation

    return cpu_allocation()


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `--dist loadfile`: each file's tests in one worker, so its module
    fixtures are built once), hand out the files with the most tests marked slow first, so that no long file starts
    last and leaves the other workers idle at the end. A plain `pytest` keeps the files in their order."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") or getattr(config.option, "numprocesses", None)):
        return
    slow = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        slow[path] = slow.get(path, 0) + bool(item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.nodeid.split("::")[0]])    # stable: each file keeps its tests' order


def _plain(value):
    """numpy scalars and arrays as Python numbers and lists, in tuples, lists and dicts too."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """What tests record (record_property) as plain Python: pytest-xdist's workers cannot send numpy values to
    the controller (the worker stops with a DumpError)."""
    outcome = yield
    report = outcome.get_result()
    report.user_properties = [(name, _plain(value)) for name, value in report.user_properties]


def built_once(tmp_path_factory, name: str, build) -> "os.PathLike":
    """A folder made by ``build(folder)`` once for the whole test run and shared by every test that asks for it.

    Under pytest-xdist the workers share the run's temporary root: the first to ask builds the folder while the
    others wait on a file lock, then all read it (the pattern pytest-xdist documents). Tests must not write into
    it: they read what it holds and write into their own tmp_path."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / f"shared-{name}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)    # a build that failed half-way in another worker
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


def tool_command(tool: str) -> list[str]:
    """A galtools command as a real process (works before and after the console scripts are installed)."""
    module = tool.removeprefix("gal-")
    return [sys.executable, "-m", f"galtools.cli.{module}"]


def run_tool(tool: str, *args, input: bytes | None = None, cwd=None, env=None, check=False):
    result = subprocess.run(tool_command(tool) + [str(a) for a in args], input=input, capture_output=True,
                            cwd=cwd, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{tool} {args} failed ({result.returncode}): {result.stderr.decode()}")
    return result


def on_a_terminal(tool: str, *args, columns: int = 80) -> str:
    """Run a tool with its stdout on a pseudo-terminal of ``columns`` columns; returns what it printed there
    (asserting exit 0)."""
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(tool_command(tool) + [str(a) for a in args], stdout=terminal, stderr=subprocess.PIPE,
                               env=dict(tool_env(), COLUMNS=str(columns)))
    os.close(terminal)
    chunks = []
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:   # the terminal closed: the tool has finished writing
            break
        if not data:
            break
        chunks.append(data)
    os.close(controller)
    assert process.wait(timeout=60) == 0, process.stderr.read().decode()
    return b"".join(chunks).decode()


def shell(command: str, cwd=None) -> subprocess.CompletedProcess:
    """Run a real shell pipeline with the gal-* tools resolvable (via `python -m` shims on PATH)."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, cwd=cwd,
                          env=tool_env(), timeout=600)


_SHIMS: list[str] = []


def _shim_folder() -> str:
    """A folder of gal-* shims that run this interpreter's `python -m galtools.cli.X`, one per console script in
    pyproject.toml, so pipelines in tests use the code under test whether or not it was pip-installed."""
    if _SHIMS:
        return _SHIMS[0]
    import tempfile
    import tomllib

    folder = tempfile.mkdtemp(prefix="galtools-shims-")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        scripts = tomllib.load(handle)["project"]["scripts"]
    for tool, target in scripts.items():
        module, attr = target.split(":")
        code = f"import sys; sys.argv[0] = '{tool}'; from {module} import {attr} as m; m()"
        path = os.path.join(folder, tool)
        with open(path, "w") as handle:
            handle.write(f'#!/bin/sh\nexec "{sys.executable}" -c "{code}" "$@"\n')
        os.chmod(path, 0o755)
    _SHIMS.append(folder)
    return folder


def tool_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = _shim_folder() + os.pathsep + env["PATH"]
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def make_cutouts(n: int = 20, bands: int = 3, size: int = 16, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, bands, size, size)).astype(np.float32)
    from galtools.io import tensor_column

    return pa.table({
        "object_id": pa.array(np.arange(1000, 1000 + n, dtype=np.int64)),
        "ra": pa.array(rng.uniform(0, 360, n)),
        "label": pa.array([f"class{i % 3}" for i in range(n)]),
        "flag": pa.array(rng.uniform(size=n) > 0.5),
        "image": tensor_column(images),
    })


def write_table(table: pa.Table, path: str, bands: str = "g,r,i", **extra_meta) -> str:
    from galtools.io import open_output

    with open_output(path, metadata={"galtools.bands": bands, **extra_meta}, tool="test") as out:
        out.write(table)
    return path


def assert_clean_error(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The README's contract for bad input: exit ``code``, exactly one line on stderr, ``gal-xxx: error: ...``
    naming the tool that ran (``python -m galtools.cli.xxx`` or ``gal-xxx`` in ``result.args``; any gal-* tool for a
    shell pipeline), no traceback, and each of ``words`` in that line. Returns the line."""
    err = result.stderr.decode() if isinstance(result.stderr, bytes) else result.stderr
    assert result.returncode == code, (result.returncode, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    args = [str(a) for a in result.args] if isinstance(result.args, (list, tuple)) else []
    if len(args) > 2 and args[1] == "-m" and args[2].startswith("galtools.cli."):
        tool = "gal-" + args[2].removeprefix("galtools.cli.")
    elif args and re.fullmatch(r"gal-[a-z]+", os.path.basename(args[0])):
        tool = os.path.basename(args[0])
    else:
        tool = r"gal-[a-z]+"
    assert re.match(rf"{tool}: error: \S", lines[0]), (tool, lines[0])
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def embedding_table(x: np.ndarray, first_id: int = 1000, ids=None, **columns) -> pa.Table:
    """An embedding table as gal-embed writes it: object_id (``ids``, or first_id, first_id + 1, ...), the given
    columns in order, then the vectors ``x`` as float32."""
    from galtools.io import vector_column

    ids = np.arange(first_id, first_id + len(x), dtype=np.int64) if ids is None else ids
    carried = {k: v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v) for k, v in columns.items()}
    vectors = vector_column(np.asarray(x, dtype=np.float32))
    return pa.table({"object_id": pa.array(ids), **carried, "embedding": vectors})


def brute_force(queries, base, ids, k, exclude=None, largest=True):
    """The reference for every similarity search: all cosine similarities in float64, one lexsort per query
    (similarity, then object_id, then row). ``exclude[i]``: a row of ``base`` left out for query i (itself).
    Returns (rows of base, similarities), each (queries, k)."""
    q = np.asarray(queries, dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
    ids = np.asarray(ids)
    rows, scores = [], []
    for i, s in enumerate(sims):
        order = np.lexsort((np.arange(len(ids)), ids, -s if largest else s))
        if exclude is not None:
            order = order[order != exclude[i]]
        rows.append(order[:k])
        scores.append(s[order[:k]])
    return np.array(rows), np.array(scores)


def galaxy_cutouts(n: int, bands: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Sky noise plus a Gaussian galaxy of random size and flux over two decades: the dynamic range asinh is for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    cy, cx = (height - 1) / 2 + rng.uniform(-2, 2, n), (width - 1) / 2 + rng.uniform(-2, 2, n)
    radius = rng.uniform(1.5, 6.0, n)
    flux = 10 ** rng.uniform(1, 3, n)
    colour = rng.uniform(0.3, 1.5, (n, bands))
    r2 = (yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2
    profile = np.exp(-0.5 * r2 / radius[:, None, None] ** 2) / (2 * np.pi * radius[:, None, None] ** 2)
    images = flux[:, None, None, None] * colour[:, :, None, None] * profile[:, None]
    images += rng.normal(0, 0.05, images.shape) * np.linspace(0.5, 2, bands)[None, :, None, None]
    return images.astype(np.float32)



def table_of_cutouts(images: np.ndarray, seed: int = 0) -> pa.Table:
    """Cutouts with carried columns: object_id (descending from 5000 + n - 1: not sorted, so order must be kept),
    ra, label and the images."""
    from galtools.io import tensor_column

    n = len(images)
    rng = np.random.default_rng(seed + 100)
    return pa.table({
        "object_id": pa.array(np.arange(5000, 5000 + n, dtype=np.int64)[::-1]),
        "ra": pa.array(rng.uniform(0, 360, n)),
        "label": pa.array([f"class{i % 4}" for i in range(n)]),
        "image": tensor_column(images),
    })


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A real gal-train run, trained once for the whole test run: the tiny encoder, 2 steps on 96 five-band
    (u,g,r,i,z) 48x48 galaxies, 32x32 centre crop; the folder holds last.pt and encoder.onnx. Read only."""
    def build(folder):
        data = write_table(table_of_cutouts(galaxy_cutouts(96, 5, 48, 48, seed=3)), str(folder / "train.parquet"),
                           bands="u,g,r,i,z")
        run_tool("gal-train", "fit", data, "--out", folder / "run", "--arch", "tiny", "--crop", "32", "--steps", "2",
                 "--batch-size", "16", "--queue-size", "64", "--device", "cpu", "--ops", "rotate,jitter:max_shift=2",
                 "--loader-threads", "1", "--log-every", "1", "-q", env=dict(os.environ, PYTHONPATH=ROOT), check=True)

    return built_once(tmp_path_factory, "trained-run", build) / "run"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 kB tmpfs mounted in the test's own folder (a full disk on demand; skips where mounting is not allowed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    yield str(mount)
    subprocess.run(["umount", str(mount)], capture_output=True)


@pytest.fixture
def cutouts(tmp_path):
    table = make_cutouts()
    return write_table(table, str(tmp_path / "cutouts.fits")), table


def cli_runner():
    """click's CliRunner with stderr apart from stdout: click >= 8.2 always keeps them apart, 8.1 needs
    mix_stderr=False (a parameter 8.2 removed)."""
    import inspect

    from click.testing import CliRunner

    if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner(mix_stderr=False)
    return CliRunner()

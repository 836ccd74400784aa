"""Shared test helpers: run tools as real processes, make small tables."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pyarrow as pa
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Converted and optimised models go to a cache folder of the run's own, not the user's ~/.cache/galtools
# (tests that care about the cache set GALTOOLS_CACHE_DIR themselves).
if "GALTOOLS_CACHE_DIR" not in os.environ:
    os.environ["GALTOOLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="galtools-test-cache-")
    atexit.register(shutil.rmtree, os.environ["GALTOOLS_CACHE_DIR"], True)
SHARED_GZ1 = os.path.join(ROOT, "..", "shared", "data", "gz1-sdss")


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

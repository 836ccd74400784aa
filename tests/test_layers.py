"""The layers of docs/architecture.md, checked by import-linter against pyproject.toml's contract: a module
imports only from the layers below its own (commands -> tools -> fine-tuning -> heads, search, train -> embed,
augment, sim, ssl -> io, models, preprocess -> errors)."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import ROOT


def _lint_imports() -> list[str]:
    return [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as main; "
                                  "sys.exit(main())"]


def test_every_layer_contract_is_kept():
    result = subprocess.run(_lint_imports(), cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "KEPT" in result.stdout, result.stdout[-2000:]


def test_a_module_that_imports_upwards_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package in which io imports the commands is refused."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "galtools"), copy / "galtools",
                    ignore=shutil.ignore_patterns("__pycache__", "static", "data"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), copy / "pyproject.toml")
    with open(copy / "galtools" / "io" / "upwards.py", "w") as handle:
        handle.write("from galtools.cli import command  # noqa: F401\n")
    result = subprocess.run(_lint_imports(), cwd=copy, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(copy)))
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout[-2000:]
    assert "galtools.io.upwards -> galtools.cli.command" in result.stdout, result.stdout[-2000:]

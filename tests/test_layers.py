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


def _lint_a_copy_with(tmp_path, module: str, text: str) -> subprocess.CompletedProcess:
    """import-linter run on a copy of the package in which ``module`` (a path below galtools/) holds ``text``."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(os.path.join(ROOT, "galtools"), copy / "galtools",
                    ignore=shutil.ignore_patterns("__pycache__", "static", "data"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), copy / "pyproject.toml")
    with open(copy / "galtools" / module, "w") as handle:
        handle.write(text)
    return subprocess.run(_lint_imports(), cwd=copy, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(copy)))


def test_a_module_that_imports_upwards_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the package in which io imports the commands is refused."""
    result = _lint_a_copy_with(tmp_path, "io/upwards.py", "from galtools.cli import command  # noqa: F401\n")
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout[-2000:]
    assert "galtools.io.upwards -> galtools.cli.command" in result.stdout, result.stdout[-2000:]


def test_torch_in_search_outside_its_gpu_backend_breaks_the_contract(tmp_path):
    """A search module other than the GPU backend that imports torch, even lazily in a function, is refused."""
    text = open(os.path.join(ROOT, "galtools", "search", "table.py")).read()
    result = _lint_a_copy_with(tmp_path, "search/table.py", text + "\n\ndef _on_gpu():\n    import torch\n"
                                                                  "    return torch\n")
    assert result.returncode != 0 and "BROKEN" in result.stdout, result.stdout[-2000:]
    assert "galtools.search.table -> torch" in result.stdout, result.stdout[-2000:]


def test_the_torch_contract_names_every_search_module_but_the_gpu_backend():
    """The contract lists its modules one by one (as_packages = false); a module added to galtools.search without
    being listed would escape it, so the list must be exactly the package's modules less galtools.search.gpu."""
    import pkgutil
    import tomllib

    import galtools.search

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
        contracts = tomllib.load(handle)["tool"]["importlinter"]["contracts"]
    contract = next(c for c in contracts if c["type"] == "forbidden" and c["forbidden_modules"] == ["torch"])
    modules = {"galtools.search"} | {f"galtools.search.{m.name}" for m in pkgutil.iter_modules(galtools.search.__path__)}
    assert "galtools.search.gpu" in modules
    assert set(contract["source_modules"]) == modules - {"galtools.search.gpu"}
    assert contract["as_packages"] is False

"""What a bug report needs to know about this machine (``gal-info --system``).

Versions come from the installed distributions' metadata, so torch is never imported (it may be absent, and it
takes seconds to load); ONNX Runtime is imported, and each GPU provider it offers is asked to create a session on
a one-node model, because a provider in ``get_available_providers()`` may still fail to start.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import sys

from galtools import __version__

PACKAGES = ("numpy", "pyarrow", "fitsio", "click", "onnx", "onnxruntime", "torch")
ORT_MODULE_FILE = "onnxruntime/__init__.py"
GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def onnxruntime_distributions() -> list[str]:
    """Names (with versions) of the installed distributions that provide the ``onnxruntime`` module:
    onnxruntime, onnxruntime-gpu, onnxruntime-openvino, ... share that import name."""
    found = set()
    for dist in importlib.metadata.distributions():
        files = dist.files or []
        if any(str(path).replace("\\", "/") == ORT_MODULE_FILE for path in files):
            found.add(f"{dist.metadata['Name']} {dist.version}")
    return sorted(found)


def _find_spec(name: str):
    """The module's spec without importing it; None when it is absent or blocked (``sys.modules[name] = None``)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def torch_build() -> dict:
    """torch's version and CUDA build, read from its files without importing it."""
    spec = _find_spec("torch")
    version = distribution_version("torch") if spec is not None else None
    if version is None:
        return {"version": None, "cuda": None}
    cuda = None
    for folder in spec.submodule_search_locations or []:
        try:
            with open(os.path.join(folder, "version.py"), encoding="utf-8") as handle:
                found = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", handle.read(), re.MULTILINE)
        except OSError:
            continue
        cuda = found.group(1) if found else None
        break
    return {"version": version, "cuda": cuda}


def _probe_model() -> bytes:
    """A one-node ONNX model (Identity on a float32 vector), enough to see whether a provider starts."""
    from onnx import TensorProto, helper

    value_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    value_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value_in], [value_out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8   # readable by every ONNX Runtime galtools supports
    return model.SerializeToString()


def onnxruntime_report() -> dict:
    """ONNX Runtime's version, the providers it offers and, for each GPU provider, whether a session starts."""
    try:
        import onnxruntime as ort
    except Exception as exc:  # a broken side-by-side install raises more than ImportError
        return {"version": None, "error": " ".join(str(exc).split())[:200], "providers": [], "gpu_sessions": {}}
    from galtools.embed.providers import captured_output, failure_reason

    providers = list(ort.get_available_providers())
    sessions = {}
    offered = [name for name in GPU_PROVIDERS if name in providers]
    if offered:
        model = _probe_model()
        if hasattr(ort, "preload_dlls"):
            with captured_output(), contextlib.suppress(Exception):  # a library missing: the sessions say why
                ort.preload_dlls()
        for name in offered:
            with captured_output() as log_text:
                try:
                    session = ort.InferenceSession(model, providers=[name, "CPUExecutionProvider"])
                    started, error = name in session.get_providers(), ""
                except Exception as exc:  # ONNX Runtime raises its own exception types
                    started, error = False, " ".join(str(exc).split())[:200]
            reason = "" if started else (failure_reason(log_text[0]) or error or "no reason given by ONNX Runtime")
            sessions[name] = {"starts": started, "reason": reason}
    return {"version": getattr(ort, "__version__", None), "providers": providers, "gpu_sessions": sessions}


def system_report(environ=None) -> dict:
    from galtools.embed.precision import cache_dir
    from galtools.embed.providers import cpu_allocation, cuda_device_count

    environ = os.environ if environ is None else environ
    ort_dists = onnxruntime_distributions()
    packages = {name: distribution_version(name) for name in PACKAGES}
    packages["onnxruntime"] = ", ".join(ort_dists) if ort_dists else None
    torch = torch_build()
    packages["torch"] = torch["version"]
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = None
    gpus, why_none = cuda_device_count()
    warnings = []
    if len(ort_dists) > 1:
        warnings.append(f"{' and '.join(ort_dists)} are installed side by side: they share the import name "
                        "onnxruntime and the one installed last silently wins (pip uninstall -y "
                        + " ".join(d.split()[0] for d in ort_dists)
                        + ", then pip install onnxruntime-gpu on a GPU machine or onnxruntime elsewhere)")
    return {
        "galtools": __version__,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "executable": sys.executable,
        "packages": packages,
        "torch": torch,
        "onnxruntime": onnxruntime_report(),
        "nvidia_gpus": {"count": gpus, "reason": why_none},
        "cpu": {"threads": cpu_allocation(environ), "affinity": affinity, "machine": os.cpu_count(),
                "slurm_cpus_per_task": environ.get("SLURM_CPUS_PER_TASK")},
        "cache_dir": cache_dir(environ),
        "warnings": warnings,
    }


def render_system_text(report: dict) -> str:
    def shown(value):
        return value if value is not None else "not installed"

    torch = report["torch"]
    torch_text = shown(torch["version"])
    if torch["version"] is not None:
        torch_text += f" (CUDA {torch['cuda']})" if torch["cuda"] else " (CPU build)"
    ort = report["onnxruntime"]
    lines = [f"galtools {report['galtools']}", f"python {report['python']} ({report['executable']})",
             f"platform {report['platform']}"]
    for name, version in report["packages"].items():
        if name == "torch":
            version = torch_text
        elif name == "onnxruntime" and version is not None and ort.get("version"):
            version = f"{ort['version']} (installed: {version})"
        lines.append(f"{name} {shown(version)}")
    if ort.get("error"):
        lines.append(f"ONNX Runtime cannot be imported: {ort['error']}")
    else:
        lines.append(f"ONNX Runtime providers: {', '.join(ort['providers'])}")
        for name, result in ort["gpu_sessions"].items():
            lines.append(f"  {name}: " + ("starts a session" if result["starts"] else
                                          f"does not start a session ({result['reason']})"))
    gpus = report["nvidia_gpus"]
    lines.append(f"NVIDIA GPUs: {gpus['count']}" + (f" ({gpus['reason']})" if gpus["reason"] else ""))
    cpu = report["cpu"]
    slurm = f", SLURM_CPUS_PER_TASK={cpu['slurm_cpus_per_task']}" if cpu["slurm_cpus_per_task"] else ""
    lines.append(f"CPU threads: {cpu['threads']} (affinity {cpu['affinity']}, machine {cpu['machine']}{slurm})")
    lines.append(f"cache folder: {report['cache_dir']}")
    lines += [f"warning: {text}" for text in report["warnings"]]
    return "\n".join(lines)

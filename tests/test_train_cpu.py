"""gal-train on CPUs: --precision auto takes bf16 autocast where the CPU has bf16 units (and fp32 elsewhere, or when
asked), records what ran, keeps encoder.onnx fp32; torch's threads follow the affinity and wait without spinning;
the next batch's views are made while the step runs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT  # noqa: E402
from test_train import write_galaxies  # noqa: E402

from galtools.train import runtime  # noqa: E402
from galtools.train.data import ahead  # noqa: E402

CPU = torch.device("cpu")
HAS_BF16 = bool(runtime.cpu_bf16_units())


# -- the decision -----------------------------------------------------------------------------------------------
def test_cpu_flags_are_read_from_proc_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    assert runtime.cpu_flags(str(info)) == {"fpu", "avx2", "avx512f", "amx_bf16", "amx_tile"}
    assert runtime.cpu_flags(str(tmp_path / "missing")) == set()


@pytest.mark.parametrize("flags, auto", [({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "bf16"),
                                         ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),
                                         ({"avx2", "avx512f", "avx512_vnni"}, "fp32"),
                                         (set(), "fp32")])
def test_auto_precision_follows_the_cpu_flags_and_explicit_choices_win(monkeypatch, flags, auto):
    monkeypatch.setattr(runtime, "cpu_flags", lambda path="/proc/cpuinfo": set(flags))
    assert runtime.resolve_precision("auto", CPU) == auto
    assert runtime.resolve_precision("fp32", CPU) == "fp32"
    assert runtime.resolve_precision("bf16", CPU) == "bf16"
    assert runtime.resolve_precision("auto", torch.device("cuda")) == "bf16"   # GPUs: as before


# -- the run ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def galaxies(tmp_path_factory):
    return write_galaxies(tmp_path_factory.mktemp("cpu") / "galaxies.fits", 256)


def _run(galaxies, out, precision, monkeypatch, flags, steps=3, lr=0.03, export=True):
    """A short in-process run with the CPU's flags mocked; returns the dtypes of the first convolution's outputs
    during training steps."""
    from galtools.train import TrainConfig, build, loop

    monkeypatch.setattr(runtime, "cpu_flags", lambda path="/proc/cpuinfo": set(flags))
    dtypes = []
    build_model = build.build_model

    def build_and_watch(*args, **kwargs):
        model = build_model(*args, **kwargs)
        conv = next(m for m in model.encoder_q.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda module, args, output: dtypes.append(output.dtype)
                                   if module.training else None)
        return model

    monkeypatch.setattr(build, "build_model", build_and_watch)
    config = TrainConfig(inputs=[galaxies], out=str(out), arch="tiny", width=0.5, crop=16, steps=steps,
                         batch_size=16, queue_size=32, key_momentum=0.9, ops="rotate,jitter:max_shift=2",
                         log_every=1, device="cpu", loader_threads=1, precision=precision, lr=lr, export=export)
    loop.train(config)
    return dtypes


def _recorded(out) -> tuple[str, str]:
    """The precision in the checkpoint's config and in encoder.onnx's metadata; checks that the ONNX is fp32."""
    import onnx

    state = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    model = onnx.load(os.path.join(out, "encoder.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {init.data_type for init in model.graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    return json.loads(state["config"])["precision"], json.loads(meta["galtools.train_config"])["precision"]


@pytest.mark.parametrize("precision, flags, expect", [
    ("auto", {"avx512f", "amx_bf16"}, torch.bfloat16),    # a CPU with bf16 units: autocast
    ("auto", {"avx512f", "avx2"}, torch.float32),          # without: fp32
    ("fp32", {"avx512f", "amx_bf16"}, torch.float32),      # fp32 asked for is honoured
])
def test_auto_uses_bf16_autocast_only_on_a_bf16_cpu_records_it_and_exports_fp32(galaxies, tmp_path, monkeypatch,
                                                                              precision, flags, expect):
    dtypes = _run(galaxies, tmp_path / "run", precision, monkeypatch, flags)
    assert dtypes and set(dtypes) == {expect}, dtypes
    name = "bf16" if expect == torch.bfloat16 else "fp32"
    assert _recorded(tmp_path / "run") == (name, name)


@pytest.mark.slow  # trains twice
@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units (amx_bf16, avx512_bf16): bf16 would be emulated")
def test_a_short_bf16_run_follows_the_fp32_loss_curve(galaxies, tmp_path, monkeypatch):
    """The same 40 steps in both precisions: bf16 rounds the products to 8 bits of mantissa, so the curves are not
    identical, but they stay within 0.1 of each other at every step (about 0.03 measured), and both fall after the
    queue has filled with real keys (about 0.18 measured in both)."""
    losses = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        _run(galaxies, out, precision, monkeypatch, runtime.BF16_CPU_FLAGS, steps=40, lr=0.5, export=False)
        records = [json.loads(line) for line in open(out / "metrics.jsonl")]
        losses[precision] = np.array([r["loss"] for r in records if "loss" in r])
    gap = np.abs(losses["bf16"] - losses["fp32"])
    assert gap.max() < 0.1 and gap.mean() < 0.05, gap
    assert gap.max() > 0, "bf16 ran exactly as fp32: no autocast?"
    # The queue starts as random vectors (easy negatives) and holds only real keys after 32/16 = 2 steps.
    for precision, curve in losses.items():
        assert curve[15:25].mean() < curve[3:8].mean() - 0.08, (precision, curve)


# -- threads ----------------------------------------------------------------------------------------------------
def _threads_in_child(env_extra: dict, cpus: set[int] | None) -> dict:
    code = ("import json, os; from galtools.train import runtime; n = runtime.cpu_threads(); import torch; "
            "print(json.dumps({'threads': n, 'torch': torch.get_num_threads(), "
            "'wait': os.environ.get('OMP_WAIT_POLICY'), 'blocktime': os.environ.get('KMP_BLOCKTIME')}))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME",
                                                             "SLURM_CPUS_PER_TASK")}
    env.update(env_extra, PYTHONPATH=ROOT)
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          preexec_fn=preexec)
    return json.loads(done.stdout)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_threads_follow_the_affinity_or_omp_num_threads_and_wait_passively():
    one_cpu = {sorted(os.sched_getaffinity(0))[0]}
    child = _threads_in_child({}, one_cpu)
    assert child == {"threads": 1, "torch": 1, "wait": "PASSIVE", "blocktime": "0"}
    child = _threads_in_child({}, None)    # one CPU is left to the thread that makes the next batch's views
    assert child["threads"] == child["torch"] == max(1, len(os.sched_getaffinity(0)) - 1)
    child = _threads_in_child({"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}, one_cpu)
    assert (child["threads"], child["wait"]) == (3, "ACTIVE")   # the user's settings win
    child = _threads_in_child({"SLURM_CPUS_PER_TASK": "1"}, None)
    assert child["threads"] == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this system")
def test_gal_train_sets_its_threads_before_torch_starts(galaxies, tmp_path):
    """The command as a user runs it (OMP_NUM_THREADS unset): its log names torch's threads (the affinity less one)
    and the passive waiting that torch started with.  When something imported torch before the threads were set,
    two gal-train runs on two cores each spun two OpenMP threads and slowed each other about tenfold."""
    cpus = set(sorted(os.sched_getaffinity(0))[:2])
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                                             "KMP_BLOCKTIME", "SLURM_CPUS_PER_TASK")}
    env["PYTHONPATH"] = ROOT
    done = subprocess.run([sys.executable, "-m", "galtools.cli.train", galaxies, "--out", str(tmp_path / "run"),
                           "--arch", "tiny", "--width", "0.5", "--crop", "16", "--steps", "1", "--batch-size", "16",
                           "--queue-size", "32", "--device", "cpu", "--no-export"], env=env, capture_output=True,
                          text=True, preexec_fn=lambda: os.sched_setaffinity(0, cpus))
    assert done.returncode == 0, done.stderr
    assert f", {max(1, len(cpus) - 1)} thread(s), OMP_WAIT_POLICY=PASSIVE" in done.stderr, done.stderr


# -- views made ahead -------------------------------------------------------------------------------------------
def test_ahead_prepares_the_next_item_while_the_current_one_is_used():
    started = {i: threading.Event() for i in range(4)}
    threads = set()

    def prepare(i):
        threads.add(threading.get_ident())
        started[i].set()
        return i * i

    seen = []
    for item, prepared in ahead(range(4), prepare):
        if item < 3:   # item's step is running: the next item's preparation has started meanwhile
            assert started[item + 1].wait(10), f"item {item + 1} was not prepared during item {item}"
        seen.append((item, prepared))
    assert seen == [(i, i * i) for i in range(4)]
    assert threading.get_ident() not in threads
    assert list(ahead(range(3), lambda i: -i, background=False)) == [(0, 0), (1, -1), (2, -2)]
    assert list(ahead([], prepare)) == []


def test_ahead_raises_the_preparations_error_in_the_caller():
    def prepare(i):
        if i == 2:
            raise ValueError("bad batch")
        return i

    seen = []
    with pytest.raises(ValueError, match="bad batch"):
        for item, _ in ahead(range(5), prepare):
            seen.append(item)
    assert seen == [0, 1]


@pytest.mark.skipif(not os.environ.get("OMP_NUM_THREADS", "").isdigit(), reason="OMP_NUM_THREADS is not set")
def test_no_test_module_changes_torchs_threads_for_the_whole_run():
    """`make test` gives every worker one thread (OMP_NUM_THREADS=1): a test module that sets torch's threads when
    it is imported changes them for every test of its worker (collection imports all modules first), and two
    workers' torch then fight over the cores (once measured: a 3 s training took 45 s in the suite)."""
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])

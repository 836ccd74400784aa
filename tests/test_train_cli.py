"""gal-train as users run it: real processes (one, two under torchrun), the run folder, encoder.onnx and its
metadata, exact resume, SIGTERM, re-export, and bad inputs with their exit codes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import ROOT, tool_command  # noqa: E402
from test_train import BANDS, galaxy_table, write_galaxies  # noqa: E402

from galtools.io import images_of, open_table  # noqa: E402

pytestmark = pytest.mark.slow  # real gal-train runs, one and two processes

# Small and quick: the tiny encoder at half width on 16x16 views of 20x20 cutouts, cheap augmentations.
FAST = ["--arch", "tiny", "--width", "0.5", "--crop", "16", "--batch-size", "16", "--queue-size", "48",
        "--ops", "rotate:step=90,jitter:max_shift=2,noise", "--device", "cpu", "--loader-threads", "1"]


def env():
    return {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}


def gal_train(*args, **kw):
    return subprocess.run(tool_command("gal-train") + [str(a) for a in args], capture_output=True, env=env(),
                          timeout=600, **kw)


def invoke(*args):
    from conftest import cli_runner

    from galtools.cli.train import cli

    result = cli_runner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.output.strip()


@pytest.fixture(scope="module")
def cutouts(tmp_path_factory):
    return write_galaxies(tmp_path_factory.mktemp("cutouts") / "cutouts.fits", 160, size=20)


@pytest.fixture(scope="module")
def trained(cutouts, tmp_path_factory):
    """One finished run with the kNN monitor, checkpoints and the automatic export."""
    run = tmp_path_factory.mktemp("trained") / "run"
    result = gal_train(cutouts, "--out", run, *FAST, "--steps", "8", "--log-every", "2", "--checkpoint-every", "4",
                       "--keep-checkpoints", "1", "--monitor-label", "morph_class", "--channels-last", "-v")
    assert result.returncode == 0, result.stderr.decode()
    return run, result


def test_run_folder_holds_checkpoints_metrics_plot_and_encoder(trained):
    run, result = trained
    assert sorted(os.listdir(run)) == ["checkpoints", "encoder.onnx", "last.pt", "metrics.jsonl", "training.png"]
    assert os.listdir(run / "checkpoints") == ["step-000000008.pt"]      # --keep-checkpoints 1
    assert open(run / "training.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6, 8]
    assert all(np.isfinite(r["loss"]) and r["images_per_s"] > 0 and 0 <= r["positive_top1"] <= 1 for r in steps)
    knn = [r for r in records if "knn_accuracy" in r]
    # 160 cutouts, a fifth (32) held out for the monitor: 128 train, 8 steps per epoch -> one check, at the end
    assert [r["step"] for r in knn] == [8] and knn[0]["monitor_size"] == 32 and 0 <= knn[0]["knn_accuracy"] <= 1
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 8 and state["bands"] == list(BANDS)
    assert {"model", "optimizer", "scheduler", "rng", "config", "preprocess", "augment"} <= set(state)
    assert "encoder_q.backbone.conv1.weight" in state["model"] and "queue" in state["model"]
    assert int(state["model"]["queue_ptr"]) == (8 * 16) % 48   # 32: the queue wrapped around
    assert "kNN accuracy of morph_class" in result.stderr.decode()
    # m=0.999 for 8 steps: the key encoder would lag the whole run; 48 keys in a queue over 128 cutouts are fine
    assert "averages the key encoder over about 1000 steps, a long lag for a 8-step run" in result.stderr.decode()
    assert "queue will hold" not in result.stderr.decode()


def test_notes_a_queue_that_holds_the_objects_own_keys(cutouts, tmp_path):
    fast = [a if a != "48" else "96" for a in FAST]        # 96 keys > half of the 160 training cutouts
    result = gal_train(cutouts, "--out", tmp_path / "run", *fast, "--steps", "8", "--key-momentum", "0.5",
                       "--no-export")
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "--queue-size 96 is more than half the 160 training cutouts" in stderr
    assert "--queue-size 40 or less" in stderr
    assert "averages the key encoder" not in stderr     # m=0.5 lags about 2 steps: short against 8 (noted below 6)


def test_encoder_onnx_follows_the_contract(trained, cutouts):
    import onnx
    import onnxruntime as ort

    from galtools import __version__
    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess
    from galtools.train.checkpoint import backbone_state
    from galtools.train.data import centre_crop

    run, _ = trained
    model = onnx.load(str(run / "encoder.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    state = torch.load(run / "last.pt", weights_only=True)
    assert set(meta) == {"galtools.bands", "galtools.input_size", "galtools.preprocess", "galtools.embedding_dim",
                         "galtools.arch", "galtools.version", "galtools.train_config", "galtools.augment",
                         "galtools.pixscale_arcsec", "galtools.flux_unit"}
    assert meta["galtools.pixscale_arcsec"] == "0.396" and meta["galtools.flux_unit"] == "nanomaggy"   # the table's
    assert meta["galtools.bands"] == "u,g,r,i,z" and meta["galtools.input_size"] == "16"
    assert meta["galtools.embedding_dim"] == "64" and meta["galtools.arch"] == "tiny"
    assert meta["galtools.version"] == __version__
    assert meta["galtools.preprocess"] == state["preprocess"]
    assert meta["galtools.augment"] == "rotate:min_angle=0:max_angle=360:step=90,jitter:max_shift=2," \
                                       "noise:factor_min=1:factor_max=2:border=4"
    config = json.loads(meta["galtools.train_config"])
    assert config["arch"] == "tiny" and config["batch_size"] == 16 and config["method"] == "moco"
    # one self-contained file; input image [batch, 5, 16, 16], output embedding [batch, 64]
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "image" and dims == ["batch", 5, 16, 16]
    assert graph_output.name == "embedding"
    assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == ["batch", 64]

    # ONNX Runtime on real cutouts (gal-embed's path: centre crop + preprocessing) against torch, batches 1 and 37
    backbone = build_encoder("tiny", 5, width=0.5).eval()
    backbone.load_state_dict(backbone_state(state["model"]))
    preprocess = Preprocess.from_json(meta["galtools.preprocess"])
    images = preprocess.apply_numpy(centre_crop(images_of(open_table(cutouts).read_all()), 16))
    session = ort.InferenceSession(str(run / "encoder.onnx"), providers=["CPUExecutionProvider"])
    for batch in (images[:1], images[:37]):
        got = session.run(["embedding"], {"image": batch})[0]
        with torch.no_grad():
            expected = backbone(torch.from_numpy(batch)).numpy()
        assert got.shape == (len(batch), 64)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_export_subcommand_reexports_and_refuses_to_overwrite(trained, tmp_path):
    import onnxruntime as ort

    run, _ = trained
    out = tmp_path / "again.onnx"
    result = gal_train("export", run / "last.pt", "-o", out)
    assert result.returncode == 0, result.stderr.decode()
    x = np.random.default_rng(0).standard_normal((3, 5, 16, 16)).astype(np.float32)
    first = ort.InferenceSession(str(run / "encoder.onnx"), providers=["CPUExecutionProvider"])
    again = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(again.run(None, {"image": x})[0], first.run(None, {"image": x})[0], atol=1e-6)
    code, output = invoke("export", run / "last.pt", "-o", out)
    assert code == 1 and output == f"gal-train: error: {out} already exists (pass --overwrite to replace it)"
    code, output = invoke("export", run / "missing.pt", "-o", tmp_path / "x.onnx")
    assert code == 66 and "no such checkpoint" in output
    code, output = invoke("export", run / "metrics.jsonl", "-o", tmp_path / "x.onnx")
    assert code == 65 and "not a readable gal-train checkpoint" in output and not (tmp_path / "x.onnx").exists()


def test_export_refuses_a_model_that_onnx_runtime_disagrees_with(trained, tmp_path, monkeypatch):
    from galtools.train import export

    run, _ = trained
    monkeypatch.setattr(export, "PARITY_TOLERANCE", -1.0)    # any difference at all is now a disagreement
    code, output = invoke("export", run / "last.pt", "-o", tmp_path / "bad.onnx")
    assert code == 65 and "ONNX Runtime and torch disagree" in output
    assert os.listdir(tmp_path) == []                      # neither the file nor its temporary copy


def test_resume_n_then_n_equals_2n_in_one_run(tmp_path):
    # Parquet in row groups of 32: the block-shuffled reading path (FITS cubes are memory-mapped and permuted)
    cutouts = write_galaxies(tmp_path / "cutouts.parquet", 160, size=20, row_group_size=32)
    common = [cutouts, *FAST, "--steps", "4", "--log-every", "1", "--deterministic", "--no-export", "--seed", "3"]
    straight = gal_train(*common, "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr.decode()
    stopped = gal_train(*common, "--out", tmp_path / "split", "--stop-after", "2")
    assert stopped.returncode == 75, stopped.stderr.decode()
    assert "stopped by --stop-after after step 2" in stopped.stderr.decode()
    resumed = gal_train(*common, "--out", tmp_path / "split", "--resume")
    assert resumed.returncode == 0, resumed.stderr.decode()
    one = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert one["step"] == two["step"] == 4
    for key, value in one["model"].items():            # query and key encoders, BN statistics, queue, pointer
        assert torch.equal(value, two["model"][key]), key
    for key, value in one["optimizer"]["state"].items():
        assert torch.equal(value["momentum_buffer"], two["optimizer"]["state"][key]["momentum_buffer"])
    assert one["scheduler"]["last_epoch"] == two["scheduler"]["last_epoch"] == 4
    # the metrics of the split run are those of the straight run
    losses = [[json.loads(line)["loss"] for line in open(tmp_path / name / "metrics.jsonl")]
              for name in ("straight", "split")]
    assert losses[0] == losses[1]


def test_trains_from_an_arrow_stream_on_stdin(tmp_path):
    import pyarrow as pa

    from galtools.io.meta import encode

    table = galaxy_table(48, size=20).replace_schema_metadata(encode({"galtools.bands": ",".join(BANDS)}))
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=10)
    run = tmp_path / "run"
    result = gal_train("-", "--out", run, *FAST, "--ops", "rotate:step=90", "--steps", "3", "--no-export",
                       input=sink.getvalue().to_pybytes())
    assert result.returncode == 0, result.stderr.decode()
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 3


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP])
def test_a_stop_signal_writes_a_checkpoint_and_exits_75(cutouts, tmp_path, stop_signal):
    """SIGHUP is a closed terminal: the run checkpoints as for Slurm's SIGTERM (started with SIGHUP at its default,
    as from a terminal, even when the suite runs under nohup)."""
    run = tmp_path / "run"
    process = subprocess.Popen(tool_command("gal-train") + [cutouts, "--out", str(run), *FAST, "--steps", "100000",
                               "--log-every", "1", "--no-export"], stderr=subprocess.PIPE, env=env(),
                               preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (os.path.exists(run / "metrics.jsonl") and os.path.getsize(run / "metrics.jsonl")):
        time.sleep(0.2)
    process.send_signal(stop_signal)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 75, stderr.decode()
    message = stderr.decode().strip().splitlines()[-1]
    state = torch.load(run / "last.pt", weights_only=True)
    assert message == (f"gal-train: error: stopped by {stop_signal.name} after step {state['step']}; checkpoint {run}/last.pt "
                       "(run the same command with --resume to continue (under Slurm: requeue the job))")
    assert state["step"] >= 1
    # without --resume the same folder is refused
    code, output = invoke(cutouts, "--out", run, *FAST, "--steps", "3")
    assert code == 1 and "already holds a training run (add --resume" in output


def test_slurm_script_requeues_after_exit_75(cutouts, tmp_path):
    """examples/slurm-train.sh with stand-ins for srun and scontrol: gal-train stops with a checkpoint (exit 75),
    the script asks Slurm to requeue the job and exits 0; the requeued job resumes and finishes.  (SimCLR here, so
    that the second method runs end to end too.)"""
    from conftest import tool_env

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text('#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\nexec "$@"\n')
    (fake / "scontrol").write_text(f'#!/bin/sh\ncase "$1" in show) echo localhost;; '
                                   f'requeue) echo "$2" >> {tmp_path}/requeued;; esac\n')
    for tool in ("srun", "scontrol"):
        os.chmod(fake / tool, 0o755)
    environment = {**tool_env(), "PATH": f"{fake}{os.pathsep}{tool_env()['PATH']}", "SLURM_JOB_ID": "4242",
                   "SLURM_JOB_NODELIST": "localhost", "DEVICE": "cpu", "OMP_NUM_THREADS": "1"}
    script = os.path.join(ROOT, "examples", "slurm-train.sh")
    run = tmp_path / "run"
    args = ["bash", script, cutouts, str(run), *FAST[:-4], "--loader-threads", "1", "--steps", "4", "--no-export",
            "--method", "simclr"]
    first = subprocess.run(args + ["--stop-after", "2"], capture_output=True, env=environment, timeout=600)
    assert first.returncode == 0, first.stderr.decode()
    assert (tmp_path / "requeued").read_text() == "4242\n"
    assert "requeueing job 4242" in first.stdout.decode()
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["step"] == 2 and json.loads(state["config"])["method"] == "simclr" and "queue" not in state["model"]
    second = subprocess.run(args, capture_output=True, env=environment, timeout=600)
    assert second.returncode == 0, second.stderr.decode()
    assert torch.load(run / "last.pt", weights_only=True)["step"] == 4
    assert (tmp_path / "requeued").read_text() == "4242\n"            # finished: not requeued again


def test_torchrun_two_cpu_processes_train_and_export(cutouts, tmp_path):
    """DDP over gloo, with bf16 autocast as on a GPU; the exported model is fp32."""
    run = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "galtools.cli.train", cutouts, "--out", str(run), *FAST, "--steps", "4", "--log-every", "2",
               "--precision", "bf16"]
    result = subprocess.run([str(c) for c in command], capture_output=True, env=env(), timeout=600)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    state = torch.load(run / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and state["step"] == 4
    # one process writes: one record per logged step
    assert [json.loads(line)["step"] for line in open(run / "metrics.jsonl")] == [2, 4]
    # the queue received the keys of both ranks: 4 steps x global batch 16
    assert int(state["model"]["queue_ptr"]) == (4 * 16) % 48   # 16 (rank-local keys only would give 32)
    import onnxruntime as ort

    session = ort.InferenceSession(str(run / "encoder.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 37):
        assert session.run(None, {"image": np.zeros((n, 5, 16, 16), np.float32)})[0].shape == (n, 64)



def test_wrong_band_count_for_resume_is_bad_data(trained, tmp_path):
    run, _ = trained
    three_bands = write_galaxies(tmp_path / "gri.fits", 64, size=20, bands=("g", "r", "i"))
    code, output = invoke(three_bands, "--out", run, *FAST, "--steps", "20", "--resume")
    assert code == 65
    assert output == ("gal-train: error: the checkpoint was trained on 5 bands (u,g,r,i,z), the table has 3 (g,r,i) "
                      "(resume with cutouts of the same bands, or start a new run in another --out)")


@pytest.mark.parametrize("case, code, message", [
    ("empty", 65, "no cutouts to train on (the table is empty)"),
    ("nan", 65, "row 7 holds NaN or infinite pixels"),
    ("big_batch", 2, "--batch-size 512 is larger than the 64 cutouts to train on"),
    ("out_under_file", 74, "cannot write the run folder"),
    ("missing", 66, "no such file"),
    ("missing_checkpoint", 66, "--resume nowhere.pt: no such checkpoint"),
    ("small_cutouts", 65, "cutouts of 12x12 pixels are smaller than --crop 16"),
])
def test_bad_inputs_exit_with_documented_codes(tmp_path, case, code, message):
    good = write_galaxies(tmp_path / "good.fits", 64, size=20)
    out = tmp_path / "run"
    args = [good, "--out", out, *FAST, "--steps", "2"]
    if case == "empty":
        args[0] = write_galaxies(tmp_path / "empty.parquet", 0, size=20)
    elif case == "nan":
        args[0] = write_galaxies(tmp_path / "nan.fits", 64, size=20, nan_row=7)
    elif case == "big_batch":
        args += ["--batch-size", "512"]
    elif case == "out_under_file":
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "run"
        args[2] = out
    elif case == "missing":
        args[0] = tmp_path / "nope.fits"
    elif case == "missing_checkpoint":
        args += ["--resume", "nowhere.pt"]
    elif case == "small_cutouts":
        args[0] = write_galaxies(tmp_path / "small.fits", 64, size=12)
    exit_code, output = invoke(*args)
    assert exit_code == code, output
    assert output.startswith("gal-train: error: ") and message in output and len(output.splitlines()) == 1
    assert not out.exists()                             # nothing half-written


def test_cuda_without_a_gpu_exits_69(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    good = write_galaxies(tmp_path / "good.fits", 32, size=20)
    code, output = invoke(good, "--out", tmp_path / "run", *FAST[:-4], "--device", "cuda", "--steps", "2")
    assert code == 69 and "no usable GPU" in output and not (tmp_path / "run").exists()


def test_help_does_not_import_torch():
    probe = subprocess.run([sys.executable, "-c", "import sys; from galtools.cli import train; "
                            "sys.argv=['gal-train', 'fit', '--help']\ntry:\n train.main()\nexcept SystemExit: pass\n"
                            "print('torch' in sys.modules, file=sys.stderr)"], capture_output=True, env=env())
    assert probe.stderr.decode().strip().endswith("False") and b"--monitor-label" in probe.stdout
    code, output = invoke("--help")
    assert code == 0 and "gal-train export CHECKPOINT" in output


def test_galaxy_table_helper_makes_what_it_says():
    table = galaxy_table(50, size=20)
    images = images_of(table)
    t = table.column("t_true").to_numpy()
    # farther (larger t) galaxies are fainter in total flux
    assert np.corrcoef(t, images.sum(axis=(1, 2, 3)))[0, 1] < -0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_run_with_bf16_channels_last_and_compile(cutouts, tmp_path):
    run = tmp_path / "gpu"
    args = [a if a != "cpu" else "cuda" for a in FAST]
    result = gal_train(cutouts, "--out", run, *args, "--steps", "6", "--log-every", "2", "--compile")
    assert result.returncode == 0, result.stderr.decode()
    config = json.loads(torch.load(run / "last.pt", weights_only=True)["config"])
    assert config["device"] == "cuda" and config["precision"] == "auto" and config["compile"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(run / "encoder.onnx"), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": np.zeros((37, 5, 16, 16), np.float32)})[0].shape == (37, 64)

"""gal-train import: published PyTorch ResNet checkpoints (torchvision layer names, Lightning containers) become an
encoder.onnx that gal-embed runs; nothing in a checkpoint is ever executed.

torchvision is not installed, so the reference is a torchvision-layout ResNet written here (its names: conv1, bn1,
layer1..layer4, fc), independent of galtools' own ResNet whose stages the importer maps the names onto."""
from __future__ import annotations

import os
import sys
import types

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, assert_clean_error, run_tool, write_table

torch = pytest.importorskip("torch")
nn = torch.nn

BANDS = ["g", "r", "z"]
SIZE = 32


# ------------------------------------------------------------------------- a torchvision-layout ResNet (reference)

class TvBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TvBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TvResNet(nn.Module):
    """torchvision.models.ResNet's layout and names, with in_chans bands and a num_classes-d fc (MoCo's 128-d)."""

    def __init__(self, block, layers, in_chans=3, num_classes=128, width=64):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_chans, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], 2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], 2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        return self.fc(self.features(x))


def randomised(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=generator))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=generator))
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=generator))
    return model.eval()


@pytest.fixture(autouse=True)
def lightning_like_modules(monkeypatch):
    """Stand-ins for the classes a Lightning checkpoint pickles (lightning is not installed): same module paths."""
    parsing = types.ModuleType("pytorch_lightning.utilities.parsing")

    class AttributeDict(dict):
        def __getattr__(self, key):
            return self[key]

    AttributeDict.__module__ = parsing.__name__
    AttributeDict.__qualname__ = "AttributeDict"
    parsing.AttributeDict = AttributeDict
    states = types.ModuleType("pytorch_lightning.trainer.states")

    class TrainerState:                  # another Lightning object, pickled with its state
        def __init__(self):
            self.fn, self.stage = "fit", "train"

    TrainerState.__module__, TrainerState.__qualname__ = states.__name__, "TrainerState"
    states.TrainerState = TrainerState
    for name in ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.trainer"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, parsing.__name__, parsing)
    monkeypatch.setitem(sys.modules, states.__name__, states)
    AttributeDict.trainer_state = TrainerState
    return AttributeDict


def lightning_checkpoint(query, key_model, attribute_dict, extra_hparams=None) -> dict:
    """The layout of the Stein et al. (2021) MoCo v2 release: encoder_q./encoder_k. ResNets and the queue."""
    state = {}
    for prefix, model in (("encoder_q.", query), ("encoder_k.", key_model)):
        state.update({prefix + k: v for k, v in model.state_dict().items()})
    state["queue"] = torch.randn(128, 64)
    state["queue_ptr"] = torch.zeros(1, dtype=torch.long)
    import pathlib

    hparams = attribute_dict(arch="resnet", lr=0.03, bands=BANDS, log_dir=pathlib.PosixPath("/runs/moco"),
                             state=attribute_dict.trainer_state(), **(extra_hparams or {}))
    return {"epoch": 10, "global_step": 1234, "pytorch-lightning_version": "1.1.0",
            "state_dict": state, "hyper_parameters": hparams,
            "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.03, "params": [0, 1]}]}],
            "callbacks": {}, "lr_schedulers": []}


@pytest.fixture(scope="module")
def preprocess_table(tmp_path_factory):
    from galtools.io import tensor_column
    import pyarrow as pa

    rng = np.random.default_rng(0)
    images = rng.normal(0, 1, (40, 3, SIZE + 4, SIZE + 4)).astype(np.float32)
    table = pa.table({"object_id": pa.array(np.arange(40, dtype=np.int64)), "image": tensor_column(images)})
    return write_table(table, str(tmp_path_factory.mktemp("pre") / "cutouts.parquet"), bands="z,r,g"), images


def run(*args):
    return run_tool("gal-train", *args, env=dict(os.environ, PYTHONPATH=ROOT))


def onnx_embed(path, x):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"image": x})[0]


def test_lightning_moco_checkpoint_imports_and_gal_embed_runs_it(tmp_path, lightning_like_modules, preprocess_table):
    from galtools.preprocess import Preprocess
    from galtools.train.export import read_metadata

    query = randomised(TvResNet(TvBasicBlock, (2, 2, 2, 2), in_chans=3, width=16), 1)
    key_model = randomised(TvResNet(TvBasicBlock, (2, 2, 2, 2), in_chans=3, width=16), 2)
    checkpoint = str(tmp_path / "moco.ckpt")
    torch.save(lightning_checkpoint(query, key_model, lightning_like_modules), checkpoint)
    with pytest.raises(Exception):                           # what makes the restricted reader necessary
        torch.load(checkpoint, weights_only=True)

    table_path, images = preprocess_table
    out = str(tmp_path / "encoder.onnx")
    result = run("import", checkpoint, "--arch", "resnet18", "--bands", ",".join(BANDS), "--input-size", SIZE,
                 "--preprocess", table_path, "--pixscale", "0.262", "--flux-unit", "nanomaggies", "-o", out)
    assert result.returncode == 0, result.stderr.decode()
    assert "encoder_q." in result.stderr.decode() and "fc dropped" in result.stderr.decode()

    x = np.random.default_rng(7).standard_normal((5, 3, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        expected = query.features(torch.from_numpy(x)).numpy()       # the query encoder, fc dropped
    got = onnx_embed(out, x)
    assert got.shape == (5, 128) and np.max(np.abs(got - expected)) < 1e-4
    with torch.no_grad():
        other = key_model.features(torch.from_numpy(x)).numpy()
    assert np.max(np.abs(got - other)) > 1e-2                          # not the key encoder

    metadata = read_metadata(out)
    assert metadata["galtools.bands"] == "g,r,z" and metadata["galtools.input_size"] == str(SIZE)
    assert metadata["galtools.pixscale_arcsec"] == "0.262" and metadata["galtools.flux_unit"] == "nanomaggies"
    preprocess = Preprocess.from_json(metadata["galtools.preprocess"])
    assert preprocess == Preprocess.fit(images[:, [2, 1, 0]], BANDS)   # fitted on the table's g,r,z planes

    embedded = str(tmp_path / "emb.parquet")
    run_embed = run_tool("gal-embed", table_path, "--model", out, "-o", embedded,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert run_embed.returncode == 0, run_embed.stderr.decode()
    vectors = np.stack(pq.read_table(embedded).column("embedding").to_numpy(zero_copy_only=False))
    crop = images[:, [2, 1, 0], 2:2 + SIZE, 2:2 + SIZE]
    with torch.no_grad():
        reference = query.features(preprocess.apply_torch(torch.from_numpy(np.ascontiguousarray(crop)))).numpy()
    np.testing.assert_allclose(vectors, reference, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_plain_state_dicts_with_prefixes_and_keep_head(tmp_path):
    from galtools.preprocess import Preprocess

    model = randomised(TvResNet(TvBottleneck, (3, 4, 6, 3), in_chans=5, num_classes=10, width=8), 3)
    pre = tmp_path / "pre.json"
    pre.write_text(Preprocess(tuple("ugriz"), (1.0,) * 5, (0.0,) * 5, (1.0,) * 5).to_json())
    x = np.random.default_rng(1).standard_normal((3, 5, SIZE, SIZE), dtype=np.float32)
    with torch.no_grad():
        features, logits = model.features(torch.from_numpy(x)).numpy(), model(torch.from_numpy(x)).numpy()

    from galtools.train.importer import import_checkpoint

    plain = str(tmp_path / "ddp.pt")                 # a DistributedDataParallel state dict
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, plain)
    result = import_checkpoint(plain, str(tmp_path / "a.onnx"), "resnet50", list("ugriz"), SIZE, str(pre))
    assert result["prefix"] == "module." and result["embedding_dim"] == 256 and result["dropped_head"]
    assert np.max(np.abs(onnx_embed(str(tmp_path / "a.onnx"), x) - features)) < 1e-4

    wrapped = str(tmp_path / "wrapped.pt")           # {"model": state dict} with a model. prefix, head kept
    torch.save({"model": {"model." + k: v for k, v in model.state_dict().items()}, "step": 3}, wrapped)
    result = import_checkpoint(wrapped, str(tmp_path / "b.onnx"), "resnet50", list("ugriz"), SIZE, str(pre),
                               keep_head=True)
    assert result["prefix"] == "model." and result["embedding_dim"] == 10
    assert np.max(np.abs(onnx_embed(str(tmp_path / "b.onnx"), x) - logits)) < 1e-4


def test_wrong_architecture_or_bands_are_65(tmp_path, preprocess_table):
    model = randomised(TvResNet(TvBasicBlock, (2, 2, 2, 2), in_chans=3, width=16), 4)
    path = str(tmp_path / "r18.pt")
    torch.save(model.state_dict(), path)
    table_path, _ = preprocess_table
    common = ["--input-size", SIZE, "--preprocess", table_path, "-o", str(tmp_path / "x.onnx")]
    result = run("import", path, "--arch", "resnet34", "--bands", "g,r,z", *common)
    assert result.returncode == 65 and "do not fit a resnet34" in result.stderr.decode()
    result = run("import", path, "--arch", "resnet18", "--bands", "g,r", *common)
    assert result.returncode == 65 and "takes 3 bands" in result.stderr.decode()
    assert not os.path.exists(tmp_path / "x.onnx")


class Payload:
    """Unpickling this would call os.system and create a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_holding_code_is_refused_and_nothing_runs(tmp_path, lightning_like_modules, preprocess_table):
    model = randomised(TvResNet(TvBasicBlock, (2, 2, 2, 2), in_chans=3, width=16), 5)
    marker = tmp_path / "executed"
    checkpoint = str(tmp_path / "evil.ckpt")
    torch.save(lightning_checkpoint(model, model, lightning_like_modules, {"callback": Payload(marker)}), checkpoint)
    table_path, _ = preprocess_table
    result = run("import", checkpoint, "--arch", "resnet18", "--bands", "g,r,z", "--input-size", SIZE,
                 "--preprocess", table_path, "-o", str(tmp_path / "x.onnx"))
    err = result.stderr.decode()
    assert result.returncode == 65, err
    assert "posix.system" in err and "refused" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not os.path.exists(tmp_path / "x.onnx")

    # the same payload in a plain (not zip) pickle
    import pickle

    plain = tmp_path / "plain.pt"
    plain.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    result = run("import", str(plain), "--arch", "resnet18", "--bands", "g,r,z", "--input-size", SIZE,
                 "--preprocess", table_path, "-o", str(tmp_path / "x.onnx"))
    assert result.returncode == 65 and not marker.exists(), result.stderr.decode()


def test_hyper_parameters_read_as_plain_values_and_lightning_objects_as_inert(tmp_path, lightning_like_modules):
    import pathlib

    from galtools.train.importer import HyperParameters, SkippedLightningObject, read_checkpoint

    model = randomised(TvResNet(TvBasicBlock, (1, 1, 1, 1), in_chans=3, width=8), 6)
    path = str(tmp_path / "moco.ckpt")
    torch.save(lightning_checkpoint(model, model, lightning_like_modules), path)
    checkpoint = read_checkpoint(path)
    hparams = checkpoint["hyper_parameters"]
    assert type(hparams) is HyperParameters and hparams["lr"] == 0.03 and hparams["bands"] == BANDS
    assert hparams["log_dir"] == pathlib.PurePosixPath("/runs/moco")
    assert type(hparams["state"]) is SkippedLightningObject and not hparams["state"]
    assert torch.equal(checkpoint["state_dict"]["encoder_q.conv1.weight"], model.conv1.weight)


def test_a_torchscript_archive_is_refused_before_torch_reads_it(tmp_path):
    from galtools.errors import BadData
    from galtools.train.importer import read_checkpoint

    path = str(tmp_path / "scripted.pt")
    torch.jit.trace(nn.Linear(2, 2), torch.zeros(1, 2)).save(path)
    with pytest.raises(BadData, match="TorchScript archive"):
        read_checkpoint(path)


# ------------------------------------------------------------------ non-finite weights, plain values, one-line refusals

def _one_line_error(result, *needles):
    err = assert_clean_error(result, 65, *needles)
    assert "Warning" not in err and "matches torch" not in err
    return err


def test_a_checkpoint_with_nan_weights_is_refused(tmp_path, preprocess_table):
    model = randomised(TvResNet(TvBasicBlock, (2, 2, 2, 2), in_chans=3, width=8), 8)
    table_path, _ = preprocess_table
    out = tmp_path / "x.onnx"
    for bad in (float("nan"), float("inf")):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        state["layer2.0.conv1.weight"][0, 0, 0, 0] = bad
        path = str(tmp_path / "bad.pt")
        torch.save(state, path)
        result = run("import", path, "--arch", "resnet18", "--bands", "g,r,z", "--input-size", SIZE,
                     "--preprocess", table_path, "-o", str(out))
        _one_line_error(result, "NaN or infinite", "stages.1.0.conv1.weight")
        assert not out.exists()


def _gal_train_checkpoint(path, bad_value=None):
    """A checkpoint as gal-train writes it (tiny encoder), optionally with one weight replaced."""
    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess
    from galtools.train import checkpoint
    from galtools.train.config import TrainConfig

    config = TrainConfig(arch="tiny", crop=SIZE)
    backbone = build_encoder("tiny", 3, width=1.0)
    state = {f"encoder_q.backbone.{k}": v.clone() for k, v in backbone.state_dict().items()}
    if bad_value is not None:
        first = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
        state[first].view(-1)[0] = bad_value
    preprocess = Preprocess(tuple(BANDS), (1.0,) * 3, (0.0,) * 3, (1.0,) * 3)
    checkpoint.save(str(path), {"config": config.to_json(), "bands": BANDS, "preprocess": preprocess.to_json(),
                                "augment": "", "model": state, "step": 3})


def test_gal_train_export_refuses_nan_weights(tmp_path):
    good, bad, out = tmp_path / "good.pt", tmp_path / "bad.pt", tmp_path / "e.onnx"
    _gal_train_checkpoint(good)
    result = run("export", str(good), "-o", str(out))
    assert result.returncode == 0 and out.exists(), result.stderr.decode()    # the same checkpoint, finite
    out.unlink()
    _gal_train_checkpoint(bad, float("nan"))
    _one_line_error(run("export", str(bad), "-o", str(out)), "NaN or infinite", "RUN/checkpoints")
    assert not out.exists()


def test_gal_embed_refuses_a_model_that_gives_nan_embeddings(tmp_path, preprocess_table):
    """An encoder.onnx whose weights were damaged after export: gal-embed names the model and the first object,
    exit 65, and leaves no output."""
    import onnx
    from onnx import numpy_helper

    model = randomised(TvResNet(TvBasicBlock, (2, 2, 2, 2), in_chans=3, width=8), 9)
    checkpoint, good = str(tmp_path / "m.pt"), str(tmp_path / "good.onnx")
    torch.save(model.state_dict(), checkpoint)
    table_path, _ = preprocess_table
    result = run("import", checkpoint, "--arch", "resnet18", "--bands", ",".join(BANDS), "--input-size", SIZE,
                 "--preprocess", table_path, "-o", good)
    assert result.returncode == 0, result.stderr.decode()
    graph = onnx.load(good)
    last_conv = [node for node in graph.graph.node if node.op_type == "Conv"][-1]
    weight = next(t for t in graph.graph.initializer if t.name == last_conv.input[2])
    values = numpy_helper.to_array(weight).copy()
    values[:] = np.nan                           # the last convolution's (batch-norm folded) bias
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    damaged = str(tmp_path / "damaged.onnx")
    onnx.save(graph, damaged)

    env = dict(os.environ, PYTHONPATH=ROOT, GALTOOLS_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "emb.parquet"
    assert run_tool("gal-embed", table_path, "--model", good, "-o", str(out), env=env).returncode == 0
    out.unlink()
    result = run_tool("gal-embed", table_path, "--model", damaged, "-o", str(out), env=env)
    err = result.stderr.decode()
    assert result.returncode == 65, err
    assert len(err.strip().splitlines()) == 1 and "damaged.onnx" in err and "NaN or infinite embeddings" in err
    assert "object_id 0" in err
    assert not out.exists()


def test_hyper_parameters_with_dates_and_numpy_values_import_as_json(tmp_path, lightning_like_modules,
                                                                      preprocess_table):
    import datetime
    import json

    from galtools.train.export import read_metadata

    model = randomised(TvResNet(TvBasicBlock, (2, 2, 2, 2), in_chans=3, width=8), 10)
    extra = {"started": datetime.date(2021, 3, 1), "saved": datetime.datetime(2021, 3, 2, 12, 30),
             "lr_np": np.float64(0.03), "steps_np": np.int64(300), "half": np.float32(0.5), "flag": np.bool_(True),
             "mean": np.array([0.1, 0.2, 0.3], dtype=np.float32), "patience": datetime.timedelta(minutes=2)}
    checkpoint = str(tmp_path / "dated.ckpt")
    torch.save(lightning_checkpoint(model, model, lightning_like_modules, extra), checkpoint)
    out = str(tmp_path / "dated.onnx")
    table_path, _ = preprocess_table
    result = run("import", checkpoint, "--arch", "resnet18", "--bands", "g,r,z", "--input-size", SIZE,
                 "--preprocess", table_path, "-o", out)
    assert result.returncode == 0, result.stderr.decode()
    recorded = json.loads(read_metadata(out)["galtools.train_config"])["hyper_parameters"]
    assert recorded["started"] == "2021-03-01" and recorded["saved"] == "2021-03-02T12:30:00"
    assert recorded["lr_np"] == 0.03 and recorded["steps_np"] == 300 and recorded["half"] == 0.5
    assert recorded["flag"] is True and recorded["patience"] == 120.0 and recorded["log_dir"] == "/runs/moco"
    assert recorded["mean"] == pytest.approx([0.1, 0.2, 0.3]) and recorded["lr"] == 0.03
    assert "state" not in recorded or recorded["state"] is None          # a Lightning object: dropped

    # numpy objects are read as numbers only: an array of Python objects is still refused, nothing runs
    marker = tmp_path / "executed"
    evil = str(tmp_path / "evil.ckpt")
    torch.save(lightning_checkpoint(model, model, lightning_like_modules,
                                    {"values": np.array([Payload(marker), 1], dtype=object)}), evil)
    result = run("import", evil, "--arch", "resnet18", "--bands", "g,r,z", "--input-size", SIZE,
                 "--preprocess", table_path, "-o", str(tmp_path / "evil.onnx"))
    _one_line_error(result, "refused")
    assert not marker.exists()


def test_raw_pickles_and_torchscript_are_one_line_for_export_and_import(tmp_path, preprocess_table):
    import pickle

    scripted = str(tmp_path / "scripted.pt")
    torch.jit.trace(nn.Linear(2, 2), torch.zeros(1, 2)).save(scripted)
    raw = tmp_path / "weights.pkl"
    raw.write_bytes(pickle.dumps({"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)}, protocol=4))
    table_path, _ = preprocess_table
    out = str(tmp_path / "x.onnx")
    for path, what in ((scripted, "TorchScript archive"), (str(raw), "plain pickle")):
        _one_line_error(run("export", path, "-o", out), what, "gal-train import")
        _one_line_error(run("import", path, "--arch", "resnet18", "--bands", "g,r,z", "--input-size", SIZE,
                            "--preprocess", table_path, "-o", out), what, "torch.save")
        assert not os.path.exists(out)


# ------------------------------------------------------------------ the model's own input scaling (--scaling)

def _reference_scaling(kind, x):
    """Each scaling written here with numpy, in the model's band order g,r,z (independent of galtools)."""
    x = x.astype(np.float64)
    per_band = lambda values: np.asarray(values, dtype=np.float64)[None, :, None, None]  # noqa: E731
    if kind == "identity":
        y = x
    elif kind == "linear":
        y = x * per_band([0.5, 2.0, 1.5]) + per_band([0.1, -0.2, 0.0])
    elif kind == "clip":
        y = np.clip(x, -1.0, 1.5)
    elif kind == "arcsinh":
        y = np.arcsinh(x / per_band([0.3, 0.5, 0.7]))
    elif kind == "log":
        y = np.log10(np.clip(x, -0.9, None) + 1.0)
    elif kind == "chain":
        y = 3.0 * np.log(np.clip(x, -0.5, 2.0) + 0.75) - 0.25
    return y.astype(np.float32)


SCALING_OPTIONS = {
    "identity": ["--scaling", "identity"],
    "linear": ["--scaling", "linear:scale=0.5,2,1.5:offset=0.1,-0.2,0"],
    "clip": ["--scaling", "clip:lo=-1:hi=1.5"],
    "arcsinh": ["--scaling", "arcsinh:scale=0.3,0.5,0.7"],
    "log": ["--scaling", "clip:lo=-0.9", "--scaling", "log:offset=1:base=10"],
    "chain": ["--scaling", "clip:lo=-0.5:hi=2", "--scaling", "log:offset=0.75", "--scaling",
              "linear:scale=3:offset=-0.25"],
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(SCALING_OPTIONS))
def test_import_carries_the_models_own_scaling_to_gal_embed(tmp_path, preprocess_table, kind):
    """gal-embed of raw pixels through an imported model equals torch's model applied to the scaling it was
    trained with, to 1e-4."""
    import json

    from galtools.train.export import read_metadata

    model = randomised(TvResNet(TvBasicBlock, (2, 2, 2, 2), in_chans=3, width=8), 11)
    checkpoint, out = str(tmp_path / "own.pt"), str(tmp_path / "own.onnx")
    torch.save(model.state_dict(), checkpoint)
    result = run("import", checkpoint, "--arch", "resnet18", "--bands", ",".join(BANDS), "--input-size", SIZE,
                 *SCALING_OPTIONS[kind], "-o", out)
    assert result.returncode == 0, result.stderr.decode()
    recorded = json.loads(read_metadata(out)["galtools.preprocess"])
    assert recorded["kind"] == "scaling" and recorded["bands"] == BANDS

    table_path, images = preprocess_table                    # raw pixels, planes z,r,g, 36x36
    embedded = str(tmp_path / "emb.parquet")
    env = dict(os.environ, PYTHONPATH=ROOT, GALTOOLS_CACHE_DIR=str(tmp_path / "cache"))
    embed_run = run_tool("gal-embed", table_path, "--model", out, "-o", embedded, env=env)
    assert embed_run.returncode == 0, embed_run.stderr.decode()
    vectors = np.stack(pq.read_table(embedded).column("embedding").to_numpy(zero_copy_only=False))
    crop = np.ascontiguousarray(images[:, [2, 1, 0], 2:2 + SIZE, 2:2 + SIZE])
    with torch.no_grad():
        reference = model.features(torch.from_numpy(_reference_scaling(kind, crop))).numpy()
        unscaled = model.features(torch.from_numpy(crop)).numpy()
    np.testing.assert_allclose(vectors, reference, rtol=1e-4, atol=1e-4)
    if kind != "identity":
        assert np.abs(vectors - unscaled).max() > 1e-2     # the scaling really changes what the model sees


def test_scaling_options_are_checked_before_the_checkpoint_is_read(tmp_path, preprocess_table):
    table_path, _ = preprocess_table
    missing = str(tmp_path / "never-read.pt")
    common = ["--arch", "resnet18", "--bands", "g,r,z", "--input-size", SIZE, "-o", str(tmp_path / "x.onnx")]
    for options, needle in (([], "--scaling"), (["--preprocess", table_path, "--scaling", "identity"], "either"),
                            (["--scaling", "linear:scale=1,2"], "2 values for 3 bands"),
                            (["--scaling", "gamma:k=2"], "not one of"),
                            (["--scaling", "clip:lo=2:hi=1"], "lo above hi")):
        result = run("import", missing, *common, *options)
        err = result.stderr.decode()
        assert result.returncode == 2 and needle in err and len(err.strip().splitlines()) == 1, (options, err)

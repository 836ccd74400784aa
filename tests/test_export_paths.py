"""encoder.onnx comes from torch's TorchScript-based ONNX exporter, or from its torch.export-based one where the
first fails: both paths give the same embeddings (checked here by ONNX Runtime against torch, independently of the
exporter's own parity check), the same declared shapes, and the fallback happens by itself."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from galtools.models import build_encoder  # noqa: E402
from galtools.train import export  # noqa: E402

SIZE = 24


def _embed(path: str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["embedding"], {"image": x})[0]


def _declared_shapes(path: str):
    import onnx

    graph = onnx.load(path).graph
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    return dims(graph.input[0]), dims(graph.output[0])


def test_quarter_turns_are_torch_rot90_exactly():
    x = torch.randn(2, 3, 5, 5)
    for k, turned in enumerate(export.quarter_turns(x)):
        assert torch.equal(turned, torch.rot90(x, k, dims=(2, 3))), k


@pytest.mark.parametrize("tta", [8])   # tta 1 by torch.export: the fallback test below
def test_both_exporters_give_the_embeddings_torch_gives(tmp_path, tta):
    torch.manual_seed(3)
    backbone = build_encoder("tiny", 5, width=0.5, pool="gem").eval()
    x = np.random.default_rng(0).standard_normal((6, 5, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        views = [torch.from_numpy(x)]
        if tta == 8:
            views = [torch.rot90(views[0], k, dims=(2, 3)) for k in range(4)]
            views += [torch.flip(v, dims=(3,)) for v in views]
        expected = torch.stack([backbone.forward_features(v) for v in views]).mean(0).numpy()
    got = {}
    for exporter in export.EXPORTERS:
        path = str(tmp_path / f"{exporter}.onnx")
        parity = export.export_encoder(backbone, path, {"k": "v"}, SIZE, tta=tta, exporters=(exporter,))
        assert parity <= export.PARITY_TOLERANCE
        got[exporter] = _embed(path, x)
        assert _declared_shapes(path) == (["batch", 5, SIZE, SIZE], ["batch", expected.shape[1]]), exporter
        assert export.read_metadata(path)["k"] == "v"
        np.testing.assert_allclose(got[exporter], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["torchscript"], got["dynamo"], rtol=1e-4, atol=1e-5)


def test_a_failing_first_exporter_falls_back_to_the_next(tmp_path, monkeypatch):
    real = torch.onnx.export
    used = []

    def torchscript_gone(*args, dynamo=True, **kwargs):
        used.append(dynamo)
        if not dynamo:
            raise RuntimeError("no TorchScript exporter in this torch")
        return real(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", torchscript_gone)
    torch.manual_seed(0)
    backbone = build_encoder("tiny", 3, width=0.5).eval()
    path = str(tmp_path / "encoder.onnx")
    export.export_encoder(backbone, path, {}, SIZE)
    assert used == [False, True]
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(_embed(path, x), backbone.forward_features(torch.from_numpy(x)).numpy(),
                                   rtol=1e-4, atol=1e-5)

    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("both broken")))
    with pytest.raises(RuntimeError, match="both broken"):
        export.export_encoder(backbone, str(tmp_path / "none.onnx"), {}, SIZE)
    assert not (tmp_path / "none.onnx").exists()

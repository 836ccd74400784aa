"""gal-train --preset small|paper (explicit options override the preset; the run records the resolved settings),
--queue-size 0 (a quarter of the cutouts) and --steps 0 (the untrained encoder, a random-weights baseline)."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import tool_command  # noqa: E402
from test_train_cli import cutouts, gal_train  # noqa: E402,F401  (the module's 160-galaxy table fixture)

from galtools.io import images_of, open_table  # noqa: E402
from galtools.train.config import AUTO_OPS_FLUX, PRESETS, TrainConfig, resolve_preset  # noqa: E402

SMALL_TABLE = ["--arch", "tiny", "--width", "0.5", "--crop", "16", "--batch-size", "16", "--device", "cpu",
               "--loader-threads", "1"]


def onnx_config(path) -> dict:
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return json.loads(meta["galtools.train_config"])


def test_small_preset_fills_what_is_not_given_and_the_run_records_it(cutouts, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    result = gal_train(cutouts, "--out", run, "--preset", "small", *SMALL_TABLE, "--steps", "4", "--lr", "0.1")
    assert result.returncode == 0, result.stderr.decode()
    config = onnx_config(run / "encoder.onnx")
    small = PRESETS["small"]
    # given on the command line: kept
    assert (config["arch"], config["width"], config["crop"], config["batch_size"], config["steps"], config["lr"]) \
        == ("tiny", 0.5, 16, 16, 4, 0.1)
    # not given: the preset's
    assert config["preset"] == "small"
    assert config["key_momentum"] == small["key_momentum"] == 0.99
    # --ops auto, recorded resolved: fluxes get no colour change
    assert small["ops"] == "auto" and config["ops"] == AUTO_OPS_FLUX == "rotate,jitter,noise"
    assert config["method"] == "moco" and config["epochs"] is None
    assert config["tta"] == small["tta"] == 8                     # the exported graph averages 8 views
    import onnx

    assert {p.key: p.value for p in onnx.load(str(run / "encoder.onnx")).metadata_props}["galtools.tta"] == "8"
    # the preset's queue (0: a quarter of the 160 cutouts in whole batches of 16) is recorded resolved
    assert small["queue_size"] == 0 and config["queue_size"] == 32
    state = torch.load(run / "last.pt", weights_only=True)
    assert json.loads(state["config"])["queue_size"] == 32 and state["model"]["queue"].shape == (32, 128)


def test_resolve_preset_paper_and_run_length():
    defaults = {f: getattr(TrainConfig(), f) for f in ("arch", "width", "method", "dim", "queue_size", "key_momentum",
                                                        "temperature", "batch_size", "lr", "momentum",
                                                        "weight_decay", "epochs", "steps", "crop", "ops")}
    paper = resolve_preset("paper", {**defaults, "steps": 500, "arch": "tiny"}, {"steps"})
    assert (paper["arch"], paper["queue_size"], paper["key_momentum"], paper["temperature"], paper["batch_size"],
            paper["lr"], paper["crop"]) == ("resnet50-hayat", 65536, 0.999, 0.2, 256, 0.03, 64)
    assert paper["steps"] == 500 and paper["epochs"] is None       # --steps given: the preset's epochs go
    assert paper["preset"] == "paper"
    small = resolve_preset("small", {**defaults, "epochs": 3.0}, {"epochs"})
    assert small["epochs"] == 3.0 and small["steps"] is None         # --epochs given: the preset's steps go
    plain = resolve_preset(None, defaults, set())
    assert plain == defaults and TrainConfig(inputs=["t.fits"], **plain).validate().queue_size == 65536


def test_search_preset_is_small_with_32_pixel_crops_and_twice_the_steps(tmp_path):
    """--preset search as a user runs it (a real process; --steps 0 exports the untrained encoder at once): the run
    records the preset and small's settings, but for 32-pixel crops; the library resolves 2,400 steps."""
    import onnx

    differs = {key for key in PRESETS["small"] if PRESETS["search"][key] != PRESETS["small"][key]}
    assert differs == {"crop", "steps"} and (PRESETS["search"]["crop"], PRESETS["search"]["steps"]) == (32, 2400)
    from conftest import make_cutouts, write_table

    table = tmp_path / "cutouts.parquet"
    write_table(make_cutouts(n=64, size=40, seed=3), str(table))
    run = tmp_path / "run"
    result = gal_train(table, "--out", run, "--preset", "search", "--device", "cpu", "--loader-threads", "1",
                       "--steps", "0")
    assert result.returncode == 0, result.stderr.decode()
    config = onnx_config(run / "encoder.onnx")
    assert (config["preset"], config["crop"], config["arch"], config["pool"], config["tta"]) == ("search", 32, "tiny",
                                                                                                 "gem", 8)
    image = onnx.load(str(run / "encoder.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in image][2:] == [32, 32]
    defaults = {f: getattr(TrainConfig(), f) for f in ("crop", "steps", "epochs")}
    assert (resolve_preset("search", defaults, set())["steps"], resolve_preset("search", defaults, set())["epochs"]) \
        == (2400, None)


def test_unknown_preset_is_a_usage_error(cutouts, tmp_path):  # noqa: F811
    result = gal_train(cutouts, "--out", tmp_path / "run", "--preset", "huge", *SMALL_TABLE)
    assert result.returncode == 2 and "huge" in result.stderr.decode()


def test_steps_0_exports_the_untrained_encoder(cutouts, tmp_path):  # noqa: F811
    import onnxruntime as ort

    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess
    from galtools.train.data import centre_crop

    run = tmp_path / "run"
    result = gal_train(cutouts, "--out", run, *SMALL_TABLE, "--queue-size", "32", "--ops", "rotate", "--steps", "0",
                       "--seed", "5")
    assert result.returncode == 0, result.stderr.decode()
    assert (run / "last.pt").exists() and torch.load(run / "last.pt", weights_only=True)["step"] == 0
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(run / "encoder.onnx")).metadata_props}
    # the reference: the same encoder built from the same seed, never trained (eval mode)
    torch.manual_seed(5)
    backbone = build_encoder("tiny", 5, width=0.5).eval()
    images = Preprocess.from_json(meta["galtools.preprocess"]).apply_numpy(
        centre_crop(images_of(open_table(str(cutouts)).read_all()), 16))[:20]
    got = ort.InferenceSession(str(run / "encoder.onnx"), providers=["CPUExecutionProvider"]).run(
        ["embedding"], {"image": images})[0]
    with torch.no_grad():
        expected = backbone(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_export_tta_8_embeds_the_mean_over_turns_and_mirror_images_of_a_gem_pooled_encoder(cutouts, tmp_path):  # noqa: F811
    import onnx
    import onnxruntime as ort

    from galtools.models import build_encoder
    from galtools.preprocess import Preprocess
    from galtools.train.checkpoint import backbone_state
    from galtools.train.data import centre_crop

    from galtools.finetune import load_checkpoint

    run = tmp_path / "run"
    # trained with --pool gem: the generalised mean of the last feature maps, recorded and re-exported
    result = gal_train(cutouts, "--out", run, *SMALL_TABLE, "--queue-size", "32", "--ops", "rotate", "--steps", "2",
                       "--pool", "gem", "--no-export")
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(torch.load(run / "last.pt", weights_only=True)["config"])["pool"] == "gem"
    assert load_checkpoint(str(run / "last.pt")).build(pretrained=True).pool == "gem"   # fine-tuning builds it too
    result = gal_train("export", run / "last.pt", "-o", tmp_path / "tta.onnx", "--tta", "8")
    assert result.returncode == 0, result.stderr.decode()
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "tta.onnx")).metadata_props}
    assert meta["galtools.tta"] == "8" and meta["galtools.input_size"] == "16"
    images = Preprocess.from_json(meta["galtools.preprocess"]).apply_numpy(
        centre_crop(images_of(open_table(str(cutouts)).read_all()), 16))[:12]
    session = ort.InferenceSession(str(tmp_path / "tta.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["embedding"], {"image": images})[0]
    # the reference: numpy's turns and mirror images through the torch backbone, averaged
    backbone = build_encoder("tiny", 5, width=0.5, pool="gem").eval()
    backbone.load_state_dict(backbone_state(torch.load(run / "last.pt", weights_only=True)["model"]))
    with torch.no_grad():   # the pool itself against numpy: (mean of x^3)^(1/3) over the last feature maps
        maps = backbone.forward_feature_maps(torch.from_numpy(images)).double().numpy()
        np.testing.assert_allclose(backbone(torch.from_numpy(images)).numpy(),
                                   (np.clip(maps, 1e-6, None) ** 3).mean(axis=(2, 3)) ** (1 / 3), rtol=1e-5, atol=1e-6)
    views = [np.rot90(images, k, axes=(2, 3)) for k in range(4)]
    views += [v[..., ::-1] for v in views]
    with torch.no_grad():
        expected = np.mean([backbone(torch.from_numpy(np.ascontiguousarray(v))).numpy() for v in views], axis=0)
        plain = backbone(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(plain - expected).max() > 1e-3          # the averaging is not a no-op on these images
    # invariant: a mirrored, turned cutout has the same embedding
    turned = np.ascontiguousarray(np.rot90(images, 1, axes=(2, 3))[..., ::-1])
    np.testing.assert_allclose(session.run(["embedding"], {"image": turned})[0], got, rtol=1e-4, atol=1e-4)
    bad = gal_train(cutouts, "--out", tmp_path / "bad", *SMALL_TABLE, "--steps", "1", "--pool", "median")
    assert bad.returncode == 2 and b"median" in bad.stderr and not (tmp_path / "bad").exists()


def test_ops_auto_adds_a_colour_jitter_for_8_bit_composites_only(tmp_path):
    from PIL import Image

    from galtools.train.config import AUTO_OPS_8BIT

    stamps = tmp_path / "stamps"
    stamps.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:24, :24] - 11.5
    for i in range(40):           # gri composites as a survey's cutout service writes them: 8-bit PNGs
        blob = 200 * np.exp(-0.5 * (x ** 2 / rng.uniform(4, 20) + y ** 2 / rng.uniform(4, 20)))
        picture = np.clip(blob[..., None] * [1.0, 0.8, 0.6] + rng.normal(10, 3, (24, 24, 3)), 0, 255)
        Image.fromarray(picture.astype(np.uint8)).save(stamps / f"{1000 + i}.png")
    packed = tmp_path / "composites.parquet"
    result = subprocess.run(tool_command("gal-pack") + [str(stamps), "-o", str(packed)], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    result = gal_train(packed, "--out", tmp_path / "run", "--preset", "small", "--arch", "tiny", "--width", "0.5",
                       "--crop", "16", "--batch-size", "8", "--steps", "2", "--tta", "1", "--device", "cpu",
                       "--loader-threads", "1")
    assert result.returncode == 0, result.stderr.decode()
    config = onnx_config(tmp_path / "run" / "encoder.onnx")
    assert config["ops"] == AUTO_OPS_8BIT and "gain:" in AUTO_OPS_8BIT
    # the same option on fluxes: no colour change (see the small preset's test above)
    assert TrainConfig(ops="auto").ops == "auto"

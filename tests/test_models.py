"""The ResNet family: shapes, widths, band counts, the Hayat stem, and that ResNet-50 is the ResNet-50."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from galtools.models import ProjectionHead, build_encoder, list_encoders  # noqa: E402
from galtools.models.resnet import Bottleneck  # noqa: E402


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_registry_lists_the_paper_variant_and_tiny():
    names = list_encoders()
    for name in ("resnet18", "resnet34", "resnet50", "resnet50-hayat", "tiny"):
        assert name in names
    with pytest.raises(KeyError, match="unknown encoder 'resnet51'"):
        build_encoder("resnet51", 5)


@pytest.mark.parametrize("in_chans", [1, 3, 5])
def test_tiny_any_band_count_gives_pooled_representation(in_chans):
    model = build_encoder("tiny", in_chans).eval()
    out = model.forward_features(torch.randn(3, in_chans, 32, 32))
    assert out.shape == (3, model.num_features) == (3, 128)
    assert (out >= 0).all()  # average of ReLU outputs


def test_resnet50_parameter_counts_match_the_published_architecture():
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in the 1000-class fc layer and 9,408 in
    # the 3-band stem (64*3*7*7); ours has no fc, and a 5-band stem adds 2*64*7*7.
    model = build_encoder("resnet50", 3)
    assert n_params(model) == 25_557_032 - 2_049_000
    assert n_params(build_encoder("resnet50-hayat", 5)) == 25_557_032 - 2_049_000 + 2 * 64 * 7 * 7
    assert n_params(build_encoder("resnet18", 3)) == 11_689_512 - 513_000
    assert n_params(build_encoder("resnet34", 3)) == 21_797_672 - 513_000
    assert model.num_features == 2048
    assert isinstance(model.stages[0][0], Bottleneck)


def test_hayat_stem_keeps_resolution_and_imagenet_stem_divides_by_four():
    hayat = build_encoder("resnet18-hayat", 5).eval()
    imagenet = build_encoder("resnet18", 5).eval()
    x = torch.randn(1, 5, 64, 64)
    assert hayat.conv1.kernel_size == (7, 7) and hayat.conv1.stride == (1, 1)
    assert hayat.forward_feature_maps(x).shape[-2:] == (8, 8)      # 64 -> 64 -> 32 -> 16 -> 8
    assert imagenet.forward_feature_maps(x).shape[-2:] == (2, 2)   # 64 -> 16 (conv + pool) -> ... -> 2


def test_width_multiplier_scales_channels():
    assert build_encoder("resnet18", 5, width=2).num_features == 1024
    assert build_encoder("resnet50-hayat", 5, width=0.5).num_features == 1024
    assert build_encoder("tiny", 5, width=0.5).num_features == 64


def test_residual_blocks_start_as_identity_branch():
    model = build_encoder("tiny", 5)
    for stage in model.stages:
        for block in stage:
            assert torch.count_nonzero(block.bn2.weight) == 0


def test_projection_head_is_two_layer_mlp_to_128():
    head = ProjectionHead(2048)
    assert [type(m).__name__ for m in head] == ["Linear", "ReLU", "Linear"]
    assert head[0].in_features == 2048 and head[0].out_features == 2048 and head[2].out_features == 128
    assert head(torch.randn(4, 2048)).shape == (4, 128)


def test_global_poolings_are_the_mean_generalised_mean_and_maximum_of_the_feature_maps():
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    maps = build_encoder("tiny", 3).eval().forward_feature_maps(x).detach().double().numpy()
    expected = {"avg": maps.mean(axis=(2, 3)),
                "gem": (np.clip(maps, 1e-6, None) ** 3).mean(axis=(2, 3)) ** (1 / 3),
                "max": maps.max(axis=(2, 3))}
    for pool, reference in expected.items():
        torch.manual_seed(0)
        model = build_encoder("tiny", 3, pool=pool).eval()     # the same weights: the same seed
        got = model.forward_features(x).detach().double().numpy()
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected["gem"], expected["avg"]) and not np.allclose(expected["gem"], expected["max"])
    with pytest.raises(ValueError, match="unknown pool 'median'"):
        build_encoder("tiny", 3, pool="median")

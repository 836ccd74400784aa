"""The augmentation spec grammar and the counter-based random streams (no images involved)."""
import subprocess
import sys

import numpy as np
import pytest

from galtools.augment import streams
from galtools.augment.spec import OPS, canonical_spec, describe_ops, parse_spec
from galtools.errors import UsageProblem

MASK = (1 << 64) - 1


def splitmix64_reference(value: int) -> int:
    """splitmix64 written with Python integers (Steele, Lea & Flood 2014)."""
    z = (value + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


# ---------------------------------------------------------------------------------------------------- spec
def test_defaults_fill_every_parameter_and_canonical_round_trips():
    steps = parse_spec("rotate,jitter:max_shift=7,noise,redden:ebv_max=0.5,psf")
    assert [s.name for s in steps] == ["rotate", "jitter", "noise", "redden", "psf"]
    assert steps[1].params == {"max_shift": 7}
    assert steps[0].params == {"min_angle": 0.0, "max_angle": 360.0, "step": 0.0}
    text = canonical_spec(steps)
    assert text.startswith("rotate:min_angle=0:max_angle=360:step=0,jitter:max_shift=7,noise:")
    assert parse_spec(text) == steps
    assert canonical_spec(parse_spec(text)) == text


def test_parameters_after_a_comma_continue_the_operation():
    by_colon = parse_spec("redden:ebv_min=0.1:ebv_max=0.3,psf")
    by_comma = parse_spec("redden:ebv_min=0.1,ebv_max=0.3,psf")
    assert by_colon == by_comma
    assert by_comma[0].params["ebv_min"] == 0.1 and by_comma[0].params["ebv_max"] == 0.3
    assert [s.name for s in by_comma] == ["redden", "psf"]


def test_lists_repeated_operations_and_spaces():
    steps = parse_spec(" noise:sigma_in=0.1/0.2/0.3 , noise , Rotate ")
    assert steps[0].params["sigma_in"] == (0.1, 0.2, 0.3)
    assert [s.tag for s in steps] == ["noise#0", "noise#1", "rotate#0"]
    assert parse_spec("") == []


@pytest.mark.parametrize("spec, fragment", [
    ("rotate,blur", "unknown augmentation 'blur'"),
    ("jitter:shift=3", "unknown parameter 'shift=3' for augmentation 'jitter'"),
    ("jitter:max_shift=2.5", "expected an integer"),
    ("jitter:max_shift=-1", "must be >= 0"),
    ("redden:ebv_max=lots", "expected a number"),
    ("redden:ebv_min=0.4:ebv_max=0.2", "ebv_min must not exceed ebv_max"),
    ("noise:sigma_min=0.1", "needs both sigma_min and sigma_max"),
    ("flip:p=1.5", "must be <= 1"),
    ("psf:fwhm_min=nan", "not a finite number"),
    ("ebv_max=0.3,redden", "starts with a parameter"),
])
def test_bad_specs_name_the_problem(spec, fragment):
    with pytest.raises(UsageProblem) as info:
        parse_spec(spec)
    assert fragment in info.value.one_line()


def test_every_operation_and_parameter_is_documented():
    text = describe_ops()
    for name, op in OPS.items():
        assert op.doc and f"{name}:" in text
        for key, param in op.params.items():
            assert param.doc and f"    {key}=" in text


def test_spec_module_does_not_import_torch():
    code = "import sys, galtools.augment; galtools.augment.parse_spec('rotate'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------- streams
def test_splitmix64_matches_the_integer_reference_in_numpy_and_torch():
    torch = pytest.importorskip("torch")
    values = [0, 1, 2, 2**63 - 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF]
    expected = [splitmix64_reference(v) for v in values]
    assert expected[0] == 0xE220A8397B1DCDAF  # the published first output of splitmix64 seeded with 0
    as_numpy = streams.splitmix64(np.array(values, dtype=np.uint64))
    assert [int(v) for v in as_numpy] == expected
    as_torch = streams.splitmix64_torch(torch.from_numpy(np.array(values, dtype=np.uint64).view(np.int64).copy()))
    assert [int(v) for v in as_torch.numpy().view(np.uint64)] == expected


def test_uniforms_are_per_object_and_uniform():
    keys = streams.object_keys(np.arange(4000))
    u = streams.uniforms(streams.stream_keys(7, keys, 0, "rotate#0"), 3)
    assert u.shape == (4000, 3) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.003
    # object 123's draws do not depend on the others
    alone = streams.uniforms(streams.stream_keys(7, keys[123:124], 0, "rotate#0"), 3)
    np.testing.assert_array_equal(alone[0], u[123])
    # seed, view and operation each give another stream
    for other in (streams.stream_keys(8, keys, 0, "rotate#0"), streams.stream_keys(7, keys, 1, "rotate#0"),
                  streams.stream_keys(7, keys, 0, "noise#0")):
        assert np.abs(np.corrcoef(streams.uniforms(other, 1)[:, 0], u[:, 0])[0, 1]) < 0.05


def test_object_keys_accept_integers_and_strings():
    ints = streams.object_keys(np.array([-1, 0, 5], dtype=np.int64))
    assert ints.dtype == np.uint64 and int(ints[0]) == MASK and int(ints[2]) == 5
    strings = streams.object_keys(np.array(["J1234+5678", "J0000+0000", "J1234+5678"]))
    assert strings[0] == strings[2] != strings[1]
    assert streams.object_keys(["a", b"a"]).tolist()[0] == streams.object_keys(["a"]).tolist()[0]


def test_normal_field_is_standard_normal_and_per_object():
    torch = pytest.importorskip("torch")
    keys = streams.object_keys(np.arange(40))
    field = streams.normal_field(keys, (3, 33, 33), "cpu")   # odd pixel count: the last pair is cut
    assert field.shape == (40, 3, 33, 33) and field.dtype == torch.float32
    values = field.numpy().ravel()
    assert abs(values.mean()) < 0.01 and abs(values.std() - 1) < 0.01
    assert abs(np.mean(np.abs(values) < 1) - 0.6827) < 0.005          # Gaussian, not just unit variance
    assert abs(np.mean(np.abs(values) < 2) - 0.9545) < 0.003
    alone = streams.normal_field(keys[17:18], (3, 33, 33), "cpu")
    # the same integer streams; the float32 transforms of them may round differently in vectorised and scalar loops
    torch.testing.assert_close(alone[0], field[17], rtol=1e-6, atol=1e-6)

"""Every built variant on every target device of the recipe, on the real ARM runtime.

    make device-test RECIPE=fashion-mnist    # a full build's matrix
    pytest device_tests                                    # the default recipe's smoke build
"""


import numpy as np
import pytest

from pipeline.gate.budgets import check_budgets
from pipeline.recipe.budgets import BUDGETS
from pipeline.devices.profiles import DEVICES, get_device
from pipeline.summary import DeviceSummary

pytestmark = pytest.mark.device

FLOAT_TOLERANCE = 1e-4  # float32 on ARM vs x86 measured ~1e-7; dynamic-range a little more
TOP1_TOLERANCE = 2.0    # points: device top-1 may trail the host's on the same images by this much


def _result(device_build, device, variant) -> DeviceSummary:
    per_device = device_build["summary"].devices
    assert device in per_device, f"no device results for {device}: was the device matrix run?"
    assert variant in per_device[device], f"{variant} was not run on {device}"
    return per_device[device][variant]


def test_loads_exactly_where_its_runtime_supports_every_op(device_build, expected_load, variant, device):
    """The emulated device loads the variant exactly when the runtime its profile names
    (same version, built for the host) does; where it does not, both name the same op
    and version, and only a legacy runtime may refuse a model the build made."""
    from pipeline.devices.guest_result import parse_load_error

    r = _result(device_build, device, variant)
    loads, host_error = expected_load(variant, device)
    assert r.loaded == loads, (r.load_error, host_error)
    if loads:
        return
    assert get_device(device).runtime != "litert", host_error
    expected = parse_load_error(host_error)
    assert r.load_error_op and r.load_error_op_version, r.load_error
    assert (r.load_error_op, r.load_error_op_version) == (expected.op, expected.version), (r.load_error, host_error)


def test_device_accuracy_matches_host(device_build, expected_load, variant, device):
    from pipeline.data import load_dataset

    r = _result(device_build, device, variant)
    assert r.loaded == expected_load(variant, device)[0], r.load_error
    if not r.loaded:
        assert r.top1 is None, r
        return
    recipe = device_build["recipe"]
    splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed)
    n = r.samples
    # The host's predictions as evaluation saved them (test order): the device ran the first n.
    host = np.load(device_build["summary"].variants[variant].predictions)[:n]
    host_top1 = float(np.mean(host == splits.y_test[:n]) * 100)
    assert r.top1 >= host_top1 - TOP1_TOLERANCE, (r.top1, host_top1)


def test_outputs_agree_with_host(device_build, expected_load, variant, device):
    """float32: within 1e-4. Full-integer: the same class, and on LiteRT devices at most one
    output quantization step apart (measured: 99-100% of outputs bit-exact; the rest 1 LSB).
    The legacy tflite-runtime 2.14 int8 kernels differ more from today's host kernels
    (measured on the pruned default model: 27% bit-exact, same class on 99%)."""
    from pipeline.variants import VARIANTS

    r = _result(device_build, device, variant)
    assert r.loaded == expected_load(variant, device)[0], r.load_error
    if not r.loaded:  # nothing ran, so nothing to compare; the load test names the op
        assert r.exact_fraction is None and r.instructions_per_inference is None, r
        return
    out = device_build["summary"].variants[variant].output
    if variant == "float32":
        assert r.max_abs_diff < FLOAT_TOLERANCE, r
    elif VARIANTS.get(variant).full_integer and get_device(device).runtime == "litert":
        step = out.scale[0] if out.scale else 1 / 256  # float output: softmax step of the int8 tensor
        assert r.max_abs_diff <= step + 1e-9, r
        assert r.top1_agreement == 1.0, r
    else:
        assert r.top1_agreement >= 0.95, r


def test_cost_and_memory_within_budgets(device_build, expected_load, variant, device):
    r = _result(device_build, device, variant)
    assert r.loaded == expected_load(variant, device)[0], r.load_error
    if not r.loaded:
        assert r.peak_memory_bytes is None, r
        return
    assert r.instructions_per_inference > 0
    assert r.fits_ram, r
    recipe = device_build["recipe"]
    device_budgets = {k: v for k, v in recipe.budgets.items() if BUDGETS[k].scope == "device"}
    if variant == recipe.deploy_variant and device_budgets:
        missed = [c for c in check_budgets(device_budgets, device_build["summary"], [device])
                  if c.subject == device and not c.ok]
        assert not missed, missed


@pytest.fixture(scope="module")
def deploy_on_every_device(device_build):
    """``{device: DeviceResult}``: the deploy variant run again on every registered device.
    On the recipe's targets, the images the build's device matrix ran (the first
    ``devices.samples`` test images, with their labels): these runs repeat the build's. On
    the other devices (registry coverage), two random images: the time is per inference."""
    from pipeline.data import load_dataset
    from pipeline.devices.check import run_device_check

    recipe = device_build["recipe"]
    splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed)
    n = min(recipe.devices.samples, len(splits.x_test))
    path = device_build["summary"].variants[recipe.deploy_variant].path
    x = np.random.default_rng(0).random((2, *recipe.model.input_shape), dtype=np.float32)
    return {name: run_device_check(path, name, splits.x_test[:n], splits.y_test[:n])
            if name in recipe.devices.targets else run_device_check(path, name, x)
            for name in DEVICES.names()}


def test_instruction_count_repeats_exactly(device_build, deploy_on_every_device, device):
    """A second run of the deploy variant on the same images counts the same instructions."""
    r = _result(device_build, device, device_build["recipe"].deploy_variant)
    again = deploy_on_every_device[device]
    assert again.loaded == r.loaded and (not r.loaded or again.samples == r.samples), (again, r)
    assert again.instructions_median == r.instructions_per_inference


def test_every_registered_device_runs_the_deploy_variant(device_build, expected_load, deploy_on_every_device):
    """Registry coverage: each profile, not only the recipe's targets, loads the deploy
    variant where its runtime supports every op, and then runs it."""
    variant = device_build["recipe"].deploy_variant
    assert set(deploy_on_every_device) == set(DEVICES.names())
    for name, r in deploy_on_every_device.items():
        assert r.loaded == expected_load(variant, name)[0], (name, r.load_error)
        assert not r.loaded or r.instructions_median > 0, name

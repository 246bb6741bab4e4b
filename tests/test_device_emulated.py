"""Tiny TFLite models on the emulated devices (pixel4, rpi4, camera-a53) under qemu-aarch64.

The ``device`` tests build the ARM runtime (root and Debian's packages needed, a few
minutes once, cached); about a minute when cached.
"""

import numpy as np
import pytest

from pipeline.devices import runtime as rt
from pipeline.devices.profiles import get_device
from pipeline.devices.targets import CORES
from pipeline.errors import DeviceOutputError, RuntimeIncompatibleError


# -- on emulated devices --------------------------------------------------------

DEVICE_UNDER_TEST = ("pixel4", "rpi4", "camera-a53")
DOTPROD_DEVICES = tuple(d for d in DEVICE_UNDER_TEST if CORES[get_device(d).qemu_cpu].dotprod)
N = 6


@pytest.fixture(scope="session")
def arm_runtime():
    # No skip: a suite that cannot reach the ARM runtime must fail loudly (the
    # message of DeviceUnavailableError says what to install).
    return rt.ensure_runtime()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """float32, int8 (int8 I/O) and dynamic-range .tflite files of tiny Keras models."""
    from pipeline.native import import_tensorflow

    tf = import_tensorflow()
    import tf_keras as keras

    out = tmp_path_factory.mktemp("device-models")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    conv = keras.Sequential([
        layers.Input((32, 32, 3)),
        layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="stem"),
        layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw"),
        layers.Conv2D(32, 1, activation="relu", name="pw"),
        layers.GlobalAveragePooling2D(name="pool"),
        layers.Dense(10, name="logits"),
    ])
    rng = np.random.default_rng(0)
    x = rng.random((N, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, N)

    def rep():
        for i in range(N):
            yield [x[i:i + 1]]

    paths = {}
    c = tf.lite.TFLiteConverter.from_keras_model(conv)
    paths["float32"] = out / "float32.tflite"
    paths["float32"].write_bytes(c.convert())
    c = tf.lite.TFLiteConverter.from_keras_model(conv)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    c.representative_dataset = rep
    c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    c.inference_input_type = c.inference_output_type = tf.int8
    paths["int8"] = out / "int8.tflite"
    paths["int8"].write_bytes(c.convert())
    # Dynamic-range quantization needs >= 1024 weights in a kernel: 8*8*3*16 = 3072.
    dense = keras.Sequential([layers.Input((8, 8, 3)), layers.Flatten(), layers.Dense(16)])
    c = tf.lite.TFLiteConverter.from_keras_model(dense)
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    paths["dynamic"] = out / "dynamic.tflite"
    paths["dynamic"].write_bytes(c.convert())
    return paths, x, y


@pytest.fixture(scope="session")
def device_results(arm_runtime, tiny_models):
    """Memoised run_device_check(device, variant) over the tiny models."""
    from pipeline.devices.check import run_device_check

    paths, x, y = tiny_models
    cache = {}

    def get(device, variant):
        if (device, variant) not in cache:
            cache[device, variant] = run_device_check(paths[variant], device, x, y,
                                                      runtime=arm_runtime)
        return cache[device, variant]

    return get


@pytest.mark.device
@pytest.mark.parametrize("device", DEVICE_UNDER_TEST)
def test_int8_bit_exact_with_host(device_results, device):
    r = device_results(device, "int8")
    assert r.loaded and r.counts_exact
    assert r.agreement.dtype == "int8"
    # Each device is compared with its own runtime and version on the host.
    legacy = get_device(device).runtime == "tflite-runtime"
    assert r.agreement.host_reference.startswith("tflite-runtime 2.14.0 ") if legacy else (
        r.agreement.host_reference == "xnnpack")
    assert r.agreement.exact_count == N, r.agreement
    assert r.top1 is not None and r.memory.fits


@pytest.mark.device
@pytest.mark.parametrize("device", DEVICE_UNDER_TEST)
def test_float32_close_to_host(device_results, device):
    r = device_results(device, "float32")
    assert r.loaded and r.agreement.dtype == "float32"
    assert r.agreement.max_abs_diff < 1e-4, r.agreement


@pytest.mark.device
@pytest.mark.parametrize("device", DEVICE_UNDER_TEST)
def test_instruction_counts_repeat_exactly(device_results, tiny_models, arm_runtime, device):
    from pipeline.devices.check import run_device_check

    paths, x, y = tiny_models
    first = device_results(device, "int8")
    again = run_device_check(paths["int8"], device, x, y, runtime=arm_runtime)
    assert again.instructions_per_inference == first.instructions_per_inference
    assert again.instructions_by_class == first.instructions_by_class
    assert again.warmup_instructions == first.warmup_instructions
    assert len(first.instructions_per_inference) == N and first.instructions_median > 0
    assert sum(first.instructions_by_class.values()) == first.instructions_median


@pytest.mark.device
@pytest.mark.parametrize("device", DOTPROD_DEVICES)
def test_int8_cheaper_than_float32(device_results, device):
    # Only where the core has dot-product instructions: on cortex-a72/a53 the int8
    # kernels (widening smlal + requantization) execute MORE instructions than fp32
    # fmla kernels (measured; fewer MACs per cycle is the latency model's business).
    int8, fp32 = device_results(device, "int8"), device_results(device, "float32")
    assert int8.instructions_median < fp32.instructions_median
    assert int8.instructions_by_class["simd_mac"] < fp32.instructions_by_class["simd_mac"]


@pytest.mark.device
@pytest.mark.parametrize("device", DEVICE_UNDER_TEST)
def test_int8_needs_fewer_multiply_instructions(device_results, device):
    int8, fp32 = device_results(device, "int8"), device_results(device, "float32")
    assert int8.instructions_by_class["simd_mac"] < fp32.instructions_by_class["simd_mac"]


@pytest.mark.device
def test_counts_reflect_the_emulated_core(device_results):
    # cortex-a76 has dotprod (sdot), cortex-a72 does not: different int8 kernels.
    a76, a72 = device_results("pixel4", "int8"), device_results("rpi4", "int8")
    assert a76.instructions_median < a72.instructions_median
    assert a76.instructions_by_class["simd_mac"] > 0


@pytest.mark.device
def test_dynamic_range_model_not_loadable_on_camera(arm_runtime, tiny_models):
    from pipeline.devices.check import run_device_check

    paths, _, _ = tiny_models
    x = np.random.default_rng(1).random((2, 8, 8, 3), dtype=np.float32)
    r = run_device_check(paths["dynamic"], "camera-a53", x, runtime=arm_runtime)
    assert not r.loaded
    assert (r.load_error_op, r.load_error_op_version) == ("FULLY_CONNECTED", 12)
    assert "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'" in r.load_error
    with pytest.raises(RuntimeIncompatibleError, match="op FULLY_CONNECTED version 12"):
        r.require_loaded()
    assert run_device_check(paths["dynamic"], "pixel4", x, runtime=arm_runtime).loaded



@pytest.mark.integration
def test_the_host_twin_runs_the_device_runtime_and_reports_what_it_cannot_load(tiny_models):
    from pipeline.devices.check import host_reference, reference_outputs
    from pipeline.devices.profiles import get_device
    from pipeline.tflite.host import host_outputs_for

    paths, x, _ = tiny_models
    camera = get_device("camera-a53")  # tflite-runtime 2.14: its host twin is the reference
    assert host_reference(camera) == "tflite-runtime 2.14.0 x86_64"
    y = reference_outputs(paths["int8"], x, camera)
    assert y.shape == host_outputs_for(paths["int8"], x).shape and y.dtype == np.int8
    # tflite-runtime 2.14 has no FULLY_CONNECTED version 12: neither build loads it.
    with pytest.raises(DeviceOutputError, match=r"tflite-runtime 2.14.0 \S+ does not load .*dynamic.*"
                                                r"FULLY_CONNECTED' version '12'"):
        reference_outputs(paths["dynamic"], x, camera)

"""Every built .tflite on every emulated device: loads (or says why not), agrees with
the host, repeats its instruction count exactly, fits the device's RAM.

    pytest device_tests                    # all builds under build/, all devices
    MOBILE_MODEL_DEVICES=pixel4,camera-a53 MOBILE_MODEL_BUILD_DIR=build/default pytest device_tests
"""

import numpy as np
import pytest

from pipeline.devices.profiles import get_device
from pipeline.errors import RuntimeIncompatibleError

pytestmark = pytest.mark.device

FLOAT_TOLERANCE = 1e-4  # float32 on ARM vs x86: ~1e-7 measured; dynamic-range a bit more


def test_loads_or_names_the_missing_op(device_check, artifact, device):
    r = device_check(artifact, device)
    if r.loaded:
        return
    # Only a legacy runtime may refuse a model, and it must say which op/version.
    assert get_device(device).runtime != "litert", r.load_error
    assert r.load_error_op, r.load_error
    with pytest.raises(RuntimeIncompatibleError):
        r.require_loaded()


def test_agrees_with_host(device_check, artifact, device):
    r = device_check(artifact, device)
    if not r.loaded:
        pytest.skip(f"not loadable on {device}: {r.load_error_op} v{r.load_error_op_version}")
    a = r.agreement
    if np.issubdtype(np.dtype(a.dtype), np.integer):
        assert a.exact_count == a.samples, a
    else:
        assert a.max_abs_diff < FLOAT_TOLERANCE, a


def test_instruction_count_repeats(device_check, artifact, device):
    r = device_check(artifact, device)
    if not r.loaded:
        pytest.skip("not loadable")
    again = device_check(artifact, device, fresh=True)
    assert r.counts_exact
    assert again.instructions_per_inference == r.instructions_per_inference


def test_fits_in_device_ram(device_check, artifact, device):
    r = device_check(artifact, device)
    if not r.loaded:
        pytest.skip("not loadable")
    assert r.memory.fits, r.memory

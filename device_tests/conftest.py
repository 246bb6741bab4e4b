"""Fixtures of the device suite: built artifacts x device profiles.

Artifacts are the ``.tflite`` files of finished builds, ``build/*/tflite/*.tflite``
(``$MOBILE_MODEL_BUILD_DIR`` names one build directory instead). Devices are every
registered profile, or the comma-separated ``$MOBILE_MODEL_DEVICES``.
"""

import os
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SAMPLES = 8  # random inputs per run: agreement and counts, not accuracy


def artifact_paths() -> List[Path]:
    build_dir = os.environ.get("MOBILE_MODEL_BUILD_DIR")
    if build_dir:
        return sorted(Path(build_dir).glob("tflite/*.tflite"))
    return sorted((REPO / "build").glob("*/tflite/*.tflite"))


def device_names() -> List[str]:
    from pipeline.devices.profiles import DEVICES

    wanted = os.environ.get("MOBILE_MODEL_DEVICES")
    if not wanted:
        return DEVICES.names()
    names = [n.strip() for n in wanted.split(",") if n.strip()]
    for n in names:
        DEVICES.get(n)  # ConfigError listing the valid names
    return names


def artifact_id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.stem}"


def pytest_generate_tests(metafunc):
    if "artifact" in metafunc.fixturenames:
        paths = artifact_paths()
        metafunc.parametrize("artifact", paths, ids=[artifact_id(p) for p in paths])
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", device_names())


def pytest_collection_modifyitems(items):
    if not artifact_paths():
        skip = pytest.mark.skip(reason="no built artifacts under build/*/tflite: run "
                                       "`make mobile-model` first or set MOBILE_MODEL_BUILD_DIR")
        for item in items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def arm_runtime():
    from pipeline.devices.runtime import ensure_runtime
    from pipeline.errors import DeviceUnavailableError

    try:
        return ensure_runtime()
    except DeviceUnavailableError as e:
        pytest.skip(f"no ARM runtime here: {e}")


@pytest.fixture(scope="session")
def device_check(arm_runtime):
    """Memoised run_device_check(artifact, device) on fixed random inputs."""
    from pipeline.devices.check import run_device_check
    from pipeline.devices.cli import random_inputs

    cache: Dict[Tuple[Path, str], object] = {}

    def get(path: Path, device: str, fresh: bool = False):
        key = (path, device)
        if fresh or key not in cache:
            x = random_inputs(path, SAMPLES)
            result = run_device_check(path, device, x, runtime=arm_runtime)
            if fresh:
                return result
            cache[key] = result
        return cache[key]

    return get

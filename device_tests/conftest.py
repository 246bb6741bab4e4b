"""Fixtures of the device suite: a build's variants x its recipe's target devices.

By default the suite builds the smoke form of ``$MOBILE_MODEL_RECIPE`` (default:
``default``) with its device matrix (the shared ``smoke_build`` fixture when the
recipe is the default). ``MOBILE_MODEL_BUILD_DIR`` points it at an existing build
directory instead (``make device-test RECIPE=...`` builds first, then sets it).
"""

import os
from pathlib import Path
from typing import Any, Dict

import pytest

from pipeline.recipe.schema import Recipe
from pipeline.recipe.load import load_recipe


def suite_recipe() -> Recipe:
    build_dir = os.environ.get("MOBILE_MODEL_BUILD_DIR")
    if build_dir:
        import yaml

        return Recipe.from_dict(yaml.safe_load((Path(build_dir) / "recipe.yaml").read_text()))
    return load_recipe(os.environ.get("MOBILE_MODEL_RECIPE", "default"), smoke=True)


def pytest_generate_tests(metafunc):
    recipe = suite_recipe()
    if not recipe.devices.targets:
        raise pytest.UsageError(f"recipe {recipe.name} names no target devices (devices.targets)")
    if "variant" in metafunc.fixturenames:
        metafunc.parametrize("variant", list(recipe.convert.variants))
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", list(recipe.devices.targets))


@pytest.fixture(scope="session")
def device_build(request) -> Dict[str, Any]:
    """The build under test: ``{"root": Path, "summary": BuildSummary, "recipe": Recipe}``."""
    from pipeline.summary import SUMMARY_FILE, load_summary

    build_dir = os.environ.get("MOBILE_MODEL_BUILD_DIR")
    if build_dir:
        root = Path(build_dir)
        if not (root / SUMMARY_FILE).exists():
            raise pytest.UsageError(f"{root / SUMMARY_FILE} not found: build the recipe first")
        return {"root": root, "summary": load_summary(root), "recipe": suite_recipe()}
    if os.environ.get("MOBILE_MODEL_RECIPE", "default") == "default":
        result = request.getfixturevalue("smoke_build")
    else:
        from pipeline.build import build

        out = request.getfixturevalue("tmp_path_factory").mktemp("device-build") / "b"
        result = build(suite_recipe(), out=out, log=lambda s: None)
    return {"root": result.root, "summary": result.summary, "recipe": suite_recipe()}


@pytest.fixture(scope="session")
def expected_load(device_build):
    """``expected_load(variant, device)`` -> ``(loads, load_error)`` as the device's runtime
    decides it: the runtime and version its profile names, asked on the host (its x86_64
    build, through the same guest runner), never the emulated run's own verdict."""
    import numpy as np

    from pipeline.devices.host_twin import needs_twin, twin_run
    from pipeline.devices.profiles import get_device
    from pipeline.devices.targets import RUNTIMES
    from pipeline.errors import DeviceOutputError
    from pipeline.tflite.host import allocate, make_interpreter

    summary, recipe = device_build["summary"], device_build["recipe"]
    x = np.zeros((1, *recipe.model.input_shape), np.float32)
    cache = {}

    def get(variant, device):
        profile = get_device(device)
        runtime = RUNTIMES[profile.runtime]
        assert runtime.version == profile.runtime_version, (device, runtime)
        key = (variant, runtime.name)
        if key not in cache:
            path = summary.variants[variant].path
            try:
                if needs_twin(runtime):
                    load_error, _ = twin_run(Path(path), x, runtime)
                else:  # the pipeline's own interpreter is this runtime and version
                    allocate(make_interpreter(Path(path).read_bytes(), delegates=False))
                    load_error = None
                cache[key] = (load_error is None, load_error)
            except (DeviceOutputError, RuntimeError, ValueError) as exc:
                cache[key] = (False, str(exc))
        return cache[key]

    return get

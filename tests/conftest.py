"""Shared fixtures: one real smoke build of the default recipe, reused by every test that needs artifacts."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("PYTHONHASHSEED", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory):
    """A real build of ``default --smoke`` (train, prune, PQAT, five variants, no devices)."""
    from pipeline.build import build
    from pipeline.config import load_recipe

    out = tmp_path_factory.mktemp("smoke") / "default-smoke"
    recipe = load_recipe("default", smoke=True)
    result = build(recipe, out=out, log=lambda s: None, run_devices=False)
    return result


@pytest.fixture(scope="session")
def smoke_tflite(smoke_build):
    """Paths of the smoke build's .tflite files by variant."""
    return {v: Path(m["path"]) for v, m in smoke_build.metrics["variants"].items()}

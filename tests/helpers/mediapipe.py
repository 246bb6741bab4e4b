"""The 14 production .tflite models of the MediaPipe wheel (the project's MediaPipe
environment, built by ``make test``: a missing one fails, nothing is skipped)."""

from pathlib import Path
from typing import List

from pipeline.publish.mediapipe_env import SPEC as MEDIAPIPE_SPEC

#: Models the wheel ships under mediapipe/modules/.
MODELS_IN_WHEEL = 14


def mediapipe_models() -> List[Path]:
    """Their paths, sorted."""
    root = MEDIAPIPE_SPEC.cache_dir() / MEDIAPIPE_SPEC.key()
    assert root.is_dir(), (f"no MediaPipe environment at {root}; build it with "
                           f"'make {MEDIAPIPE_SPEC.make_target}'")
    models = sorted(root.glob("venv/lib/python*/site-packages/mediapipe/**/*.tflite"))
    assert len(models) == MODELS_IN_WHEEL, (f"expected the {MODELS_IN_WHEEL} models of the MediaPipe wheel "
                                            f"under {root}, found {len(models)}")
    return models

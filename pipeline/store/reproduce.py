"""The reproducibility record: what a build's artifacts depend on besides recipe and data."""

import hashlib
import os
import platform
import sys
from pathlib import Path
from typing import Any, Dict

#: Libraries whose versions shape artifacts (stage records hold the first five).
STAGE_LIBRARIES = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "ai-edge-litert", "numpy")
BUILD_LIBRARIES = STAGE_LIBRARIES + ("absl-py", "flatbuffers", "Pillow", "PyYAML", "scikit-learn",
                                     "mobile-model")
#: Environment variables that change what a build computes or how TensorFlow runs.
REPRODUCIBILITY_ENV = ("PYTHONHASHSEED", "TF_USE_LEGACY_KERAS", "TF_DETERMINISTIC_OPS",
                       "TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                       "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "TF_CONFIG", "MOBILE_MODEL_CACHE")


def library_versions(dists=STAGE_LIBRARIES) -> Dict[str, str]:
    """Versions of the libraries that shape artifacts (read from installed metadata)."""
    from importlib import metadata

    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def code_fingerprint() -> str:
    """sha256 over the source of the ``pipeline`` and ``models`` packages (sorted paths)."""
    top = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for pkg in ("pipeline", "models"):
        for p in sorted((top / pkg).rglob("*")):
            if p.suffix in (".py", ".yaml", ".c", ".h") and "__pycache__" not in p.parts:
                h.update(p.relative_to(top).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def reproducibility_record(seed: int, op_determinism: bool, arm_runtime_key: str) -> Dict[str, Any]:
    """Everything besides the recipe and the data that a build's artifacts depend on.

    The build stores it in the manifest under ``reproduce``: the seed and the
    determinism settings the training stages apply, the environment variables that
    matter, library versions, the code fingerprint, the ARM runtime key, the
    interpreter and the platform.
    """
    return {
        "seed": seed,
        "determinism": {"tf_op_determinism": op_determinism, "keras_set_random_seed": seed,
                        "data_rng": "numpy default_rng([seed, crc32(stream)]) per split",
                        "gzip_mtime": 0},
        "env": {k: os.environ.get(k) for k in REPRODUCIBILITY_ENV},
        "versions": library_versions(BUILD_LIBRARIES),
        "code_sha256": code_fingerprint(),
        "arm_runtime_key": arm_runtime_key,
        "python": sys.version.split()[0],
        "platform": {"system": platform.system(), "release": platform.release(),
                     "machine": platform.machine(), "libc": "-".join(platform.libc_ver()),
                     "cpu_count": os.cpu_count()},
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }

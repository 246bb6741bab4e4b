"""Fixtures shared by tests/ and device_tests/: one real smoke build of the default recipe.

The build is real end to end (training, pruning, PQAT, five TFLite variants,
host evaluation, and the device matrix on the real ARM runtime under qemu), run
once per session and reused by every test that needs artifacts.
"""

import os
from pathlib import Path

import pytest

from pipeline.native import tf_environment

tf_environment()
os.environ.setdefault("PYTHONHASHSEED", "0")
# Decoded images of the tests' folders go to a cache of this session's own (removed
# when the session ends), not the user's; the tests of the cache set their own.
if "MOBILE_MODEL_IMAGE_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["MOBILE_MODEL_IMAGE_CACHE"] = tempfile.mkdtemp(prefix="mobile-model-test-images-")
    atexit.register(shutil.rmtree, os.environ["MOBILE_MODEL_IMAGE_CACHE"], True)

REPO = Path(__file__).resolve().parent

#: Fixtures that run the ARM runtime under qemu: a test using one is a ``device`` test.
QEMU_FIXTURES = {"smoke_build", "smoke_tflite", "device_build", "arm_runtime"}


#: Test modules that take longest on two workers (measured, slowest first, from
#: ``--durations`` of a fresh clone's ``make test``; test_optimize and test_channels
#: placed by their module runs' share of it since their chains shrank). They run first, each module on
#: one worker (``--dist loadfile --no-loadscope-reorder``), so that the other worker
#: fills in with short modules at the end instead of waiting for a long one; the
#: device matrix goes first because it makes the shared smoke build, which the later
#: modules then read without waiting. The order only schedules: a stale entry costs
#: time, never a result.
SLOWEST_FIRST = (
    "device_tests/test_device_matrix.py",
    "device_tests/test_mediapipe_corpus.py",
    "tests/test_optimize.py",
    "tests/test_genotype.py",
    "tests/test_robustness.py",
    "tests/test_search.py",
    "tests/test_channels.py",
    "tests/test_train.py",
    "tests/test_transfer.py",
    "tests/test_models.py",
    "tests/test_detect_end_to_end.py",
    "tests/test_ray_search.py",
    "tests/test_ray.py",
    "tests/test_image_cache.py",
    "tests/test_cluster.py",
    "tests/test_device_emulated.py",
    "tests/test_channel_schedule.py",
    "tests/test_remote_build.py",
    "tests/test_transfer_choice.py",
    "tests/test_remote_ssh.py",
)


_network = {"line": None}


def pytest_configure(config):
    # Once, in the process that starts the others (an xdist worker has ``workerinput``).
    if not hasattr(config, "workerinput") and _network["line"] is None:
        from tests.helpers import loopback

        _network["line"] = loopback.enter()


def pytest_report_header(config):
    return _network["line"]


def pytest_collection_modifyitems(items):
    for item in items:
        if QEMU_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.device)
    rank = {module: i for i, module in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable


_current = {"item": None}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _current["item"] = item


def pytest_runtest_teardown(item):
    _current["item"] = None


@pytest.fixture(scope="session", autouse=True)
def qemu_needs_the_device_marker():
    """Fails a test without the ``device`` marker the moment it starts qemu in this process
    (directly or through a fixture it uses), so ``-m "not device"`` never runs the ARM runtime."""
    import subprocess
    import types

    from pipeline.devices import runner

    def run(command, *args, **kwargs):
        item = _current["item"]
        if item is not None and item.get_closest_marker("device") is None:
            pytest.fail(f"{item.nodeid} runs the ARM runtime under qemu: mark it @pytest.mark.device")
        return subprocess.run(command, *args, **kwargs)

    # The runner's own view of subprocess (where it starts qemu), nobody else's.
    mp = pytest.MonkeyPatch()
    mp.setattr(runner, "subprocess", types.SimpleNamespace(**{**vars(subprocess), "run": run}))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory):
    """A real build of ``default --smoke``, device checks included.

    Under pytest-xdist (``make test`` runs two workers) the workers share one build:
    the first to take the lock builds it and saves the result; the others wait, then
    read that result (the build directory is the same)."""
    import fcntl
    import os
    import pickle

    from pipeline.build import build
    from pipeline.recipe.load import load_recipe

    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "smoke"
    shared.mkdir(parents=True, exist_ok=True)
    saved = shared / "result.pickle"
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if saved.exists():
            return pickle.loads(saved.read_bytes())
        result = build(load_recipe("default", smoke=True), out=shared / "default-smoke", log=lambda s: None,
                       run_devices=True)
        tmp = saved.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(result))
        tmp.replace(saved)
        return result


@pytest.fixture(scope="session")
def smoke_tflite(smoke_build):
    """Paths of the smoke build's .tflite files by variant."""
    return {v: Path(m.path) for v, m in smoke_build.summary.variants.items()}


@pytest.fixture(scope="session")
def shapes_splits():
    """``shapes_splits(data, shape=(32, 32, 1), seed=0)``: the splits of a ``DataConfig``,
    loaded once per session (several modules train on the same small shapes sets)."""
    from pipeline.data import load_dataset

    cache = {}

    def get(data, shape=(32, 32, 1), seed=0):
        key = (data, tuple(shape), seed)
        if key not in cache:
            cache[key] = load_dataset(data, tuple(shape), seed=seed)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def workdir(request, tmp_path_factory):
    """A temporary directory shared by the tests of one module (its artifacts built once)."""
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])

"""The package installs cleanly: every imported third-party module is declared, a
wheel builds without setuptools warnings and carries every data file, and the
supported Python versions are stated once and agree everywhere they appear.

The import scan is pure ``ast``; the wheel is built from a copy of the tracked
sources in a temporary folder (not in the repository, whose ``build/`` holds the
pipeline's artifacts) with the venv's own setuptools, so no network is needed.
"""

import ast
import configparser
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Dict, Iterable, List, Set, Tuple

REPO = Path(__file__).resolve().parent.parent
OURS = {"pipeline", "models", "tests", "device_tests", "conftest", "benchmarks"}
# Data folders and the files the package must ship from each (setup.cfg package_data).
DATA_DIRS = {
    "pipeline/recipe/presets": "*.yaml",
    "pipeline/devices/profile_data": "*.yaml",
    "pipeline/devices/plugin": "*.[ch]",
    "pipeline/latency/data": "*.csv",
    "pipeline/latency/params_data": "*.yaml",
}


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(section: str, key: str) -> Set[str]:
    lines = [ln.strip() for ln in _setup_cfg()[section][key].splitlines() if ln.strip()]
    return {_norm(re.match(r"[A-Za-z0-9_.\-]+", ln).group(0)) for ln in lines}


def _top_level_imports(paths: Iterable[Path], root: Path) -> Dict[str, Set[str]]:
    """Top-level module name -> files (relative to ``root``) that import it (absolute imports only)."""
    found: Dict[str, Set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(root)))
    return found


def _undeclared(paths: Iterable[Path], declared: Set[str], root: Path = REPO) -> Dict[str, str]:
    """Third-party modules imported by ``paths`` whose distribution is not in ``declared``."""
    dists = packages_distributions()
    missing = {}
    for module, files in sorted(_top_level_imports(paths, root).items()):
        if module in sys.stdlib_module_names or module in OURS:
            continue
        owners = {_norm(d) for d in dists.get(module, [])}
        if not owners:
            missing[module] = f"not installed (imported by {', '.join(sorted(files))})"
        elif not owners & declared:
            missing[module] = (f"distribution {', '.join(sorted(owners))} not declared "
                               f"(imported by {', '.join(sorted(files))})")
    return missing


def _py_files(*roots: str):
    for root in roots:
        p = REPO / root
        yield from ([p] if p.suffix == ".py" else sorted(p.rglob("*.py")))


def test_every_imported_module_of_the_package_is_an_install_requirement():
    runtime = _requirements("options", "install_requires")
    assert _undeclared(_py_files("pipeline", "models"), runtime) == {}


def test_every_module_the_tests_import_is_declared():
    declared = _requirements("options", "install_requires") | _requirements("options.extras_require", "test")
    assert _undeclared(_py_files("tests", "device_tests", "conftest.py"), declared) == {}


def test_undeclared_import_is_reported(tmp_path):
    """The scan itself can fail: a module importing scipy against a list without it."""
    src = tmp_path / "uses_scipy.py"
    src.write_text("import scipy.optimize\nfrom numpy import zeros\nimport json\n")
    missing = _undeclared([src], {"numpy"}, root=tmp_path)
    assert list(missing) == ["scipy"]
    assert "not declared" in missing["scipy"] and "uses_scipy.py" in missing["scipy"]


def test_wheel_builds_without_warnings_and_ships_the_data_files(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "pipeline", "models", "setup.cfg", "pyproject.toml", "README.md"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for rel in tracked:
        dest = src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((REPO / rel).read_bytes())
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # With -q pip prints only what the build backend says: any line is a warning.
    assert (proc.stdout + proc.stderr).strip() == ""
    (wheel,) = (tmp_path / "dist").glob("mobile_model-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder, pattern in DATA_DIRS.items():
        expected = {str(p.relative_to(src)) for p in (src / folder).glob(pattern)}
        assert expected, f"no {pattern} under {folder}"
        assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"
    assert not [n for n in names if "__pycache__" in n]


def _python_range() -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """setup.cfg's python_requires as (lowest supported, first unsupported) minor versions."""
    spec = _setup_cfg()["options"]["python_requires"].replace(" ", "")
    m = re.fullmatch(r">=3\.(\d+),<3\.(\d+)", spec)
    assert m, f"python_requires should read '>=3.X,<3.Y' (a closed range of minor versions), got {spec!r}"
    return (3, int(m.group(1))), (3, int(m.group(2)))


def _supported_minors() -> List[str]:
    (_, lo), (_, hi) = _python_range()
    return [f"3.{minor}" for minor in range(lo, hi)]


def test_python_requires_classifiers_and_makefile_name_the_same_versions():
    supported = _supported_minors()
    assert supported, "python_requires admits no Python version"
    classifiers = [ln.strip() for ln in _setup_cfg()["metadata"]["classifiers"].splitlines() if ln.strip()]
    versioned = r"Programming Language :: Python :: (3\.\d+)"
    listed = [m.group(1) for m in (re.fullmatch(versioned, c) for c in classifiers) if m]
    assert listed == supported, f"classifiers name Python {listed}, python_requires admits {supported}"
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    makefile = (REPO / "Makefile").read_text()
    m = re.search(r"^PY_VERSIONS\s*:?=\s*(.*)$", makefile, re.M)
    assert m, "the Makefile has no PY_VERSIONS line (the versions its bootstrap accepts)"
    assert m.group(1).split() == supported, f"Makefile PY_VERSIONS {m.group(1)!r}, python_requires admits {supported}"


def test_ruff_targets_the_lowest_supported_python():
    """ruff would otherwise accept syntax the oldest supported interpreter cannot parse."""
    (major, minor), _ = _python_range()
    target = re.search(r'^target-version\s*=\s*"(py\d+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert target and target.group(1) == f"py{major}{minor}"


def test_this_interpreter_is_a_supported_version():
    """The suite runs on a version the package declares (a venv from an unsupported Python fails here)."""
    lo, hi = _python_range()
    assert lo <= sys.version_info[:2] < hi, (f"Python {sys.version.split()[0]} is outside python_requires "
                                             f"{_setup_cfg()['options']['python_requires']}")


def test_bootstrap_refuses_a_new_venv_on_a_full_disk(tmp_path):
    """With less free space than a venv takes, make says so in one line and creates nothing
    (instead of pip's OSError after a half-installed venv). The threshold is raised above
    the disk's free space to stand in for a full disk."""
    for name in ("Makefile", "setup.cfg", "pyproject.toml"):
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    stamp = subprocess.run(["make", "-np"], cwd=tmp_path, capture_output=True, text=True).stdout
    target = re.search(r"^(\.venv/\.deps-[0-9a-f]+):", stamp, re.M)
    assert target, "the Makefile has no .venv/.deps-<hash> target"
    run = subprocess.run(["make", "VENV_NEEDS_KB=10000000000000", target.group(1)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "MiB free on the file system of" in errors[0] and "about 3 GiB" in errors[0], run.stderr
    assert not (tmp_path / ".venv").exists()

"""Layering checks that import-linter does not make: private names, imports that resolve,
and contract coverage.

* No module imports a private name (leading underscore, not a dunder) of another
  module of ``pipeline`` or ``models``: a helper that is genuinely shared is made
  public, or moved.
* Every ``from <our module> import name`` names something that module defines, imports
  or has as a submodule, including imports deferred inside functions, which nothing
  else checks before the function runs.
* The contracts of ``.importlinter`` name every top-level module of ``pipeline``,
  so a new package is covered from its first commit.
* No module of ``pipeline`` or ``models`` is over :data:`MAX_MODULE_LINES` lines and no
  function or method over :data:`MAX_FUNCTION_LINES`, from its ``def`` line to its last
  (docstring included; a click command's option decorators are not counted).

Pure ``ast`` and ``configparser``: nothing of ``pipeline`` is imported, so this runs
in a fraction of a second (``make lint`` runs it before the suite).
"""

import ast
import configparser
import functools
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parent.parent
OUR_PACKAGES = ("pipeline", "models")
SCANNED = ("pipeline", "models", "tests", "device_tests", "conftest.py")


def module_name(path: Path, root: Path = REPO) -> str:
    """Dotted module name of ``path`` relative to ``root`` (``pipeline/a/__init__.py`` -> ``pipeline.a``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.lru_cache(maxsize=None)
def _import_froms(source: str) -> tuple:
    # Each scanned file is read by both checks: parsed and walked once.
    return tuple(node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imported_module(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from ... import`` statement reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    # In a package's __init__, "." is the package itself; in a module, its parent.
    drop = node.level - 1 if is_package else node.level
    base = base[:len(base) - drop] if drop else base
    return ".".join(base + ([node.module] if node.module else []))


def private_imports(source: str, module: str, is_package: bool = False) -> List[str]:
    """``"line: from X import _y"`` for each private name of another of our modules imported by ``source``.

    Args:
        source: Python source text.
        module: the dotted name of the module ``source`` is (the module itself may
            name its own private names).
        is_package: ``source`` is a package's ``__init__``.
    """
    found = []
    for node in _import_froms(source):
        target = _imported_module(node, module, is_package)
        if target.split(".")[0] not in OUR_PACKAGES or target == module:
            continue
        for alias in node.names:
            if _is_private(alias.name):
                found.append(f"{node.lineno}: from {target} import {alias.name}")
    return found


def test_no_private_name_is_imported_across_modules():
    violations = []
    for entry in SCANNED:
        root = REPO / entry
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            found = private_imports(path.read_text(), module_name(path), path.name == "__init__.py")
            violations += [f"{path.relative_to(REPO)}:{v}" for v in found]
    assert not violations, ("private names imported across modules (make them public or move the code):\n"
                            + "\n".join(violations))


@pytest.mark.parametrize("source, module, is_package, expected", [
    ("from pipeline.x import _y, z", "tests.test_t", False, ["1: from pipeline.x import _y"]),
    ("import os\nfrom models.blocks import _conv as c", "pipeline.train.zoo", False,
     ["2: from models.blocks import _conv"]),
    ("def f():\n    from pipeline.a.b import _lazy", "pipeline.c", False, ["2: from pipeline.a.b import _lazy"]),
    ("from .b import _y", "pipeline.a.c", False, ["1: from pipeline.a.b import _y"]),
    ("from . import _z", "pipeline.a.b", False, ["1: from pipeline.a import _z"]),
    ("from . import _z", "pipeline.a", True, []),  # a package's own private submodule
    ("from .. import _z", "pipeline.a.c", False, ["1: from pipeline import _z"]),
    ("from pipeline import __version__", "tests.test_t", False, []),
    ("from pipeline.a import _own", "pipeline.a", True, []),
    ("from os import _exit\nfrom click import _compat", "pipeline.a", False, []),
    ("from pipeline.a import public", "tests.test_t", False, []),
])
def test_private_import_checker(source, module, is_package, expected):
    assert private_imports(source, module, is_package) == expected


def test_module_name():
    assert module_name(REPO / "pipeline" / "data" / "__init__.py") == "pipeline.data"
    assert module_name(REPO / "pipeline" / "data" / "splits.py") == "pipeline.data.splits"
    assert module_name(REPO / "conftest.py") == "conftest"


def _contracts() -> dict:
    cfg = configparser.ConfigParser()
    assert cfg.read(REPO / ".importlinter"), "missing .importlinter"
    return {cfg[s]["name"]: cfg[s] for s in cfg.sections() if s.startswith("importlinter:contract:")}


def _modules(section, key: str) -> set:
    return set(section[key].split())


def test_layering_contracts_name_every_top_level_module():
    pipeline = REPO / "pipeline"
    top = {f"pipeline.{p.stem}" for p in pipeline.glob("*.py") if p.name != "__init__.py"}
    top |= {f"pipeline.{p.parent.name}" for p in pipeline.glob("*/__init__.py")}
    assert {"pipeline.cli", "pipeline.store", "pipeline.errors"} <= top
    contracts = _contracts()
    layers = contracts["the package layers, top to bottom (a package imports only packages below it)"]
    assert layers["type"] == "layers"
    listed = [m.strip() for line in layers["layers"].split("\n") for m in line.split("|") if m.strip()]
    assert len(listed) == len(set(listed)), f"a module is in two layers: {listed}"
    assert set(listed) == top | {"models"}
    leaf = contracts["models imports nothing from pipeline"]
    assert (_modules(leaf, "source_modules"), _modules(leaf, "forbidden_modules")) == ({"models"}, {"pipeline"})


def test_publish_is_forbidden_to_load_data_or_run_a_model():
    """Reports and bundles render recorded figures; lint-imports checks the whole
    import chain (publish -> export.evaluate -> tflite.host counts too)."""
    publish = _contracts()["pipeline.publish renders recorded figures: it never loads data or runs a model on the host"]
    assert publish["type"] == "forbidden"
    assert _modules(publish, "source_modules") == {"pipeline.publish"}
    assert {"pipeline.data", "pipeline.tflite.host", "pipeline.train"} <= _modules(publish, "forbidden_modules")


def top_level_names(source: str) -> set:
    """Names a module defines or imports at its top level (``if``/``try`` blocks included),
    and the names a module-level ``__getattr__`` compares against (lazy attributes)."""
    names = set()
    body = list(ast.parse(source).body)
    while body:
        node = body.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if node.name == "__getattr__":
                names |= {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            body += node.body + getattr(node, "orelse", []) + getattr(node, "finalbody", [])
            body += [s for h in getattr(node, "handlers", []) for s in h.body]
    return names


def _module_file(module: str):
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def missing_imports(source: str, module: str, is_package: bool = False) -> List[str]:
    """``"line: from X import y"`` for each name of our packages that ``source`` imports and
    that module ``X`` neither defines nor has as a submodule. Imports inside functions
    count: nothing else finds them before the function runs."""
    found = []
    for node in _import_froms(source):
        target = _imported_module(node, module, is_package)
        if target.split(".")[0] not in OUR_PACKAGES:
            continue
        path = _module_file(target)
        if path is None:
            found.append(f"{node.lineno}: from {target} (no such module)")
            continue
        defined = _defined_names(path)
        for alias in node.names:
            if alias.name != "*" and alias.name not in defined and _module_file(f"{target}.{alias.name}") is None:
                found.append(f"{node.lineno}: from {target} import {alias.name}")
    return found


@functools.lru_cache(maxsize=None)
def _defined_names(path: Path) -> frozenset:
    # Parsed once per module file: each is the target of many imports.
    return frozenset(top_level_names(path.read_text()))


def test_every_import_of_our_modules_names_something_that_exists():
    violations = []
    for entry in SCANNED + ("benchmarks",):
        root = REPO / entry
        files = [root] if root.is_file() else sorted(root.rglob("*.py"))
        for path in files:
            found = missing_imports(path.read_text(), module_name(path), path.name == "__init__.py")
            violations += [f"{path.relative_to(REPO)}:{v}" for v in found]
    assert not violations, "imports of names that do not exist:\n" + "\n".join(violations)


def test_missing_import_checker():
    assert missing_imports("def f():\n    from pipeline.errors import NoSuchName", "tests.t") == [
        "2: from pipeline.errors import NoSuchName"]
    assert missing_imports("from pipeline.nosuch import x", "tests.t") == ["1: from pipeline.nosuch (no such module)"]
    assert missing_imports("from pipeline.devices import host_twin\nfrom pipeline.errors import DeviceOutputError",
                           "tests.t") == []
    assert "LAZY" in top_level_names("def __getattr__(name):\n    if name == 'LAZY':\n        return 1")
    assert top_level_names("try:\n    import a.b as c\nexcept ImportError:\n    d = 1\nif X:\n    def e(): pass") \
        == {"c", "d", "e"}


#: Size limits of the packages' code: a longer module is split by concern, a longer
#: function into named steps.
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def oversized(source: str, name: str) -> List[str]:
    """``"name: N lines"`` for the module ``source`` and each function in it over the limits."""
    found = []
    lines = len(source.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{name}: {lines} lines (module, at most {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{name}:{node.lineno} {node.name}: {length} lines (function, at most "
                             f"{MAX_FUNCTION_LINES})")
    return found


def test_no_module_over_500_lines_and_no_function_over_80():
    violations = [v for package in OUR_PACKAGES for path in sorted((REPO / package).rglob("*.py"))
                  for v in oversized(path.read_text(), str(path.relative_to(REPO)))]
    assert not violations, "over the size limits:\n" + "\n".join(violations)


def test_size_checker():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    assert oversized(f"def f():\n{body}\n", "m") == []
    assert oversized(f"@deco\ndef f():\n{body}\n    y = 0\n", "m") == [
        f"m:2 f: {MAX_FUNCTION_LINES + 1} lines (function, at most {MAX_FUNCTION_LINES})"]
    method = "\n".join("    " + line for line in f"def g(self):\n{body}\n    y = 0".splitlines())
    assert oversized(f"class C:\n{method}\n", "m") == [
        f"m:2 g: {MAX_FUNCTION_LINES + 1} lines (function, at most {MAX_FUNCTION_LINES})"]
    assert oversized("x = 1\n" * (MAX_MODULE_LINES + 1), "m") == [
        f"m: {MAX_MODULE_LINES + 1} lines (module, at most {MAX_MODULE_LINES})"]

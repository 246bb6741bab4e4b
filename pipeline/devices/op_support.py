"""Which device runtimes can load a model, as the runtimes themselves answer it.

Nothing here is a hand-written table of ops. Each device runtime (``targets.RUNTIMES``:
the name, distribution and version a device profile names) is asked once by its host
build of the same version, in a child process running :mod:`pipeline.devices.op_probe`:

* the pipeline's own interpreter when it is that runtime and version (ai-edge-litert);
* else the runtime's host twin (:mod:`pipeline.devices.host_twin`, built by
  ``make arm-runtime``). A twin that is not built gives "unknown: runtime not built";
  nothing is built or downloaded by asking.

The probe builds an interpreter (op resolver without delegates) from one-entry
operator code tables, patched per builtin code and version: building fails when the
resolver has no kernel for that (code, version), whether or not an operator uses it,
as it does for a real model. That gives, per runtime, every builtin op with the
versions it registers. Custom ops cannot be listed that way; each custom op name a
model uses is asked once (a one-node model that fails with "unresolved custom op" or
not), and the answer added to the runtime's cache.

The answers are kept in ``$MOBILE_MODEL_CACHE/op-support/<runtime>-<key>.json``, keyed
by the runtime's pins, the machine, the probe's source and the schema that lists the
builtin codes (ai-edge-litert's version), so a new pin asks again.
"""

import base64
import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from pipeline.devices.host_twin import host_version, needs_twin, twin_reference, twin_spec
from pipeline.devices.profiles import DEVICES
from pipeline.devices.targets import RUNTIMES, GuestRuntime
from pipeline.errors import DeviceUnavailableError
from pipeline.store.atomic import atomic_write_json, json_hash, short_hash
from pipeline.store.isolated_env import IsolatedEnv, cache_root, clean_env
from pipeline.tflite.reader import OpCode, TFLiteModel
from pipeline.tflite.verify import schema

PROBE = Path(__file__).resolve().parent / "op_probe.py"
#: Versions tried past the highest a runtime registers before concluding it has no more.
VERSION_GAP = 4
#: Seconds a probe may take (it takes well under one: a few thousand tiny interpreters).
PROBE_TIMEOUT_S = 120.0
CUSTOM = "CUSTOM"


@dataclass(frozen=True)
class RuntimeOps:
    """The ops a runtime's resolver registers: builtin name -> versions, custom name -> bool."""

    builtin: Dict[str, Tuple[int, ...]]
    custom: Dict[str, bool]

    def lacks(self, code: OpCode) -> Optional[str]:
        """What this runtime lacks to resolve ``code`` ("CONV_2D v9", "custom op X"), or None."""
        if code.builtin == CUSTOM:
            return None if self.custom.get(code.custom_code or "") else f"custom op {code.custom_code or '(unnamed)'}"
        return None if code.version in self.builtin.get(code.builtin, ()) else f"{code.builtin} v{code.version}"


def _pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(256)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _model(op_code, operators=()) -> bytes:
    s = schema()
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = [], [], [], list(operators)
    m = s.ModelT()
    m.version, m.operatorCodes, m.buffers, m.subgraphs = 3, [op_code], [s.BufferT()], [sg]
    return _pack(m)


def _template() -> Tuple[bytes, Dict[str, int]]:
    """A model whose one operator code no operator uses, and the byte offsets of its
    deprecated_builtin_code (int8), builtin_code and version (int32) fields."""
    s = schema()
    oc = s.OperatorCodeT()
    oc.deprecatedBuiltinCode, oc.builtinCode, oc.version = 1, 1, 2  # not the defaults: all three are stored
    data = _model(oc)
    table = s.Model.GetRootAs(data, 0).OperatorCodes(0)._tab
    slots = {"deprecated": 4, "version": 8, "builtin": 10}  # vtable slots of OperatorCode's fields 0, 2, 3
    return data, {field: table.Pos + table.Offset(slot) for field, slot in slots.items()}


def _custom_model(name: str) -> bytes:
    """One node of custom op ``name`` with no tensors and empty (flexbuffer map) options."""
    from flatbuffers import flexbuffers

    s = schema()
    oc = s.OperatorCodeT()
    oc.deprecatedBuiltinCode = oc.builtinCode = s.BuiltinOperator.CUSTOM
    oc.customCode, oc.version = name, 1
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [], []
    op.customOptions, op.customOptionsFormat = list(flexbuffers.Dumps({})), s.CustomOptionsFormat.FLEXBUFFERS
    return _model(oc, [op])


def _builtin_codes() -> Dict[int, str]:
    ops = schema().BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int) and k != CUSTOM}


def cache_path(runtime: GuestRuntime) -> Path:
    """Where the answers of ``runtime`` are kept (see the module docstring for the key)."""
    key = json_hash({"runtime": runtime.name, "requirements": list(runtime.requirements),
                     "machine": platform.machine(), "probe": short_hash(PROBE.read_bytes(), 16),
                     "schema": host_version("ai-edge-litert"), "gap": VERSION_GAP}, 16)
    return cache_root() / "op-support" / f"{runtime.name}-{key}.json"


def _twin_env(runtime: GuestRuntime) -> Optional[IsolatedEnv]:
    spec = twin_spec(runtime)
    root = spec.cache_dir() / spec.key()
    return IsolatedEnv(spec, root) if (root / "venv" / "bin" / "python").exists() else None


def _probe(runtime: GuestRuntime, codes: Iterable[int], custom: Iterable[str]) -> dict:
    """Runs the probe in ``runtime``'s host build (the caller checked it exists)."""
    template, offsets = _template()
    req = {"module": runtime.module, "template": base64.b64encode(template).decode(), "offsets": offsets,
           "codes": list(codes), "gap": VERSION_GAP,
           "custom": {n: base64.b64encode(_custom_model(n)).decode() for n in custom}}
    what = f"the op probe of {twin_reference(runtime)}"
    with tempfile.TemporaryDirectory(prefix="mobile-model-ops-") as tmp:
        path = Path(tmp) / "request.json"
        path.write_text(json.dumps(req))
        env = _twin_env(runtime) if needs_twin(runtime) else None
        if env is not None:
            return env.run([str(PROBE), str(path)], what, timeout=PROBE_TIMEOUT_S)
        try:
            done = subprocess.run([sys.executable, "-I", str(PROBE), str(path)], capture_output=True, text=True,
                                  timeout=PROBE_TIMEOUT_S, env=clean_env())
        except subprocess.TimeoutExpired:
            raise DeviceUnavailableError(f"{what} did not finish within {PROBE_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise DeviceUnavailableError(f"{what} failed (exit {done.returncode}): {tail}")
        return json.loads(done.stdout)


def available(runtime: GuestRuntime) -> bool:
    """Whether a host build of ``runtime`` is here to ask (never builds one)."""
    return not needs_twin(runtime) or _twin_env(runtime) is not None


def runtime_ops(runtime: GuestRuntime, custom: Iterable[str] = ()) -> RuntimeOps:
    """The ops ``runtime`` registers, from its cache or its host build.

    Args:
        custom: custom op names to know about (asked once each, then cached).

    Raises:
        DeviceUnavailableError: no host build of the runtime (:func:`available`), or the probe failed.
    """
    if not available(runtime):
        raise DeviceUnavailableError(f"no host build of {twin_reference(runtime)}; build it with 'make arm-runtime'")
    path = cache_path(runtime)
    cached = json.loads(path.read_text()) if path.exists() else None
    names = _builtin_codes()
    wanted = sorted(set(custom) - set(cached["custom"] if cached else ()))
    if cached is None or wanted:
        answer = _probe(runtime, [] if cached else sorted(names), wanted)
        cached = {"runtime": twin_reference(runtime),
                  "builtin": cached["builtin"] if cached else
                  {names[int(c)]: v for c, v in answer["builtin"].items() if v},
                  "custom": {**(cached["custom"] if cached else {}), **answer["custom"]}}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, cached)
    return RuntimeOps({k: tuple(v) for k, v in cached["builtin"].items()}, dict(cached["custom"]))


def load_verdicts(model: TFLiteModel) -> List[dict]:
    """Per device runtime: whether it can load ``model``, and what it lacks if not.

    Every entry of the model's operator code table counts, as it does when a runtime
    builds an interpreter. A runtime without a host build here is "unknown".

    Returns:
        ``[{"runtime", "version", "devices", "loads": True|False|None, "lacks": [...],
        "reason"}]``, one per runtime of ``targets.RUNTIMES``.
    """
    custom = sorted({c.custom_code or "" for c in model.op_codes if c.builtin == CUSTOM})
    out = []
    for runtime in RUNTIMES.values():
        devices = [n for n, p in DEVICES.items() if p.runtime == runtime.name]
        row = {"runtime": runtime.name, "version": runtime.version, "devices": devices}
        if not available(runtime):
            out.append({**row, "loads": None, "lacks": [], "reason": "unknown: runtime not built (make arm-runtime)"})
            continue
        ops = runtime_ops(runtime, custom)
        lacks = sorted({m for m in (ops.lacks(c) for c in model.op_codes) if m})
        out.append({**row, "loads": not lacks, "lacks": lacks,
                    "reason": f"asked {twin_reference(runtime)}'s op resolver"})
    return out

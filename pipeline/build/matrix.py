"""The device matrix of a build: every variant x every target device, as jobs of one pool.

Each (device, variant) pair is its own cached stage (``device/<device>/<variant>``)
writing ``devices/<device>/<variant>.json``. Pairs that are not cached run as jobs of a
:mod:`pipeline.pool` (worker processes here, or a Ray cluster; the emulated runs are
independent and single-threaded): each job gets the model's bytes and the inputs and
returns its result, which is written here and recorded in the manifest as it finishes.

An entry that also names a real device (``rpi4@ssh://pi@camera-7``) has its profile's
results, and the deploy variant is then measured on the device: one cached stage
``measure/<entry>/<variant>`` writing ``devices/measured/<entry>/<variant>.json``
(:mod:`pipeline.devices.remote.entry`). Emulated runs come first, so a device that
cannot be reached costs none of them on the next build.
"""

import dataclasses
import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from pipeline.pool import Needs, Pool, connected, device_resource, open_pool
from pipeline.recipe.schema import Recipe
from pipeline.store.atomic import atomic_write_json
from pipeline.summary import (LATENCY_ALIGN, LATENCY_FIELDS, LATENCY_HEADERS, MEASURED_HEADER, BuildSummary,
                              DeviceSummary, MeasuredLatency, VariantSummary, measured_cell)
from pipeline.table import Table
from pipeline.errors import Log


def device_metrics(result: Dict[str, Any]) -> DeviceSummary:
    """The figures budgets, reports and comparisons read from a device result.

    Args:
        result: a :class:`pipeline.devices.check.DeviceResult` as its ``to_dict()``
            (what a worker wrote to ``devices/<device>/<variant>.json``).

    Returns:
        The result without latency (the matrix adds it, with its provenance, from
        the current latency model).
    """
    mem = result.get("memory") or {}
    agreement = result.get("agreement") or {}
    return DeviceSummary(
        loaded=result["loaded"],
        runtime=f"{result.get('runtime')} {result.get('runtime_version')}",
        load_error=result.get("load_error"),
        load_error_op=result.get("load_error_op"),
        load_error_op_version=result.get("load_error_op_version"),
        top1=result.get("top1"),
        instructions_per_inference=result.get("instructions_median"),
        instructions_by_class=result.get("instructions_by_class") or {},
        output_dtype=agreement.get("dtype"),
        exact_fraction=agreement.get("exact_fraction"),
        max_abs_diff=agreement.get("max_abs_diff"),
        top1_agreement=agreement.get("top1_agreement"),
        peak_memory_bytes=mem.get("total_bytes"),
        fits_ram=mem.get("fits"),
        wall_s_per_image=result.get("wall_s_per_image"),
        samples=result.get("samples"),
    )


# Latency and its provenance are not part of a device stage's record: they are estimated
# afresh from the recorded run each build, so a new latency model re-runs no emulation.
_NOT_RECORDED = LATENCY_FIELDS + ("threads", "measured")


def stage_record(summary: DeviceSummary) -> Dict[str, Any]:
    """What the manifest records for a device stage: the result without its latency."""
    return {k: v for k, v in summary.to_dict().items() if k not in _NOT_RECORDED}


#: What a device job declares: one core (an emulated run is single-threaded) and the peak
#: of qemu with the ARM runtime beside the host reference run (~1 GiB measured on the
#: smoke models, doubled for the full-size ones).
EMULATED_NEEDS = Needs(cpus=1, memory_mb=2048)
#: A real-device job mostly waits on the device; it holds the model, inputs and ssh/adb.
REAL_NEEDS_MB = 1024


def emulate(model: bytes, filename: str, device: str, x: np.ndarray, y: np.ndarray) -> Dict[str, Any]:
    """Job: one model (its bytes) on one emulated device, one interpreter thread (counts
    repeat exactly only then): the full :class:`pipeline.devices.check.DeviceResult` as a dict.

    The model is written to a temporary file of the worker under ``filename``; the result's
    ``model`` names that file, which the caller replaces with its own path.
    """
    from pipeline.devices.check import run_device_check

    with tempfile.TemporaryDirectory(prefix="mm-job-") as tmp:
        path = Path(tmp) / filename
        path.write_bytes(model)
        return run_device_check(path, device, x, y, threads=1).to_dict()


def run_device_matrix(recipe: Recipe, root: Path, variants: Dict[str, VariantSummary], splits,
                      stage, log: Log) -> Dict[str, Dict[str, DeviceSummary]]:
    """Runs every variant on every emulated profile of the recipe's targets, then measures
    the deploy variant on each real device an entry names (``rpi4@ssh://pi@camera-7``).

    Every run is a job of one pool (:func:`pipeline.pool.open_pool`): worker processes of
    this machine (``devices.workers``), or the Ray cluster this process joined, where a real
    device's job runs only on a node that advertises the device (:func:`real_needs`).

    Args:
        variants: the build's evaluated variants (their ``.tflite`` paths are run).
        stage: the build's :class:`pipeline.build.StageRunner` (records and caches each pair).

    Returns:
        ``{entry: {variant: result}}``, an entry's results being its profile's, with the
        measured latency (``measured``) on its deploy variant when it names a real device.

    Raises:
        ClusterError: no node of the cluster advertises a real device an entry names (before
            any run), or a job was lost with its node.
        DeviceUnavailableError: a real device cannot be reached or dropped the connection
            (the emulated results are recorded in the manifest by then).
    """
    d = recipe.devices
    n = min(d.samples, len(splits.x_test))
    x, y = splits.x_test[:n], splits.y_test[:n]
    data_key = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    with open_pool(d.workers) as pool:
        pool.require([real_needs(e) for e in d.entries if e.target is not None])
        emulated = _run_emulated(recipe, root, variants, x, y, data_key, stage, log, pool)
        results = {e.text: dict(emulated[e.profile]) for e in d.entries}
        measured = _measure_real(recipe, root, variants, x, y, data_key, stage, log, pool)
    for entry, m in measured.items():
        results[entry][recipe.deploy_variant] = dataclasses.replace(results[entry][recipe.deploy_variant],
                                                                    measured=m)
    return results


def _run_emulated(recipe: Recipe, root: Path, variants: Dict[str, VariantSummary], x: np.ndarray, y: np.ndarray,
                  data_key: str, stage, log: Log, pool: Pool) -> Dict[str, Dict[str, DeviceSummary]]:
    """Every variant on every emulated profile: ``{profile: {variant: result}}``."""
    from pipeline.devices.profiles import get_device
    from pipeline.devices.check import host_reference
    from pipeline.devices.host_twin import ensure_twins
    from pipeline.devices.runtime import ensure_runtime, runtime_key

    d = recipe.devices
    profiles = {name: get_device(name) for name in d.profiles}  # unknown names fail before any work
    ensure_runtime(progress=log)
    ensure_twins(progress=log)
    n = len(x)
    pairs: List[Tuple[str, str]] = [(dev, v) for dev in profiles for v in variants]
    rt_key = runtime_key()

    def cfg(dev):
        # Profiles hold no latency model (pipeline.latency): a new model or calibration
        # re-estimates from the recorded results instead of re-running every emulation.
        return {"profile": profiles[dev].to_dict(), "samples": n, "runtime": rt_key, "data": data_key,
                "host_reference": host_reference(profiles[dev])}

    out_of = {(dev, v): root / "devices" / dev / f"{v}.json" for dev, v in pairs}
    inputs_of = {v: {"tflite": Path(s.path)} for v, s in variants.items()}
    pending = [(dev, v) for dev, v in pairs
               if not stage.is_cached(f"device/{dev}/{v}", cfg(dev), inputs_of[v], {"result": out_of[(dev, v)]})]
    futures = {}
    if pending:
        where = f"the Ray cluster at {connected()}" if connected() else f"{d.workers} worker(s)"
        log(f"[devices] {len(pending)} run(s) on emulated ARM ({where}), {n} images each")
        model_bytes = {v: Path(variants[v].path).read_bytes() for v in {v for _, v in pending}}
        for dev, v in pending:
            futures[(dev, v)] = pool.submit(emulate, model_bytes[v], Path(variants[v].path).name, dev, x, y,
                                            name=f"device/{dev}/{v}", needs=EMULATED_NEEDS)
    results: Dict[str, Dict[str, DeviceSummary]] = {dev: {} for dev in profiles}
    for dev, v in pairs:
        def work(dev=dev, v=v):
            result = futures[(dev, v)].result()
            result["model"] = str(Path(variants[v].path).resolve())  # the file here, not the worker's copy
            atomic_write_json(out_of[(dev, v)], result)
            return stage_record(device_metrics(result))

        m = stage(f"device/{dev}/{v}", cfg(dev), inputs_of[v], {"result": out_of[(dev, v)]}, work)
        # Latency is estimated by the current latency model at the recipe's thread count
        # (emulation itself always runs one thread) from the full result the run wrote,
        # which is still there when the stage is cached.
        results[dev][v] = with_latency(DeviceSummary.from_dict(m, f"device/{dev}/{v}"),
                                        json.loads(out_of[(dev, v)].read_text()), dev, d.threads)
        if (dev, v) in futures:
            log(f"[device/{dev}/{v}] " + _line(v, results[dev][v]))
    return results


def measured_path(root: Path, entry: str, variant: str) -> Path:
    """Where a build keeps the full measurement of ``variant`` on the real device of ``entry``."""
    return root / "devices" / "measured" / re.sub(r"[^A-Za-z0-9._@-]", "_", entry) / f"{variant}.json"


def real_needs(entry) -> Needs:
    """What the measurement job of ``entry`` (one naming a real device) needs: a node that
    advertises the device (``mm-device:<host>`` of an ssh entry, ``mm-device:<serial>`` of adb)."""
    host = getattr(entry.target, "host", None) or entry.target.serial
    return Needs(cpus=1, memory_mb=REAL_NEEDS_MB, custom={device_resource(host): 1})


def measure_real(model: bytes, filename: str, entry, remote, threads: int, x: np.ndarray, y: np.ndarray):
    """Job: the model (its bytes) timed on the real device of ``entry``.

    Returns:
        (the :class:`pipeline.devices.remote.measurement.Measurement`, whose ``model`` names
        the worker's temporary copy; the progress lines of the run).
    """
    from pipeline.devices.remote.entry import measure_entry

    lines: List[str] = []
    with tempfile.TemporaryDirectory(prefix="mm-job-") as tmp:
        path = Path(tmp) / filename
        path.write_bytes(model)
        return measure_entry(path, entry, remote, threads, x, y, progress=lines.append), lines


def _measure_real(recipe: Recipe, root: Path, variants: Dict[str, VariantSummary], x: np.ndarray, y: np.ndarray,
                  data_key: str, stage, log: Log, pool: Pool) -> Dict[str, MeasuredLatency]:
    """The deploy variant timed on the real device of every entry that names one, each its
    own cached stage ``measure/<entry>/<variant>``: ``{entry: figures}``."""
    from pipeline.devices.remote import store
    from pipeline.devices.remote.entry import entry_key, measured_latency

    d, v = recipe.devices, recipe.deploy_variant
    model = Path(variants[v].path)
    out: Dict[str, MeasuredLatency] = {}
    for e in (e for e in d.entries if e.target is not None):
        name, path = f"measure/{e.text}/{v}", measured_path(root, e.text, v)

        def work(e=e, name=name, path=path):
            log(f"[{name}] {d.remote.warmup} warm-up and {d.remote.runs} timed runs on {e.target.url()}...")
            m, lines = pool.submit(measure_real, model.read_bytes(), model.name, e, d.remote, d.threads, x, y,
                                   name=name, needs=real_needs(e)).result()
            for line in lines:
                log(line)
            m = dataclasses.replace(m, model=str(model))  # the file here, not the worker's copy
            if m.loaded:
                store.append(m)  # the local store of measured points, as `device run --target` does
            atomic_write_json(path, m.to_dict())
            return measured_latency(m).to_dict()

        key = {**entry_key(e, d.remote, d.threads), "samples": len(x), "data": data_key}
        out[e.text] = MeasuredLatency.from_dict(stage(name, key, {"tflite": model}, {"result": path}, work), name)
        log(f"[{name}] {out[e.text].text()}")
    return out


def with_latency(m: DeviceSummary, result: Dict[str, Any], device: str, threads: int) -> DeviceSummary:
    """``m`` with the latency estimate and its provenance at ``threads`` threads.

    Args:
        m: the device stage's recorded figures.
        result: the run's full :class:`pipeline.devices.check.DeviceResult` dict, which
            :func:`pipeline.latency.estimate.attach_latency` reads and fills.
    """
    from pipeline.latency.estimate import attach_latency

    attach_latency(result, device, threads)
    return dataclasses.replace(m, threads=threads, **{k: result[k] for k in LATENCY_FIELDS})


def _line(variant: str, m: DeviceSummary) -> str:
    if not m.loaded:
        op = f" {m.load_error_op} v{m.load_error_op_version}" if m.load_error_op else ""
        return f"NOT LOADABLE{op}: {(m.load_error or '').splitlines()[0][:120]}"
    parts = [f"top-1 {m.top1:.1f}%" if m.top1 is not None else "",
             f"{m.instructions_per_inference / 1e6:.2f} M instr/inference"
             if m.instructions_per_inference else "",
             f"~{m.latency.text()}" if m.latency_ms else "",
             f"bit-exact {m.exact_fraction:.0%}" if _integer_compute(variant, m) else
             f"max |diff| {m.max_abs_diff:.2g}" if m.max_abs_diff is not None else ""]
    return ", ".join(p for p in parts if p)


def _integer_compute(variant: str, m: DeviceSummary) -> bool:
    """Whether ``variant`` computes in integers end to end (full-integer variants, whatever
    their input and output type), so that its device output should match the host's bit for bit."""
    from pipeline.variants import VARIANTS

    full_integer = variant in VARIANTS.names() and VARIANTS.get(variant).full_integer
    return m.exact_fraction is not None and (m.integer_output or full_integer)


def device_table(summary: BuildSummary) -> str:
    """Markdown table: one row per device x variant of ``summary``, with the latency's
    provenance and, when a latency is unvalidated, the footnote of its mark; a
    ``measured ms`` column beside the estimate when an entry names a real device."""
    def f(val, fmt):
        return format(val, fmt) if val is not None else "-"

    measured = any(m.measured is not None for per in summary.devices.values() for m in per.values())
    rows = []
    for dev, per_variant in summary.devices.items():
        for v, m in per_variant.items():
            if not m.loaded:
                first = ((m.load_error or "?").splitlines() or ["?"])[0]
                op = f"{m.load_error_op} v{m.load_error_op_version}" if m.load_error_op else first.split(":")[0][:60]
                rows.append([dev, v, f"no ({op})"])
                continue
            instr = m.instructions_per_inference / 1e6 if m.instructions_per_inference else None
            mem = m.peak_memory_bytes / 2 ** 20 if m.peak_memory_bytes else None
            # Outputs are compared like for like with the host's. An integer model's output
            # is bit-exact or not even when dequantized to float; a float model's is not
            # expected to be (other kernels round differently): its max |diff| says more.
            exact = f(m.exact_fraction, ".0%") if _integer_compute(v, m) else "n/a (float)"
            cells = m.latency.cells()
            rows.append([dev, v, "yes", f(m.top1, ".1f"), f(instr, ".3f"), cells[0],
                         *([measured_cell(m)] if measured else []), *cells[1:], exact,
                         f(m.max_abs_diff, ".2g"), f(mem, ".2f")])
    head = [LATENCY_HEADERS[0], *([MEASURED_HEADER] if measured else []), *LATENCY_HEADERS[1:]]
    align = LATENCY_ALIGN[0] + ("r" if measured else "") + LATENCY_ALIGN[1:]
    lines = Table(["device", "variant", "loads", "top-1 %", "M instr / inference", *head, "bit-exact",
                   "max abs diff", "memory MiB"], rows, "lllrr" + align + "rrr").markdown()
    return "\n".join(lines) + (f"\n\n{summary.latency_note}" if summary.latency_note else "")

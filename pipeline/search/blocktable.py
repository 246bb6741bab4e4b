"""A per-block cost table per device: a genotype's device cost as the sum of its parts.

The network of a genotype is its stem, its blocks and its head
(:func:`models.genotype.parts`). Each part is measured once per device core and
runtime: built alone with random weights, converted to full int8 with int8 input
and output (so no QUANTIZE/DEQUANTIZE of its own), run for one inference, one
thread, on the emulated core, and priced by the same estimate as every device
figure (:func:`pipeline.latency.device_cost.run_cost`, :func:`pipeline.latency.device_cost.price`).
Entries are cached by what the part computes (kind, input shape, channels,
kernel, activation...), so networks that share a part share its entry
(``$MOBILE_MODEL_CACHE/latency/blocks/``).

A candidate's predicted cost is the sum of its parts plus a per-model overhead:
what a whole network costs beyond its parts (the float input's QUANTIZE and the
output's DEQUANTIZE; one interpreter invocation instead of one per part, so the
overhead falls with the number of parts). The overhead is measured, not guessed:
``fixed + per_part x parts``, fitted by least squares to (full emulation - sum of
parts) over calibration genotypes at the same input geometry (:func:`calibrate`).

``python -m pipeline.search.blocktable --device D`` measures the overhead on
calibration genotypes, then predicts held-out genotypes and compares each with its
full emulation: instructions, single-thread cycles and latency, with the median and
worst error. The parts it lacks are measured as jobs of a pool (:mod:`pipeline.pool`):
``--workers`` processes here, or, with ``--ray ADDRESS``, a Ray cluster.
"""

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Sequence

import numpy as np
from pipeline.errors import Log
from pipeline.pool import Needs, Pool, connected, open_pool, run_job
from pipeline.table import Table


#: Bump when what a part entry holds, or how a part is measured, changes.
TABLE_VERSION = 1
#: The figures a prediction sums.
FIGURES = ("instructions", "latency_cycles", "latency_ms")


@dataclass(frozen=True)
class PartSpec:
    """Stands for one part in the latency cache (:func:`pipeline.latency.reference.cached_entry`)."""

    part_key: str

    @property
    def label(self) -> str:
        return f"part-{self.part_key}-int8"

    def key(self) -> Dict[str, Any]:
        from importlib import metadata

        from pipeline.latency.reference import SEED, sources_hash

        # The installed version, without importing TensorFlow: a fully cached
        # prediction then needs no TensorFlow at all.
        return {"part": self.part_key, "table_version": TABLE_VERSION, "seed": SEED, "sources": sources_hash(),
                "tensorflow": metadata.version("tensorflow")}


#: What a part job declares: one core, and TensorFlow with one small conversion beside the
#: emulated run (a fresh worker that imports TensorFlow peaks near 1.5 GiB).
PART_NEEDS = Needs(cpus=1, memory_mb=3072)


def measure_part(part, profile) -> Dict[str, Any]:
    """Job: ``part`` built, converted and run once on ``profile``'s core (not cached):
    :func:`pipeline.latency.device_cost.run_cost` of the run."""
    from pipeline.native import tf_environment

    tf_environment()
    return _measure_part(part, profile, lambda m: None)


def measure_parts(genotypes: Sequence, geometry: "Geometry", device: str, pool: Pool,
                  log: Log = lambda m: None) -> int:
    """Measures every part of ``genotypes`` that the table lacks on ``device``, each a job of
    ``pool``, and keeps each entry in the table as it comes back.

    Returns:
        How many parts were measured.
    """
    from models.genotype import parts
    from pipeline.latency.reference import has_entry, keep_entry

    todo = {}
    for g in genotypes:
        for p in parts(g, geometry.input_shape, geometry.classes, geometry.first_stride):
            if p.key() not in todo and (p.key(), device) not in _PRICED:
                profile, spec, key = _part_key(p, device)
                if not has_entry("blocks", spec, profile, key):
                    todo[p.key()] = (p, profile, spec, key)
    if todo:
        log(f"[blocks] measuring {len(todo)} part(s) on {device}")
    futures = {k: pool.submit(measure_part, p, profile, name=f"part/{device}/{k}", needs=PART_NEEDS)
               for k, (p, profile, _, _) in todo.items()}
    for i, (k, future) in enumerate(futures.items(), 1):
        _, profile, spec, key = todo[k]
        keep_entry("blocks", spec, profile, key, "cost", future.result())
        log(f"[blocks] {i}/{len(todo)} part {k} measured")
    return len(todo)


def _measure_part(part, profile, log: Log) -> Dict[str, Any]:
    from models.genotype import build_part
    from pipeline.latency.reference import SEED
    from pipeline.latency.device_cost import measure_keras
    from pipeline.train.fit import setup_tensorflow

    setup_tensorflow(SEED)
    return measure_keras(build_part(part), part.key(), profile, int8_io=True, log=log)


#: Priced parts of this process by (part key, device): a search prices thousands of
#: parts, most of them shared between genotypes, and pricing one reads its hot blocks'
#: cached pipeline analyses (~0.1-1 s). The latency parameters do not change within a
#: process, so a priced part stays valid.
_PRICED: Dict[Any, Dict[str, Any]] = {}


def part_cost(part, device: str, log: Log = lambda m: None) -> Dict[str, Any]:
    """The single-thread int8 cost of ``part`` (:class:`models.genotype.Part`) on ``device``, cached
    (on disk by what the part computes, and in this process once priced).

    Raises:
        RuntimeIncompatibleError: the device's runtime does not load the part.
        DeviceUnavailableError: the emulated run failed.
    """
    memo = (part.key(), device)
    if memo not in _PRICED:
        priced = _part_cost(part, device, log)
        _PRICED[memo] = dict(priced, cached=True)  # a second call measures nothing
        return priced
    return _PRICED[memo]


def _part_key(part, device: str):
    from pipeline.devices.profiles import get_device
    from pipeline.latency.reference import run_key
    from pipeline.latency.device_cost import COST_VERSION

    profile = get_device(device)
    spec = PartSpec(part.key())
    return profile, spec, {"run": run_key(spec, profile), "cost_version": COST_VERSION}


def missing_parts(genotype, geometry: "Geometry", device: str) -> int:
    """How many of ``genotype``'s parts the table has not measured on ``device`` yet."""
    from models.genotype import parts
    from pipeline.latency.reference import has_entry

    n = 0
    for p in parts(genotype, geometry.input_shape, geometry.classes, geometry.first_stride):
        if (p.key(), device) not in _PRICED:
            profile, spec, key = _part_key(p, device)
            n += not has_entry("blocks", spec, profile, key)
    return n


def _part_cost(part, device: str, log: Log) -> Dict[str, Any]:
    from pipeline.errors import RuntimeIncompatibleError
    from pipeline.latency.reference import cached_entry
    from pipeline.latency.device_cost import price

    profile, spec, key = _part_key(part, device)

    def measure():
        if connected() is None:
            return _measure_part(part, profile, log)
        log(f"[blocks] measuring part {part.key()} on {device} on the Ray cluster")
        return run_job(measure_part, part, profile, name=f"part/{device}/{part.key()}", needs=PART_NEEDS)
    raw, cached = cached_entry("blocks", spec, profile, key, "cost", measure)
    if not raw["loaded"]:
        raise RuntimeIncompatibleError(f"{device} does not load part {part.key()}: {raw['load_error']}")
    return price(dict(raw, cached=cached), profile, "int8", 1)


@dataclass(frozen=True)
class Geometry:
    """What a genotype's parts depend on besides the genotype: input size, channels,
    stem stride, classes."""

    input_size: int
    channels: int = 1
    first_stride: int = 1
    classes: int = 10

    @property
    def input_shape(self):
        return (self.input_size, self.input_size, self.channels)


def sum_of_parts(genotype, geometry: Geometry, device: str, log: Log = lambda m: None) -> Dict[str, Any]:
    """The summed figures of ``genotype``'s parts on ``device`` and how many were measured now."""
    from models.genotype import parts

    out = {k: 0.0 for k in FIGURES}
    measured = 0
    ps = parts(genotype, geometry.input_shape, geometry.classes, geometry.first_stride)
    for p in ps:
        c = part_cost(p, device, log)
        measured += not c["cached"]
        for k in FIGURES:
            out[k] += float(c[k])
    return {**out, "parts": len(ps), "parts_measured": measured}


def full_cost(genotype, geometry: Geometry, device: str, log: Log = lambda m: None) -> Dict[str, Any]:
    """One full emulation of ``genotype``'s int8 network at one thread (the search's cost tier, cached)."""
    from pipeline.search.cost import genotype_spec, spec_cost

    spec = genotype_spec(genotype, geometry.input_size, geometry.classes, "int8", geometry.channels,
                         geometry.first_stride)
    return spec_cost(spec, f"{spec.genotype_obj().key()}-{geometry.input_size}", device, "int8-ptq", 1, log)


def calibrate(genotypes: Sequence, geometry: Geometry, device: str,
              log: Log = lambda m: None) -> Dict[str, Dict[str, float]]:
    """The per-model overhead, per figure: ``fixed + per_part x parts`` fitted by least
    squares to (full emulation - sum of parts) over ``genotypes`` (``per_part`` is 0
    when they all have as many parts: the mean difference then).

    Returns:
        ``{"fixed": {figure: value}, "per_part": {figure: value}}``.
    """
    counts, diffs = [], {k: [] for k in FIGURES}
    for g in genotypes:
        full, summed = full_cost(g, geometry, device, log), sum_of_parts(g, geometry, device, log)
        counts.append(summed["parts"])
        for k in FIGURES:
            diffs[k].append(float(full[k]) - summed[k])
    n = np.asarray(counts, dtype=float)
    fixed, per_part = {}, {}
    for k in FIGURES:
        d = np.asarray(diffs[k])
        if len(set(counts)) < 2:
            fixed[k], per_part[k] = float(d.mean()), 0.0
        else:
            (a, b), *_ = np.linalg.lstsq(np.vstack([np.ones_like(n), n]).T, d, rcond=None)
            fixed[k], per_part[k] = float(a), float(b)
    return {"fixed": fixed, "per_part": per_part}


def predict(genotype, geometry: Geometry, device: str, overhead: Dict[str, Dict[str, float]],
            log: Log = lambda m: None) -> Dict[str, float]:
    """The predicted single-thread cost of ``genotype``: its parts plus ``overhead``
    (:func:`calibrate`'s)."""
    summed = sum_of_parts(genotype, geometry, device, log)
    n = summed["parts"]
    return {**{k: summed[k] + overhead["fixed"][k] + overhead["per_part"][k] * n for k in FIGURES},
            "parts": n, "parts_measured": summed["parts_measured"]}


def validate(calibration: Sequence, held_out: Sequence, geometry: Geometry, device: str,
             log: Log = lambda m: None, workers: int = 1) -> Dict[str, Any]:
    """Predicts each held-out genotype and compares it with its full emulation.

    The parts the table lacks are measured first, as jobs of a pool
    (:func:`pipeline.pool.open_pool`: ``workers`` processes here, or the Ray cluster this
    process joined); the full emulations run here.

    Returns:
        ``overhead``, ``rows`` (per genotype: predicted, emulated, error % per figure)
        and ``summary`` (per figure: median and worst absolute error %).
    """
    from pipeline.devices.profiles import get_device

    get_device(device)  # an unknown device fails before any job
    with open_pool(workers) as pool:
        measure_parts(list(calibration) + list(held_out), geometry, device, pool, log)
    overhead = calibrate(calibration, geometry, device, log)
    rows = []
    for i, g in enumerate(held_out, 1):
        pred, full = predict(g, geometry, device, overhead, log), full_cost(g, geometry, device, log)
        row = {"genotype": g.key(), "text": g.text(), "parts": pred["parts"]}
        for k in FIGURES:
            row[k] = {"predicted": pred[k], "emulated": float(full[k]),
                      "error_pct": (pred[k] - float(full[k])) / float(full[k]) * 100.0}
        rows.append(row)
        log(f"[blocks] {i}/{len(held_out)} {g.key()}: cycles predicted {pred['latency_cycles'] / 1e6:.3f} M, "
            f"emulated {float(full['latency_cycles']) / 1e6:.3f} M ({row['latency_cycles']['error_pct']:+.2f}%)")
    summary = {}
    for k in FIGURES:
        errors = [abs(r[k]["error_pct"]) for r in rows]
        summary[k] = {"median_abs_error_pct": statistics.median(errors), "worst_abs_error_pct": max(errors)}
    return {"device": device, "geometry": geometry.__dict__, "overhead": overhead, "rows": rows,
            "summary": summary}


def markdown(result: Dict[str, Any]) -> str:
    """The validation as a Markdown table."""
    lines = [f"Per-block table on {result['device']} ({len(result['rows'])} held-out genotypes, "
             f"input {result['geometry']['input_size']}x{result['geometry']['input_size']}"
             f"x{result['geometry']['channels']}, stem stride {result['geometry']['first_stride']})", ""]
    rows = []
    for r in result["rows"]:
        i, c, m = r["instructions"], r["latency_cycles"], r["latency_ms"]
        rows.append([r["genotype"], str(r["parts"]),
                     f"{i['predicted']:,.0f} / {i['emulated']:,.0f} ({i['error_pct']:+.2f})",
                     f"{c['predicted'] / 1e6:.3f} / {c['emulated'] / 1e6:.3f} ({c['error_pct']:+.2f})",
                     f"{m['predicted']:.3f} / {m['emulated']:.3f} ({m['error_pct']:+.2f})"])
    lines += Table(["genotype", "parts", "instructions pred / emulated (err %)", "M cycles pred / emulated (err %)",
                    "ms pred / emulated (err %)"], rows, "lrlll").markdown()
    lines.append("")
    for k, s in result["summary"].items():
        lines.append(f"- {k}: median |error| {s['median_abs_error_pct']:.2f}%, worst {s['worst_abs_error_pct']:.2f}%")
    f, pp = result["overhead"]["fixed"], result["overhead"]["per_part"]
    lines.append(f"- per-model overhead: {f['instructions']:+,.0f} {pp['instructions']:+,.0f}/part instructions, "
                 f"{f['latency_cycles']:+,.0f} {pp['latency_cycles']:+,.0f}/part cycles, "
                 f"{f['latency_ms']:+.4f} {pp['latency_ms']:+.5f}/part ms")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse
    import sys

    from pipeline.errors import MobileModelError
    from pipeline.search.blockspace import sample_distinct

    ap = argparse.ArgumentParser(prog="python -m pipeline.search.blocktable", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", required=True, help="device profile (mobile-model devices lists them)")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3))
    ap.add_argument("--first-stride", type=int, default=1, choices=(1, 2))
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--calibrate", type=int, default=3, help="calibration genotypes (seed + 1000)")
    ap.add_argument("--held-out", type=int, default=20, help="held-out genotypes compared with full emulation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the result as JSON here")
    ap.add_argument("--workers", type=int, default=1, help="worker processes measuring parts on this machine")
    ap.add_argument("--ray", metavar="ADDRESS",
                    help="measure the parts as jobs on the Ray cluster whose head is at ADDRESS (HOST:PORT; "
                         "default $RAY_ADDRESS); the full emulations run here (docs/ray.md)")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers must be at least 1, got {args.workers}")
    geometry = Geometry(args.input_size, args.channels, args.first_stride, args.classes)
    calibration = sample_distinct(args.seed + 1000, args.calibrate)
    held = [g for g in sample_distinct(args.seed, args.held_out + args.calibrate)
            if g.key() not in {c.key() for c in calibration}][:args.held_out]
    try:
        from pipeline.pool import connect

        connect(args.ray)
        result = validate(calibration, held, geometry, args.device,
                          log=lambda m: print(m, file=sys.stderr, flush=True), workers=args.workers)
    except MobileModelError as e:  # unknown device: 2; no ARM runtime, no cluster: 3 (the CLI's exit codes)
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(markdown(result), end="")
    if args.json:
        from pipeline.store.atomic import atomic_write_json

        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

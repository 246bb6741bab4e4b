"""The MediaPipe wheel's models on the emulated devices: the corpus table of docs/devices.md.

    PYTHONPATH=. python -m benchmarks.mediapipe_corpus [--json OUT.json]

Runs every .tflite of the project's MediaPipe environment on pixel4 and camera-a53 with
one random input per model input (seed 0), exactly as ``mobile-model device run MODEL
--device D --random 1`` does, and prints a Markdown table (model, inputs/outputs, per
device: verdict, agreement with the host reference, instructions per inference) and
the wall time of each run. Figures, not pass/fail: device_tests/test_mediapipe_corpus.py
asserts them.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

from pipeline.publish.mediapipe_env import SPEC as MEDIAPIPE_SPEC

DEVICES = ("pixel4", "camera-a53")


def corpus_models() -> List[Path]:
    """The wheel's models, sorted (an empty list when the environment is not built)."""
    root = MEDIAPIPE_SPEC.cache_dir() / MEDIAPIPE_SPEC.key()
    return sorted(root.glob("venv/lib/python*/site-packages/mediapipe/**/*.tflite"))


def run_corpus(models: Sequence[Path], devices: Sequence[str] = DEVICES, samples: int = 1) -> List[Dict[str, Any]]:
    """One row per (model, device): the device result as JSON plus its wall time."""
    from pipeline.devices.check import run_device_check
    from pipeline.devices.model_io import random_inputs
    from pipeline.tflite.reader import read_tflite

    rows = []
    for path in models:
        model = read_tflite(path)
        for device in devices:
            t0 = time.monotonic()
            r = run_device_check(path, device, random_inputs(model, samples), untrusted=True)
            d = r.to_dict()
            d.pop("block_profile")
            rows.append({"model": path.name, "device": device, "wall_s": round(time.monotonic() - t0, 2),
                         "io": f"{len(model.inputs)} / {len(model.outputs)}", "result": d})
    return rows


def _agreement(d: Dict[str, Any]) -> str:
    if not d["loaded"]:
        return "-"
    outs = d["outputs"]
    exact = sum(o["exact_count"] == o["samples"] for o in outs)
    worst = max(o["max_rel_diff"] for o in outs)
    return f"{exact}/{len(outs)} bit-exact, max rel {worst:.1e}"


def _cells(d: Dict[str, Any]) -> List[str]:
    verdict = "loads" if d["loaded"] else d["verdict"].split(": ", 1)[1]
    instr = f"{d['instructions_median']:,}" if d["loaded"] else "-"
    return [verdict, _agreement(d), instr]


def markdown(rows: List[Dict[str, Any]], devices: Sequence[str] = DEVICES) -> str:
    """The corpus table: one line per model, three cells per device."""
    by = {(r["model"], r["device"]): r for r in rows}
    head = ["model", "inputs / outputs"] + [f"{dev} {c}" for dev in devices
                                            for c in ("verdict", "outputs vs host", "instructions")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sorted({r["model"] for r in rows}):
        cells = [name, by[(name, devices[0])]["io"]]
        for dev in devices:
            cells += _cells(by[(name, dev)]["result"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, help="Also write every row (device results) here.")
    args = ap.parse_args(argv)
    models = corpus_models()
    if not models:
        print(f"no MediaPipe environment; build it with 'make {MEDIAPIPE_SPEC.make_target}'", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    rows = run_corpus(models)
    print(markdown(rows))
    print()
    for r in rows:
        print(f"{r['model']:<40} {r['device']:<11} {r['wall_s']:6.1f} s")
    print(f"total {time.monotonic() - t0:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

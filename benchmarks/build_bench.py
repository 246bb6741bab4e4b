"""``make bench``: speed and size figures of a build, as ratios measured in one run.

Prints, for the build of a recipe (built first if needed, cached otherwise):
host LiteRT throughput of every variant relative to float32 (timed back to back
in this process, so machine noise mostly cancels), file and gzip size ratios,
and the deterministic instructions per inference on each emulated device; then
the latency estimate's own cost (:mod:`benchmarks.latency_overhead`; ``--no-latency``
leaves it out).
"""

import sys
import time

import numpy as np


def _throughput(path: str, x: np.ndarray, repeats: int = 3) -> float:
    from pipeline.tflite.host import allocate, make_interpreter, quantize_input

    interp = make_interpreter(path, threads=1)
    inp = interp.get_input_details()[0]
    allocate(interp)
    batch = [quantize_input(x[i:i + 1], inp) for i in range(len(x))]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for b in batch:
            interp.set_tensor(inp["index"], b)
            interp.invoke()
        best = min(best, time.perf_counter() - t0)
    return len(x) / best


def main(argv=None) -> int:
    from pipeline.build import build
    from pipeline.recipe.load import load_recipe
    from pipeline.data import load_dataset
    from pipeline.build.matrix import device_table
    from pipeline.table import Table

    args = argv if argv is not None else sys.argv[1:]
    names = [a for a in args if not a.startswith("--")]
    recipe = load_recipe(names[0] if names else "default", smoke="--smoke" in args)
    result = build(recipe, log=lambda s: print(s, file=sys.stderr))
    summary = result.summary
    splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed)
    x = splits.x_test[:200]
    base = summary.variants["float32"]
    ref = _throughput(base.path, x)
    print(f"## bench: {recipe.build_name} ({len(x)} images, host LiteRT, 1 thread)\n")
    rows = []
    for name, v in summary.variants.items():
        speed = 1.0 if name == "float32" else _throughput(v.path, x) / ref
        rows.append([name, f"{speed:.2f}x", f"{v.size_bytes / base.size_bytes:.3f}x",
                     f"{v.gzip_bytes / base.gzip_bytes:.3f}x"])
    print("\n".join(Table(["variant", "images/s vs float32", "size vs float32", "gzip vs float32"], rows).markdown()))
    if summary.devices:
        print("\n" + device_table(summary))
    if "--no-latency" not in args:
        from benchmarks.latency_overhead import latency_bench

        print("\n" + latency_bench(log=lambda s: print(s, file=sys.stderr)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

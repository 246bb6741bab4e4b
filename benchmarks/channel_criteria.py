"""Which channel importance criterion works: a measurement on a build's float model.

``python -m benchmarks.channel_criteria BUILD_DIR [--widths-from MODEL.h5] [--batches N]``

For each criterion of :data:`pipeline.compress.channels.CRITERIA`, and for two
controls (``random``: channels drawn at random, seeded; ``inverse``: the *least*
important by ``l1_bn`` kept), it thins the build's trained float model
(``keras/float.h5``) to the same widths and measures validation top-1 on the
schedule's validation slice twice: one-shot (no training) and after a short
recovery fine-tune (the schedule's ``recover_batches`` batches, the same seeded
images for every criterion). The widths are every channel group halved (multiples
of 8, never below 8) or, with ``--widths-from``, those of a thinned model (e.g. a
channel-pruned build's ``keras/channels-steps/scheduled.h5``).

A criterion that ranks channels well keeps more accuracy one-shot and recovers at
least as well; the controls show how much ranking matters at all at these widths.
Prints a markdown table; nothing is written to the build.
"""

import sys
from typing import Dict, List, Mapping, Sequence

import numpy as np

from pipeline.compress.channels import CRITERIA, MIN_CHANNELS, find_groups, importance, keep_top, thin
from pipeline.compress.netadapt import GRANULARITY
from pipeline.errors import Log
from pipeline.table import Table

CONTROLS = ("random", "inverse")


def halved_widths(model) -> Dict[str, int]:
    """Every prunable group (with a BatchNorm) at half its channels, in multiples of 8, at least 8."""
    out = {}
    for g in find_groups(model):
        if g.bn:
            out[g.producer] = max(MIN_CHANNELS, g.channels // 2 // GRANULARITY * GRANULARITY)
    return out


def keep_indices(model, widths: Mapping[str, int], criterion: str, seed: int) -> Dict[str, np.ndarray]:
    groups = {g.producer: g for g in find_groups(model)}
    rng = np.random.default_rng(seed)
    keep = {}
    for producer, n in sorted(widths.items()):
        g = groups[producer]
        if n >= g.channels:
            continue
        if criterion == "random":
            keep[producer] = np.sort(rng.choice(g.channels, n, replace=False))
        elif criterion == "inverse":
            keep[producer] = keep_top(-importance(model, g, "l1_bn"), n)
        else:
            keep[producer] = keep_top(importance(model, g, criterion), n)
    return keep


def compare(model, splits, widths: Mapping[str, int], criteria: Sequence[str] = CRITERIA + CONTROLS,
            recover_batches: int = 100, batch_size: int = 128, learning_rate: float = 1e-3,
            eval_images: int = 2000, seed: int = 0, log: Log = print) -> List[Dict]:
    """One row per criterion: ``criterion``, ``top1_oneshot``, ``top1_recovered`` (validation %)."""
    from pipeline.compress.netadapt import evaluate_loss_top1, recover_briefly

    x_eval, y_eval = splits.x_val[:eval_images], splits.y_val[:eval_images]
    top1 = evaluate_loss_top1(model, x_eval, y_eval)[1]
    rows = [{"criterion": "unpruned", "top1_oneshot": top1, "top1_recovered": None}]
    for criterion in criteria:
        thinned = thin(model, keep_indices(model, widths, criterion, seed))
        oneshot = evaluate_loss_top1(thinned, x_eval, y_eval)[1]
        recover_briefly(thinned, splits, recover_batches, batch_size, learning_rate, seed)
        recovered = evaluate_loss_top1(thinned, x_eval, y_eval)[1]
        rows.append({"criterion": criterion, "top1_oneshot": oneshot, "top1_recovered": recovered})
        log(f"[criteria] {criterion}: one-shot {oneshot:.2f}%, after {recover_batches} batches {recovered:.2f}%")
    return rows


def format_rows(rows: Sequence[Mapping], recover_batches: int) -> str:
    cells = [[r["criterion"], f"{r['top1_oneshot']:.2f}%",
              "-" if r["top1_recovered"] is None else f"{r['top1_recovered']:.2f}%"] for r in rows]
    return "\n".join(Table(["criterion", "val top-1 one-shot", f"after {recover_batches} recovery batches"],
                           cells).markdown())


def main(argv=None) -> int:
    import argparse
    from pathlib import Path

    from pipeline.data import load_dataset
    from pipeline.errors import MobileModelError
    from pipeline.recipe.load import load_recipe
    from pipeline.train.fit import setup_tensorflow
    from pipeline.train.keras_io import load_keras_file

    ap = argparse.ArgumentParser(prog="python -m benchmarks.channel_criteria", description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=Path, help="a build folder with recipe.yaml and keras/float.h5")
    ap.add_argument("--widths-from", type=Path, help="a thinned model whose channel widths to prune to")
    ap.add_argument("--batches", type=int, default=100, help="recovery batches after thinning (default 100)")
    args = ap.parse_args(argv)
    for need in (args.build / "recipe.yaml", args.build / "keras" / "float.h5", args.widths_from):
        if need is not None and not need.is_file():
            print(f"error: {need} does not exist", file=sys.stderr)
            return 2
    try:
        recipe = load_recipe(str(args.build / "recipe.yaml"))
        setup_tensorflow(recipe.seed, recipe.train.logical_devices)
        model = load_keras_file(args.build / "keras" / "float.h5")
        if args.widths_from:
            widths = {g.producer: g.channels for g in find_groups(load_keras_file(args.widths_from))}
            what = f"the widths of {args.widths_from}"
        else:
            widths = halved_widths(model)
            what = "every channel group halved"
        splits = load_dataset(recipe.data, recipe.model.input_shape, recipe.seed)
        rows = compare(model, splits, widths, recover_batches=args.batches, seed=recipe.seed,
                       batch_size=recipe.train.batch_size, log=lambda s: print(s, file=sys.stderr))
    except MobileModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{recipe.build_name}: {what}\n")
    print(format_rows(rows, args.batches))
    return 0


if __name__ == "__main__":
    sys.exit(main())

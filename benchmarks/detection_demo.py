"""The detection build from the command line: SSDLite trained, pruned, quantized, checked.

    python -m benchmarks.detection_demo --out out/detect --size 96 --train 600 --epochs 10

Runs :func:`pipeline.build.detect.build_detector` (progress on stdout), then prints the
variant table and the stage times. Exit status: 0, 1 when a budget was missed (the
files are written), 2 on a bad option, config or data set (one line on stderr), 3 when
the emulated devices cannot run.
"""

import argparse
import json
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    from pipeline.build.detect_config import DATASETS
    from pipeline.variants import DEFAULT_VARIANTS

    p = argparse.ArgumentParser(prog="python -m benchmarks.detection_demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--dataset", choices=DATASETS, default="synthetic")
    p.add_argument("--path", help="coco: the images folder; voc: the VOC root")
    p.add_argument("--annotations", help="coco: the instances JSON")
    p.add_argument("--size", type=int, default=224, help="input height and width (default 224)")
    p.add_argument("--channels", type=int, default=3, choices=(1, 3))
    p.add_argument("--train", type=int, default=600, help="synthetic training images")
    p.add_argument("--val", type=int, default=100, help="synthetic validation images")
    p.add_argument("--test", type=int, default=200, help="synthetic test images")
    p.add_argument("--family", default="mobilenet_v2")
    p.add_argument("--alpha", type=float, default=0.35)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.003)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--prune-epochs", type=int, default=3)
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--qat-epochs", type=int, default=1)
    p.add_argument("--variants", nargs="+", choices=DEFAULT_VARIANTS, default=list(DEFAULT_VARIANTS))
    p.add_argument("--devices", nargs="*", default=[], help="device profiles (default: the default recipe's)")
    p.add_argument("--samples", type=int, default=20, help="test images run on each device")
    p.add_argument("--min-map", type=float, help="budget: lowest host mAP@0.5 of every variant")
    p.add_argument("--max-map-drop", type=float, default=0.02,
                   help="budget: largest mAP@0.5 drop of the int8 variants under float32")
    return p


def _config(args) -> dict:
    data = {"dataset": args.dataset}
    if args.dataset == "synthetic":
        data.update(train=args.train, val=args.val, test=args.test)
    else:
        data.update({k: v for k, v in (("path", args.path), ("annotations", args.annotations)) if v})
    return {"name": "detect-demo", "data": data,
            "model": {"family": args.family, "alpha": args.alpha, "input_size": args.size,
                      "channels": args.channels},
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
                      "augment": not args.no_augment},
            "prune": {"sparsity": args.sparsity, "epochs": args.prune_epochs},
            "qat": {"epochs": args.qat_epochs},
            "convert": {"variants": args.variants}, "devices": {"targets": args.devices, "samples": args.samples},
            "budgets": {"min_map": args.min_map, "max_map_drop": args.max_map_drop},
            "deploy_variant": "int8-qat" if "int8-qat" in args.variants else "float32"}


def main(argv=None) -> int:
    from pipeline.build.detect import build_detector, stage_table, variant_table
    from pipeline.build.detect_config import DetectConfig
    from pipeline.errors import BudgetExceededError, MobileModelError

    args = _parser().parse_args(argv)
    try:
        cfg = DetectConfig.from_dict(_config(args))
        print(f"[demo] config: {json.dumps(cfg.to_dict(), sort_keys=True)}", flush=True)
        result = build_detector(cfg, args.out, log=lambda line: print(line, flush=True))
        print("\n".join(["", *variant_table(result).markdown(), "", *stage_table(result).markdown(), ""]))
        print(f"[demo] report: {args.out / 'report.md'}")
        result.check_budgets()
    except BudgetExceededError as exc:
        print(f"budget: {exc}", file=sys.stderr)
        return exc.exit_code
    except MobileModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Synthetic build summaries as dicts, written as a build writes them (the regression gates' tests)."""

from pathlib import Path

import yaml

from pipeline.summary import SCHEMA_VERSION, BuildSummary, write_summary

VARIANTS = ("float32", "int8-qat")
DEVICES = ("pixel4", "camera-a53")


LATENCY_MODEL = "llvm-mca cortex-a76 + memory"
PROVENANCE = ("latency_validated", "latency_model", "latency_cycles", "latency_ipc")


def device_rec(instr, loaded=True, latency=None, top1=90.0, memory=300_000, runtime="litert 2.3.0", op=None):
    estimated = latency is not None
    return {"loaded": loaded, "load_error": None if loaded else f"Didn't find op for builtin opcode '{op}'",
            "load_error_op": None if loaded else op, "load_error_op_version": None if loaded else 12,
            "top1": top1 if loaded else None, "instructions_per_inference": instr if loaded else None,
            "instructions_by_class": {}, "exact_fraction": 1.0, "max_abs_diff": 0.0, "top1_agreement": 1.0,
            "peak_memory_bytes": memory if loaded else None, "fits_ram": True, "latency_ms": latency,
            "latency_validated": True if estimated else None, "latency_model": LATENCY_MODEL if estimated else None,
            "latency_cycles": latency * 2.42e6 if estimated else None, "latency_ipc": 1.5 if estimated else None,
            "wall_s_per_image": 0.5, "samples": 100, "runtime": runtime}


def make_summary(width=1.0):
    """A summary of two variants on two devices; ``width`` scales sizes and instruction counts."""
    variants = {}
    for v, size, top1 in (("float32", 400_000, 91.0), ("int8-qat", 120_000, 90.5)):
        variants[v] = {"top1": top1, "agreement_with_float": 99.0, "size_bytes": int(size * width),
                       "gzip_bytes": int(size * 0.8 * width), "zeros_prunable": 0.5, "zeros_all_kernels": 0.45,
                       "max_unique_per_kernel": 256, "input": {"dtype": "float32", "shape": [1, 32, 32, 1],
                                                               "scale": [], "zero_point": []},
                       "output": {"dtype": "float32", "shape": [1, 10], "scale": [], "zero_point": []},
                       "kernels": [], "ops": ["CONV_2D:v1"],
                       "validation": {"validation_max_abs_diff": 0.0, "validation_agreement": 1.0,
                                      "validation_samples": 16, "size_bytes": int(size * width)},
                       "macs": 1000, "path": f"tflite/{v}.tflite", "chain": "float", "samples": 1000,
                       "predictions": f"tflite/{v}.pred.npy"}
    devices = {
        "pixel4": {"float32": device_rec(int(4_000_000 * width), latency=1.5 * width),
                   "int8-qat": device_rec(int(1_500_000 * width), latency=0.6 * width)},
        "camera-a53": {"float32": device_rec(int(5_000_000 * width), runtime="tflite-runtime 2.14.0"),
                       "int8-qat": device_rec(int(2_000_000 * width), runtime="tflite-runtime 2.14.0")},
    }
    return {"recipe": "default", "float_top1": 91.2, "params": 1000, "macs": 1000, "deploy_variant": "int8-qat",
            "labels": [str(i) for i in range(10)], "variants": variants, "devices": devices, "budgets": [],
            "stages_run": [], "schema_version": SCHEMA_VERSION}


def summary_with_top1(top1):
    summary = make_summary()
    summary["variants"]["int8-qat"]["top1"] = top1
    return summary


def write_build(root: Path, summary, recipe=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_summary(BuildSummary.from_dict(summary), root)  # as the build writes it
    recipe = recipe or {"name": "default", "model": {"family": "mobilenet_v2", "alpha": 0.35},
                        "convert": {"variants": list(VARIANTS)}, "devices": {"targets": list(DEVICES)}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root

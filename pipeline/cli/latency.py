"""Click commands of the latency model: ``calibrate`` and ``estimate``.

Added to the main CLI group with ``main.add_command(calibrate)`` and
``main.add_command(estimate)``. TensorFlow and the emulator are imported inside the
command bodies (through the latency package's lazy imports), so ``--help`` is instant.
"""

import json
from pathlib import Path
from typing import Optional

import click

from pipeline.cli.common import fail, logger
from pipeline.devices.profiles import DEVICES
from pipeline.errors import MobileModelError


def _families():
    from pipeline.train.zoo import family_names

    return list(family_names())


@click.command("calibrate")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write params.yaml, report.md and calibration.json [default: the "
                   "user cache, ~/.cache/mobile-model/latency ($MOBILE_MODEL_CACHE/latency), "
                   "where estimates read the parameters from].")
@click.option("--published", type=click.Path(dir_okay=False, path_type=Path),
              help="A CSV of published latencies (default: the package's "
                   "pipeline/latency/data/published_latency.csv).")
@click.option("--write-params/--no-write-params", "--write-profiles/--no-write-profiles",
              "write_params", default=True, show_default=True,
              help="Write the fitted parameters (params.yaml) next to the report.")
@click.option("--matrix/--no-matrix", default=True, show_default=True,
              help="Also estimate every full-size family x variant on every profile "
                   "(order check, int8 speed-ups; ~20 more emulated runs the first time).")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def calibrate(out: Optional[Path], published: Optional[Path], write_params: bool, matrix: bool,
              as_json: bool, quiet: bool) -> None:
    """Fit the per-device latency model on published real-device latencies.

    Builds the published architectures (width 1.0, 224x224, 1000 classes, random
    weights; int8 by post-training quantization), runs each once on the emulated
    core of its device (cached), fits cycles per instruction class per core, and
    reports each point's error fitted on all points and under leave-one-out. The
    installed package is never written to: the parameters go to --out (by default the
    user cache, which estimates then use; elsewhere, point $MOBILE_MODEL_LATENCY_PARAMS
    at the written params.yaml).
    """
    try:
        from pipeline.latency.calibrate import calibrate as run_calibration, write_calibration
        from pipeline.latency.calibration_report import report_data
        from pipeline.latency.published import load_published

        log = logger(quiet)
        points = load_published(published)
        cal = run_calibration(points, log=log, matrix=matrix)
        files = write_calibration(cal, out, params=write_params, log=log)
        data = report_data(cal)
        if as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            acc = data["acceptance"]
            click.echo(f"leave-one-out median |error| {100 * acc['loo_median_abs_error']:.1f}%, worst "
                       f"{100 * acc['loo_worst_abs_error']:.1f}% ({data['leave_one_out']['worst_point']}) "
                       f"over {len(data['points'])} points: {'met' if acc['met'] else 'NOT met'}")
            click.echo(f"report: {files.report}\njson:   {files.json}")
            if files.params:
                click.echo(f"params: {files.params}")
    except MobileModelError as e:
        fail(e)


@click.command("estimate")
@click.option("--model", "family", required=True, type=click.Choice(_families()),
              help="Model family.")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Width multiplier.")
@click.option("--input-size", type=click.IntRange(32, 1024), default=224, show_default=True,
              help="Square input side (3 channels).")
@click.option("--classes", type=click.IntRange(min=2), default=1000, show_default=True)
@click.option("--variant", type=click.Choice(["float32", "int8"]), default="float32",
              show_default=True, help="float32, or int8 (full integer, post-training).")
@click.option("--device", "device_name", required=True, type=click.Choice(DEVICES.names()),
              help="Device profile.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Interpreter threads on the device (useful up to its big cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def estimate(family: str, alpha: float, input_size: int, classes: int, variant: str,
             device_name: str, threads: int, as_json: bool, quiet: bool) -> None:
    """Estimated latency of a model on a device (random weights; emulated run cached)."""
    try:
        from pipeline.latency.estimate import estimate_model
        from pipeline.latency.reference import ModelSpec

        spec = ModelSpec(family, alpha, input_size, classes, variant)
        r = estimate_model(spec, device_name, threads, log=logger(quiet))
        if as_json:
            click.echo(json.dumps(r, indent=2))
            return
        if not r["validated"]:
            band = "UNVALIDATED: this core's costs are assumed, not fitted (see the parameters file)"
        else:
            band = (f"leave-one-out error over {r['core_points']} published points of this core "
                    f"type: median {r['loo_median_abs_error_pct']:.1f}%, worst "
                    f"{r['loo_worst_abs_error_pct']:.1f}%")
            if r["device_points"] == 0:
                band += "; none of them on this device"
            if not r["variant_in_fit"]:
                band += f"; NO {spec.variant} point of this core type: the {spec.variant} estimate is unvalidated"
        click.echo(f"{r['device']} ({r['qemu_cpu']} at {r['clock_ghz']:g} GHz, {r['runtime']}, "
                   f"{r['threads']} thread{'s' if r['threads'] != 1 else ''}): {spec.label}")
        click.echo(f"  latency_ms     {r['latency_ms']:.2f}  ({band})")
        if r["threads"] > 1:
            click.echo(f"  1 thread       {r['latency_ms_single_thread']:.2f} ms; speed-up "
                       f"{r['thread_speedup']:.2f}x on {r['threads_effective']} big core(s)")
        click.echo(f"  instructions   {r['instructions']:,} per inference")
        click.echo("  by class       " + ", ".join(f"{k} {v:,}" for k, v in r["instructions_by_class"].items()))
        click.echo(f"  parameters     {r['params_file']} ({r['params_source']})")
        click.echo(f"  ({'cached run' if r['cached'] else 'emulated now'}, {r['wall_s']:.1f} s)")
    except MobileModelError as e:
        fail(e)

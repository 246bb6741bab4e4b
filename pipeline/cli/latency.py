"""Click commands of the latency model: ``calibrate`` and ``estimate``.

Added to the main CLI group with ``main.add_command(calibrate)`` and
``main.add_command(estimate)``. TensorFlow and the emulator are imported inside the
command bodies (through the latency package's lazy imports), so ``--help`` is instant.
"""

import json
from pathlib import Path
from typing import Any, Dict, Optional

import click

from models import MIN_INPUT_SIZE
from pipeline.cli.common import fail, join_cluster, logger, ray_option
from pipeline.devices.profiles import DEVICES
from pipeline.errors import ConfigError, MobileModelError, RuntimeIncompatibleError
from pipeline.latency.published import PUBLISHED_FORMATS
from pipeline.summary import LatencyEstimate


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
@click.option("--measured", is_flag=True,
              help="Also fit on the points measured on real devices (device run --target with "
                   "--device PROFILE; see device measured).")
@click.option("--json", "as_json", is_flag=True, help="Print the calibration as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
@ray_option("the reference runs the cache lacks (conversion and emulation of each published architecture)")
def calibrate(out: Optional[Path], published: Optional[Path], write_params: bool, matrix: bool,
              measured: bool, as_json: bool, quiet: bool, ray_address: Optional[str]) -> None:
    """Fit the latency model on published real-device latencies.

    Builds the published architectures (width 1.0, 224x224, 1000 classes, random
    weights; int8 by post-training quantization), runs each once on the emulated
    core of its device (cached), prices the executed blocks with the device's LLVM
    pipeline model, fits the model's global numbers on every published point (one and
    several threads), and reports errors fitted on all points and held out by point, by
    device and by architecture, float32 and int8 apart. Each core and numeric format with
    points is validated, and its estimates state the error held out by device on them. The
    installed package is never written to: the parameters go to --out (by default the
    user cache, which estimates then use; elsewhere, point $MOBILE_MODEL_LATENCY_PARAMS
    at the written params.yaml). With --measured, the points measured on real boards that
    name their emulated profile join the fit and every held-out split.
    """
    try:
        from pipeline.latency.calibrate import calibrate as run_calibration, write_calibration
        from pipeline.latency.calibration_report import report_data
        from pipeline.latency.published import load_published

        log = logger(quiet or as_json)
        join_cluster(ray_address, log)
        points = load_published(published)
        extra = []
        if measured:
            from pipeline.latency.measured import stored_points

            extra = stored_points(log)
        cal = run_calibration(points, log=log, matrix=matrix, measured=extra)
        files = write_calibration(cal, out, params=write_params, log=log)
        data = report_data(cal)
        if as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            acc, lodo = data["acceptance"], data["held_out"]["leave-one-device-out"]
            for name, split in data["held_out"].items():
                parts = [f"{g} {100 * s['median_abs_error']:.1f}% / {100 * s['worst_abs_error']:.1f}%"
                         for g, s in split["variant"].items()]
                click.echo(f"{name}: median / worst |error| {100 * split['all']['median_abs_error']:.1f}% / "
                           f"{100 * split['all']['worst_abs_error']:.1f}% ({'; '.join(parts)})")
            click.echo(f"acceptance (leave-one-device-out, worst point {lodo['all']['worst_point']}): "
                       f"{'met' if acc['met'] else 'NOT met'} over {len(data['points'])} points")
            click.echo(f"report: {files.report}\njson:   {files.json}")
            if files.params:
                click.echo(f"params: {files.params}")
    except MobileModelError as e:
        fail(e)


@click.command("estimate")
@click.option("--model", "family", type=click.Choice(_families()),
              help="Model family (or --model-file).")
@click.option("--model-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Any .tflite file instead of a family (run once on the device, random inputs).")
@click.option("--alpha", type=float, default=1.0, show_default=True, help="Width multiplier.")
@click.option("--input-size", type=click.IntRange(MIN_INPUT_SIZE, 1024), default=224, show_default=True,
              help="Square input side (3 channels).")
@click.option("--classes", type=click.IntRange(min=2), default=1000, show_default=True)
@click.option("--variant", type=click.Choice(PUBLISHED_FORMATS), default="float32",
              show_default=True, help="float32, or int8 (full integer, post-training).")
@click.option("--device", "device_name", required=True, type=click.Choice(DEVICES.names()),
              help="Device profile.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Interpreter threads on the device (useful up to its big cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def estimate(family: Optional[str], model_file: Optional[Path], alpha: float, input_size: int, classes: int,
             variant: str, device_name: str, threads: int, as_json: bool, quiet: bool) -> None:
    """Estimated latency of a model on a device: a family (random weights; emulated run
    cached) or any .tflite file (--model-file; run once).

    A model the device's runtime does not load is a result (no latency, the op it
    lacks), exit 0; an unreadable file is bad input, exit 2.
    """
    try:
        from pipeline.latency.estimate import estimate_file, estimate_model
        from pipeline.latency.reference import ModelSpec

        if (family is None) == (model_file is None):
            raise ConfigError("give exactly one of --model FAMILY or --model-file PATH")
        log = logger(quiet or as_json)
        if model_file is not None:
            label = model_file.name
            run = lambda: estimate_file(model_file, device_name, threads, log=log)  # noqa: E731
        else:
            spec = ModelSpec(family, alpha, input_size, classes, variant)
            label = spec.label
            run = lambda: estimate_model(spec, device_name, threads, log=log)  # noqa: E731
        try:
            r = run()
        except RuntimeIncompatibleError as e:
            if as_json:
                click.echo(json.dumps({"device": device_name, "model": label, "loaded": False,
                                       "load_error": str(e)}, indent=2))
            else:
                click.echo(f"{device_name}: {label}: NOT LOADABLE: {e}")
            return
        if as_json:
            click.echo(json.dumps(r, indent=2))
            return
        click.echo(_format_estimate(r, label))
    except MobileModelError as e:
        fail(e)


def _validation(error: Optional[Dict[str, Any]]) -> str:
    """How far off the model was on the points that validate this core and format."""
    if not error:
        return ""
    return (f": held out by device, {error['median_abs_error_pct']:g}% median and {error['worst_abs_error_pct']:g}% "
            f"worst error on the {error['points']} point(s) of this core and format")


def _format_estimate(r: Dict[str, Any], label: str) -> str:
    """The text form of an estimate: the latency (marked when unvalidated) and its provenance, then the run."""
    est = LatencyEstimate(r["latency_ms"], r["validated"], r["pipeline_model"], r["cycles_single_thread"], r["ipc"])
    ms, _, ipc, model = est.cells()
    return "\n".join([
        f"{r['device']} ({r['qemu_cpu']} at {r['clock_ghz']:g} GHz, {r['runtime']}, "
        f"{r['threads']} thread{'s' if r['threads'] != 1 else ''}): {label}",
        f"  latency_ms     {ms}  ({est.verdict}{_validation(r.get('validation_error'))})",
        f"  pipeline model {model}",
        f"  cycles         {est.cycles:,.0f} per inference on 1 thread, IPC {ipc}",
        f"  instructions   {r['instructions']:,} per inference",
        f"  parameters     {r['params_file']} ({r['params_source']})",
        f"  ({'cached run' if r['cached'] else 'emulated now'}, {r['wall_s']:.1f} s)"])

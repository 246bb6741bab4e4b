"""The ``mobile-model`` command line.

Thin commands: parse, build a config, call one pipeline function, map our errors
to an exit code and one clear line. TensorFlow is imported inside command bodies,
so ``--help`` is instant.
"""

import json
import os
import sys
import warnings
from pathlib import Path

import click

from pipeline.cli.devices import device, devices
from pipeline.errors import MobileModelError
from pipeline.cli.latency import calibrate, estimate
from pipeline.cli.gate import baseline, compare, report
from pipeline.cli.search import search

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up lines (oneDNN, "no CUDA driver") are noise on a CPU build machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", category=UserWarning, module=r"(tf_keras|tensorflow)\.")


class _Group(click.Group):
    """Maps our exceptions to one line on stderr and their exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MobileModelError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)


def _logger(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mobile-model")
def main():
    """Turn a labelled image data set into a small, verified TFLite model.

    Trains a MobileNet, prunes and quantization-aware-trains it, converts it to
    TFLite (float32, float16, dynamic-range, int8), evaluates every variant and
    runs it on emulated ARM devices.
    """


@main.command()
@click.argument("recipe")
@click.option("--smoke", is_flag=True, help="Tiny form of the recipe (32x32, few samples, one epoch).")
@click.option("--out", type=click.Path(path_type=Path), help="Build directory [build/<recipe name>].")
@click.option("--no-devices", is_flag=True, help="Skip the emulated-device checks.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final tables.")
@click.option("--json", "as_json", is_flag=True, help="Print the build summary as JSON on stdout.")
def build(recipe, smoke, out, no_devices, quiet, as_json):
    """Build RECIPE (a YAML file, or the name of an embedded recipe such as 'default').

    Exit codes: 0 built and every budget met; 1 a budget was missed (artifacts are
    still written); 2 bad recipe, data or model; 3 device runtime unavailable.
    """
    from pipeline.build import budget_summary, build as run_build, summary_table
    from pipeline.recipe.schema import load_recipe

    r = load_recipe(recipe, smoke=smoke)
    result = run_build(r, out=out, log=_logger(quiet), run_devices=not no_devices)
    if as_json:
        click.echo(json.dumps(result.metrics, indent=2, default=str))
    else:
        click.echo(f"\n## {r.build_name}: {result.root}  ({result.wall_s:.1f} s, "
                   f"{len(result.stages_run)} stage(s) run)\n")
        click.echo(summary_table(result.metrics))
        if result.metrics.get("devices"):
            from pipeline.devices.matrix import device_table

            click.echo("\n" + device_table(result.metrics))
        click.echo("\n### budgets\n")
        click.echo(budget_summary(result.budgets))
    if not result.budgets_ok:
        missed = [f"{c.budget}[{c.subject}]" for c in result.budgets if not c.ok]
        click.echo(f"error: budget missed: {', '.join(missed)} (artifacts kept in {result.root})", err=True)
        sys.exit(1)


@main.command()
@click.option("--alpha", default=1.0, show_default=True, help="Width multiplier.")
@click.option("--input-size", default=224, show_default=True)
@click.option("--classes", default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def models(alpha, input_size, classes, as_json):
    """List the model families with their parameters and multiply-accumulates."""
    from pipeline.train.zoo import family_names, model_summary

    rows = []
    for name in family_names():
        s = model_summary(name, alpha, input_size, classes)
        rows.append({"family": name, "params": s["params"], "macs": s["macs"]})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"width {alpha}, {input_size}x{input_size}x3, {classes} classes\n")
    click.echo(f"{'family':<22}{'params':>14}{'MACs':>16}")
    for r in rows:
        click.echo(f"{r['family']:<22}{r['params']:>14,}{r['macs']:>16,}")


@main.command()
def datasets():
    """List the registered data sets."""
    from pipeline.data import describe_datasets

    for name, text in describe_datasets():
        click.echo(f"{name:<16}{text}")


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def inspect(model, as_json):
    """Show a .tflite model: ops with versions, tensors, inputs/outputs, size."""
    from pipeline.tflite.inspect import describe_model, format_description

    desc = describe_model(model)
    click.echo(json.dumps(desc, indent=2) if as_json else format_description(desc))


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--recipe", help="Evaluate on this recipe's test split.")
@click.option("--smoke", is_flag=True, help="Use the recipe's smoke form.")
@click.option("--data", type=click.Path(path_type=Path), help="A folder data set (one sub-folder per class).")
@click.option("--json", "as_json", is_flag=True)
def evaluate(model, recipe, smoke, data, as_json):
    """Top-1 of MODEL.tflite on the host (LiteRT) over a recipe's test split or a folder."""
    from pipeline.tflite.inspect import evaluate_file

    res = evaluate_file(model, recipe=recipe, smoke=smoke, folder=data)
    if as_json:
        click.echo(json.dumps(res, indent=2))
    else:
        click.echo(f"{model}: top-1 {res['top1']:.2f}% on {res['samples']} images "
                   f"({res['source']}), {res['size_bytes'] / 1024:.1f} KiB")


main.add_command(devices)
main.add_command(device)
main.add_command(calibrate)
main.add_command(estimate)
main.add_command(compare)
main.add_command(baseline)
main.add_command(report)
main.add_command(search)


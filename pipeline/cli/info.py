"""Click commands that describe things without building: ``models``, ``datasets``, ``inspect``, ``evaluate``.

Added to the main CLI group with ``main.add_command(...)``. Heavy imports happen
inside the command bodies so that ``--help`` stays instant.
"""

from pathlib import Path

import click

from pipeline.cli.common import echo_json, fail
from pipeline.errors import ConfigError


@click.command()
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
        echo_json(rows)
        return
    click.echo(f"width {alpha}, {input_size}x{input_size}x3, {classes} classes\n")
    click.echo(f"{'family':<22}{'params':>14}{'MACs':>16}")
    for r in rows:
        click.echo(f"{r['family']:<22}{r['params']:>14,}{r['macs']:>16,}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the data sets as JSON.")
def datasets(as_json):
    """List the registered data sets."""
    from pipeline.data import describe_datasets

    rows = describe_datasets()
    if as_json:
        echo_json([{"name": name, "description": text} for name, text in rows])
        return
    for name, text in rows:
        click.echo(f"{name:<16}{text}")


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@click.option("--load", is_flag=True, help="Also load it into the host LiteRT (in an isolated process).")
def inspect(model, as_json, load):
    """Show a .tflite model without running it: ops with versions, custom ops, inputs/outputs
    with quantization, size, and which device runtimes can load it (or what they lack)."""
    from pipeline.devices.op_support import load_verdicts
    from pipeline.tflite.inspect import describe_model, format_description
    from pipeline.tflite.reader import read_tflite

    parsed = read_tflite(model)
    desc = describe_model(model, load=load, model=parsed)
    desc["runtimes"] = load_verdicts(parsed)
    if as_json:
        echo_json(desc)
    else:
        click.echo(format_description(desc))


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--recipe", help="Evaluate on this recipe's test split.")
@click.option("--smoke", is_flag=True, help="Use the recipe's smoke form.")
@click.option("--data", type=click.Path(path_type=Path), help="A folder data set (one sub-folder per class).")
@click.option("--json", "as_json", is_flag=True)
def evaluate(model, recipe, smoke, data, as_json):
    """Top-1 of MODEL.tflite on the host (LiteRT) over a recipe's test split or a folder."""
    from pipeline.tflite.inspect import evaluate_file

    if (recipe is None) == (data is None):
        fail(ConfigError("evaluate: give exactly one of --recipe RECIPE or --data FOLDER"))
    res = evaluate_file(model, recipe=recipe, smoke=smoke, folder=data)
    if as_json:
        echo_json(res)
    else:
        click.echo(f"{model}: top-1 {res['top1']:.2f}% on {res['samples']} images "
                   f"({res['source']}), {res['size_bytes'] / 1024:.1f} KiB")

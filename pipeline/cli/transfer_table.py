"""``mobile-model transfer-table``: scratch against transfer at a few images per class."""

import dataclasses
import json
from pathlib import Path

import click

from pipeline.cli.common import logger


def _counts(ctx, param, value):
    try:
        counts = [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated positive integers, got {value!r}") from None
    if not counts or min(counts) <= 0:
        raise click.BadParameter(f"expected comma-separated positive integers, got {value!r}")
    return counts


@click.command("transfer-table")
@click.argument("recipe")
@click.option("--per-class", default="5,10,20,50", show_default=True, callback=_counts,
              help="Training images per class, comma-separated: one scratch and one transfer build each.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("build"), show_default=True,
              help="Parent directory of the builds (<recipe>-n<N>-<scratch|transfer>).")
@click.option("--smoke", is_flag=True, help="Tiny form of the recipe (32x32, few samples, one epoch).")
@click.option("--devices", "run_devices", is_flag=True, help="Also run the recipe's emulated devices.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the table.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON on stdout.")
def transfer_table(recipe, per_class, out, smoke, run_devices, quiet, as_json):
    """Build RECIPE (one with model.init) at N training images per class, from its
    starting weights and from scratch, and print top-1 side by side (Markdown)."""
    from pipeline.recipe.load import load_recipe
    from pipeline.transfer_table import fewshot_markdown, fewshot_table

    r = load_recipe(recipe, smoke=smoke)
    rows = fewshot_table(r, per_class, out, run_devices=run_devices, log=logger(quiet or as_json))
    click.echo(json.dumps([dataclasses.asdict(row) for row in rows], indent=2) if as_json
               else fewshot_markdown(rows))

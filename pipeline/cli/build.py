"""``mobile-model build``: one recipe through every stage, then its tables and budgets.

Added to the main CLI group with ``main.add_command(build)``. The pipeline is
imported inside the command body so that ``--help`` stays instant.
"""

import json
import sys
from pathlib import Path

import click

from pipeline.cli.common import join_cluster, logger, ray_option
from pipeline.errors import EXIT_GATE_FAILED


@click.command()
@click.argument("recipe")
@click.option("--smoke", is_flag=True, help="Tiny form of the recipe (32x32, few samples, one epoch).")
@click.option("--out", type=click.Path(path_type=Path), help="Build directory [build/<recipe name>].")
@click.option("--data", "data_path", type=click.Path(path_type=Path),
              help="A folder of images, one sub-folder per class: the recipe's data becomes "
                   "'dataset: folder, path: DATA' (e.g. build photos --data ~/my-photos).")
@click.option("--no-devices", is_flag=True, help="Skip the emulated-device checks.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final tables.")
@click.option("--json", "as_json", is_flag=True, help="Print the build summary as JSON on stdout.")
@ray_option("the device matrix (every emulated run, and each real device's measurement on the node "
            "that advertises it)")
def build(recipe, smoke, out, data_path, no_devices, quiet, as_json, ray_address):
    """Build RECIPE (a YAML file, or the name of an embedded recipe such as 'default').

    A recipe with 'task: detection' (such as 'detect-shapes') builds an object detector
    (docs/detection.md).

    Exit codes: 0 built and every budget met; 1 a budget was missed (artifacts are
    still written); 2 bad recipe, data or model; 3 device runtime unavailable, or the
    Ray cluster (--ray) unreachable or without a node for a real device; 4 internal error
    (traceback in the log file named).
    """
    from pipeline.build import build as run_build
    from pipeline.cli.tables import budget_summary, summary_table
    from pipeline.recipe.load import load_recipe, recipe_task

    if recipe_task(recipe) == "detection":
        if ray_address:
            from pipeline.errors import ConfigError

            raise ConfigError("--ray runs a classifier build's device matrix on a cluster; a detection build "
                              "runs its devices on this machine")
        _build_detector(recipe, smoke, out, data_path, no_devices, quiet, as_json)
        return
    r = load_recipe(recipe, smoke=smoke, data_path=data_path)
    log = logger(quiet or as_json)
    join_cluster(ray_address, log)
    result = run_build(r, out=out, log=log, run_devices=not no_devices)
    summary = result.summary
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        click.echo(f"\n## {r.build_name}: {result.root}  ({result.wall_s:.1f} s, "
                   f"{len(summary.stages_run)} stage(s) run)\n")
        click.echo(summary_table(summary))
        if summary.devices:
            from pipeline.build.matrix import device_table

            click.echo("\n" + device_table(summary))
        click.echo("\n### budgets\n")
        click.echo(budget_summary(summary.budgets))
    if not summary.budgets_ok:
        missed = [f"{b.budget}[{b.subject}]" for b in summary.budgets if not b.ok]
        click.echo(f"error: budget missed: {', '.join(missed)} (artifacts kept in {result.root})", err=True)
        sys.exit(EXIT_GATE_FAILED)


def _build_detector(recipe, smoke, out, data_path, no_devices, quiet, as_json):
    """``build`` of a detection recipe: every stage, then the variant and stage tables."""
    from pipeline.build.detect import build_detector, default_detect_dir, deploy_table, stage_table, variant_table
    from pipeline.build.detect_config import load_detect_recipe
    from pipeline.errors import ConfigError

    if data_path is not None:
        raise ConfigError("--data takes a folder of class sub-folders (classifiers); a detection recipe names "
                          "its images and annotations in data.path and data.annotations")
    cfg = load_detect_recipe(recipe, smoke=smoke)
    root = Path(out) if out else default_detect_dir(cfg)
    result = build_detector(cfg, root, log=logger(quiet or as_json), run_devices=not no_devices)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        click.echo(f"\n## {cfg.build_name}: {root}  ({sum(result.stage_seconds.values()):.1f} s)\n")
        click.echo("\n".join(variant_table(result).markdown()))
        if result.variant(cfg.deploy_variant).devices:
            click.echo(f"\n### {cfg.deploy_variant} on every device\n")
            click.echo("\n".join(deploy_table(result).markdown()))
        click.echo("\n" + "\n".join(stage_table(result).markdown()))
        click.echo("\n### budgets\n")
        click.echo("\n".join(f"- missed: {f}" for f in result.budget_failures) or "- all met")
        if result.bundle is not None:
            click.echo(f"\nbundle: {root / result.bundle.path} (MediaPipe's ObjectDetector reports "
                       f"{result.bundle.agreement:.1%} of our {result.bundle.detections} detections)")
    if result.budget_failures:
        click.echo(f"error: budget missed: {'; '.join(result.budget_failures)} (artifacts kept in {root})", err=True)
        sys.exit(EXIT_GATE_FAILED)

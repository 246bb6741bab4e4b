"""Click commands for regression gates and reports: ``compare``, ``baseline``, ``report``.

Added to the main CLI group with ``main.add_command(...)``. Each command maps our
exceptions to one line on stderr and its exit code itself, so it behaves the
same inside any group. Heavy imports happen inside the command bodies.
"""

import json
import sys
from pathlib import Path

import click

from pipeline.cli.common import echo_json, fail, logger
from pipeline.errors import EXIT_GATE_FAILED, MobileModelError
from pipeline.gate.thresholds import THRESHOLDS


def _threshold_options(fn):
    """One ``--max-...`` option per row of :data:`pipeline.gate.thresholds.THRESHOLDS`."""
    for t in reversed(list(THRESHOLDS.values())):
        fn = click.option(t.option, t.name, type=float, default=None,
                          help=f"{t.help} [{t.unit}; default {t.default:g}]")(fn)
    return fn


@click.command("compare")
@click.argument("baseline", type=click.Path(path_type=Path))
@click.argument("current", type=click.Path(path_type=Path))
@_threshold_options
@click.option("--junit", "junit", type=click.Path(path_type=Path), help="Write JUnit XML (one test case per check).")
@click.option("--markdown", "markdown", type=click.Path(path_type=Path),
              help="Also write the Markdown table to this file (e.g. for a CI job summary).")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON instead of Markdown.")
def compare(baseline, current, junit, markdown, as_json, **thresholds):
    """Compare CURRENT with BASELINE for every variant and every variant x device.

    BASELINE and CURRENT are build directories, their summary.json or
    manifest.json, or a baseline file written by `mobile-model baseline`.
    Compares top-1, file size, gzip size (host) and loading, top-1,
    instructions per inference, estimated latency and peak memory (devices).
    A change counts as a regression when it is worse than
    max(absolute, relative x baseline); thresholds come from the options, else
    CURRENT's recipe `regressions:` mapping, else the baseline file's
    `thresholds`, else the defaults.

    Exit codes: 0 no regression; 1 one or more regressions; 2 unusable input.
    """
    from pipeline.gate.compare import compare_paths
    from pipeline.gate.junit import format_markdown, write_junit
    from pipeline.store.atomic import atomic_write_text

    try:
        comp = compare_paths(baseline, current, thresholds)
    except MobileModelError as exc:
        fail(exc)
    text = format_markdown(comp)
    if junit:
        write_junit(comp, junit)
    if markdown:
        atomic_write_text(markdown, text)
    click.echo(json.dumps(comp.to_dict(), indent=2) if as_json else text)
    if not comp.ok:
        regs = comp.regressions
        shown = ", ".join(f"{c.where}/{c.variant}/{c.metric}" for c in regs[:5])
        more = f" and {len(regs) - 5} more" if len(regs) > 5 else ""
        click.echo(f"error: {len(regs)} regression(s) against {baseline}: {shown}{more}", err=True)
        sys.exit(EXIT_GATE_FAILED)


@click.command("baseline")
@click.argument("build", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def baseline(build, out, as_json):
    """Write the baseline file OUT (e.g. baselines/default.json) from the build BUILD.

    BUILD is a build directory (or its summary.json / manifest.json). The file
    keeps the thresholds of an existing OUT. Review the diff and commit it to
    accept the new figures (see baselines/README.md).
    """
    from pipeline.gate.baseline import write_baseline

    try:
        snap = write_baseline(build, out)
    except MobileModelError as exc:
        fail(exc)
    pairs = sum(len(per) for per in snap.devices.values())
    if as_json:
        echo_json({"path": str(out), "name": snap.name, "variants": list(snap.variants),
                   "devices": list(snap.devices), "device_results": pairs})
    else:
        click.echo(f"wrote {out}: {snap.name}, {len(snap.variants)} variant(s), {len(snap.devices)} device(s), "
                   f"{pairs} device x variant result(s)")
    if not snap.devices:
        click.echo("warning: the build has no device results: device regressions will not be gated", err=True)


@click.command("report")
@click.argument("build", type=click.Path(path_type=Path))
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the written paths as a JSON list (no progress lines).")
def report(build, quiet, as_json):
    """Write report.md, report.html, plots/ and bundle/ again for the build directory BUILD.

    The build writes them itself; this re-renders them from summary.json,
    manifest.json and recipe.yaml (e.g. after a change to the report code).
    """
    from pipeline.publish.report import rewrite_report

    log = logger(quiet or as_json)
    try:
        paths = rewrite_report(build, log)
    except MobileModelError as exc:
        fail(exc)
    if as_json:
        echo_json([str(p) for p in paths])
        return
    for p in paths:
        click.echo(str(p))

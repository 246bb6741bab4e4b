"""The build report: ``report.md``, a self-contained ``report.html`` and ``plots/*.png``.

:func:`write_report` runs at the end of every build, before
:func:`pipeline.publish.bundle.write_bundle`. It only renders what the build
recorded: the :class:`pipeline.summary.BuildSummary`, ``manifest.json`` (data
counts, each stage's wall time and peak memory, the prune stage's per-layer
table), the kernels of the deploy variant's ``.tflite``, and the predictions
evaluation saved on the test split (the confusion matrix). It never loads the
data set or runs a model.

The report is one list of blocks (:mod:`pipeline.publish.document`) that renders
to Markdown and to HTML (:mod:`pipeline.publish.html`); plots come from
:mod:`pipeline.publish.plots`, sections from :mod:`pipeline.publish.sections`.
"""

from pathlib import Path
from typing import Dict, List

from pipeline.errors import DataError, Log
from pipeline.publish.bundle import assemble_bundle, write_bundle
from pipeline.publish.document import Plot, render_markdown
from pipeline.publish.html import render_html
from pipeline.publish.plots import (plot_accuracy_vs_cost, plot_confusion, plot_learning_curves, plot_sizes,
                                   plot_sparsity)
from pipeline.publish.records import in_recipe_order, read_build_record, saved_confusion, sparsity_rows
from pipeline.publish.sections import ReportInputs, build_document
from pipeline.store.atomic import atomic_write_bytes, atomic_write_text
from pipeline.summary import BuildSummary


def _gather(recipe, root: Path, summary: BuildSummary) -> ReportInputs:
    """Reads what the report shows besides the summary."""
    record = read_build_record(root)
    confusion, confusion_error = None, None
    try:
        confusion = saved_confusion(root, summary)
    except DataError as exc:  # e.g. a build from before evaluation saved its predictions
        confusion_error = f"the saved test predictions could not be read ({exc})"
    return ReportInputs(recipe=recipe, root=root, summary=summary, record=record,
                        bundle=assemble_bundle(recipe, root, summary),
                        sparsity=sparsity_rows(root, record, summary.deploy_variant),
                        confusion=confusion, confusion_error=confusion_error)


def _plots(inputs: ReportInputs) -> Dict[str, Plot]:
    s = inputs.summary
    plots = {"accuracy_vs_cost": plot_accuracy_vs_cost(s), "sizes": plot_sizes(s)}
    rows, source = inputs.sparsity
    if rows:
        prune = inputs.record.prune
        plots["sparsity"] = plot_sparsity(rows, source, prune.target_sparsity if prune else None)
    if inputs.confusion is not None:
        plots["confusion"] = plot_confusion(inputs.confusion, s.labels, s.deploy_variant)
    if inputs.record.curves:
        plots["learning_curves"] = plot_learning_curves(inputs.record.curves)
    return plots


def write_report(recipe, root: Path, summary: BuildSummary, log: Log = print) -> List[Path]:
    """Writes ``plots/*.png``, ``report.md`` and ``report.html`` of a build.

    Args:
        recipe: the build's recipe.
        root: the build directory.
        summary: the build's figures.
        log: progress output.

    Returns:
        The paths written (report.md, report.html, the plots).

    Raises:
        ModelFileError: the deploy variant's .tflite is missing or corrupt.
    """
    root = Path(root)
    inputs = _gather(recipe, root, in_recipe_order(recipe, summary))
    plots = _plots(inputs)
    doc = build_document(inputs, plots)
    written = []
    for plot in plots.values():
        path = root / "plots" / f"{plot.name}.png"
        atomic_write_bytes(path, plot.png)
        written.append(path)
    atomic_write_text(root / "report.md", render_markdown(doc))
    atomic_write_text(root / "report.html", render_html(doc, f"mobile-model report: {summary.recipe}"))
    log(f"[report] {root / 'report.html'} ({len(plots)} plots), {root / 'report.md'}")
    return [root / "report.md", root / "report.html"] + written


def rewrite_report(build_dir: "str | Path", log: Log = print) -> List[Path]:
    """Re-renders the report and re-writes the bundle of an existing build directory.

    Returns:
        The paths written (report.md, report.html, the plots, bundle/).

    Raises:
        MobileModelError: the directory is not a finished build, its summary or recipe
            is unreadable, or a model file differs from the one its manifest records.
    """
    import yaml

    from pipeline.errors import UnusableInputError
    from pipeline.recipe.schema import Recipe
    from pipeline.store.manifest import verify_recorded_models
    from pipeline.summary import load_summary

    root = Path(build_dir)
    if not (root / "summary.json").is_file():
        raise UnusableInputError(f"{root}: not a finished build (no summary.json)")
    if not (root / "recipe.yaml").is_file():
        raise UnusableInputError(f"{root}: not a build (no recipe.yaml)")
    try:
        summary = load_summary(root)
        recipe = Recipe.from_dict(yaml.safe_load((root / "recipe.yaml").read_text()))
    except DataError as exc:
        raise UnusableInputError(str(exc)) from None  # load_summary names the file and what is wrong
    except yaml.YAMLError as exc:
        raise UnusableInputError(f"{root}: unreadable recipe.yaml ({exc})") from None
    if not (root / "manifest.json").is_file():
        raise UnusableInputError(f"{root}: not a build (no manifest.json to check its models against)")
    # The bundle copies the deploy model and the report reads the kernels of the
    # build's models: only the files its manifest records.
    verify_recorded_models(root)
    written = write_report(recipe, root, summary, log)
    bundle = write_bundle(recipe, root, summary, log)
    return written + [bundle.path]

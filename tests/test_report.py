"""The build report (Markdown, self-contained HTML, plots) over a tiny synthetic build."""

import base64
import dataclasses
import json
import re
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli.gate import report as report_cmd
from pipeline.export.evaluate import labels_path, predictions_path
from pipeline.gate.compare import compare_paths
from pipeline.publish.bundle import write_bundle
from pipeline.publish.records import short_tensor_name
from pipeline.publish.report import rewrite_report, write_report
from pipeline.recipe.schema import Recipe
from pipeline.summary import UNVALIDATED_NOTE, BudgetResult
from tests.helpers.fake_builds import LABELS, LATENCY_MODEL, fake_build

PLOTS = ("accuracy_vs_cost", "sizes", "sparsity", "confusion")
# matplotlib 3.10 still calls pyparsing names that pyparsing 3.3 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated - use:DeprecationWarning")


def quiet(msg):
    pass


@pytest.fixture
def built(tmp_path):
    """A fake build published as the build publishes: the report, then the bundle."""
    recipe, summary = fake_build(tmp_path)
    write_report(recipe, tmp_path, summary, quiet)
    write_bundle(recipe, tmp_path, summary, quiet)
    return tmp_path, recipe, summary


def test_report_files(built):
    root, _, _ = built
    for name in ("report.md", "report.html", "bundle/model.tflite", "bundle/SHA256SUMS"):
        assert (root / name).is_file(), name
    assert sorted(p.stem for p in (root / "plots").glob("*.png")) == sorted(PLOTS)
    for p in (root / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_only_renders(tmp_path):
    recipe, summary = fake_build(tmp_path)
    written = write_report(recipe, tmp_path, summary, quiet)
    assert not (tmp_path / "bundle").exists()
    assert written == [tmp_path / "report.md", tmp_path / "report.html"] + [tmp_path / "plots" / f"{p}.png"
                                                                             for p in PLOTS]


def test_the_report_shows_the_bundle_the_build_writes(built):
    root, _, _ = built
    md = (root / "report.md").read_text()
    for line in (root / "bundle" / "SHA256SUMS").read_text().splitlines():
        sha, name = line.split("  ")
        size = (root / "bundle" / name).stat().st_size
        assert f"| `{name}` | {size:,} | `{sha[:16]}...` |" in md, name


# That publish never loads data or runs a model (its whole import chain) is the import-linter
# contract "publish-reads-files" (.importlinter; tests/test_layering.py checks it is there).


def test_html_is_self_contained(built):
    root, _, _ = built
    html = (root / "report.html").read_text()
    assert not re.search(r"""(src|href)=["'](https?:|//|file:)""", html)
    assert "<link" not in html and "<script" not in html
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(srcs) == len(PLOTS)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in srcs}
    assert embedded == {(root / "plots" / f"{p}.png").read_bytes() for p in PLOTS}


def test_markdown_sections(built):
    root, _, _ = built
    md = (root / "report.md").read_text()
    for text in ("# mobile-model build report: tiny", "**PASS: all 1 budget(s) met**", "## Variants (host)",
                 "## Budgets", "| max_top1_drop | int8-qat | <= 2 points | 2 points | ok |",
                 "## Devices (emulated ARM)", "| camera-a53 | int8-qat | **no: FULLY_CONNECTED v12** |",
                 "int8-qat on camera-a53 (tflite-runtime 2.14.0): Didn't find op for builtin opcode",
                 "![accuracy vs cost per device](plots/accuracy_vs_cost.png)", "## Per-layer sparsity",
                 "DepthwiseConv2D kernels are never pruned", "## Confusion matrix (int8-qat, test split)",
                 "## Bundle", "oldest tested runtime that loads it: litert 2.3.0"):
        assert text in md, text
    assert "Load failures" in md and "second line" not in md


@pytest.mark.parametrize("validated", [True, False])
def test_devices_and_budgets_show_latency_provenance_and_mark_unvalidated(tmp_path, validated):
    recipe, summary = fake_build(tmp_path, validated=validated)
    budget = BudgetResult(budget="max_latency_ms", subject="pixel4", limit=1.0, measured=0.42, unit="ms", ok=True)
    write_report(recipe, tmp_path, dataclasses.replace(summary, budgets=(budget,)), quiet)
    md, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    mark = "" if validated else "*"
    assert ("| device | variant | loads | top-1 % | M instr / inference | est. latency ms | M cycles (1 thread) | "
            "IPC | latency model | bit-exact vs host |") in md
    assert f"| pixel4 | **int8-qat** | yes | 50.0 | 1.000 | 0.42{mark} | 1.016 | 1.50 | {LATENCY_MODEL} | 100% |" in md
    assert f"| max_latency_ms | pixel4 | <= 1 ms | 0.42 ms{mark} | ok |" in md
    assert f'<td class="r">0.42{mark}</td>' in html and f'<td class="l">{LATENCY_MODEL}</td>' in html
    for text in (md, html):
        assert text.count(UNVALIDATED_NOTE) == (0 if validated else 3)  # under devices, budgets and the plot
    assert ("0.42*" in md) == (not validated)


def confusion_rows(md):
    section = md.split("## Confusion matrix", 1)[1].split("##", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| true")]
    return section, rows


def test_confusion_matrix_is_the_deploy_variant_on_the_test_split(built):
    root, _, summary = built
    tflite = root / "tflite" / "int8-qat.tflite"
    pred, truth = np.load(predictions_path(tflite)), np.load(labels_path(predictions_path(tflite)))
    assert (pred != np.load(predictions_path(root / "tflite" / "float32.tflite"))).any()
    md = (root / "report.md").read_text()
    section, rows = confusion_rows(md)
    assert [r.split(" | ")[0][2:] for r in rows] == LABELS
    counts = np.array([[int(c.strip("* ")) for c in r.split(" | ")[1:-1]] for r in rows])
    expected = np.zeros((10, 10), int)
    np.add.at(expected, (truth, pred), 1)
    assert (counts == expected).all()
    top1 = float(np.mean(pred == truth) * 100)
    assert f"Top-1 {top1:.2f}% over {len(pred)} images" in section


def test_sparsity_from_the_prune_stage(tmp_path):
    recipe, summary = fake_build(tmp_path)
    layers = [{"layer": "stem_conv", "kind": "Conv2D", "shape": [3, 3, 1, 16], "params": 144, "zeros": 0.5,
               "pruned": True, "note": ""},
              {"layer": "block1_depthwise", "kind": "DepthwiseConv2D", "shape": [3, 3, 16, 1], "params": 144,
               "zeros": 0.0, "pruned": False, "note": "tfmot never prunes DepthwiseConv2D"},
              {"layer": "logits", "kind": "Dense", "shape": [16, 10], "params": 160, "zeros": 0.5, "pruned": True,
               "note": ""}]
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"prune": {"wall_s": 3.0, "metrics": {
        "layers": layers, "sparsity": 0.5, "sparsity_all_kernels": 0.34, "target_sparsity": 0.5}}}}))
    write_report(recipe, tmp_path, summary, quiet)
    md = (tmp_path / "report.md").read_text()
    assert "Zeros in Conv2D/Dense kernels after pruning: 50.0% (target 50%); 34.0% including depthwise" in md
    assert "| block1_depthwise | DepthwiseConv2D | 3x3x16x1 | 144 | 0.0% | no (never pruned) |" in md
    assert "3 kernels (prune stage (Keras model after strip_pruning))" in md


def test_channel_pruning_costs_per_layer_and_per_step(tmp_path):
    """A channel-pruned build: the model's device cost before and after, MACs per layer with the
    latency each layer's steps removed, and every step with its cost and validation loss."""
    recipe, summary = fake_build(tmp_path)
    layers = [{"layer": "stem_conv", "channels_before": 24, "channels_after": 24, "macs_before": 200,
               "macs_after": 200, "share_before": .2, "share_after": .4},
              {"layer": "block1_depthwise", "channels_before": None, "channels_after": None, "macs_before": 200,
               "macs_after": 200, "share_before": .2, "share_after": .4},
              {"layer": "block1_pointwise_conv", "channels_before": 48, "channels_after": 16, "macs_before": 600,
               "macs_after": 100, "share_before": .6, "share_after": .2}]
    step = {"layer": "block1_pointwise_conv", "macs": 0, "latency_ms": 0, "proposals": [], "score": 0.1}
    steps = [dict(step, step=1, channels_before=48, channels_after=32, cost_before=0.8, cost=0.6,
                  instructions=2_000_000, loss_oneshot=0.52, top1_oneshot=80.0, loss=0.41, top1=85.5),
             dict(step, step=2, channels_before=32, channels_after=16, cost_before=0.6, cost=0.5,
                  instructions=1_500_000, loss_oneshot=0.61, top1_oneshot=77.25, loss=0.45, top1=84.0)]
    metrics = {"target": {"kind": "latency_ms", "budget": 0.55, "device": "pixel4", "threads": 1},
               "criterion": "l1_bn", "schedule_s": 321.0, "float_macs": 1000, "macs": 500, "layers": layers,
               "start": {"cost": 0.8, "macs": 1000, "latency_ms": 0.8, "instructions": 3_000_000, "loss": .4,
                         "top1": 86.0},
               "end": dict(steps[-1], macs=500, latency_ms=0.5), "steps": steps,
               "history": {"loss": [0.5], "accuracy": [0.8], "val_loss": [0.45], "val_accuracy": [0.84]}}
    (tmp_path / "manifest.json").write_text(json.dumps({"stages": {"channels": {"wall_s": 400.0,
                                                                                "metrics": metrics}}}))
    write_report(recipe, tmp_path, summary, quiet)
    md = (tmp_path / "report.md").read_text()
    section = md.split("## Channel pruning")[1].split("\n## ")[0]
    assert "estimated int8 latency <= 0.55 ms on pixel4 (one thread)" in section
    assert "ran 2 step(s) in 321 s" in section and "500 of the float model's 1,000 MACs (50.0%)" in section
    assert "| pixel4 instructions / inference | 3,000,000 | 1,500,000 | 50.0% |" in section
    assert "| pixel4 est. latency ms | 0.800 | 0.500 | 62.5% |" in section
    assert "| block1_pointwise_conv | 48 -> 16 | 600 | 100 | 60.0% | 20.0% | 0.300 | 100.0% |" in section
    assert "| stem_conv | 24 | 200 | 200 | 20.0% | 40.0% |  |  |" in section
    assert "| block1_depthwise |  | 200 | 200 | 20.0% | 40.0% |  |  |" in section
    assert "| 2 | block1_pointwise_conv | 32 -> 16 | 0.600 | 0.500 | 1,500,000 | 0.6100 | 0.4500 | 77.25 | 84.00 |" \
        in section
    assert "Per-layer device instructions are not measured" in section
    assert "| channels | 1 |" in md  # its fine-tune is a training stage with a curve


def stages_section(md):
    return md.split("## Stages", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("peaks", [True, False], ids=["with-peaks", "older-manifest"])
def test_stages_table_shows_wall_time_and_peak_memory(tmp_path, peaks):
    """Each stage with its wall time and peak RSS, the data step first; an older manifest
    (no peaks, a data record without figures) shows "-" and no data row."""
    recipe, summary = fake_build(tmp_path)  # stages_run: train

    def figures(wall, mb):
        return {"wall_s": wall, "peak_rss_mb": mb} if peaks else {"wall_s": wall}

    finished = "2026-01-01T10:00:00+0000"
    data = {"counts": {"train": 40, "val": 20, "test": 50}, **(figures(1.5, 310.4) if peaks else {})}
    (tmp_path / "manifest.json").write_text(json.dumps({"data": data, "stages": {
        "train": {**figures(12.4, 812.4), "finished_at": finished},
        "convert/int8-qat": {**figures(3.0, 1530.0), "finished_at": finished}}}))
    write_report(recipe, tmp_path, summary, quiet)
    md, html = (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()
    section = stages_section(md)
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| stage")]
    assert "| stage | wall s | peak RSS MiB | this build | finished |" in section
    assert '<th class="r">peak RSS MiB</th>' in html
    if peaks:
        assert rows == ["| data | 1.5 | 310 | ran |  |", f"| train | 12.4 | 812 | ran | {finished} |",
                        f"| convert/int8-qat | 3.0 | 1,530 | cached | {finished} |"]
        assert "2 stages, 1 run in this build, 17 s recorded, peak RSS 1,530 MiB" in section
        assert '<td class="l">data</td><td class="r">1.5</td><td class="r">310</td>' in html
    else:
        assert rows == [f"| train | 12.4 | - | ran | {finished} |",
                        f"| convert/int8-qat | 3.0 | - | cached | {finished} |"]
        assert "2 stages, 1 run in this build, 15 s recorded:" in section
        assert '<td class="l">train</td><td class="r">12.4</td><td class="r">-</td>' in html
    assert '<td class="l muted">cached</td>' in html


def test_without_devices_or_data_set(tmp_path):
    """The data set may be gone: the report reads the predictions evaluation saved."""
    recipe, summary = fake_build(tmp_path, devices=False)
    recipe = Recipe.from_dict({**recipe.to_dict(), "data": {"dataset": "folder", "path": str(tmp_path / "gone")}})
    write_report(recipe, tmp_path, summary, quiet)
    md = (tmp_path / "report.md").read_text()
    assert "This build ran no emulated devices" in md
    assert "accuracy vs size" in md
    assert "## Confusion matrix (int8-qat, test split)" in md
    assert (tmp_path / "plots" / "confusion.png").is_file()


@pytest.mark.parametrize("damage, message", [
    (lambda t: predictions_path(t).unlink(), "no saved predictions ("),
    (lambda t: labels_path(predictions_path(t)).unlink(), "no saved test labels ("),
    (lambda t: predictions_path(t).write_bytes(b"garbage"), "unreadable saved predictions"),
    (lambda t: np.save(predictions_path(t), np.zeros(3, np.int64)), "3 saved predictions for 50 test labels"),
    (lambda t: np.save(predictions_path(t), np.full(50, 10, np.int64)),
     "saved predictions or test labels outside the 10 classes"),
])
def test_without_usable_saved_predictions(tmp_path, damage, message):
    recipe, summary = fake_build(tmp_path)
    damage(tmp_path / "tflite" / "int8-qat.tflite")
    write_report(recipe, tmp_path, summary, quiet)
    md = (tmp_path / "report.md").read_text()
    assert "No confusion matrix: the saved test predictions could not be read (" in md
    assert message in md
    assert "## Confusion matrix" not in md
    assert not (tmp_path / "plots" / "confusion.png").exists()


def test_report_is_reproducible(built):
    root, recipe, summary = built
    first = (root / "report.html").read_bytes()
    write_report(recipe, root, summary, quiet)
    assert (root / "report.html").read_bytes() == first


def _record_models(root):
    """A manifest recording the fake build's .tflite files as a build's convert stages do."""
    from pipeline.store.atomic import sha256_file

    stages = {f"convert/{p.stem}": {"outputs": {"tflite": {"path": f"tflite/{p.name}", "sha256": sha256_file(p)}}}
              for p in (root / "tflite").glob("*.tflite")}
    (root / "manifest.json").write_text(json.dumps({"stages": stages}))


def test_report_command_rerenders_a_build(built):
    root, recipe, _ = built
    (root / "recipe.yaml").write_text(json.dumps(recipe.to_dict()))  # YAML is a superset of JSON
    (root / "report.html").unlink()
    res = CliRunner().invoke(report_cmd, [str(root), "-q"])
    assert res.exit_code == 2
    assert res.output == f"error: {root}: not a build (no manifest.json to check its models against)\n"
    _record_models(root)
    (root / "bundle" / "MODEL_CARD.md").unlink()
    res = CliRunner().invoke(report_cmd, [str(root), "-q"])
    assert res.exit_code == 0, res.output
    assert (root / "report.html").is_file() and (root / "bundle" / "MODEL_CARD.md").is_file()
    assert str(root / "report.html") in res.output
    assert res.output.splitlines()[-1] == str(root / "bundle")


def test_report_command_on_a_non_build(tmp_path):
    res = CliRunner().invoke(report_cmd, [str(tmp_path)])
    assert res.exit_code == 2
    assert res.output == f"error: {tmp_path}: not a finished build (no summary.json)\n"
    with pytest.raises(Exception, match="no summary.json"):
        rewrite_report(tmp_path)


def test_report_command_on_a_summary_of_another_schema(built):
    root, recipe, _ = built
    (root / "recipe.yaml").write_text(json.dumps(recipe.to_dict()))
    _record_models(root)
    data = json.loads((root / "summary.json").read_text())
    (root / "summary.json").write_text(json.dumps({**data, "schema_version": 0}))
    res = CliRunner().invoke(report_cmd, [str(root), "-q"])
    assert res.exit_code == 2
    assert "schema_version 0 is not the supported" in res.output


@pytest.mark.parametrize("name, layer", [
    ("mobilenet_v2/quant_stem_conv/Conv2D;mobilenet_v2/quant_stem_conv/LastValueQuant/FakeQuantWithMinMaxVars",
     "stem_conv"),
    ("mobilenet_v2/block1_depthwise_bn/FusedBatchNormV3;mobilenet_v2/block1_depthwise/depthwise",
     "block1_depthwise"),
    ("mobilenet_v2/logits/MatMul", "logits"),
    ("kernel", "kernel"),
])
def test_short_tensor_name(name, layer):
    assert short_tensor_name(name) == layer


# -- the real thing: one smoke build of the default recipe (shared session fixture) --------


@pytest.mark.integration
def test_smoke_build_report_bundle_and_self_compare(smoke_build):
    from pipeline.tflite.reader import read_tflite

    root = smoke_build.root
    html = (root / "report.html").read_text()
    # accuracy vs cost, sizes, sparsity, confusion matrix, learning curves
    assert html.count("data:image/png;base64,") == 5
    assert "learning curves" in html
    # The confusion matrix is the deploy variant's saved evaluation: its top-1 is the summary's.
    summary = smoke_build.summary
    section, rows = confusion_rows((root / "report.md").read_text())
    assert f"Top-1 {summary.variants[summary.deploy_variant].top1:.2f}% over" in section
    assert len(rows) == len(summary.labels)
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=root / "bundle", capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    meta = json.loads((root / "bundle" / "metadata.json").read_text())
    deploy = summary.deploy_variant
    ops = read_tflite(root / "tflite" / f"{deploy}.tflite").op_versions()
    assert [(o["op"], o["version"]) for o in meta["ops"]] == ops
    assert set(meta["devices"]) == set(summary.devices)
    comp = compare_paths(root, root / "manifest.json")
    assert comp.ok, [c.message for c in comp.regressions]
    assert all(c.delta == 0 for c in comp.checks if c.metric == "instructions_per_inference")


def test_every_variant_has_its_own_colour():
    from pipeline.publish.plots import VARIANT_COLORS
    from pipeline.variants import VARIANTS

    assert set(VARIANT_COLORS) == set(VARIANTS.names())
    assert len(set(VARIANT_COLORS.values())) == len(VARIANT_COLORS)

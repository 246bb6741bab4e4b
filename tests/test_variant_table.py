"""The one table renderer and the one per-variant table the terminal and the report share."""

from pipeline.publish.variant_table import (COLUMNS, REPORT_COLUMNS, TERMINAL_COLUMNS, variant_description,
                                            variant_table)
from pipeline.summary import SCHEMA_VERSION, BuildSummary
from pipeline.table import Table


def _summary() -> BuildSummary:
    io = {"dtype": "float32", "shape": [1, 32, 32, 1], "scale": [], "zero_point": []}
    variants = {}
    for name, size, top1 in (("float32", 1_200_000, 91.0), ("int8-qat", 300_000, 90.5)):
        variants[name] = {"top1": top1, "agreement_with_float": 99.125, "size_bytes": size,
                          "gzip_bytes": size // 2, "zeros_prunable": 0.5, "zeros_all_kernels": 0.45,
                          "max_unique_per_kernel": 256, "input": io, "output": {**io, "shape": [1, 10]},
                          "kernels": [], "ops": ["CONV_2D:v1", "SOFTMAX:v1"],
                          "validation": {"validation_max_abs_diff": 0.0, "validation_agreement": 1.0,
                                         "validation_samples": 16, "size_bytes": size},
                          "macs": 1000, "path": f"tflite/{name}.tflite", "chain": "float", "samples": 100,
                          "predictions": f"tflite/{name}.pred.npy", "source_top1": 91.25 if name == "float32" else None}
    return BuildSummary.from_dict({
        "recipe": "t", "float_top1": 91.25, "params": 1000, "macs": 1000, "deploy_variant": "int8-qat",
        "labels": [str(i) for i in range(10)], "variants": variants, "devices": {}, "budgets": [],
        "stages_run": [], "schema_version": SCHEMA_VERSION})


def test_a_short_row_leaves_the_rest_empty_and_a_bar_in_a_cell_is_escaped():
    lines = Table(["a", "b", "c"], [["x", "FAIL: a|b"], ["1", "2", "3"]]).markdown()
    assert lines == ["| a | b | c |", "|---|---:|---:|", "| x | FAIL: a\\|b | |", "| 1 | 2 | 3 |"]


def test_the_terminal_and_the_report_show_one_variant_table():
    s = _summary()
    assert set(TERMINAL_COLUMNS) | set(REPORT_COLUMNS) <= set(COLUMNS)
    terminal = variant_table(s, TERMINAL_COLUMNS).markdown()
    assert terminal[:2] == ["| variant | from | size KiB | gzip KiB | top-1 % | vs source | agree w/ float % | "
                            "zeros (prunable) | distinct/channel (max) |",
                            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    # vs source: top-1 against the Keras model the variant was converted from; "-" where none was recorded.
    assert terminal[2] == "| float32 | float | 1171.9 | 585.9 | 91.00 | -0.25 | 99.12 | 50.0% | 256 |"
    assert terminal[3] == "| int8-qat | float | 293.0 | 146.5 | 90.50 | - | 99.12 | 50.0% | 256 |"
    report = variant_table(s, REPORT_COLUMNS)  # the report's "Variants (host)" table
    assert report.headers == ["variant", "what", "size KiB", "gzip KiB", "x float32", "top-1 %", "vs float",
                              "vs source", "agree %", "zeros (prunable)", "in / out", "ops"]
    assert report.rows[1][:2] == ["**int8-qat**", (variant_description("int8-qat"), "wrap")]
    assert report.markdown()[2] == ("| float32 | float32, as trained | 1,171.9 | 585.9 | 1.00 | 91.00 | -0.25 | "
                                    "-0.25 | 99.1 | 50.0% | float32 / float32 | 2 |")
    assert variant_description("no-such-variant") == ""

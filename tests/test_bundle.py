"""The deployable bundle over a tiny hand-made .tflite and a synthetic build summary."""

import dataclasses
import hashlib
import json
import subprocess

import pytest

from pipeline.errors import ModelFileError
from pipeline.publish.bundle import (FILES, MODEL_FILE, PLAIN_MODEL_FILE, runtime_sort_key, runtime_support,
                                     write_bundle)
from pipeline.publish.tflite_metadata import read_metadata
from pipeline.tflite.reader import read_tflite
from pipeline.summary import UNVALIDATED_NOTE
from tests.helpers.fake_builds import LABELS, LATENCY_MODEL, device_rec, fake_build

def test_bundle_contents_and_checksums(tmp_path):
    recipe, summary = fake_build(tmp_path)
    info = write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    bundle = tmp_path / "bundle"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(FILES)
    assert (bundle / PLAIN_MODEL_FILE).read_bytes() == (tmp_path / "tflite" / "int8-qat.tflite").read_bytes()
    # The embedded-metadata model: a grey float model behind an RGB front, labels packed inside.
    with_md = read_tflite(bundle / MODEL_FILE)
    assert list(with_md.tensors[with_md.inputs[0]].shape) == [1, 32, 32, 3]
    assert read_metadata((bundle / MODEL_FILE).read_bytes())["associated_files"]["labels.txt"].split() == LABELS
    assert (bundle / "labels.txt").read_text().splitlines() == LABELS
    r = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=bundle, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert sorted(line.split(": ")[0] for line in r.stdout.splitlines()) == sorted(set(FILES) - {"SHA256SUMS"})
    assert set(info.files) == set(FILES) and info.path == bundle
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no staging left behind
    assert {oct(p.stat().st_mode & 0o777) for p in bundle.iterdir()} == {"0o644"}


def test_metadata_describes_input_ops_runtimes_and_devices(tmp_path):
    recipe, summary = fake_build(tmp_path)
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    meta = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    assert meta["variant"] == "int8-qat" and meta["model_file"] == MODEL_FILE
    assert meta["input"]["shape"] == [1, 32, 32, 1] and meta["input"]["dtype"] == "int8"
    assert meta["input"]["normalization"] == {"range": [0.0, 1.0], "formula": "x = pixel / 255",
                                              "mean": [0.0], "std": [255.0]}
    assert meta["input"]["quantization"] == {"scale": [0.00392157], "zero_point": [-128]}
    assert meta["ops"] == [{"op": "FULLY_CONNECTED", "version": 1}, {"op": "RESHAPE", "version": 1},
                           {"op": "SOFTMAX", "version": 1}]
    rt = meta["runtimes"]
    assert rt["minimum"] == "litert 2.3.0"
    assert rt["note"] == ("oldest tested runtime that loads it: litert 2.3.0; fails on tflite-runtime 2.14.0 "
                          "(FULLY_CONNECTED v12)")
    [failing] = [t for t in rt["tested"] if not t["loads"]]
    assert failing["devices"] == ["camera-a53"] and failing["error"].endswith("version '12'.")
    pixel4 = meta["devices"]["pixel4"]
    assert (pixel4["estimated_latency_ms"], pixel4["latency_validated"], pixel4["latency_model"],
            pixel4["latency_cycles"], pixel4["latency_ipc"]) == (0.42, True, LATENCY_MODEL, 0.42 * 2.42e6, 1.5)
    assert [k for k in pixel4 if "latency" in k] == ["estimated_latency_ms", "latency_validated", "latency_model",
                                                     "latency_cycles", "latency_ipc"]
    assert meta["devices"]["pixel4"]["emulated_cpu"] == "cortex-a76"
    assert meta["devices"]["camera-a53"]["loads"] is False
    assert meta["embedded_tflite_metadata"] is True and meta["model_without_metadata_file"] == PLAIN_MODEL_FILE
    md = meta["tflite_metadata"]
    assert (md["name"], md["input_shape"], md["color_space"], md["normalization"], md["labels_file"], md["output"],
            md["rgb_front"], md["mediapipe_tasks"]) == ("tiny (int8-qat)", [1, 32, 32, 3], "RGB",
                                                        {"mean": [0.0] * 3, "std": [255.0] * 3}, "labels.txt",
                                                        "FeatureProperties", True, True)
    assert md["writer"].startswith("MediaPipe metadata_writers (mediapipe 0.10.21")
    assert md["sha256"] == hashlib.sha256((tmp_path / "bundle" / MODEL_FILE).read_bytes()).hexdigest()
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    for text in ("# Model card: tiny (int8-qat)", "x = pixel / 255", "takes RGB [1, 32, 32, 3]",
                 f'Interpreter(model_path="{PLAIN_MODEL_FILE}")', "zero point [-128]", "sha256sum -c SHA256SUMS",
                 "| pixel4: ", "no (FULLY_CONNECTED v12)", "labels.txt"):
        assert text in card


@pytest.mark.parametrize("validated", [True, False])
def test_model_card_shows_latency_provenance_and_marks_unvalidated(tmp_path, validated):
    recipe, summary = fake_build(tmp_path, validated=validated)
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert json.loads((tmp_path / "bundle" / "metadata.json").read_text())[
        "devices"]["pixel4"]["latency_validated"] is validated
    assert "| est. latency ms | M cycles (1 thread) | IPC | latency model | memory MiB |" in card
    mark = "" if validated else "*"
    assert f"| 50.0 | 1.000 | 0.42{mark} | 1.016 | 1.50 | {LATENCY_MODEL} | 0.19 |" in card
    assert ("0.42*" in card) == (not validated) and (UNVALIDATED_NOTE in card) == (not validated)


def test_float_model_without_devices(tmp_path):
    recipe, summary = fake_build(tmp_path, devices=False, deploy="float32")
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    meta = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    assert meta["input"]["quantization"] is None and meta["output"]["quantization"] is None
    assert meta["runtimes"] == {"tested": [], "minimum": None,
                                "note": "not run on any emulated device runtime (build without devices)"}
    assert "No emulated-device results" in (tmp_path / "bundle" / "MODEL_CARD.md").read_text()


def test_rewriting_replaces_the_whole_bundle(tmp_path):
    recipe, summary = fake_build(tmp_path)
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    (tmp_path / "bundle" / "stale.txt").write_text("old")
    write_bundle(recipe, tmp_path, dataclasses.replace(summary, deploy_variant="float32"), log=lambda m: None)
    assert not (tmp_path / "bundle" / "stale.txt").exists()
    plain = (tmp_path / "bundle" / PLAIN_MODEL_FILE).read_bytes()
    assert plain == (tmp_path / "tflite" / "float32.tflite").read_bytes()


def test_missing_or_corrupt_model_is_a_model_file_error(tmp_path):
    recipe, summary = fake_build(tmp_path)
    (tmp_path / "tflite" / "int8-qat.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="not a TFLite model"):
        write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    (tmp_path / "tflite" / "int8-qat.tflite").unlink()
    with pytest.raises(ModelFileError, match="model file not found"):
        write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("loads, minimum, note", [
    ({"tflite-runtime 2.14.0": True, "litert 2.3.0": True}, "tflite-runtime 2.14.0",
     "oldest tested runtime that loads it: tflite-runtime 2.14.0 (every tested runtime loads it)"),
    ({"tflite-runtime 2.14.0": False, "litert 2.3.0": False}, None, "no tested device runtime loads it"),
    ({"litert 2.3.0": False, "litert 1.4.0": True}, "litert 1.4.0",
     "oldest tested runtime that loads it: litert 1.4.0; also fails on newer litert 2.3.0 (X v12)"),
])
def test_runtime_support(loads, minimum, note):
    devices = {f"d{i}": {"m": device_rec(ok, rt, op=None if ok else "X")} for i, (rt, ok) in enumerate(loads.items())}
    sup = runtime_support(devices, "m")
    assert sup["minimum"] == minimum and sup["note"] == note


def test_runtime_order_follows_the_lineage():
    names = ["litert 2.3.0", "tflite-runtime 2.14.0", "litert 1.10.0", "tflite-runtime 2.5.0"]
    assert sorted(names, key=runtime_sort_key) == ["tflite-runtime 2.5.0", "tflite-runtime 2.14.0",
                                                   "litert 1.10.0", "litert 2.3.0"]


def test_a_genotype_build_names_its_architecture_in_the_card(tmp_path):
    from models.genotype import named

    recipe, summary = fake_build(tmp_path, devices=False, deploy="float32")
    g = named("mobilenet_v3_small", 0.5)
    recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, family="mbconv", alpha=1.0,
                                                                   genotype=g.to_dict()))
    write_bundle(recipe, tmp_path, summary, log=lambda m: None)
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert f"block-level genotype `{g.key()}`, {len(g.stages)} stages, 11 blocks" in card
    assert f"    {g.text()}" in card
    meta = json.loads((tmp_path / "bundle" / "metadata.json").read_text())
    assert meta["architecture"]["genotype"] == g.to_dict()

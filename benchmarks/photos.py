"""Photos at real resolution: a whole build over N synthetic 256x256 JPEGs at 224x224x3.

    python benchmarks/photos.py --images 2000 10000 40000 [--work DIR] [--out results.json]
    python benchmarks/photos.py --throughput [--images 2000]   # training images/s only

For each N it generates N JPEGs (10 class folders; each class a coloured figure on a
textured background, so the model has something to learn), then runs, each in a
fresh process measured with ``wait4`` (peak RSS of that process):

1. ``mobile-model build`` of a recipe at 224x224x3, MobileNetV2-0.35, one float
   epoch, float32 and int8-ptq, one emulated device (``pixel4``), on an empty image
   cache: decode + cache rate (the manifest's ``data.loading``), whole-build wall
   time and peak RSS, and each stage's wall time and peak RSS (the manifest);
2. the same build again with nothing changed: its wall time.

``--throughput`` measures training images/s of the pipeline's streaming input
(:func:`pipeline.train.fit.fit` over the decoded-image cache) against a plain
``model.fit`` over an in-memory ``tf.data`` pipeline of the same uint8 images
(``from_tensor_slices`` -> cast -> batch -> prefetch), same model, batch and
images, augmentation off, alternating A/B/A/B in one process: the ratio is what
counts, absolute times on a shared machine are noisy.

Nothing here is a test: it prints a table and writes JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 10


def _write_images(args):
    root, start, stop, seed = args
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, start])
    for i in range(start, stop):
        k = i % CLASSES
        path = Path(root) / f"class{k:02d}" / f"{i:06d}.jpg"
        if path.exists():
            continue
        base = rng.integers(0, 256, 3)
        noise = rng.normal(0, 24, (256, 256, 3))
        grad = np.linspace(0, 60, 256)[None, :, None] * rng.uniform(-1, 1)
        img = np.clip(base[None, None, :] * 0.5 + noise + grad + 40, 0, 255).astype(np.uint8)
        im = Image.fromarray(img, "RGB")
        draw = ImageDraw.Draw(im)
        colour = tuple(int(v) for v in (np.array([(k * 97) % 256, (k * 57) % 256, (k * 151) % 256])))
        cx, cy, r = rng.integers(60, 196), rng.integers(60, 196), rng.integers(25, 55)
        box = (cx - r, cy - r, cx + r, cy + r)
        shape = k % 3
        if shape == 0:
            draw.ellipse(box, fill=colour)
        elif shape == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
        im.save(path, quality=90)


def generate(root: Path, n: int, seed: int = 0) -> float:
    """N JPEGs of 256x256 in CLASSES folders under ``root`` (existing files are kept); seconds taken."""
    t0 = time.perf_counter()
    for k in range(CLASSES):
        (root / f"class{k:02d}").mkdir(parents=True, exist_ok=True)
    step = 500
    jobs = [(str(root), s, min(n, s + step), seed) for s in range(0, n, step)]
    with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(_write_images, jobs))
    return time.perf_counter() - t0


RECIPE = """# python benchmarks/photos.py (written by it)
name: photos-bench-{n}
seed: 0
data: {{dataset: folder, path: {path}}}
model: {{family: mobilenet_v2, alpha: 0.35, input_size: 224, channels: 3, first_stride: 2}}
train: {{epochs: 1, batch_size: 64, learning_rate: 0.003, augment: {{enabled: false}}}}
prune: {{enabled: false}}
qat: {{enabled: false}}
convert: {{variants: [float32, int8-ptq]}}
devices: {{targets: [pixel4], samples: 8}}
deploy_variant: int8-ptq
"""


def _run_measured(cmd, env) -> dict:
    """Runs ``cmd``; returns its exit code, wall time and ``wait4``'s peak RSS (MiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "tail": out[-3000:]}


def bench_build(n: int, work: Path) -> dict:
    photos = work / f"photos-{n}"
    gen_s = generate(photos, n)
    recipe = work / f"photos-bench-{n}.yaml"
    recipe.write_text(RECIPE.format(n=n, path=photos))
    out = work / f"build-{n}"
    cache = work / f"image-cache-{n}"
    env = {**os.environ, "MOBILE_MODEL_IMAGE_CACHE": str(cache), "TF_USE_LEGACY_KERAS": "1",
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}
    cmd = [str(ROOT / ".venv" / "bin" / "mobile-model"), "build", str(recipe), "--out", str(out)]
    first = _run_measured(cmd, env)
    if first["rc"] not in (0, 1):
        raise SystemExit(f"build of {n} images failed (exit {first['rc']}):\n{first['tail']}")
    manifest = json.loads((out / "manifest.json").read_text())
    again = _run_measured(cmd, env)
    loading = manifest["data"].get("loading", {})
    stages = {name: {"wall_s": rec.get("wall_s"), "peak_rss_mb": rec.get("peak_rss_mb")}
              for name, rec in manifest["stages"].items()}
    # The build's own whole-process peak (its per-stage resets also reset what wait4 reports).
    first["peak_rss_mib"] = manifest["summary"]["peak_rss_mb"]
    return {"images": n, "generate_s": round(gen_s, 1), "build": first, "rerun": again,
            "decode": loading, "data": {k: manifest["data"].get(k) for k in ("wall_s", "peak_rss_mb")},
            "stages": stages}


def throughput(n: int, work: Path, rounds: int = 2, batch: int = 64) -> dict:
    """Training images/s: the pipeline's fit over the image cache vs plain model.fit on tf.data."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    photos = work / f"photos-{n}"
    generate(photos, n)
    os.environ.setdefault("MOBILE_MODEL_IMAGE_CACHE", str(work / f"image-cache-{n}"))
    sys.path.insert(0, str(ROOT))
    from pipeline.data import load_dataset
    from pipeline.recipe.load import load_recipe
    from pipeline.train.fit import compile_model, fit, setup_tensorflow
    from pipeline.train.schedule import Plan
    from pipeline.train.stage import build_float_model

    recipe_path = work / f"photos-bench-{n}.yaml"
    recipe_path.write_text(RECIPE.format(n=n, path=photos))
    recipe = load_recipe(str(recipe_path))
    setup_tensorflow(0)
    import tensorflow as tf

    splits = load_dataset(recipe.data, recipe.model.input_shape, 0, print)
    x_u8 = splits.x_train.uint8(slice(None))  # the same images, held in memory for the plain pipeline
    y = splits.y_train
    steps = int(np.ceil(len(y) / batch))

    def model():
        m = build_float_model(recipe, splits.num_classes)
        compile_model(m, 0.003, steps * 2)
        return m

    def ours():
        m = model()
        run = fit(m, splits, plan=Plan(2), batch_size=batch, label="bench", log=lambda s: None)
        return len(y) / run["epoch_seconds"][1]

    def plain():
        m = model()
        ds = (tf.data.Dataset.from_tensor_slices((x_u8, y))
              .map(lambda a, b: (tf.cast(a, tf.float32) / 255.0, b), num_parallel_calls=tf.data.AUTOTUNE)
              .batch(batch).prefetch(tf.data.AUTOTUNE))
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            m.fit(ds, epochs=1, verbose=0)
            times.append(time.perf_counter() - t0)
        return len(y) / times[1]

    a, b = [], []
    for r in range(rounds):
        a.append(ours())
        b.append(plain())
        print(f"round {r + 1}: pipeline {a[-1]:.1f} images/s, plain model.fit {b[-1]:.1f} images/s", flush=True)
    return {"train_images": int(len(y)), "batch": batch, "pipeline_images_per_s": [round(v, 2) for v in a],
            "plain_images_per_s": [round(v, 2) for v in b], "ratio": round(float(np.median(a) / np.median(b)), 3),
            "gpu": [d.name for d in tf.config.list_physical_devices("GPU")]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, nargs="+", default=[2000])
    ap.add_argument("--work", type=Path, default=None, help="where photos, caches and builds go (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--throughput", action="store_true", help="measure training images/s only")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="photos-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.images:
        res = throughput(n, work) if args.throughput else bench_build(n, work)
        results.append(res)
        if args.throughput:
            print(f"{n} images: pipeline/plain = {res['ratio']}")
        else:
            d = res["decode"]
            print(f"| {n:,} | {d.get('images_per_s', 0):.0f} img/s decode | build {res['build']['wall_s']} s, "
                  f"peak {res['build']['peak_rss_mib']:.0f} MiB | rerun {res['rerun']['wall_s']} s |", flush=True)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

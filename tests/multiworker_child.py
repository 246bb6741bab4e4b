"""One worker of the two-worker training test (tests/test_image_cache.py): run as a script.

    python tests/multiworker_child.py DATA_DIR OUT_DIR   (TF_CONFIG in the environment)

Trains the default smoke recipe, with the tiny block genotype of tests/helpers/stages.py,
on DATA_DIR under MultiWorkerMirroredStrategy and writes OUT_DIR/read-<index>.json:
the content hash of every training image this worker read, and the strategy's replica
count.
"""

import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.native import tf_environment  # noqa: E402

tf_environment()


def main(data: str, out: str) -> None:
    from pipeline.data import ImageSet, load_dataset
    from pipeline.recipe.load import load_recipe
    from pipeline.recipe.training import GENOTYPE_FAMILY
    from pipeline.train.stage import train_float
    from tests.helpers.stages import TINY_GENOTYPE

    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    r = load_recipe("default", smoke=True, data_path=data)
    r = dataclasses.replace(r, train=dataclasses.replace(r.train, strategy="multi-worker", epochs=1,
                                                         augment=dataclasses.replace(r.train.augment, enabled=False)),
                            # The tiny block genotype: which images a worker reads is no
                            # model's, and the two workers build and trace it quickly.
                            model=dataclasses.replace(r.model, family=GENOTYPE_FAMILY, alpha=1.0,
                                                      genotype=TINY_GENOTYPE)).validate()
    splits = load_dataset(r.data, r.model.input_shape, r.seed)
    read = set()

    class Recording(ImageSet):
        def uint8(self, key):
            pos = self._positions(key)
            read.update(self._keys[int(i)] for i in pos)
            return super().uint8(pos)

    train = Recording.__new__(Recording)
    train.__dict__.update(splits.x_train.__dict__)
    splits = dataclasses.replace(splits, x_train=train)
    outdir = Path(out)
    metrics = train_float(r, splits, outdir / f"float-{index}.h5", outdir / f"pred-{index}.npy", log=print)
    (outdir / f"read-{index}.json").write_text(json.dumps({"read": sorted(read), "replicas": metrics["replicas"],
                                                           "train": len(splits.y_train)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])

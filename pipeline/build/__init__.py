"""The build: recipe -> trained, optimized, converted, evaluated (and device-checked) models.

    run.py      :func:`build`: data, stages, budgets, summary, report and bundle
    stages.py   the stages as a table: float, compression rows, convert and evaluate
    matrix.py   every variant on every target device, as jobs of a pool (worker processes or a Ray cluster)

Artifact tree under ``build/<recipe>/``::

    manifest.json  recipe.yaml  summary.json  summary.previous.json (until a rebuild ends)
    .lock                                                    (held while a build runs)
    keras/float.h5  keras/float_test_pred.npy
    keras/head.h5                                            (model.init: the head phase)
    keras/channels.h5                                        (prune.structure channels*)
    keras/pruned.h5  keras/qat.h5
    keras/cluster.h5  keras/cqat-weights.h5                  (int8-cqat)
    keras/cluster-pruned.h5  keras/pcqat-weights.h5          (int8-pcqat)
    tflite/<variant>.tflite  tflite/<variant>.pred.npy  tflite/test_labels.npy
    devices/<device>/<variant>.json
    report.md  report.html  plots/*.png
    bundle/model.tflite  bundle/model_without_metadata.tflite  bundle/labels.txt
    bundle/metadata.json  bundle/MODEL_CARD.md  bundle/SHA256SUMS
"""

from pipeline.build.run import BuildResult, build, data_fingerprint, default_build_dir, reproducibility
from pipeline.build.stages import COMPRESS_STAGES, StageRunner, compress_stages

__all__ = ["BuildResult", "COMPRESS_STAGES", "StageRunner", "build", "compress_stages", "data_fingerprint",
           "default_build_dir", "reproducibility"]

"""Weight sharing: weight clustering and cluster-preserving QAT (CQAT, PCQAT).

Two techniques, each run by :func:`pipeline.compress.runner.fine_tune` in its fixed order:

    cluster:  load float (or pruned) -> ClusterWeights -> fit -> strip_clustering -> save (.h5)
    cqat:     load clustered -> quantize_model(cqat | pcqat) -> fit -> save_weights (.h5)
              -> rebuild (load_cluster_qat) and check

The chains they make, one TFLite variant each (see :mod:`pipeline.variants`):

    int8-cqat:   float -> cluster -> CQAT
    int8-pcqat:  float -> prune -> cluster (sparsity-preserving) -> PCQAT

tfmot facts these stages rely on (tfmot 0.8.1, tf-keras 2.21):

- Only Conv2D and Dense kernels are clustered (as with pruning, DepthwiseConv2D
  stays as it is: tfmot's cluster-preserving QAT disables it too). A kernel with no
  more weights than clusters (per channel with ``per_channel``) is left as it is,
  as tfmot does; it has at most that many values anyway.
- ``per_channel`` clusters each output channel of a Conv2D separately (N centroids
  per channel); Dense kernels are always clustered as a whole. tfmot's
  ``cluster_weights`` skips bias-free convs when clustering per channel (it takes
  the last trainable weight for the bias), so the stage wraps layers itself.
- Sparsity-preserving clustering makes one centroid exactly zero and keeps every
  pruned weight on it, so a pruned-then-clustered kernel has at most N values,
  zero among them.
- The cluster-preserving QAT quantizer re-assigns every clustered kernel to its
  centroids at each training step, so the trained kernels stay clustered; int8
  conversion quantizes conv kernels per output channel, so the int8 file has at
  most N values per output channel (per kernel for the per-tensor Dense).
- The cluster-preserving quantizer reads the clusters back from the kernel values.
  It treats a Conv2D as clustered per channel whenever its channels hold about the
  same number of distinct values, which is always the case after per-kernel
  clustering too, and then trains each channel's centroids apart: after CQAT a
  conv kernel has at most N values per output channel, but up to N per channel
  across the kernel (measured: 16 per channel, ~8,000 in a 256x512 kernel). That
  is what the int8 file (quantized per channel) keeps anyway. Getting a CQAT
  MobileNet to its first training step takes minutes on two cores (graph
  optimization); the steps themselves cost about what PQAT steps do.
- A CQAT or PCQAT model does not reload from a full ``.h5`` (the cluster-preserving
  weight quantizer's variables are not in its config: "Weight count mismatch"). The
  stage therefore saves the weights only; :func:`load_cluster_qat` rebuilds the model
  from the clustered ``.h5`` with the same scheme and loads them.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import numpy as np

from pipeline.compress.kernels import PRUNABLE_KINDS, kernel_table, layer_kind, prunable_sparsity, \
    unique_table
from pipeline.compress.runner import Facts, Log, Technique, fine_tune
from pipeline.errors import ConfigError
from pipeline.recipe.schema import Recipe
from pipeline.store.atomic import atomic_path
from pipeline.train.keras_io import load_keras

# QAT schemes of the two chains (names in models.quantize.SCHEMES).
CLUSTER_QAT_SCHEMES = ("cqat", "pcqat")


def _centroid_init(name: str):
    import tensorflow_model_optimization as tfmot

    # Recipe names are tfmot's CentroidInitialization members, lower-case.
    return getattr(tfmot.clustering.keras.CentroidInitialization, name.upper())


@dataclass(frozen=True)
class WeightClustering(Technique):
    """Clusters Conv2D/Dense kernels to ``clusters`` centroids, then strips.

    Centroids initialised by ``init``, per output channel of a Conv2D when
    ``per_channel``; ``preserve_sparsity`` keeps the zeros of a pruned model (one
    centroid is zero and pruned weights stay on it).
    """

    clusters: int
    init: str
    per_channel: bool
    preserve_sparsity: bool
    epochs: int
    learning_rate: float
    label: str = "cluster"

    def wrap(self, model, steps: int):
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras
        from tensorflow_model_optimization.python.core.clustering.keras.cluster_wrapper import ClusterWeights

        init = _centroid_init(self.init)
        clustered: List[str] = []

        def wrap_layer(layer):
            # Only Conv2D/Dense, as for pruning: our custom activations are not in
            # tfmot's clustering registry, and depthwise kernels are left alone.
            kind = layer_kind(layer)
            if kind not in PRUNABLE_KINDS:
                return layer
            if _values_per_cluster_group(layer.kernel.shape, kind, self.per_channel) <= self.clusters:
                return layer  # no more weights than centroids: nothing to share
            # The wrapper itself, not cluster_weights(): for per-channel clustering,
            # cluster_weights counts a Conv2D's channels as the size of its last
            # trainable weight, the kernel itself when the conv has no bias (ours never
            # do: BatchNorm follows), and then leaves every such conv unclustered.
            clustered.append(layer.name)
            return ClusterWeights(layer, self.clusters, init, preserve_sparsity=self.preserve_sparsity,
                                  cluster_per_channel=self.per_channel)

        sparsity_in = prunable_sparsity(kernel_table(model, pruned=self.preserve_sparsity))
        with tfmot.clustering.keras.cluster_scope():
            wrapped = keras.models.clone_model(model, clone_function=wrap_layer)
        return wrapped, {"sparsity_in": sparsity_in, "clustered": clustered}

    def describe(self, steps: int, facts: Facts) -> str:
        return (f"{self.clusters} clusters ({self.init}{', per channel' if self.per_channel else ''}"
                f"{', sparsity-preserving' if self.preserve_sparsity else ''}) on "
                f"{len(facts['clustered'])} kernels, {steps} steps")

    def strip(self, model):
        import tensorflow_model_optimization as tfmot

        return tfmot.clustering.keras.strip_clustering(model)

    def measure(self, saved, facts: Facts) -> Dict:
        layers = unique_table(saved, pruned=self.preserve_sparsity, clustered=facts["clustered"])
        max_unique = _max_clustered_unique(layers, self.per_channel)
        if max_unique > self.clusters:
            bad = [r["layer"] for r in layers
                   if r["clustered"] and _clustered_unique(r, self.per_channel) > self.clusters]
            raise RuntimeError(f"clustering left more than {self.clusters} distinct values in {', '.join(bad)}")
        sparsity, sparsity_in = prunable_sparsity(layers), facts["sparsity_in"]
        if self.preserve_sparsity and sparsity < sparsity_in - 1e-6:
            raise RuntimeError(f"sparsity-preserving clustering lost zeros: {sparsity_in:.1%} -> {sparsity:.1%} "
                               "of Conv2D/Dense kernel values")
        return {
            "layers": layers,
            "clusters": int(self.clusters),
            "init": self.init,
            "per_channel": bool(self.per_channel),
            "preserve_sparsity": bool(self.preserve_sparsity),
            "max_unique": int(max_unique),
            "sparsity": sparsity,
            "sparsity_in": sparsity_in,
        }

    def summary(self, metrics: Dict) -> str:
        return (f"at most {metrics['max_unique']} distinct values per clustered kernel"
                f"{' channel' if self.per_channel else ''}; sparsity {metrics['sparsity']:.1%} "
                f"(in: {metrics['sparsity_in']:.1%})")


@dataclass(frozen=True)
class ClusterPreservingQAT(Technique):
    """Cluster-preserving QAT with ``scheme`` (``cqat``, or ``pcqat`` that keeps zeros too).

    Saves the weights only and checks that :func:`load_cluster_qat` rebuilds the
    trained model from them.

    Raises:
        ConfigError: ``scheme`` is not one of ``cqat``, ``pcqat`` (on construction).
    """

    scheme: str
    clusters: int
    epochs: int
    learning_rate: float

    def __post_init__(self):
        if self.scheme not in CLUSTER_QAT_SCHEMES:
            raise ConfigError(f"cluster-preserving QAT scheme: expected one of {', '.join(CLUSTER_QAT_SCHEMES)}, "
                              f"got {self.scheme!r}")

    @property
    def label(self) -> str:
        return self.scheme

    @property
    def pruned(self) -> bool:
        """Whether the clustered source was pruned first (PCQAT)."""
        return self.scheme == "pcqat"

    def scheme_class(self) -> str:
        """The tfmot scheme class the QAT scheme uses."""
        from models.quantize import get_scheme

        return type(get_scheme(self.scheme)).__name__

    def wrap(self, model, steps: int):
        from pipeline.train.zoo import quantize_model

        rows_in = unique_table(model, pruned=self.pruned)
        # A kernel with at most ``clusters`` values (per output channel of a Conv2D, which
        # covers both per-kernel and per-channel clustering) is what cluster_model clustered.
        clustered = [r["layer"] for r in rows_in
                     if r["kind"] in PRUNABLE_KINDS and _clustered_unique(r, True) <= self.clusters]
        return quantize_model(model, self.scheme), {"rows_in": rows_in, "clustered": clustered}

    def describe(self, steps: int, facts: Facts) -> str:
        return f"{self.scheme_class()}, {steps} steps"

    def save(self, model, out: Path) -> None:
        # HDF5 by topology; a name ending in ".weights.h5" would select Keras 3's format on load.
        with atomic_path(Path(out), suffix=".h5") as tmp:
            model.save_weights(str(tmp), save_format="h5")

    def reload(self, src: Path, out: Path):
        return load_cluster_qat(src, out, self.scheme)

    def reload_failure(self, src: Path, out: Path) -> str:
        return f"{self.scheme} weights {out} do not reload faithfully onto {src}"

    def measure(self, saved, facts: Facts) -> Dict:
        layers = unique_table(saved, pruned=self.pruned, clustered=facts["clustered"])
        return {
            "scheme": self.scheme,
            "scheme_class": self.scheme_class(),
            "layers": layers,
            # Per output channel for Conv2D: CQAT trains each channel's centroids apart.
            "max_unique": int(_max_clustered_unique(layers, per_channel=True)),
            "sparsity": prunable_sparsity(layers),
            "sparsity_in": prunable_sparsity(facts["rows_in"]),
        }

    def summary(self, metrics: Dict) -> str:
        return (f"at most {metrics['max_unique']} distinct values per output channel of a clustered kernel; "
                f"sparsity {metrics['sparsity']:.1%} (in: {metrics['sparsity_in']:.1%})")


def cluster_model(recipe: Recipe, splits, src: Path, out: Path, preserve_sparsity: bool,
                  log: Log = print) -> Dict:
    """Clusters the Conv2D/Dense kernels of the Keras model at ``src``; writes ``out``.

    Each kernel is wrapped in tfmot's clustering wrapper (``ClusterWeights``) with
    ``recipe.cluster.clusters`` centroids (initialised by ``recipe.cluster.init``,
    per output channel for Conv2D when ``recipe.cluster.per_channel``), fine-tuned
    for ``recipe.cluster.epochs`` at ``recipe.cluster.learning_rate`` under the
    recipe's strategy, then stripped: ``out`` is a plain float model whose kernels
    hold at most ``clusters`` distinct values (per channel with ``per_channel``).

    Args:
        recipe: the frozen recipe (seed, cluster, train.batch_size/strategy).
        splits: the data splits.
        src: the float or pruned Keras model (``.h5``), read only.
        out: where to write the clustered model (``.h5``, atomically).
        preserve_sparsity: keep the zeros of a pruned ``src`` (one centroid is zero
            and pruned weights stay on it).
        log: progress output.

    Returns:
        metrics: ``layers`` (one row per Conv2D/DepthwiseConv2D/Dense kernel as in
        :func:`pipeline.compress.kernels.unique_table`: the rows of ``kernel_table``
        plus ``clustered``, ``unique`` (distinct values in the kernel) and
        ``unique_per_channel`` (most in any output channel)), ``clusters``, ``init``,
        ``per_channel``, ``preserve_sparsity``, ``max_unique`` (over clustered
        kernels, per kernel or per channel as clustered), ``sparsity``/``sparsity_in``
        (zeros in prunable kernels of ``out`` and ``src``), ``val_top1``/``test_top1``,
        ``history``, ``replicas``.

    Raises:
        RuntimeError: a clustered kernel holds more distinct values than clusters,
            or sparsity-preserving clustering lost zeros.
    """
    c = recipe.cluster
    technique = WeightClustering(clusters=c.clusters, init=c.init, per_channel=c.per_channel,
                                 preserve_sparsity=preserve_sparsity, epochs=c.epochs,
                                 learning_rate=c.learning_rate)
    return fine_tune(recipe, splits, src, out, technique, log)


def cluster_qat_model(recipe: Recipe, splits, base: Path, out: Path, scheme: str,
                      log: Log = print) -> Dict:
    """Cluster-preserving quantization-aware training of the clustered model at ``base``.

    ``scheme`` is ``cqat`` (after plain clustering) or ``pcqat`` (after
    sparsity-preserving clustering of a pruned model: keeps zeros and clusters).
    Trains ``recipe.qat.epochs`` at ``recipe.qat.learning_rate`` under the recipe's
    strategy, saves the *weights* to ``out`` and checks that
    :func:`load_cluster_qat` (``base``, ``out``) gives the same outputs.

    Args:
        recipe: the frozen recipe (seed, qat, cluster.clusters, train.batch_size/strategy).
        splits: the data splits.
        base: the clustered Keras model (``.h5``) from :func:`cluster_model`, read only.
        out: where to write the QAT weights (``.h5``, atomically).
        scheme: ``cqat`` or ``pcqat``.
        log: progress output.

    Returns:
        metrics: ``scheme``, ``scheme_class``, ``layers`` (as
        :func:`pipeline.compress.kernels.unique_table`, of the trained kernels),
        ``max_unique`` (most distinct values in an output channel of a Conv2D, or in
        a Dense kernel, clustered in ``base``), ``sparsity``/``sparsity_in``,
        ``val_top1``/``test_top1``, ``reload_max_abs_diff``, ``history``, ``replicas``.

    Raises:
        ConfigError: ``scheme`` is not one of ``cqat``, ``pcqat``.
        UnsupportedLayerError: a layer cannot be quantized (from models.quantize).
        RuntimeError: the saved weights do not reload to the trained model's outputs.
    """
    q = recipe.qat
    technique = ClusterPreservingQAT(scheme=scheme, clusters=recipe.cluster.clusters,
                                     epochs=q.epochs, learning_rate=q.learning_rate)
    return fine_tune(recipe, splits, base, out, technique, log)


def load_cluster_qat(base: Path, weights: Path, scheme: str):
    """Rebuilds a CQAT/PCQAT model: ``quantize_model(load(base), scheme)`` + ``load_weights``.

    Args:
        base: the clustered Keras model the QAT stage started from (``.h5``).
        weights: the weights written by :func:`cluster_qat_model`.
        scheme: the scheme it was trained with (``cqat`` or ``pcqat``).

    Returns:
        The QAT model, with the trained weights.
    """
    from pipeline.train.zoo import quantize_model

    model = quantize_model(load_keras(base), scheme)
    model.load_weights(str(weights))
    return model


# -- distinct values per clustered kernel ---------------------------------------------


def _values_per_cluster_group(shape, kind: str, per_channel: bool) -> int:
    # Weights sharing one set of centroids: an output channel (last axis) of a
    # Conv2D clustered per channel, otherwise the whole kernel.
    size = int(np.prod(shape))
    return size // int(shape[-1]) if per_channel and kind == "Conv2D" else size


def _clustered_unique(row: Dict, per_channel: bool) -> int:
    # Per-channel clustering applies to Conv2D only; Dense is clustered as a whole.
    return row["unique_per_channel"] if per_channel and row["kind"] == "Conv2D" else row["unique"]


def _max_clustered_unique(rows: List[Dict], per_channel: bool) -> int:
    return max((_clustered_unique(r, per_channel) for r in rows if r["clustered"]), default=0)

"""Starting weights (``model.init``): a previous build's float model, or a Keras-applications file.

Two sources are read, both HDF5 and both without building the source model:

* **A previous build** of this tool: its build directory (``keras/float.h5`` is
  read) or that file. Layer names are ours, so layers map one to one. The
  classifier is kept only when the previous build had the same labels, in the same
  order (its ``manifest.json``); otherwise it is new.
* **A Keras-applications weights file** of MobileNetV1, V2 or V3 (what
  ``tf.keras.applications.MobileNetV2(weights="imagenet")`` and friends download;
  :data:`KERAS_FILE_PATTERNS` lists the names), with or without the top. Its layer
  names are translated into ours (:data:`KERAS_NAMES`). The classifier is always
  new (our labels are not ImageNet's); MobileNetV3's 1x1 conv after the pool
  (``Conv_2``, our ``head_fc``) is loaded from a file with the top and new otherwise.

Adaptations, each reported:

* Grey input from an RGB source: the first convolution's kernel is summed over its
  input channels (a grey image repeated on three channels gives the same result);
  RGB from a grey source divides it by three.
* Input range: Keras-applications models take [-1, 1] (``preprocess_input``, or
  V3's built-in Rescaling); ours take [0, 1]. ``2x - 1`` is folded into the first
  convolution (kernel doubled) and its batch norm (the kernel's sum added to the
  moving mean): exact away from the image border, where the source padded with
  mid-grey (0 in [-1, 1]) and we pad with black.

Everything else must fit exactly: a layer missing from the file or a weight of
another shape (another width, family or kernel size) is a :class:`ConfigError`
naming the layer, never a partial load. Input size and the stem stride are free:
kernels do not depend on them.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from pipeline.errors import ConfigError
from pipeline.store.atomic import sha256_file

#: Where a build directory keeps the float model a transfer starts from.
BUILD_FLOAT_MODEL = Path("keras") / "float.h5"

#: Layers of ours outside the backbone: new when the source has no counterpart.
HEAD_LAYERS = ("head_fc", "logits")

#: The official Keras-applications file names, as regular expressions over the file
#: name (their weights are ImageNet-trained; ``_no_top`` files lack the classifier).
KERAS_FILE_PATTERNS = {
    "mobilenet_v1": r"mobilenet_(?P<alpha>1_0|7_5|5_0|2_5)_(?P<size>128|160|192|224)_tf(?P<no_top>_no_top)?\.h5",
    "mobilenet_v2": (r"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_(?P<alpha>0\.35|0\.5|0\.75|1\.0|1\.3|1\.4)"
                     r"_(?P<size>96|128|160|192|224)(?P<no_top>_no_top)?\.h5"),
    "mobilenet_v3": (r"weights_mobilenet_v3_(?P<variant>large|small)(?P<minimalistic>_minimalistic)?_224_"
                     r"(?P<alpha>0\.75|1\.0)_float(?P<no_top>_no_top_v2)?\.h5"),
}
_V1_ALPHA = {"1_0": 1.0, "7_5": 0.75, "5_0": 0.5, "2_5": 0.25}

#: Our layer name -> the Keras-applications layer name, per family. ``{i}`` is our
#: 1-based block number, ``{j}`` Keras' (0-based where the first block has no expand conv).
KERAS_NAMES = {
    "mobilenet_v1": {
        "stem_conv": "conv1", "stem_bn": "conv1_bn",
        "block{i}_depthwise": "conv_dw_{i}", "block{i}_depthwise_bn": "conv_dw_{i}_bn",
        "block{i}_pointwise_conv": "conv_pw_{i}", "block{i}_pointwise_bn": "conv_pw_{i}_bn",
        "logits": "conv_preds",
    },
    "mobilenet_v2": {
        "stem_conv": "Conv1", "stem_bn": "bn_Conv1",
        "block1_depthwise": "expanded_conv_depthwise", "block1_depthwise_bn": "expanded_conv_depthwise_BN",
        "block1_project_conv": "expanded_conv_project", "block1_project_bn": "expanded_conv_project_BN",
        "block{i}_expand_conv": "block_{j}_expand", "block{i}_expand_bn": "block_{j}_expand_BN",
        "block{i}_depthwise": "block_{j}_depthwise", "block{i}_depthwise_bn": "block_{j}_depthwise_BN",
        "block{i}_project_conv": "block_{j}_project", "block{i}_project_bn": "block_{j}_project_BN",
        "head_conv": "Conv_1", "head_bn": "Conv_1_bn", "logits": "predictions",
    },
    "mobilenet_v3": {
        "stem_conv": "Conv", "stem_bn": "Conv/BatchNorm",
        "block{i}_expand_conv": "{p}expand", "block{i}_expand_bn": "{p}expand/BatchNorm",
        "block{i}_depthwise": "{p}depthwise", "block{i}_depthwise_bn": "{p}depthwise/BatchNorm",
        "block{i}_se_squeeze": "{p}squeeze_excite/Conv", "block{i}_se_excite": "{p}squeeze_excite/Conv_1",
        "block{i}_project_conv": "{p}project", "block{i}_project_bn": "{p}project/BatchNorm",
        "head_conv": "Conv_1", "head_bn": "Conv_1/BatchNorm", "head_fc": "Conv_2", "logits": "Logits",
    },
}

_BLOCK = re.compile(r"block(\d+)_(.+)")


@dataclass(frozen=True)
class InitSource:
    """A weights file read for a transfer.

    Attributes:
        path: the HDF5 file read.
        sha256: its hash (the model card names it).
        kind: ``build`` (a previous build's float model) or ``keras-applications``.
        family: the model family the file holds (ours: ``mobilenet_v3_small`` etc.).
        alpha: the width the file name says (Keras applications), or None.
        labels: the previous build's labels, or None when unknown.
        layers: source layer name -> its weight arrays, in the layer's weight order.
    """

    path: Path
    sha256: str
    kind: str
    family: str
    alpha: Optional[float]
    labels: Optional[Tuple[str, ...]]
    layers: Dict[str, List[np.ndarray]]


@dataclass(frozen=True)
class TransferReport:
    """What a transfer loaded: one row per layer of ours that has weights.

    Attributes:
        source: path, sha256, kind and family of the file.
        loaded: ``(our layer, source layer)`` of every layer loaded.
        new: our layers left as initialised (the new head).
        adapted: what was changed on the way in (grey input, input range).
        by_type: layers loaded per Keras layer type.
        params_loaded, params_new: weights (numbers) loaded and left new.
        backbone_loaded: the fraction of backbone weights (all but the head) loaded: 1.0.
    """

    source: Dict[str, str]
    loaded: Tuple[Tuple[str, str], ...]
    new: Tuple[str, ...]
    adapted: Tuple[str, ...]
    by_type: Dict[str, int]
    params_loaded: int
    params_new: int
    backbone_loaded: float

    def to_dict(self) -> dict:
        return {"source": dict(self.source), "loaded": [list(p) for p in self.loaded], "new": list(self.new),
                "adapted": list(self.adapted), "by_type": dict(self.by_type),
                "params_loaded": self.params_loaded, "params_new": self.params_new,
                "backbone_loaded": self.backbone_loaded}

    def summary_line(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.by_type.items()))
        return (f"loaded {len(self.loaded)} layers ({types}; {self.params_loaded:,} weights, "
                f"{self.backbone_loaded:.0%} of the backbone) from {self.source['kind']} "
                f"{self.source['family']} file {self.source['path']}; new: {', '.join(self.new) or 'none'}"
                + (f"; {'; '.join(self.adapted)}" if self.adapted else ""))


def resolve_init(init: str) -> Path:
    """The HDF5 file ``model.init`` names: the file itself, or a build directory's float model.

    Raises:
        ConfigError: nothing there, or a directory without ``keras/float.h5``.
    """
    p = Path(init)
    if p.is_dir():
        f = p / BUILD_FLOAT_MODEL
        if not f.is_file():
            raise ConfigError(f"recipe.model.init: {p} is a directory without {BUILD_FLOAT_MODEL} "
                              "(expected a finished build directory, or an .h5 weights file)")
        return f
    if not p.is_file():
        raise ConfigError(f"recipe.model.init: {p} does not exist (expected a build directory of this tool, "
                          "its keras/float.h5, or a Keras-applications MobileNet .h5 weights file)")
    if p.suffix != ".h5":
        raise ConfigError(f"recipe.model.init: {p} is not an .h5 file (expected a build directory of this "
                          "tool, its keras/float.h5, or a Keras-applications MobileNet .h5 weights file)")
    return p


def read_source(init: str) -> InitSource:
    """Reads the weights ``model.init`` names, and which family they are.

    Raises:
        ConfigError: not a file this tool can start from (the message says what it holds).
    """
    import h5py

    path = resolve_init(init)
    try:
        with h5py.File(path, "r") as f:
            config = _attr(f, "model_config")
            group = f["model_weights"] if "model_weights" in f else f
            names = [_text(n) for n in _attr_list(group, "layer_names")]
            layers = {n: [np.asarray(group[n][_text(w)]) for w in _attr_list(group[n], "weight_names")]
                      for n in names}
    except (OSError, KeyError) as exc:
        raise ConfigError(f"recipe.model.init: {path} is not a Keras HDF5 weights file ({exc})") from None
    model_name = json.loads(_text(config))["config"]["name"] if config is not None else None
    import models

    if model_name in models.FAMILIES:
        return InitSource(path, sha256_file(path), "build", model_name, None, _build_labels(path), layers)
    family = _keras_family(path, layers)
    return InitSource(path, sha256_file(path), "keras-applications", family, _file_alpha(path), None, layers)


def keras_source_name(family: str, ours: str) -> str:
    """The Keras-applications layer name of our layer ``ours`` in ``family`` ('' if none)."""
    table = KERAS_NAMES["mobilenet_v3" if family.startswith("mobilenet_v3") else family]
    if ours in table:
        return table[ours]
    m = _BLOCK.fullmatch(ours)
    if not m or f"block{{i}}_{m.group(2)}" not in table:
        return ""
    i = int(m.group(1))
    # V3's first block is "expanded_conv/", the next "expanded_conv_1/"; V2's are
    # "expanded_conv_" (its own rows above) then "block_1_".
    p = "expanded_conv/" if i == 1 else f"expanded_conv_{i - 1}/"
    return table[f"block{{i}}_{m.group(2)}"].format(i=i, j=i - 1, p=p)


def load_init(model, source: InitSource, labels: Sequence[str]) -> TransferReport:
    """Sets ``model``'s weights from ``source``; returns what was loaded.

    Args:
        model: a freshly built model of ours (the recipe's family, width, input).
        source: :func:`read_source`'s result.
        labels: the class names the model is trained for.

    Raises:
        ConfigError: another family, or a layer missing or of another shape (names the layer).
    """
    family = model.name
    if source.family != family:
        sample = next(iter(n for n, w in source.layers.items() if w), "?")
        raise ConfigError(f"recipe.model.init: {source.path} holds {source.family} weights (e.g. layer "
                          f"{sample!r}), but recipe.model.family is {family}")
    keep_classifier = source.kind == "build" and source.labels == tuple(labels)
    loaded, new, adapted = [], [], []
    by_type: Dict[str, int] = {}
    params_loaded = params_new = backbone_total = 0
    for layer in model.layers:
        if not layer.weights:
            continue
        size = sum(int(np.prod(w.shape)) for w in layer.weights)
        head = layer.name in HEAD_LAYERS
        backbone_total += 0 if head else size
        theirs = layer.name if source.kind == "build" else keras_source_name(family, layer.name)
        if head and (theirs not in source.layers or not source.layers[theirs]
                     or layer.name == "logits" and not keep_classifier):
            new.append(layer.name)
            params_new += size
            continue
        if theirs not in source.layers or not source.layers[theirs]:
            raise ConfigError(f"recipe.model.init: {source.path} has no weights for layer {layer.name!r} "
                              f"(looked for {theirs or layer.name!r}): it holds another architecture "
                              f"than {family}")
        arrays = [np.array(a, np.float32) for a in source.layers[theirs]]
        if layer.name == "stem_conv":
            arrays[0], note = _stem_channels(arrays[0], layer.weights[0].shape[2])
            adapted += [note] if note else []
        if source.kind == "keras-applications" and layer.name in ("stem_conv", "stem_bn"):
            arrays = _fold_input_range(layer.name, arrays, model, source)
        if len(layer.weights) == len(arrays) and len(arrays[0].shape) == 4 and len(layer.weights[0].shape) == 2:
            arrays[0] = arrays[0].reshape(arrays[0].shape[2:])  # a 1x1 conv on the pooled map is a Dense
        _check_shapes(layer, theirs, arrays, source, model)
        layer.set_weights(arrays)
        loaded.append((layer.name, theirs))
        by_type[type(layer).__name__] = by_type.get(type(layer).__name__, 0) + 1
        params_loaded += size
    if source.kind == "keras-applications":
        adapted.append("input range [0, 1] folded into stem_conv/stem_bn (the file expects [-1, 1])")
    backbone_loaded = sum(int(np.prod(w.shape)) for n, _ in loaded if n not in HEAD_LAYERS
                          for w in model.get_layer(n).weights)
    return TransferReport(
        source={"path": str(source.path), "sha256": source.sha256, "kind": source.kind, "family": source.family},
        loaded=tuple(loaded), new=tuple(new), adapted=tuple(adapted), by_type=by_type,
        params_loaded=params_loaded, params_new=params_new,
        backbone_loaded=backbone_loaded / backbone_total if backbone_total else 1.0)


# -- helpers -------------------------------------------------------------------


def _stem_channels(kernel: np.ndarray, channels: int) -> Tuple[np.ndarray, str]:
    """The first conv's kernel for ``channels`` input channels, and a note if it changed."""
    have = kernel.shape[2]
    if have == channels:
        return kernel, ""
    if have == 3 and channels == 1:
        return kernel.sum(axis=2, keepdims=True), "grey input: stem_conv summed over the file's 3 input channels"
    if have == 1 and channels == 3:
        return np.repeat(kernel / 3.0, 3, axis=2), "RGB input: the file's grey stem_conv spread over 3 channels"
    raise ConfigError(f"recipe.model.init: layer 'stem_conv' takes {channels} input channel(s); the file's "
                      f"has {have}")


def _fold_input_range(name: str, arrays: List[np.ndarray], model, source: InitSource) -> List[np.ndarray]:
    """Keras applications see ``2x - 1`` where we see ``x``: doubled kernel, shifted BN mean."""
    if name == "stem_conv":
        return [arrays[0] * 2.0] + arrays[1:]
    stem = model.get_layer("stem_conv").get_weights()[0]  # already set: doubled
    gamma, beta, mean, var = arrays
    return [gamma, beta, mean + stem.sum(axis=(0, 1, 2)) / 2.0, var]


def _check_shapes(layer, theirs: str, arrays: List[np.ndarray], source: InitSource, model) -> None:
    want = [tuple(w.shape) for w in layer.weights]
    got = [tuple(a.shape) for a in arrays]
    if want == got:
        return
    hint = ""
    if source.alpha is not None:
        hint = f" (the file name says width {source.alpha:g})"
    if source.family.startswith("mobilenet_v3") and layer.name.endswith("_expand_conv"):
        hint += ("; Keras' MobileNetV3 sizes its expand convs from the already narrowed input channels, "
                 "ours from the paper's table, so only width-1.0 V3 files map")
    raise ConfigError(f"recipe.model.init: layer {layer.name!r} (from {theirs!r} in {source.path}) has weights "
                      f"of shape {got}, the model's are {want}: the file holds another width or kernel size"
                      f"{hint}; recipe.model is {model.name} at this width")


def _keras_family(path: Path, layers: Dict[str, List[np.ndarray]]) -> str:
    """Which Keras-applications MobileNet a weights file holds, from its layer names."""
    names = set(layers)
    if "conv_dw_1" in names:
        return "mobilenet_v1"
    if "expanded_conv_depthwise" in names:
        return "mobilenet_v2"
    if "expanded_conv/depthwise" in names:
        if not any("squeeze_excite" in n for n in names):
            raise ConfigError(f"recipe.model.init: {path} holds a minimalistic MobileNetV3 (no squeeze-excite "
                              "layers, 3x3 kernels, ReLU): our mobilenet_v3 families have neither; use a "
                              "non-minimalistic file")
        return "mobilenet_v3_large" if "expanded_conv_14/project" in names else "mobilenet_v3_small"
    shown = ", ".join(sorted(n for n in names if layers[n])[:5]) or "none"
    raise ConfigError(f"recipe.model.init: {path} is neither a build of this tool nor a Keras-applications "
                      f"MobileNetV1/V2/V3 weights file (layers with weights: {shown}...)")


def _file_alpha(path: Path) -> Optional[float]:
    for family, pattern in KERAS_FILE_PATTERNS.items():
        m = re.fullmatch(pattern, path.name)
        if m:
            a = m.group("alpha")
            return _V1_ALPHA[a] if family == "mobilenet_v1" else float(a)
    return None


def _build_labels(path: Path) -> Optional[Tuple[str, ...]]:
    """The labels of the build ``path`` (``<build>/keras/float.h5``) came from, if its manifest says."""
    manifest = path.parent.parent / "manifest.json"
    if path.parent.name != "keras" or not manifest.is_file():
        return None
    labels = json.loads(manifest.read_text()).get("data", {}).get("labels")
    return tuple(labels) if isinstance(labels, list) else None


def _attr(obj, name: str):
    return obj.attrs[name] if name in obj.attrs else None


def _attr_list(group, name: str) -> list:
    """An HDF5 list attribute, which Keras splits into ``name0``, ``name1``... when large."""
    if name in group.attrs:
        return list(group.attrs[name])
    out, k = [], 0
    while f"{name}{k}" in group.attrs:
        out.extend(group.attrs[f"{name}{k}"])
        k += 1
    return out


def _text(v) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)

"""Channel (filter) pruning: a genuinely thinner Keras model of the same family.

A *channel group* is the set of layers that one convolution's output channels flow
through unchanged, one channel to one channel, until convolutions or dense layers
mix them. Removing channel ``c`` of a group removes, everywhere in the group:

- output channel ``c`` of the producer Conv2D (kernel and bias),
- channel ``c`` of every channel-wise layer on the way: BatchNormalization
  (gamma, beta, moving mean and variance), DepthwiseConv2D (depth multiplier 1),
  activations, pooling, dropout, the SE block's Multiply,
- input channel ``c`` of every consumer: Conv2D kernels (``[:, :, c, :]``), Dense
  kernels (``[c, :]``, after global pooling),
- and, for MobileNetV3's squeeze-excite, output channel ``c`` of the excite conv
  (the Multiply's other input), so the scale stays aligned with its channel.

A group whose channels reach an ``Add`` (a residual connection) or any layer this
module does not know is not prunable: residual adds are never touched. In
MobileNetV2/V3 the prunable groups are therefore the expansion channels inside each
bottleneck (expand conv -> depthwise -> [SE] -> project), the stem of the first
bottleneck and the head conv; in MobileNetV1 every pointwise output and the stem.

The thinned model is rebuilt from the original's config (only ``filters`` of the
producers change), so layer names, classes and custom layers stay those of the
family, and it saves, reloads, quantizes and converts like the unpruned model.
"""

from dataclasses import dataclass
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from pipeline.vocabulary import CHANNEL_CRITERIA, check_implements

# Layers a channel passes through unchanged (one in, one out, per channel).
CHANNELWISE = ("BatchNormalization", "ReLU", "Activation", "HardSwish", "HardSigmoid",
               "GlobalAveragePooling2D", "Dropout", "DepthwiseConv2D", "Multiply")
CONSUMERS = ("Conv2D", "Dense")
CRITERIA = tuple(CHANNEL_CRITERIA.names())
# Channels a group always keeps (XNNPACK packs int8 channels by 8 or 16; fewer
# than this many is also where accuracy falls off a cliff).
MIN_CHANNELS = 8


@dataclass(frozen=True)
class Group:
    """One prunable channel group of a model.

    Attributes:
        producer: the Conv2D whose output channels are the group's channels.
        channels: how many channels it has.
        members: channel-wise layers the channels flow through (BN, depthwise, ...).
        consumers: Conv2D/Dense layers that read the channels as input channels.
        coproducers: convs whose outputs are scaled onto the channels (SE excite).
        bn: the BatchNormalization right after the producer, or "" if none.
    """

    producer: str
    channels: int
    members: Tuple[str, ...]
    consumers: Tuple[str, ...]
    coproducers: Tuple[str, ...]
    bn: str


def layer_graph(model) -> Tuple[Dict[str, str], Dict[str, List[str]], Dict[str, List[str]]]:
    """(class name, inbound layer names, outbound layer names) of every layer of a functional model."""
    config = model.get_config()
    kinds, inbound, outbound = {}, {}, {n["config"]["name"]: [] for n in config["layers"]}
    for layer in config["layers"]:
        name = layer["config"]["name"]
        kinds[name] = layer["class_name"]
        ins = []
        for node in layer.get("inbound_nodes", []):
            for ref in node:
                ins.append(ref[0])
        inbound[name] = ins
        for src in ins:
            outbound[src].append(name)
    return kinds, inbound, outbound


def _walk_back(name: str, kinds, inbound) -> str:
    """The conv that feeds ``name`` through channel-wise layers only, or "" if none."""
    while kinds[name] not in CONSUMERS:
        if kinds[name] not in CHANNELWISE or len(inbound[name]) != 1:
            return ""
        name = inbound[name][0]
    return name if kinds[name] == "Conv2D" else ""


def find_groups(model) -> List[Group]:
    """The prunable channel groups of ``model``, in layer order.

    A group is prunable when every path from its producer reaches consumers through
    channel-wise layers only (no Add, Concatenate, Softmax, ...), and the producer
    is a plain Conv2D (not depthwise) with no groups.
    """
    kinds, inbound, outbound = layer_graph(model)
    layers = {layer.name: layer for layer in model.layers}
    groups = []
    for name, kind in kinds.items():
        if kind != "Conv2D" or getattr(layers[name], "groups", 1) != 1:
            continue
        members, consumers, coproducers, ok = [], [], [], True
        seen, todo = {name}, list(outbound[name])
        while todo and ok:
            cur = todo.pop(0)
            if cur in seen:
                continue
            seen.add(cur)
            k = kinds[cur]
            if k in CONSUMERS:
                consumers.append(cur)
                continue
            if k not in CHANNELWISE or (k == "DepthwiseConv2D" and layers[cur].depth_multiplier != 1):
                ok = False
                break
            if k == "Multiply":
                # The SE scale: its other input is the excite conv's (hard-sigmoid) output.
                for other in inbound[cur]:
                    if other in seen:
                        continue
                    excite = _walk_back(other, kinds, inbound)
                    if not excite or excite in coproducers:
                        ok = False
                        break
                    coproducers.append(excite)
                    chain = other
                    while chain != excite:
                        seen.add(chain)
                        members.append(chain)
                        chain = inbound[chain][0]
                    seen.add(excite)
            members.append(cur)
            todo.extend(outbound[cur])
        if not ok or not consumers or not outbound[name]:
            continue
        first = outbound[name][0]
        bn = first if kinds[first] == "BatchNormalization" and len(outbound[name]) == 1 else ""
        groups.append(Group(name, int(layers[name].filters), tuple(members), tuple(consumers),
                            tuple(coproducers), bn))
    # An SE excite conv finds its block's expansion channels from the other side of the
    # Multiply: the same channels, so one group (the one with the BatchNorm) stands for both.
    co = {c for g in groups for c in g.coproducers if g.bn}
    return [g for g in groups if g.bn or g.producer not in co]


def importance(model, group: Group, criterion: str) -> np.ndarray:
    """One score per channel of ``group``: higher is kept first.

    Criteria:
        ``l1``: L1 norm of the producer's filter (its kernel over every input).
        ``bn_scale``: |gamma| of the BatchNorm after the producer (network slimming).
        ``l1_bn``: the L1 norm of the filter as BN folds it, |gamma| / sqrt(var + eps) * L1:
            the weight the channel really carries at inference.

    Raises:
        ValueError: an unknown criterion, or a BN criterion on a group without BN.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"channel importance criterion must be one of {', '.join(CRITERIA)}; got {criterion!r}")
    return SCORES[criterion](model, group, criterion)


def _filter_l1(model, group: Group, criterion: str) -> np.ndarray:
    kernel = model.get_layer(group.producer).get_weights()[0]
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def _batchnorm(model, group: Group, criterion: str):
    """The BatchNorm layer after the producer, and its gamma and moving variance."""
    if not group.bn:
        raise ValueError(f"criterion {criterion!r} needs a BatchNorm after {group.producer}")
    bn = model.get_layer(group.bn)
    gamma, _, _, var = bn.get_weights()
    return bn, gamma, var


def _bn_scale(model, group: Group, criterion: str) -> np.ndarray:
    _, gamma, _ = _batchnorm(model, group, criterion)
    return np.abs(gamma)


def _l1_bn(model, group: Group, criterion: str) -> np.ndarray:
    l1 = _filter_l1(model, group, criterion)
    bn, gamma, var = _batchnorm(model, group, criterion)
    return np.abs(gamma) / np.sqrt(var + bn.epsilon) * l1


#: Criterion -> its per-channel score (see :func:`importance`).
SCORES = {"l1": _filter_l1, "bn_scale": _bn_scale, "l1_bn": _l1_bn}
check_implements(CHANNEL_CRITERIA, SCORES, "pipeline.compress.channels")


def keep_top(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices (sorted) of the ``n`` highest scores; ties go to the lower index (deterministic)."""
    order = np.lexsort((np.arange(len(scores)), -scores))
    return np.sort(order[:n])


def widths(model) -> Dict[str, int]:
    """Channels of every prunable group's producer: the architecture a schedule changes."""
    return {g.producer: g.channels for g in find_groups(model)}


def thin(model, keep: Mapping[str, Sequence[int]]):
    """A new model with only the ``keep[producer]`` channels of each named group.

    Args:
        model: a float functional Keras model (not wrapped for pruning or QAT).
        keep: producer name -> indices of the channels to keep (groups not named keep all).

    Returns:
        A new ``tf_keras`` model of the same layers and names, thinner; ``model`` is not changed.

    Raises:
        ValueError: a name that is not a prunable group's producer, or indices out of range,
            repeated, or fewer than one.
    """
    import tf_keras as keras

    from models import CUSTOM_OBJECTS

    groups = {g.producer: g for g in find_groups(model)}
    out_keep: Dict[str, np.ndarray] = {}
    in_keep: Dict[str, np.ndarray] = {}
    for producer, idx in keep.items():
        if producer not in groups:
            raise ValueError(f"{producer!r} is not a prunable channel group; valid: {', '.join(groups)}")
        g = groups[producer]
        idx = np.asarray(sorted(int(i) for i in idx), dtype=np.int64)
        if len(idx) < 1 or len(set(idx.tolist())) != len(idx) or idx[0] < 0 or idx[-1] >= g.channels:
            raise ValueError(f"channels to keep of {producer} must be distinct indices in [0, {g.channels}); "
                             f"got {len(idx)} indices")
        for name in (producer, *g.coproducers):
            out_keep[name] = idx
        for name in (*g.members, *g.consumers):
            in_keep[name] = idx
    config = model.get_config()
    for layer in config["layers"]:
        name = layer["config"]["name"]
        if name in out_keep:
            layer["config"]["filters"] = int(len(out_keep[name]))
    thinned = keras.Model.from_config(config, custom_objects=dict(CUSTOM_OBJECTS))
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        kind = type(layer).__name__
        o, i = out_keep.get(layer.name), in_keep.get(layer.name)
        new = []
        for w in weights:
            if kind in ("Conv2D", "DepthwiseConv2D") and w.ndim == 4:
                if i is not None:
                    w = w[:, :, i, :]
                if o is not None:
                    w = w[..., o]
            elif kind == "Dense" and w.ndim == 2 and i is not None:
                w = w[i, :]
            elif w.ndim == 1 and kind in ("Conv2D", "DepthwiseConv2D"):
                sel = o if o is not None else (i if kind == "DepthwiseConv2D" else None)
                if sel is not None:
                    w = w[sel]
            elif w.ndim == 1 and kind == "BatchNormalization" and i is not None:
                w = w[i]
            new.append(w)
        thinned.get_layer(layer.name).set_weights(new)
    return thinned


def thin_by_scores(model, channels: Mapping[str, int], criterion: str):
    """``model`` thinned to ``channels[producer]`` channels per named group, keeping the most important."""
    groups = {g.producer: g for g in find_groups(model)}
    keep = {}
    for producer, n in channels.items():
        if producer not in groups:
            raise ValueError(f"{producer!r} is not a prunable channel group; valid: {', '.join(groups)}")
        if n < groups[producer].channels:
            keep[producer] = keep_top(importance(model, groups[producer], criterion), n)
    return thin(model, keep) if keep else model

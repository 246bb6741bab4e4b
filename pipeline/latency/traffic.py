"""The bytes one inference moves, from the model graph: the memory side of the latency model.

The pipeline model (:mod:`pipeline.latency.mca`) prices instructions as if every load
hit the L1 cache. What it cannot see is the traffic to DRAM once a working set
outgrows the caches. This module reads it off the .tflite graph, with a deliberately
simple cache model (no fitted parameter in it):

- **weights** (every constant buffer) are read once per inference. They stay cached
  between inferences only if they fit: the fraction ``spill(W, S)`` of them comes
  from DRAM each time, ``W`` the weight bytes, ``S`` the shared cache.
- **activations**: an operator reads its inputs and writes its output. When its
  working set (inputs + output + its own weights) outgrows the cache, the share
  ``spill(working set, S)`` of its activation bytes goes to DRAM.

``spill(x, S) = max(0, 1 - S / x)``: the part of a streamed working set of ``x``
bytes that an LRU cache of ``S`` bytes cannot hold.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union


@dataclass(frozen=True)
class OpBytes:
    """One operator's bytes: activation inputs, output(s) and its constant weights."""

    opcode: str
    inputs: int
    outputs: int
    weights: int


@dataclass(frozen=True)
class GraphTraffic:
    """The operators of a graph with their bytes (see the module docstring).

    Attributes:
        ops: every operator in execution order.
        weight_bytes: bytes of all constant buffers.
    """

    ops: Tuple[OpBytes, ...]
    weight_bytes: int

    @property
    def op_count(self) -> int:
        """Operators that run on every inference: those reading an activation.

        An operator of constants only (the DEQUANTIZE of a float16 model's weights)
        is evaluated once when the interpreter prepares the graph, not per inference.
        """
        return sum(1 for o in self.ops if o.inputs > 0)

    @property
    def activation_bytes(self) -> int:
        """Activation bytes read and written by all operators."""
        return sum(o.inputs + o.outputs for o in self.ops)

    def dram_bytes(self, cache_bytes: int) -> float:
        """Bytes one warm inference moves to and from DRAM with a shared cache of ``cache_bytes``."""
        if cache_bytes <= 0:
            raise ValueError(f"cache_bytes must be > 0, got {cache_bytes}")
        weights = self.weight_bytes * spill(self.weight_bytes, cache_bytes)
        acts = sum((o.inputs + o.outputs) * spill(o.inputs + o.outputs + o.weights, cache_bytes)
                   for o in self.ops)
        return weights + acts

    def to_dict(self) -> dict:
        return {"op_count": self.op_count, "weight_bytes": self.weight_bytes,
                "activation_bytes": self.activation_bytes,
                "ops": [[o.opcode, o.inputs, o.outputs, o.weights] for o in self.ops]}

    @classmethod
    def from_dict(cls, d: dict) -> "GraphTraffic":
        return cls(tuple(OpBytes(str(a), int(b), int(c), int(e)) for a, b, c, e in d["ops"]),
                   int(d["weight_bytes"]))


def spill(working_set: float, cache_bytes: float) -> float:
    """The fraction of a streamed working set that does not fit an LRU cache."""
    return 0.0 if working_set <= cache_bytes else 1.0 - cache_bytes / working_set


_ITEMSIZE = {"float32": 4, "int32": 4, "float16": 2, "int16": 2, "int8": 1, "uint8": 1,
             "int64": 8, "bool": 1}


def graph_traffic(model_or_path: Union[str, Path, object]) -> GraphTraffic:
    """The bytes of every operator of a .tflite model (a path or a parsed model).

    Raises:
        ModelFileError: unreadable or malformed model file.
    """
    from pipeline.tflite.reader import read_tflite

    model = model_or_path
    if isinstance(model_or_path, (str, Path)):
        model = read_tflite(model_or_path)
    constant = {t.index for t in model.tensors if 0 < t.buffer < len(model.buffers)
                and model.buffers[t.buffer]}

    def nbytes(i: int) -> int:
        t = model.tensors[i]
        n = 1
        for d in t.shape:
            n *= max(int(d), 1)
        return n * _ITEMSIZE.get(t.dtype, 4)

    ops = []
    for op in model.operators:
        ins = [i for i in op.inputs if i >= 0]
        ops.append(OpBytes(op.opcode, sum(nbytes(i) for i in ins if i not in constant),
                           sum(nbytes(i) for i in op.outputs if i >= 0),
                           sum(nbytes(i) for i in ins if i in constant)))
    weights = sum(len(model.buffers[b]) for b in {model.tensors[i].buffer for i in constant})
    return GraphTraffic(tuple(ops), weights)

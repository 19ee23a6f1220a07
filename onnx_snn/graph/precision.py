"""One pass: a model computed in float16 or float64 is computed in float32.

Spiking neurons are defined on float32 membranes (the format's functions, the torch runtime),
and the converter's calibration compares float32 activations. A half-precision export
(``model.half()`` before ``torch.onnx.export``), onnxconverter-common's float16 conversion
(with or without ``keep_io_types``: Cast to float16 after the inputs, back after the outputs)
or a float64 graph is therefore converted in float32: every float16/float64 constant (weights,
clip bounds, Constant and ConstantOfShape values) is cast, a Cast to float16/float64 becomes a
Cast to float32, and every tensor, the inputs and outputs too, is declared float32. A note says
so: the spiking model takes and gives float32. bfloat16 and the float8 types (no numpy type
for the first) stay refused, named (``support.check_supported``).
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from .passes import PassResult, graph_pass

#: floating-point types computed in float32 instead
WIDER_OR_NARROWER = (np.dtype(np.float16), np.dtype(np.float64))
_CAST_TARGETS = (TensorProto.FLOAT16, TensorProto.DOUBLE)


def _is_other(dtype) -> bool:
    try:
        return dtype is not None and np.dtype(dtype) in WIDER_OR_NARROWER
    except TypeError:
        return False


def _as_float32(value):
    """A constant or ndarray attribute's value in float32 (None: not a float16/float64 one;
    a constant's values are not read otherwise: gs would cast a bfloat16 one on reading)."""
    if not isinstance(value, (gs.Constant, np.ndarray)) or not _is_other(value.dtype):
        return None
    return np.asarray(value.values if isinstance(value, gs.Constant) else value).astype(np.float32)


@graph_pass("compute-in-float32")
def compute_in_float32(graph: gs.Graph, result: PassResult) -> None:
    """See the module docstring."""
    kinds = set()
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant):
            v = _as_float32(t)
            if v is not None:
                kinds.add(str(np.dtype(t.dtype)))
                t.values = v
                result.changed += 1
        elif _is_other(t.dtype):
            kinds.add(str(np.dtype(t.dtype)))
            t.dtype = np.float32
            result.changed += 1
    for node in graph.nodes:
        if node.op == "Cast" and node.attrs.get("to") in _CAST_TARGETS:
            kinds.add("float16" if node.attrs["to"] == TensorProto.FLOAT16 else "float64")
            node.attrs["to"] = TensorProto.FLOAT
            result.changed += 1
        for key, value in list(node.attrs.items()):
            v = _as_float32(value)
            if v is not None:
                kinds.add(str(np.dtype(value.dtype)))
                node.attrs[key] = gs.Constant(value.name, v) if isinstance(value, gs.Constant) else v
                result.changed += 1
    if result.changed:
        result.notes.append(f"the model computes in {' and '.join(sorted(kinds))}: converted in "
                            "float32 (its weights and constants cast, its Casts to "
                            f"{' or '.join(sorted(kinds))} made Casts to float32); the spiking "
                            "model takes and gives float32")

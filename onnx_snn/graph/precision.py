"""One pass: a model computed in float16 or float64 is computed in float32.

Spiking neurons are defined on float32 membranes (the format's functions, the torch runtime),
and the converter's calibration compares float32 activations. A half-precision export
(``model.half()`` before ``torch.onnx.export``), onnxconverter-common's float16 conversion
(with or without ``keep_io_types``: Cast to float16 after the inputs, back after the outputs)
or a float64 graph is therefore converted in float32: every float16/float64 constant (weights,
clip bounds, Constant and ConstantOfShape values) is cast, a Cast to float16/float64 (and an
op's ``dtype``/``output_datatype`` of those types) becomes float32, and every tensor, the
inputs and outputs too, is declared float32, in the graphs nested in If/Loop/Scan as well.
A note says so.

The pass runs only when the model's layers compute in those types: a float16/float64 graph
input, or a Conv/ConvTranspose/Gemm/MatMul/BatchNormalization weight of those types (a constant,
or a ``DequantizeLinear`` of int8 weights with a scale of that type). A float32
model with a float64 step in its shape arithmetic (sizes scaled in double, as exporters write
them) is left as it is: in float32 the same sizes could round differently. A float64 constant
beyond float32's range is refused, named (it would become an infinity). bfloat16 and the float8
types stay refused (named by ``support.check_supported`` or by onnxruntime's message).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto

from ..errors import UnsupportedModelError
from ..notes import interface
from .passes import PassResult, graph_pass

#: floating-point types computed in float32 instead
OTHER_FLOATS = (np.dtype(np.float16), np.dtype(np.float64))
_OTHER_CODES = (TensorProto.FLOAT16, TensorProto.DOUBLE)
#: attributes that name an output type (Cast's ``to``; EyeLike, Random*, Bernoulli's ``dtype``;
#: the window functions' and MelWeightMatrix's ``output_datatype``)
_TYPE_ATTRS = ("to", "dtype", "output_datatype")
#: layers whose weight type says what the model computes in
_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization")


def _is_other(dtype) -> bool:
    try:
        return dtype is not None and np.dtype(dtype) in OTHER_FLOATS
    except TypeError:
        return False


def _graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    """``graph`` and the graphs nested in its nodes' attributes (If/Loop/Scan bodies)."""
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            for sub in (value if isinstance(value, (list, tuple)) else [value]):
                if isinstance(sub, gs.Graph):
                    yield from _graphs(sub)


def _other_weight(t) -> bool:
    """A layer's weight of float16/float64: a constant of that type, or the output of a
    ``DequantizeLinear`` whose scale is one (QDQ and weight-only int8 models converted to
    float16 with ``keep_io_types``: their weights are int8 constants, their type the
    scale's)."""
    if isinstance(t, gs.Constant):
        return _is_other(t.dtype)
    producer = t.inputs[0] if t.inputs else None
    return producer is not None and producer.op == "DequantizeLinear" and \
        len(producer.inputs) > 1 and isinstance(producer.inputs[1], gs.Constant) and \
        _is_other(producer.inputs[1].dtype)


def computes_in_other_floats(graph: gs.Graph) -> bool:
    """Whether the model's layers compute in float16/float64 (module docstring)."""
    if any(_is_other(t.dtype) for t in graph.inputs):
        return True
    return any(n.op in _WEIGHTED and any(_other_weight(t) for t in n.inputs[1:2])
               for g in _graphs(graph) for n in g.nodes)


def _float32(name: str, values) -> np.ndarray:
    with np.errstate(over="ignore"):       # an overflow is refused below, by name
        out = np.asarray(values).astype(np.float32)
    if not np.all(np.isfinite(out)) and np.all(np.isfinite(np.asarray(values))):
        raise UnsupportedModelError(f"constant '{name}' holds values beyond float32's range "
                                    f"(up to {np.max(np.abs(np.asarray(values))):.3g}); the model "
                                    "is converted in float32: bring them into range (or clip "
                                    "them) first")
    return out


@graph_pass("compute-in-float32")
def compute_in_float32(graph: gs.Graph, result: PassResult) -> None:
    """See the module docstring."""
    if not computes_in_other_floats(graph):
        return
    kinds, casts = set(), 0
    io = {id(t) for t in list(graph.inputs) + list(graph.outputs) if _is_other(t.dtype)}
    for g in _graphs(graph):
        for t in g.tensors().values():
            if not _is_other(t.dtype):
                continue        # (a constant's values are not read: gs casts bfloat16 on reading)
            kinds.add(str(np.dtype(t.dtype)))
            if isinstance(t, gs.Constant):
                t.values = _float32(t.name, t.values)
            else:
                t.dtype = np.float32
            result.changed += 1
        for node in g.nodes:
            for key, value in list(node.attrs.items()):
                if key in _TYPE_ATTRS and value in _OTHER_CODES:
                    kinds.add("float16" if value == TensorProto.FLOAT16 else "float64")
                    node.attrs[key] = TensorProto.FLOAT
                    casts += node.op == "Cast"
                    result.changed += 1
                elif isinstance(value, (gs.Constant, np.ndarray)) and _is_other(value.dtype):
                    kinds.add(str(np.dtype(value.dtype)))
                    v = _float32(f"{node.name}.{key}",
                                 value.values if isinstance(value, gs.Constant) else value)
                    node.attrs[key] = gs.Constant(value.name, v) if isinstance(value, gs.Constant) else v
                    result.changed += 1
    what = " and ".join(sorted(kinds))
    parts = ["its weights and constants cast"]
    if casts:
        parts.append(f"its Casts to {what} made Casts to float32")
    if io:
        parts.append("the spiking model's inputs and outputs are float32")
    note = f"the model computes in {what}: converted in float32 ({'; '.join(parts)})"
    result.notes.append(interface(note) if io else note)


def in_float32(model):
    """A copy of ``model`` computed in float32 (:func:`compute_in_float32`, its inputs and
    outputs float32 too), for a runtime that has no float16/float64 kernel for one of its
    ops (onnxruntime's CPU Conv in float64); None when ``model`` computes in float32
    already."""
    from .export import export
    graph = gs.import_onnx(model)
    if not computes_in_other_floats(graph) or not compute_in_float32(graph).changed:
        return None
    out = export(graph)
    out.ir_version = model.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


@graph_pass("float64-round-trips")
def float64_round_trips(graph: gs.Graph, result: PassResult) -> None:
    """A Cast of a float32 tensor to float64 read only by Casts back to float32 (a step an
    exporter wrote in double, then nothing done in it) is the identity, exactly: every
    float32 value is a float64 value and comes back unchanged. The Casts back become
    Identities (removed later) and the Cast to float64 goes with its last reader. A float64
    step that computes (an Add in double between the Casts) stays refused by name, and so does
    a float16 round trip (it rounds)."""
    for node in list(graph.nodes):
        if node.op != "Cast" or int(node.attrs.get("to", 0)) != TensorProto.DOUBLE \
                or not node.inputs or not node.outputs:
            continue
        src, out = node.inputs[0], node.outputs[0]
        readers = list(out.outputs)
        if src.dtype != np.float32 or not readers or any(
                r.op != "Cast" or int(r.attrs.get("to", 0)) != TensorProto.FLOAT for r in readers) \
                or any(out is o for o in graph.outputs):
            continue
        for r in readers:
            r.op, r.attrs = "Identity", {}
            r.inputs = [src]
        result.changed += 1
        result.records.append(node.name)
    if result.changed:
        result.notes.append(f"removed {result.changed} Cast(s) to float64 that were only cast "
                            "back to float32 (the same values)")
        graph.cleanup()

"""Exporting an onnx-graphsurgeon graph without needless copies of its weights."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, Tuple

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import skeleton

_PLAIN_DTYPES = (np.float32, np.float64, np.float16, np.int8, np.uint8, np.int16, np.uint16,
                 np.int32, np.uint32, np.int64, np.uint64, np.bool_)


def _onnx_dtype(values) -> int:
    """The ONNX element type of a constant's values (an array or onnx-graphsurgeon's lazy
    view of an initializer)."""
    if isinstance(values, np.ndarray):
        return onnx.helper.np_dtype_to_tensor_dtype(values.dtype)
    return values.tensor.data_type


@contextmanager
def stubbed(graph: gs.Graph) -> Iterator[Dict[str, Tuple[gs.Constant, object]]]:
    """While inside, each large constant of ``graph`` (at least ``skeleton.MIN_BYTES``) holds
    a stub of its shape and type instead of its values, so that ``gs.export_onnx`` writes it
    without copying its data; yields name -> (constant, its values), restored on exit. A graph
    with nested graphs is left whole (an empty dict)."""
    from onnx_graphsurgeon.ir.tensor import LazyValues
    big: Dict[str, Tuple[gs.Constant, object]] = {}
    nested = any(isinstance(v, gs.Graph) or (isinstance(v, list) and v and isinstance(v[0], gs.Graph))
                 for n in graph.nodes for v in n.attrs.values())
    for t in ([] if nested else graph.tensors().values()):
        if not isinstance(t, gs.Constant) or t._values.nbytes < skeleton.MIN_BYTES:
            continue
        if isinstance(t._values, LazyValues) or (
                isinstance(t._values, np.ndarray) and t.export_dtype == t._values.dtype
                and t._values.dtype.type in _PLAIN_DTYPES):
            big[t.name] = (t, t._values)
    try:
        for name, (t, values) in big.items():   # exported as their shape and type alone
            stub = onnx.TensorProto(name=name, data_type=_onnx_dtype(values))
            stub.dims.extend(values.shape)
            t._values = LazyValues(stub)
        yield big
    finally:
        for t, values in big.values():
            t._values = values


def export(graph: gs.Graph) -> onnx.ModelProto:
    """``gs.export_onnx(graph)`` with each large constant's data copied once, into the
    model (the exporter copies every initializer twice: into the graph, then the graph
    into the model)."""
    from onnx_graphsurgeon.exporters.onnx_exporter import constant_to_onnx_tensor
    from onnx_graphsurgeon.ir.tensor import LazyValues
    with stubbed(graph) as big:
        out = gs.export_onnx(graph)
    for tp in out.graph.initializer if big else ():
        entry = big.get(tp.name)
        if entry is None:
            continue
        t, values = entry
        if isinstance(values, LazyValues):
            tp.CopyFrom(values.tensor)
            tp.name = t.name
        else:
            full = constant_to_onnx_tensor(t)
            if t.data_location is not None:
                full.data_location = t.data_location
            tp.CopyFrom(full)
    return out


def weightless(graph: gs.Graph) -> onnx.ModelProto:
    """The graph as a model whose large constants are graph inputs of their shape and type
    (no data copied): what shape inference needs."""
    with stubbed(graph) as big:
        out = gs.export_onnx(graph)
    if not big:
        return out
    keep = [tp for tp in out.graph.initializer if tp.name not in big]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    for name, (t, values) in big.items():
        out.graph.input.append(onnx.helper.make_tensor_value_info(
            name, _onnx_dtype(values), list(values.shape)))
    return out

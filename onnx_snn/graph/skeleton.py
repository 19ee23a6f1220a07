"""Skeletons: a model without the data of its large initializers.

The ONNX checker, shape inference, the opset converter and onnxruntime's graph loading each
take a serialized model: on a 0.5 GB network every call copies the weights two or three
times, for work that only needs their names, types and shapes. A skeleton is the model with
every large initializer left out (referenced, never copied):

* :func:`split` turns each one into a graph input of the same name, type and shape — what
  the checker and shape inference need (a Loop body's initializers become values of the
  outer scope, which its nodes read just the same; only those whose every use lies inside
  the graph that defines them, so that a use out of scope still meets the checker). Small
  initializers stay: shape
  inference reads the values of shape-like inputs (a Reshape's shape, a Slice's starts).
* :func:`session_parts` keeps them as initializers with an external-data reference and
  hands their data to onnxruntime as arrays (``SessionOptions.add_external_initializers``),
  which replaces them before any graph optimization, so the session is the same.

:func:`check_model` and :func:`infer_shapes` give the results of ``onnx.checker.check_model``
and ``onnx.shape_inference.infer_shapes`` on the whole model: an initializer is left out
only when it is a plain tensor the checker accepts (a known fixed-size type, its data inline
in ``raw_data`` alone, at least as many bytes as its shape needs), which is checked here
without copying the others; any other tensor stays in the skeleton and meets the checker.
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto

from . import walk

#: initializers of at least this many bytes are left out of skeletons (those below are kept:
#: shape inference reads the values of shape-like inputs, which are a few dozen bytes)
MIN_BYTES = 16 * 1024

#: bytes per element of the types a skeleton may leave out (fixed-size numeric types)
ITEMSIZE = {
    TensorProto.FLOAT: 4, TensorProto.DOUBLE: 8, TensorProto.FLOAT16: 2,
    TensorProto.BFLOAT16: 2, TensorProto.INT8: 1, TensorProto.UINT8: 1, TensorProto.INT16: 2,
    TensorProto.UINT16: 2, TensorProto.INT32: 4, TensorProto.UINT32: 4, TensorProto.INT64: 8,
    TensorProto.UINT64: 8, TensorProto.BOOL: 1,
}
#: the numpy dtype of each type onnxruntime gets as an array (bfloat16 has none in numpy)
NUMPY_DTYPE = {
    TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16,
    TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.INT16: np.int16,
    TensorProto.UINT16: np.uint16, TensorProto.INT32: np.int32, TensorProto.UINT32: np.uint32,
    TensorProto.INT64: np.int64, TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_,
}
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data",
                 "uint64_data")
#: the external-data location of a session skeleton's initializers (never a file: onnxruntime
#: is handed the data)
IN_MEMORY = "onnx-snn-in-memory"
#: the size onnx itself refuses to serialize in one message
MAX_PROTOBUF = 2_000_000_000


def declared_nbytes(t: TensorProto) -> Optional[int]:
    """The bytes ``t``'s shape and type need, when ``t`` is a plain tensor whose data is
    inline in ``raw_data`` alone (no typed field, no external data, no segment, a fixed-size
    numeric type, non-negative dims); None for any other tensor."""
    size = ITEMSIZE.get(t.data_type)
    if size is None or not t.HasField("raw_data") or t.HasField("segment"):
        return None
    if t.data_location != TensorProto.DEFAULT or len(t.external_data):
        return None
    if any(len(getattr(t, f)) for f in _TYPED_FIELDS):
        return None
    dims = list(t.dims)
    if any(d < 0 for d in dims):
        return None
    return math.prod(dims) * size


def copy_messages(dst, messages: Iterable) -> None:
    """Append copies of ``messages`` to the repeated message field ``dst``: ``add()`` and
    ``CopyFrom`` each, about three times faster than ``extend`` or ``append`` on large
    tensors (which upb copies by encoding and decoding them)."""
    for m in messages:
        dst.add().CopyFrom(m)


def copy_fields(src, dst, skip: Iterable[str] = ()) -> None:
    """Copy every set field of message ``src`` into ``dst`` except those named in ``skip``."""
    skip = set(skip)
    for fd in src.DESCRIPTOR.fields:
        if fd.name in skip:
            continue
        if fd.is_repeated:
            value = getattr(src, fd.name)
            if not len(value):
                continue
            if fd.type == fd.TYPE_MESSAGE:
                copy_messages(getattr(dst, fd.name), value)
            else:
                getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            if src.HasField(fd.name):
                getattr(dst, fd.name).CopyFrom(getattr(src, fd.name))
        elif src.HasField(fd.name):
            setattr(dst, fd.name, getattr(src, fd.name))


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.HasField("g") or len(a.graphs) for a in node.attribute)


def _copy_graph(src: onnx.GraphProto, dst: onnx.GraphProto, leave: Callable, depth: int,
                left: list, stub: Optional[Callable] = None) -> None:
    """``dst`` = ``src`` without the initializers ``leave(tensor, depth)`` picks (appended
    to ``left`` as (tensor, depth); ``stub(tensor, message)`` fills a stand-in at the same
    place when given); nested graphs likewise, one level deeper."""
    copy_fields(src, dst, skip=("initializer", "node"))
    for t in src.initializer:
        if leave(t, depth):
            left.append((t, depth))
            if stub is not None:
                stub(t, dst.initializer.add())
        else:
            dst.initializer.add().CopyFrom(t)
    for n in src.node:
        if not _has_subgraph(n):
            dst.node.add().CopyFrom(n)
            continue
        m = dst.node.add()
        copy_fields(n, m, skip=("attribute",))
        for a in n.attribute:
            b = m.attribute.add()
            copy_fields(a, b, skip=("g", "graphs"))
            if a.HasField("g"):
                _copy_graph(a.g, b.g, leave, depth + 1, left, stub)
            for g in a.graphs:
                _copy_graph(g, b.graphs.add(), leave, depth + 1, left, stub)


def _defined_names(graph: onnx.GraphProto) -> Counter:
    """How often each name is defined in a graph and its nested graphs (inputs,
    initializers, outputs of nodes)."""
    counts: Counter = Counter()
    for g in walk.subgraphs(graph):
        counts.update(i.name for i in g.input)
        counts.update(t.name for t in g.initializer)
        counts.update(t.values.name for t in g.sparse_initializer)
        counts.update(o for n in g.node for o in n.output if o)
    return counts


def _uses(graph: onnx.GraphProto) -> Counter:
    """How often each name is used (node inputs, graph outputs) in a graph and its nested
    graphs."""
    uses: Counter = Counter()
    for g in walk.subgraphs(graph):
        uses.update(x for n in g.node for x in n.input if x)
        uses.update(o.name for o in g.output)
    return uses


def _confined(graph: onnx.GraphProto) -> set:
    """Names of the initializers of nested graphs whose every use lies inside the graph that
    defines them or its own nested graphs: those may move to the main graph without hiding a
    use out of scope from the checker."""
    total = _uses(graph)
    confined: set = set()
    for sub in walk.subgraphs(graph)[1:]:
        inside = _uses(sub)
        confined.update(t.name for t in sub.initializer if inside[t.name] == total[t.name])
    return confined


@dataclass
class Skeleton:
    """A model whose large initializers are graph inputs of the main graph."""

    model: onnx.ModelProto
    #: name -> the initializer left out (the full model's own message, not a copy)
    stubs: Dict[str, TensorProto] = field(default_factory=dict)
    #: the main graph's own inputs come first; the stubs follow
    n_inputs: int = 0
    #: bytes of the left-out data (to tell the full model's size)
    stub_bytes: int = 0

    def byte_size(self) -> int:
        """The full model's serialized size, to within a few bytes per left-out tensor
        (the skeleton's size plus the left-out data)."""
        return self.model.ByteSize() + self.stub_bytes


def split(model: onnx.ModelProto, min_bytes: Optional[int] = None, subgraphs: bool = False,
          verify: bool = False) -> Skeleton:
    """The skeleton of ``model`` (see the module's docstring); ``model`` is not changed.

    ``subgraphs``: nested graphs' large initializers too (they become main-graph inputs,
    read from the outer scope). ``verify``: leave out only tensors whose ``raw_data`` holds
    at least the bytes their shape needs (what the checker asks; it costs one read of each),
    so that the checker sees every tensor it would reject. A tensor whose name is defined
    more than once anywhere, or is also a graph input, stays; nothing is left out of a
    model older than IR version 4 (whose initializers must be graph inputs)."""
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    g = model.graph
    sk = Skeleton(onnx.ModelProto())
    if model.ir_version < 4 or sys.byteorder != "little":
        sk.model.CopyFrom(model)
        sk.n_inputs = len(g.input)
        return sk
    counts = _defined_names(g)
    confined = _confined(g) if subgraphs else set()

    def leave(t: TensorProto, depth: int) -> bool:
        if depth and t.name not in confined:   # (never without ``subgraphs``)
            return False
        n = declared_nbytes(t)
        if n is None or n < min_bytes or counts[t.name] != 1:
            return False
        return not verify or len(t.raw_data) >= n

    left: List[Tuple[TensorProto, int]] = []
    copy_fields(model, sk.model, skip=("graph",))
    _copy_graph(g, sk.model.graph, leave, 0, left)
    sk.n_inputs = len(g.input)
    for t, _ in left:
        sk.stubs[t.name] = t
        sk.stub_bytes += declared_nbytes(t) or 0
        sk.model.graph.input.append(onnx.helper.make_tensor_value_info(
            t.name, t.data_type, list(t.dims)))
    return sk


def byte_size(model: onnx.ModelProto) -> int:
    """About ``model.ByteSize()`` (to within a few bytes per large tensor), without
    serializing the weights (upb's ByteSize encodes the whole message)."""
    return split(model, subgraphs=True).byte_size()


def check_model(model: onnx.ModelProto, full_check: bool = False) -> None:
    """``onnx.checker.check_model(model, full_check)``, run on the skeleton (each left-out
    tensor was checked here as the checker would)."""
    sk = split(model, subgraphs=True, verify=True)
    onnx.checker.check_model(sk.model, full_check=full_check)


def infer_shapes(model: onnx.ModelProto, skeleton: Optional[Skeleton] = None) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes(model)``, run on the skeleton: the inferred
    skeleton, its stubs still graph inputs (see :func:`restore`). Raises what shape
    inference raises."""
    sk = skeleton or split(model)
    return onnx.shape_inference.infer_shapes(sk.model)


def restore(inferred: onnx.ModelProto, model: onnx.ModelProto, sk: Skeleton) -> onnx.ModelProto:
    """Write what inference added to the skeleton (value_info, output types, nested graphs'
    value_info) into ``model`` itself, which keeps its initializers; returns ``model``."""
    dst, src = model.graph, inferred.graph
    for name in ("node", "output", "value_info"):
        del getattr(dst, name)[:]
        getattr(dst, name).extend(getattr(src, name))
    del dst.input[:]
    dst.input.extend(src.input[:sk.n_inputs])
    return model


def strip_stub_inputs(model: onnx.ModelProto, sk: Skeleton) -> None:
    """Remove the stubs' graph inputs from a model derived from the skeleton (in place)."""
    keep = [i for i in model.graph.input if i.name not in sk.stubs]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)


def _external_ref(t: TensorProto, stub: TensorProto, location: str, offset: int, length: int) -> None:
    copy_fields(t, stub, skip=("raw_data", "data_location", "external_data"))
    stub.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
        e = stub.external_data.add()
        e.key, e.value = k, v


# ------------------------------------------------------------------ onnxruntime sessions

def session_parts(model: onnx.ModelProto, outputs: Sequence[str] = (),
                  min_bytes: Optional[int] = None) -> Tuple[bytes, List[str], List[np.ndarray]]:
    """(serialized skeleton, names, arrays) for an onnxruntime session of ``model`` that
    also outputs ``outputs``: the main graph's large initializers are external-data
    references in the skeleton, their data the arrays (one read of each initializer; give
    them to ``SessionOptions.add_external_initializers``). An initializer whose ``raw_data``
    does not hold exactly the bytes of its shape stays inline (onnxruntime judges it); one
    that nothing reads is left out, and so is an input nothing reads (while another is
    read: the session's inputs are what the data must feed)."""
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    g = model.graph
    sk = onnx.ModelProto()
    copy_fields(model, sk, skip=("graph",))
    copy_fields(g, sk.graph, skip=("initializer", "output"))
    names: List[str] = []
    arrays: List[np.ndarray] = []
    read = walk.read_names(g)
    unread = set(walk.unread_inputs(g, read))         # see normalize.drop_unread_inputs
    if unread:
        kept = [i for i in sk.graph.input if i.name not in unread]
        del sk.graph.input[:]
        sk.graph.input.extend(kept)
    inputs = {i.name for i in sk.graph.input}
    little = sys.byteorder == "little" and model.ir_version >= 4
    for t in g.initializer:
        if t.name not in read and t.name not in inputs:
            continue    # onnxruntime drops an unused initializer, then fails to replace it
        n = declared_nbytes(t)
        dtype = NUMPY_DTYPE.get(t.data_type)
        if not little or n is None or n < min_bytes or dtype is None or t.name in inputs:
            sk.graph.initializer.append(t)
            continue
        raw = t.raw_data
        if len(raw) != n:
            sk.graph.initializer.append(t)
            continue
        arrays.append(np.frombuffer(raw, dtype=dtype).reshape(tuple(t.dims)))
        names.append(t.name)
        _external_ref(t, sk.graph.initializer.add(), IN_MEMORY, 0, n)
    sk.graph.output.extend(g.output)
    have = {o.name for o in g.output}
    for name in outputs:
        if name not in have:
            sk.graph.output.add().name = name
            have.add(name)
    return sk.SerializeToString(), names, arrays


# ------------------------------------------------------------------ external data

#: initializers of at least this many bytes go to the external-data file (onnx.save_model's
#: default threshold)
EXTERNAL_MIN_BYTES = 1024
#: offsets in the external-data file are multiples of this (a page: onnxruntime can map the
#: weights rather than read them)
EXTERNAL_ALIGN = 4096


def external_data(model: onnx.ModelProto, location: str,
                  min_bytes: int = EXTERNAL_MIN_BYTES) -> Tuple[bytes, List[TensorProto]]:
    """``model`` with its weights in an external-data file named ``location`` (beside the
    model file): (the serialized model, whose initializers of ``min_bytes`` or more — in
    nested graphs too — refer to the file, the tensors whose data the file holds, in order).
    :func:`external_chunks` gives the file's content. ``model`` is not changed (unlike
    ``onnx.save_model(..., save_as_external_data=True)``, which moves the data out of it)."""
    offset = 0

    def leave(t: TensorProto, depth: int) -> bool:
        n = declared_nbytes(t)
        return n is not None and n >= min_bytes

    def stub(t: TensorProto, m: TensorProto) -> None:
        nonlocal offset
        n = declared_nbytes(t) or 0
        _external_ref(t, m, location, offset, n)
        offset += -(-n // EXTERNAL_ALIGN) * EXTERNAL_ALIGN

    sk = onnx.ModelProto()
    left: List[Tuple[TensorProto, int]] = []
    copy_fields(model, sk, skip=("graph",))
    _copy_graph(model.graph, sk.graph, leave, 0, left, stub)
    return sk.SerializeToString(), [t for t, _ in left]


def external_chunks(tensors: Sequence[TensorProto]) -> Iterable[bytes]:
    """The external-data file of :func:`external_data`: each tensor's data at its offset
    (one tensor in memory at a time). A tensor whose data is not the size its shape needs
    is refused (the reference would not describe it)."""
    for t in tensors:
        n = declared_nbytes(t) or 0
        raw = t.raw_data
        if len(raw) != n:
            raise ValueError(f"initializer '{t.name}' holds {len(raw)} bytes of data, not the "
                             f"{n} its shape and type need")
        yield raw
        pad = -n % EXTERNAL_ALIGN
        if pad:
            yield bytes(pad)


def dense_of_sparse(sparse: onnx.SparseTensorProto) -> TensorProto:
    """A sparse initializer as the dense tensor it stands for, in its own element type,
    under its name (indices: [NNZ] linear ones, or [NNZ, rank] coordinates)."""
    from onnx import numpy_helper
    values = numpy_helper.to_array(sparse.values)
    dims = tuple(int(d) for d in sparse.dims)
    dense = np.zeros(dims, values.dtype)
    if values.size:
        idx = numpy_helper.to_array(sparse.indices).astype(np.int64)
        if idx.ndim == 1:
            dense.reshape(-1)[idx] = values.reshape(-1)
        else:
            dense[tuple(idx.T)] = values.reshape(-1)
    return numpy_helper.from_array(dense, sparse.values.name)


def _sparse_constants(nodes):
    """The Constant nodes of ``nodes`` given by a ``sparse_value``."""
    return [n for n in nodes if n.op_type == "Constant"
            and any(a.name == "sparse_value" for a in n.attribute)]


def densified(model: onnx.ModelProto) -> Optional[onnx.ModelProto]:
    """A copy of ``model`` with every sparse initializer (of the main graph and its
    subgraphs) an ordinary one in its own element type, and every Constant node given by a
    ``sparse_value`` (there and in the model's functions) one given by the dense ``value`` it
    stands for; None when it has neither (passes, graph-surgeon's import and the analyzer
    read ``initializer`` and ``value`` alone: a sparse weight was imported as float64, or not
    found, and graph-surgeon's export of a sparse Constant gave it two values, which shape
    inference refused as "the model's shapes do not fit together")."""
    graphs = list(walk.subgraphs(model.graph))
    nodes = [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]
    if not any(len(g.sparse_initializer) for g in graphs) and not _sparse_constants(nodes):
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graphs = list(walk.subgraphs(out.graph))
    for g in graphs:
        dense = [dense_of_sparse(t) for t in g.sparse_initializer]
        del g.sparse_initializer[:]
        g.initializer.extend(dense)
    nodes = [n for g in graphs for n in g.node] + [n for f in out.functions for n in f.node]
    for node in _sparse_constants(nodes):
        sparse = next(a for a in node.attribute if a.name == "sparse_value").sparse_tensor
        kept = [a for a in node.attribute if a.name != "sparse_value"]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(onnx.helper.make_attribute("value", dense_of_sparse(sparse)))
    return out

"""Small helpers over onnx-graphsurgeon graphs shared by the passes."""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx_graphsurgeon as gs


def const_value(t) -> Optional[np.ndarray]:
    """The numpy value of a constant tensor, else None."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    return None


def is_empty(t) -> bool:
    return isinstance(t, gs.Variable) and t.name == ""


def scalar_value(t, like=None) -> Optional[float]:
    """The value of a constant with exactly one element, else None. With ``like``: only one
    that broadcasts to ``like`` without growing it, of no more axes than ``like`` has (one,
    when its rank is unknown): a [1, 1, 1] constant on a 2-D tensor adds axes, no scalar."""
    v = const_value(t)
    if v is None or v.size != 1:
        return None
    if like is not None:
        r = rank(like)
        if v.ndim > (1 if r is None else r):
            return None
    return float(v.reshape(()))


def broadcasts_within(c_shape, shape) -> bool:
    """Whether a constant of shape ``c_shape`` broadcasts onto a tensor of shape ``shape``
    without growing it or adding axes: no more axes, each 1 or the tensor's known length
    (False when ``shape`` is unknown)."""
    if shape is None or len(c_shape) > len(shape):
        return False
    tail = list(shape)[len(shape) - len(c_shape):]
    return all(k == 1 or (isinstance(d, int) and k == d) for k, d in zip(c_shape, tail))


def pool_windows(size: int, span: int, stride: int, lo: int, hi: int, ceil: bool) -> int:
    """The windows a pool computes along one axis of ``size`` with padding ``lo``/``hi`` and
    windows ``span`` long (``dilation * (kernel - 1) + 1``), as onnxruntime (and PyTorch)
    compute them: in ceil mode ONNX's rounding up, less a last window that would start in
    the end padding (which ONNX's shape inference counts)."""
    room = size + lo + hi - span
    o = (-(-room // stride) if ceil else room // stride) + 1
    return o - 1 if ceil and (o - 1) * stride >= size + lo else o


def same_pads(size: int, kernel: int, stride: int, dilation: int, mode: str) -> Tuple[int, int]:
    """(begin, end) padding of one axis for ONNX's ``auto_pad`` ``mode`` (SAME_UPPER: the odd
    one at the end; SAME_LOWER: at the start; VALID: none): the output is ceil(size / stride)
    long."""
    if mode == "VALID":
        return 0, 0
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
    small = total // 2
    return (small, total - small) if mode == "SAME_UPPER" else (total - small, small)


def auto_pads(mode: str, sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
              dilations: Sequence[int]) -> List[int]:
    """ONNX's ``pads`` (every axis's begin, then every axis's end) that ``auto_pad`` ``mode``
    gives spatial ``sizes`` (:func:`same_pads`)."""
    both = [same_pads(int(sizes[i]), int(kernel[i]), int(strides[i]), int(dilations[i]), mode)
            for i in range(len(kernel))]
    return [b for b, _ in both] + [e for _, e in both]


def written_pads(op: str, attrs: Mapping, shape, weight_shape=None) -> Optional[List[int]]:
    """The ``pads`` a Conv's or pool's ``auto_pad`` SAME_UPPER/SAME_LOWER/VALID gives its input
    of ``shape`` (``[N, C, *spatial]``; ``attrs``: the node's attributes as plain values, its
    kernel from ``kernel_shape`` or a Conv's ``weight_shape``), or None where there are none
    to write: no such ``auto_pad``, a pool in ceil mode, or a spatial size or kernel not
    known. One rule for the converter's graph (``canonical.auto_pads_to_explicit_pads``) and
    onnxruntime's session skeletons (``calibrate``)."""
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("SAME_UPPER", "SAME_LOWER", "VALID") or int(attrs.get("ceil_mode", 0) or 0):
        return None
    kernel = attrs.get("kernel_shape") or (
        list(weight_shape[2:]) if op == "Conv" and weight_shape is not None else None)
    if shape is None or not kernel or len(shape) != len(kernel) + 2 or \
            not all(isinstance(d, int) and d > 0 for d in list(shape[2:]) + list(kernel)):
        return None
    n = len(kernel)
    return auto_pads(auto, shape[2:], kernel, attrs.get("strides") or [1] * n,
                     attrs.get("dilations") or [1] * n)


def node_label(node: gs.Node) -> str:
    """How messages name a node: its name and op, and the module of the source model it
    came from where the exporter recorded one (:func:`source_scope`)."""
    scope = getattr(node, "source_scope", None)
    return f"node '{node.name or '(unnamed)'}' ({node.op}{', in ' + scope if scope else ''})"


def source_scope(props) -> Optional[str]:
    """The innermost module a node was exported from, from its metadata ``props`` (key ->
    value): torch.onnx's dynamo exporter records ``namespace`` as ``/``-separated
    ``name: type`` pairs, e.g. ``enc.self_attn: torch.nn.modules.activation.MultiheadAttention``
    -> ``'enc.self_attn' (MultiheadAttention)``. None when there is none (the legacy
    exporter's node names carry the scope themselves)."""
    text = props.get("namespace")
    if not text:
        return None
    for part in reversed(text.split("/")):
        name, _, kind = part.partition(":")
        name, kind = name.strip(), kind.strip()
        if name and kind and not kind.startswith("aten."):
            return f"'{name}' ({kind.rsplit('.', 1)[-1]})"
    return None


def producer(t) -> Optional[gs.Node]:
    return t.inputs[0] if t.inputs else None


#: elementwise ops whose output keeps the axes of their data input (the other inputs
#: constants that broadcast without adding axes, or data of the same layout): an activation,
#: a bias, a scale, a sum of branches, an inference BatchNormalization
ELEMENTWISE_SAME_AXES = {"Relu", "Clip", "Identity", "Dropout", "Min", "Max", "Add", "Sub",
                         "Mul", "Div", "Neg", "Cast", "LeakyRelu", "Sigmoid", "Tanh",
                         "BatchNormalization", "Sum"}


def rank(t) -> Optional[int]:
    """The number of axes of tensor ``t``: its inferred shape's, else what the op that makes
    it fixes: a ``Flatten`` gives 2 axes, a ``MatMul`` numpy's matmul's (a Keras Dense
    behind a computed flatten, as tf2onnx writes it at opset 13), a ``Reshape`` as many as its
    shape input has
    values (known from that input's own shape when the values are computed, as in
    ``Shape -> Gather -> Concat`` flattening, which ONNX's Reshape-13 inference leaves
    shapeless). None when neither says."""
    if t.shape is not None:
        return len(t.shape)
    node = producer(t)
    if node is None:
        return None
    if node.op in ("Flatten", "Gemm"):
        return 2
    if node.op in ELEMENTWISE_SAME_AXES and node.inputs:   # rank of the first input (constants broadcast)
        data = [x for x in node.inputs if x.name and const_value(x) is None]
        if len(data) != 1 and not (data and node.op in ("Clip", "Dropout")):
            return None
        r = rank(data[0])
        consts = [const_value(x) for x in node.inputs if x.name and x is not data[0]]
        if r is None or any(c is not None and c.ndim > r for c in consts):
            return None
        return r
    if node.op == "MatMul" and len(node.inputs) == 2:     # numpy's matmul: a 1-D side drops
        ra, rb = rank(node.inputs[0]), rank(node.inputs[1])   # its axis, else the larger rank
        if ra is None or rb is None or min(ra, rb) < 1 or ra == rb == 1:
            return None
        return rb - 1 if ra == 1 else ra - 1 if rb == 1 else max(ra, rb)
    if node.op == "Reshape" and len(node.inputs) > 1:
        shape = node.inputs[1]
        v = const_value(shape)
        if v is not None:
            return int(v.size)
        if shape.shape is not None and len(shape.shape) == 1 and isinstance(shape.shape[0], int) \
                and shape.shape[0] >= 0:
            return shape.shape[0]
    return None


def is_graph_output(graph: gs.Graph, t) -> bool:
    return any(o is t for o in graph.outputs)


def bypass(graph: gs.Graph, node: gs.Node, keep: int = 0) -> None:
    """Remove a one-output node that passes ``node.inputs[keep]`` through unchanged.

    Consumers are rewired to the kept input. When the output is a graph output, the name
    of the graph output is preserved by renaming the kept tensor, if that is safe.
    """
    src = node.inputs[keep]
    out = node.outputs[0]
    if is_graph_output(graph, out):
        safe = (producer(src) is not None and not is_graph_output(graph, src)
                and len(src.outputs) == 1 and isinstance(src, gs.Variable))
        if not safe:
            # keep the pass-through as a plain Identity so the output keeps its name
            node.op, node.attrs = "Identity", {}
            node.inputs = [src]
            return
        name, dtype, shape = out.name, out.dtype, out.shape
        idx = [i for i, o in enumerate(graph.outputs) if o is out][0]
        _rewire(graph, out, src)        # the output's other readers (an ArgMax head's, say)
        node.inputs.clear()
        node.outputs.clear()
        src.name = name
        if src.dtype is None:
            src.dtype = dtype
        if src.shape is None:
            src.shape = shape
        graph.outputs[idx] = src
        return
    _rewire(graph, out, src)
    node.inputs.clear()
    node.outputs.clear()


def _rewire(graph: gs.Graph, old, new) -> None:
    """Every node that reads ``old`` (in nested graphs too) reads ``new`` instead. A tensor's
    consumers (``old.outputs``) include the nodes of If/Loop/Scan bodies that read it from
    the outer graph (onnx-graphsurgeon links them to the outer tensor itself), so no walk of
    the subgraphs is needed: that walk, once per bypassed node, made removing a chain of n
    Identity nodes quadratic (4000: 20 s)."""
    for c in list(old.outputs):
        for i, t in enumerate(c.inputs):
            if t is old:
                c.inputs[i] = new


def depends_on_inputs(graph: gs.Graph) -> set:
    """Names of every tensor whose value depends on a graph input (dynamic data)."""
    dyn = {t.name for t in graph.inputs}
    for node in graph.nodes:  # graph is toposorted by the caller
        if any(t.name in dyn for t in node.inputs if not is_empty(t)):
            if node.op in ("Shape", "Size"):
                continue  # shapes are metadata, not data
            for o in node.outputs:
                dyn.add(o.name)
    return dyn

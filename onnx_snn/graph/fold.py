"""Constant folding and BatchNormalization folding."""
from __future__ import annotations

import logging
from typing import Dict, Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from . import ir
from .ir import const_value, depends_on_inputs, is_empty, is_graph_output, node_label
from .passes import PassResult, graph_pass

log = logging.getLogger(__name__)


#: ops that draw new random numbers at every run: folded, they would become one fixed draw
RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
              "Bernoulli", "Multinomial"}


@graph_pass("fold-constants")
def fold_constants(graph: gs.Graph, result: PassResult) -> None:
    """Evaluate every subgraph that depends only on constants (Constant, ConstantOfShape,
    Cast, Shape of static dims, ...) so weights and clip bounds become initializers. A node
    that draws random numbers is refused first: folding would freeze one draw of it."""
    before = len(graph.nodes)
    graph.cleanup().toposort()
    for node in graph.nodes:
        if node.op in RANDOM_OPS:
            raise UnsupportedModelError(
                f"{node_label(node)} draws new random numbers at every run (noise injection, "
                "sampling), which a converted model cannot reproduce (folded, it would be one "
                "fixed draw); export the DNN for inference without it (in eval mode), then "
                "convert")
    _typed_constant_attributes(graph)
    _cast_like_to_cast(graph)
    _dequantize_constants(graph)
    # gs logs every partial failure at WARNING; they are harmless here
    gs_logger = logging.getLogger("onnx_graphsurgeon")
    level = gs_logger.level
    try:
        gs_logger.setLevel(logging.ERROR)
        graph.fold_constants(fold_shapes=True, error_ok=True)
    finally:
        gs_logger.setLevel(level)
    graph.cleanup().toposort()
    # Constant nodes that folding left (e.g. unused) are turned into constants too
    for node in list(graph.nodes):
        if node.op == "Constant" and "value" in node.attrs:
            out = node.outputs[0]
            val = node.attrs["value"]
            values = val.values if isinstance(val, gs.Constant) else np.asarray(val)
            replace_by_constant(graph, node, gs.Constant(out.name + "_const", np.asarray(values)))
    graph.cleanup().toposort()
    _shaped_constants_to_scalars(graph)
    _fold_shape_scalars(graph)
    result.changed = max(0, before - len(graph.nodes))
    _explain_unfolded(graph, result)


#: elementwise ops for which a constant filled in the other operand's own shape is the same
#: as that constant as a scalar (broadcasting adds nothing); Where's two values likewise
_ELEMENTWISE = {"Add", "Sub", "Mul", "Div", "Max", "Min"}


def _filled(z):
    """``(value, y)`` when ``z`` is a constant filled into the shape of a tensor ``y``:
    ``ConstantOfShape(Shape(y))`` (``torch.zeros_like(y)``, ``full_like``; the legacy
    exporter) or ``Expand(c, Shape(y))`` with ``c`` of one element (the dynamo exporter's
    zeros_like); else None."""
    fill = z.inputs[0] if len(z.inputs) == 1 else None
    if fill is None or fill.op not in ("ConstantOfShape", "Expand") or not fill.inputs:
        return None
    shape_in = fill.inputs[0] if fill.op == "ConstantOfShape" else fill.inputs[1] \
        if len(fill.inputs) == 2 else None
    shape = shape_in.inputs[0] if shape_in is not None and len(shape_in.inputs) == 1 else None
    if shape is None or shape.op != "Shape" or not shape.inputs \
            or shape.attrs.get("start", 0) != 0 or shape.attrs.get("end") is not None:
        return None
    if fill.op == "ConstantOfShape":
        value = fill.attrs.get("value")
        v = (value.values if isinstance(value, gs.Constant) else np.asarray(value)) \
            if value is not None else np.zeros(1, np.float32)
    else:
        v = const_value(fill.inputs[0])
        if v is None:
            return None
        # Expand's result has the rank of the larger of the two: a [1, 1, 1, 1, 1] zero
        # expanded to a 4-D shape is 5-D, no scalar on the 4-D tensor (a review)
        r = ir.rank(shape.inputs[0])
        if v.ndim and (r is None or v.ndim > r):
            return None
    if v.size != 1:
        return None
    return np.asarray(v, v.dtype).reshape(()), shape.inputs[0]


def _within(y, other) -> bool:
    """Whether a tensor of ``y``'s shape broadcasts onto ``other`` without growing it: ``y``
    is ``other``, or both shapes are known to the same rank and each of ``y``'s lengths is 1
    or ``other``'s (the same number, or the same named dimension: ``zeros_like(x[:, :1])``)."""
    if y is other:
        return True
    a, b = getattr(y, "shape", None), getattr(other, "shape", None)
    if a is None or b is None or len(a) != len(b):
        return False
    return all(d == 1 or (d is not None and d == e and (isinstance(d, int) or str(d)))
               for d, e in zip(a, b))


def _shaped_constants_to_scalars(graph: gs.Graph) -> None:
    """A constant filled into the batch's shape (:func:`_filled`), read by an elementwise
    op (or a Where) together with a tensor whose shape it does not grow, becomes the
    scalar it is filled with: folding left it (the shape is the batch's), and
    ``Max(x, zeros_like(x))`` or ``Where(x > 0, x, zeros_like(x))`` were not read as the
    ReLU they are."""
    changed = False
    for node in list(graph.nodes):
        if node.op in _ELEMENTWISE and len(node.inputs) == 2:
            pairs = ((0, 1), (1, 0))
        elif node.op == "Where" and len(node.inputs) == 3:
            pairs = ((1, 2), (2, 1))
        else:
            continue
        for i, j in pairs:
            z, other = node.inputs[i], node.inputs[j]
            got = _filled(z)
            if got is None or not _within(got[1], other):
                continue
            node.inputs[i] = gs.Constant(f"{node.name or z.name}_fill", got[0])
            changed = True
    if changed:
        graph.cleanup().toposort()


#: the inputs of an op that are shape arguments (a target shape, axes, pads, indices), not
#: values that flow with the data
SHAPE_ARGS = {"Reshape": {1}, "Expand": {1}, "Tile": {1}, "Slice": {1, 2, 3, 4},
              "Pad": {1, 2, 3}, "Resize": {1, 2, 3}, "Upsample": {1}, "Squeeze": {1},
              "Unsqueeze": {1}, "Split": {1}, "Gather": {1}, "ConstantOfShape": {0},
              "ReduceMean": {1}, "ReduceSum": {1}, "ReduceMax": {1}, "ReduceMin": {1},
              "ReduceL1": {1}, "ReduceL2": {1}, "ReduceProd": {1}, "TopK": {1}}

def shape_scalars_as_data(graph: gs.Graph, data: set) -> Dict[str, gs.Variable]:
    """The tensors computed from tensor shapes alone that folding left and that a node on
    the data path (``data``: :func:`.ir.depends_on_inputs`) reads as a value, not as a shape
    argument (a dimension shape inference kept symbolic, as the width of
    ``x.view(x.size(0), -1)`` in ``y / sqrt(y.size(1))``), by name."""
    return {t.name: t for node in graph.nodes if any(o.name in data for o in node.outputs)
            for i, t in enumerate(node.inputs)
            if not is_empty(t) and not isinstance(t, gs.Constant) and t.name not in data
            and i not in SHAPE_ARGS.get(node.op, ())}


#: the batch sizes of the probes of :func:`_fold_shape_scalars`
PROBE_BATCHES = (1, 2)


#: ops whose output's shape depends on their input's values, not only on its shape
_VALUE_SIZED = {"NonZero", "Compress", "Unique", "TopK", "Range", "NonMaxSuppression", "Loop",
                "If", "Scan", "StringSplit", "RandomNormalLike", "RandomUniformLike"}


def _value_shaped(graph: gs.Graph, data: set) -> set:
    """Names of the non-data tensors computed from the shape of a tensor whose shape may
    depend on the inputs' values (NonZero, or a Reshape/Expand/Tile/... whose shape argument
    is data): such a 'shape-derived' value is data in disguise, never a constant."""
    sized: set = set()          # tensors whose shape may depend on values
    tainted: set = set()        # shape-derived values of such tensors
    for node in graph.nodes:    # (toposorted by the caller)
        ins = [t for t in node.inputs if not is_empty(t)]
        args = SHAPE_ARGS.get(node.op, ())
        if node.op in _VALUE_SIZED or any(t.name in sized for t in ins) or any(
                i in args and t.name in data for i, t in enumerate(node.inputs) if not is_empty(t)):
            sized.update(o.name for o in node.outputs)
        if node.op in ("Shape", "Size"):
            if ins and ins[0].name in sized:
                tainted.update(o.name for o in node.outputs)
        elif any(t.name in tainted for t in ins):
            tainted.update(o.name for o in node.outputs)
    return tainted


def _fold_shape_scalars(graph: gs.Graph) -> None:
    """Each shape-derived value the data path reads (:func:`shape_scalars_as_data`) becomes
    a constant where it is one: onnxruntime computes it for zero inputs of batch 1 and 2 and
    for random ones (one batch size where the batch is fixed), and it is replaced where all
    agree; a value from the shape of a tensor whose shape depends on the inputs' values
    (:func:`_value_shaped`) is never folded. Only models whose inputs have no free dim but
    the batch (axis 0); runs only when such a value is left (otherwise the model would be
    refused at that node)."""
    data = depends_on_inputs(graph)
    found = shape_scalars_as_data(graph, data)
    if not found:
        return
    tainted = _value_shaped(graph, data)
    targets = {k: t for k, t in found.items() if k not in tainted and t.dtype is not None}
    ins = [t for t in graph.inputs if isinstance(t, gs.Variable)]
    if not targets or any(t.shape is None or t.dtype is None or not t.shape
                          or any(not isinstance(d, int) for d in list(t.shape)[1:]) for t in ins):
        return
    fixed = all(isinstance(t.shape[0], int) for t in ins)
    rng = np.random.default_rng(0)

    def feed(n, random):
        return {t.name: (rng.standard_normal([n] + list(t.shape)[1:]).astype(t.dtype) if random
                         else np.zeros([n] + list(t.shape)[1:], t.dtype)) for t in ins}
    batches = [ins[0].shape[0]] * 2 if fixed else list(PROBE_BATCHES)
    feeds = [feed(batches[0], False), feed(batches[1], False), feed(batches[1], True)]
    try:
        from ..calibrate import make_session
        from .export import export
        sess = make_session(export(graph), threads=1, outputs=list(targets))
        fed = {i.name for i in sess.get_inputs()}
        probes = [dict(zip(targets, sess.run(list(targets), {k: v for k, v in f.items() if k in fed})))
                  for f in feeds]
    except Exception as e:      # a help only: the node is refused, named, later
        log.debug("probing shape-derived values failed: %s", e)
        return
    for name, t in targets.items():
        first = np.asarray(probes[0][name])
        if any(np.asarray(p[name]).shape != first.shape or not np.array_equal(p[name], first)
               for p in probes[1:]):
            continue          # it depends on the batch or the values: left as it is
        _read_as(t, gs.Constant(name + "_folded", first))
    graph.cleanup().toposort()


#: a Constant node's attributes of one number or a list, and the type the ONNX spec gives each
_TYPED_CONSTANTS = {"value_float": np.float32, "value_floats": np.float32,
                    "value_int": np.int64, "value_ints": np.int64}


def _typed_constant_attributes(graph: gs.Graph) -> None:
    """A Constant given by ``value_float(s)`` or ``value_int(s)`` becomes one of a ``value``
    tensor of the type the spec gives it (float32 / int64): onnx-graphsurgeon folds them as
    numpy's default, float64, which then met the float32 tensors it feeds (a Conv's bias, a
    Mul's scale) and onnxruntime refused the model."""
    for node in graph.nodes:
        key = next((k for k in _TYPED_CONSTANTS if k in node.attrs), None) \
            if node.op == "Constant" else None
        if key is not None:
            value = np.asarray(node.attrs[key], _TYPED_CONSTANTS[key])
            node.attrs = {"value": gs.Constant(node.outputs[0].name + "_value", value)}


def _dtype_of(t):
    """The numpy dtype of ``t`` where known (a constant's, read without loading its values; a
    variable's recorded type), else None."""
    try:
        return np.dtype(t.dtype) if t.dtype is not None else None
    except TypeError:
        return None


def _cast_like_to_cast(graph: gs.Graph) -> None:
    """``CastLike(x, like)`` (opset 15; onnxscript writes one for each Python number in an
    expression) becomes ``Cast(x, to=like's type)`` where that type is known: a Cast of a
    constant folds, a Cast of data is an elementwise op like any other."""
    for node in graph.nodes:
        if node.op != "CastLike" or len(node.inputs) != 2:
            continue
        dtype = _dtype_of(node.inputs[1])
        if dtype is None:
            continue
        try:
            to = onnx.helper.np_dtype_to_tensor_dtype(dtype)
        except (KeyError, TypeError, ValueError):
            continue
        del node.inputs[1]                      # (gs keeps the tensor's readers in step)
        node.op, node.attrs = "Cast", {"to": int(to)}


def _dequantize_constants(graph: gs.Graph) -> None:
    """A DequantizeLinear of constant inputs (weight-only int8/uint8, or 4-bit, quantization) becomes its
    float value, ``(x - zero_point) * scale`` per tensor or per ``axis``: onnx-graphsurgeon
    leaves Q/DQ nodes out of constant folding. Blocked quantization (opset 21 ``block_size``)
    and an ``output_dtype`` attribute are left alone (and refused later, named)."""
    for node in list(graph.nodes):
        if node.op != "DequantizeLinear" or node.attrs.get("block_size") \
                or node.attrs.get("output_dtype"):
            continue
        ins = [_small_ints(const_value(t)) for t in node.inputs if not is_empty(t)]
        if len(ins) < 2 or any(v is None for v in ins) or ins[0].dtype.kind not in "iu":
            continue
        x, scale = ins[0], ins[1]
        zp = ins[2] if len(ins) > 2 else np.zeros((), x.dtype)
        if scale.dtype.kind != "f":
            continue
        y = dequantize(x, scale, zp, int(node.attrs.get("axis", 1)))
        name = (node.name or node.outputs[0].name) + "_dequantized"
        replace_by_constant(graph, node, gs.Constant(name, y))
    graph.cleanup()


def _small_ints(v):
    """4-bit (and 2-bit) integers (ml_dtypes' int4/uint4, as onnx reads an INT4 tensor: a
    dtype numpy does not call integer) as int8/uint8 of the same values; anything else as it
    is."""
    if v is not None and v.dtype.kind not in "iufb" and v.dtype.name in ("int4", "uint4", "int2",
                                                                          "uint2"):
        return v.astype(np.uint8 if v.dtype.name.startswith("u") else np.int8)
    return v


def per_axis(scale: np.ndarray, zp: np.ndarray, ndim: int, axis: int):
    """A 1-D scale and zero point reshaped to broadcast along ``axis`` of an ``ndim``-D tensor
    (Quantize/DequantizeLinear's per-axis form); per-tensor ones as they are."""
    if scale.ndim != 1 or ndim == 0:
        return scale, zp
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return scale.reshape(shape), (zp.reshape(shape) if zp.ndim == 1 else zp)


def dequantize(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int = 1) -> np.ndarray:
    """``(x - zero_point) * scale`` as DequantizeLinear computes it, per tensor or per axis."""
    scale, zp = per_axis(scale, zp, x.ndim, axis)
    return np.asarray((x.astype(np.int64) - zp.astype(np.int64)).astype(scale.dtype) * scale,
                      scale.dtype)


def replace_by_constant(graph: gs.Graph, node: gs.Node, const: gs.Constant) -> None:
    """Every reader of ``node``'s first output reads ``const`` instead; the node goes (at the
    next cleanup) unless that output is a graph output."""
    out = node.outputs[0]
    _read_as(out, const)
    if not is_graph_output(graph, out):
        node.outputs.clear()


def _read_as(t, const: gs.Constant) -> None:
    """Every node that reads tensor ``t`` reads ``const`` instead."""
    for consumer in list(t.outputs):
        for i, u in enumerate(consumer.inputs):
            if u is t:
                consumer.inputs[i] = const


def _explain_unfolded(graph: gs.Graph, result: PassResult) -> None:
    """Say why each node left that does not depend on input data was not folded."""
    data = depends_on_inputs(graph)
    pending = set()  # outputs of nodes that stayed although they are not data
    for node in graph.nodes:
        outs = [o for o in node.outputs if not is_empty(o)]
        if not outs or any(o.name in data for o in outs):
            continue
        ins = [t for t in node.inputs if not is_empty(t)]
        waiting = [t.name for t in ins if t.name in pending]
        if node.op in ("Shape", "Size") and ins and ins[0].name in data:
            dims = ins[0].shape
            result.skip(node, f"the shape of '{ins[0].name}' is not static "
                              f"({'unknown' if dims is None else list(dims)})")
        elif waiting:
            result.skip(node, f"depends on '{waiting[0]}', which is not constant")
        elif node.op == "Constant":
            result.skip(node, "a Constant that is a graph output stays a node")
        else:
            result.skip(node, "its inputs are constant but it could not be evaluated")
        pending.update(o.name for o in outs)


def _bn_params(node: gs.Node):
    vals = [const_value(t) for t in node.inputs[1:5]]
    if any(v is None for v in vals):
        raise UnsupportedModelError(
            f"{node_label(node)}: BatchNormalization with non-constant parameters cannot be "
            "folded; export the model in eval mode")
    scale, bias, mean, var = (v.astype(np.float64) for v in vals)
    eps = float(node.attrs.get("epsilon", 1e-5))
    k = scale / np.sqrt(var + eps)
    return k, bias - mean * k


def _bias(layer: gs.Node):
    """The layer's bias input (Conv B, Gemm C), None when it has none."""
    if len(layer.inputs) < 3 or not layer.inputs[2].name:
        return None
    return layer.inputs[2]


def _out_axis(layer: gs.Node) -> int:
    """The axis of the layer's weight that runs over its output channels."""
    if layer.op == "Gemm" and not int(layer.attrs.get("transB", 0)):
        return 1
    return 0


def _why_not_foldable(graph: gs.Graph, bn: gs.Node, k: np.ndarray) -> Optional[str]:
    """Why BN cannot be folded into the layer before it, None when it can."""
    x = bn.inputs[0]
    prev = x.inputs[0] if x.inputs else None
    if prev is None:
        return f"its input '{x.name}' is not computed by a layer"
    if prev.op not in ("Conv", "Gemm"):
        return f"its input comes from {prev.op} '{prev.name}', not from a Conv or Gemm"
    if is_graph_output(graph, x):
        return f"the {prev.op} output '{x.name}' is also a graph output"
    if len(x.outputs) != 1:
        return f"the {prev.op} output '{x.name}' also feeds other nodes"
    w = const_value(prev.inputs[1])
    if w is None:
        return f"the {prev.op}'s weight is not constant"
    bias = _bias(prev)
    if bias is not None and const_value(bias) is None:
        return f"the {prev.op}'s bias is not constant"
    if w.ndim <= _out_axis(prev) or w.shape[_out_axis(prev)] != k.size:
        return f"the {prev.op}'s weight {list(w.shape)} does not have {k.size} output channels"
    if bias is not None:
        c = const_value(bias)
        if c.size != 1 and not (c.size == k.size and c.reshape(-1).size == c.shape[-1]):
            return f"the {prev.op}'s bias of shape {list(c.shape)} is not one value per channel"
    return None


def scale_layer(layer: gs.Node, k: np.ndarray, b: np.ndarray) -> None:
    """Make the Conv or Gemm ``layer`` compute ``k * layer(x) + b`` (per output channel):
    the weight is scaled along its output-channel axis and the bias becomes
    ``k * beta * bias + b`` (Gemm's beta is then 1)."""
    w = const_value(layer.inputs[1]).astype(np.float64)
    shape = [1] * w.ndim
    shape[_out_axis(layer)] = -1
    w = w * k.reshape(shape)
    beta = float(layer.attrs.get("beta", 1.0)) if layer.op == "Gemm" else 1.0
    bias = _bias(layer)
    c = np.asarray(const_value(bias), np.float64) if bias is not None else np.asarray(0.0)
    c = beta * (c.reshape(-1) if c.size > 1 else c.reshape(()))
    c = np.broadcast_to(c, k.shape) * k + b
    layer.inputs[1] = gs.Constant(layer.inputs[1].name + "_bnfold", w.astype(np.float32))
    cvar = gs.Constant((layer.name or layer.op.lower()) + "_bias_bnfold", c.astype(np.float32))
    if len(layer.inputs) > 2:
        layer.inputs[2] = cvar
    else:
        layer.inputs.append(cvar)
    if layer.op == "Gemm":
        layer.attrs["beta"] = 1.0


@graph_pass("refuse-training-batchnorm")
def refuse_training_batchnorm(graph: gs.Graph, result: PassResult) -> None:
    """A BatchNormalization in training mode (``training_mode=1``, or, before opset 14, its
    running statistics as outputs) normalizes with each batch's own statistics: its output
    depends on the batch, and folding its running statistics would silently change the
    network. Refused, before the unused statistics outputs are dropped."""
    for node in graph.nodes:
        if node.op != "BatchNormalization":
            continue
        stats = [o.name for o in node.outputs[1:] if not is_empty(o)]
        if int(node.attrs.get("training_mode", 0)) == 1 or stats:
            how = "training_mode=1" if not stats else f"its batch statistics {stats} as outputs"
            raise UnsupportedModelError(
                f"{node_label(node)}: BatchNormalization in training mode ({how}) normalizes "
                "with each batch's own statistics, so the network's output depends on the batch; "
                "export the model in inference mode (PyTorch: model.eval() before "
                "torch.onnx.export, training=torch.onnx.TrainingMode.EVAL)")


@graph_pass("fold-batchnorm")
def fold_batchnorm(graph: gs.Graph, result: PassResult) -> None:
    """Fold BatchNormalization into the preceding Conv/Gemm; a lone BN becomes Mul + Add."""
    folded, affine = 0, 0
    for node in list(graph.nodes):
        if node.op != "BatchNormalization":
            continue
        k, b = _bn_params(node)
        x, y = node.inputs[0], node.outputs[0]
        why = _why_not_foldable(graph, node, k)
        if why is None:
            prev = x.inputs[0]
            scale_layer(prev, k, b)
            prev.outputs[0] = y
            node.inputs.clear()
            node.outputs.clear()
            folded += 1
            continue
        rank = ir.rank(x)
        if rank is None:
            raise UnsupportedModelError(
                f"{node_label(node)}: BatchNormalization whose input rank is unknown cannot "
                "be turned into an affine layer; export with static shapes")
        shape = (-1,) + (1,) * (rank - 2)
        mid = gs.Variable(y.name + "_scaled", dtype=np.float32)
        mul = gs.Node("Mul", (node.name or "bn") + "_scale",
                      inputs=[x, gs.Constant((node.name or "bn") + "_k",
                                             k.reshape(shape).astype(np.float32))],
                      outputs=[mid])
        add = gs.Node("Add", (node.name or "bn") + "_shift",
                      inputs=[mid, gs.Constant((node.name or "bn") + "_b",
                                               b.reshape(shape).astype(np.float32))],
                      outputs=[y])
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.extend([mul, add])
        result.skip(node, f"not folded: {why}; it became Mul + Add")
        affine += 1
    if folded:
        result.notes.append(f"folded {folded} BatchNormalization layer(s) into the preceding Conv/Gemm")
    if affine:
        result.notes.append(f"turned {affine} standalone BatchNormalization layer(s) into Mul + Add")
    result.changed = folded + affine
    graph.cleanup().toposort()

"""Passes for quantized models: fake-quantized activations become clipped ReLUs; integer
operators are refused with what to do.

A model quantized in the QDQ format (onnxruntime's ``quantize_static`` with
``QuantFormat.QDQ``, PyTorch's or TensorFlow's quantization-aware training exports) computes
in float between pairs ``DequantizeLinear(QuantizeLinear(x, s, z), s, z)``: x rounded to the
integer grid and clamped to ``[(qmin - z) s, (qmax - z) s]``. Weight-only quantization (a
DequantizeLinear of a constant) is folded by ``fold.fold_constants``, and so is a pair on a
constant float weight (quantization-aware training's export: the weight's rounding kept);
this module handles the pairs on activations:

* a pair whose clamp starts at 0 (an unsigned type with zero point 0, the quantizer's form of
  a ReLU: onnxruntime drops the Relu/Clip and lets the quantization clamp) is the clipped ReLU
  ``Clip(x, 0, (qmax - z) s)``: a site whose ``mu`` is the top of the 8-bit range. So is a
  pair of a signed type on a tensor that cannot be negative (a Relu's output): its clamp from
  below never acts;
* a pair on a Softmax's, LogSoftmax's or Sigmoid's probabilities (the output), on the
  input data (up to layout and in-graph normalization), on an activation that
  a clamp from 0 already made (the re-quantization after a max or average pool, at the pooled
  values' own calibrated range, which they reach only at the calibration set's maximum), or of
  a signed range on a signed tensor (a residual sum, the logits) is dropped: it only rounds
  (the input's analog values drive the first layer's currents);
* the rounding itself is dropped everywhere: the spiking network's own levels (T + 1 of them
  per layer) replace the integer grid.

A note says how many pairs became activations and how many were dropped. Per-axis activation
scales, a QuantizeLinear whose integers feed an integer operator, and blocked quantization are
left alone (and refused, named, by the support check).

Quantizers written out in float ops (QCFS's clip-floor-shift, Bu et al. ICLR 2022, the usual
training for ultra-low-latency conversion; LSQ's or PACT's ``round(clip(x / s, 0, Q)) * s``)
are read by :func:`rounding_to_identity` as the clipped ReLU their straight-through
estimator trained: the Floor/Round/Ceil goes, the clip stays a site.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .fold import dequantize, per_axis, replace_by_constant
from .ir import const_value, is_empty, node_label, scalar_value
from .passes import PassResult, graph_pass
from .sites import constant_bounds, nonnegative_tensors

#: integer operators of the QOperator format and integer matrix products
INTEGER_OPS = ("QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
               "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid",
               "QLinearSoftmax", "QGemm", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")
#: ops that keep a clamp of their (first) input: max(0..hi) in, within 0..hi out
_KEEPS_RANGE = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity",
                "Dropout", "MaxPool", "GlobalMaxPool", "AveragePool", "GlobalAveragePool",
                "ReduceMax", "ReduceMean", "Slice", "Expand", "Tile", "SpaceToDepth",
                "DepthToSpace", "Gather", "GatherND", "Split"}


@graph_pass("refuse-integer-operators")
def refuse_integer_operators(graph: gs.Graph, result: PassResult) -> None:
    """A model of integer operators (onnxruntime's QOperator format: QLinearConv, QGemm...)
    computes in integers, which spiking neurons do not take: refused, naming the first one,
    before the search for activations (it finds none: the operators fuse them)."""
    for node in graph.nodes:
        if node.op in INTEGER_OPS:
            raise UnsupportedModelError(
                f"{node_label(node)} is an integer-quantized operator (the QOperator format); "
                "convert the float model, or quantize it in the QDQ format "
                "(onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)), "
                "whose fake-quantized activations onnx-snn reads as clipped ReLUs")


def _parameters(q: gs.Node):
    """(scale, zero point, the integer type's range) of a QuantizeLinear with constant
    parameters, per tensor or per axis; None for another form (a type named by the opset-21
    ``output_dtype`` attribute without a zero point, blocked quantization, float8 and 4-bit
    types, parameters that are not constants)."""
    scale = const_value(q.inputs[1]) if len(q.inputs) > 1 and not is_empty(q.inputs[1]) else None
    zp_t = q.inputs[2] if len(q.inputs) > 2 and not is_empty(q.inputs[2]) else None
    zp = const_value(zp_t) if zp_t is not None else np.zeros((), np.uint8)
    if scale is None or zp is None or q.attrs.get("block_size") or \
            (zp_t is None and q.attrs.get("output_dtype")):
        return None
    try:
        return scale, zp, np.iinfo(zp.dtype)
    except ValueError:                                # float8 and 4-bit types
        return None


def _range(q: gs.Node) -> Optional[Tuple[float, float]]:
    """(lo, hi) of the values a per-tensor QuantizeLinear's pair can give, or None."""
    params = _parameters(q)
    if params is None or params[0].size != 1 or params[1].size != 1:
        return None
    scale, zp, info = params
    s, z = float(scale.reshape(())), int(zp.reshape(()))
    if not (s > 0 and math.isfinite(s)):
        return None
    return (info.min - z) * s, (info.max - z) * s


def _same_parameters(q: gs.Node, dq: gs.Node) -> bool:
    for i in (1, 2):
        a = const_value(q.inputs[i]) if len(q.inputs) > i and not is_empty(q.inputs[i]) else None
        b = const_value(dq.inputs[i]) if len(dq.inputs) > i and not is_empty(dq.inputs[i]) else None
        if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
            return False
    return int(dq.attrs.get("axis", 1)) == int(q.attrs.get("axis", 1)) or \
        (const_value(q.inputs[1]) is not None and const_value(q.inputs[1]).size == 1)


def _requantized(t, depth: int = 0) -> bool:
    """Whether ``t`` is an activation already: a clamp from 0 (a clipped ReLU, or a pair read
    as one), through ops that keep its range (layout, pooling, concatenation of such tensors).
    A pair on it re-quantizes (onnxruntime writes one after every pool, with the pooled
    values' own calibrated range) and is dropped, not made a second spiking layer."""
    node = t.inputs[0] if len(t.inputs) == 1 else None
    if node is None or depth > 64:
        return False
    # (a clamp whose bounds are not constants is neither: none of _KEEPS_RANGE, no Concat)
    bounds = constant_bounds(node) if node.op in ("Clip", "Min", "Relu") else None
    if bounds is not None:
        return bounds[0] >= 0 and math.isfinite(bounds[1])
    if node.op in _KEEPS_RANGE and node.inputs:
        return _requantized(node.inputs[0], depth + 1)
    if node.op == "Concat":
        return all(_requantized(x, depth + 1) for x in node.inputs)
    return False


def _squashed(t) -> bool:
    """Whether ``t`` is a Softmax's, LogSoftmax's or Sigmoid's output (through layout ops):
    probabilities, which a pair quantizes at the output; no activation."""
    node = t.inputs[0] if len(t.inputs) == 1 else None
    while node is not None and node.op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze",
                                           "Identity", "Transpose") and node.inputs:
        t = node.inputs[0]
        node = t.inputs[0] if len(t.inputs) == 1 else None
    return node is not None and node.op in ("Softmax", "LogSoftmax", "Sigmoid")


def _fold_weight(graph: gs.Graph, q: gs.Node) -> bool:
    """A QuantizeLinear of a constant float weight read by DequantizeLinear(s) of the same
    parameters (quantization-aware training's export of fake-quantized weights) becomes the
    dequantized constant: (clip(round_half_even(w / s) + z, qmin, qmax) - z) * s, per tensor
    or per axis. False when it is not that form (left to the support check)."""
    w, params = const_value(q.inputs[0]), _parameters(q)
    readers = list(q.outputs[0].outputs) if q.outputs else []
    if w is None or params is None or w.dtype.kind != "f" or not readers or any(
            r.op != "DequantizeLinear" or not _same_parameters(q, r) for r in readers):
        return False
    scale, zp, info = params
    axis = int(q.attrs.get("axis", 1))
    s, z = per_axis(scale.astype(np.float32), zp, w.ndim, axis)
    # as onnxruntime computes it: w / s in float32, rounded half to even, then saturated
    qv = np.clip(np.rint(w.astype(np.float32) / s) + z.astype(np.float64), info.min, info.max)
    value = dequantize(qv.astype(zp.dtype), scale.astype(np.float32), zp, axis).astype(w.dtype)
    for dq in readers:
        const = gs.Constant(f"{dq.name or dq.outputs[0].name}_fake_quantized", value)
        replace_by_constant(graph, dq, const)
        dq.inputs = []
        if dq.outputs:                                # a graph output keeps its name
            dq.op, dq.attrs, dq.inputs = "Identity", {}, [const]
    q.inputs.clear()
    q.outputs.clear()
    return True


def _is_data(t, graph: gs.Graph, depth: int = 0) -> bool:
    """Whether ``t`` is the model's input data, up to layout, pooling and scaling by
    constants (in-graph normalization): no layer has computed it, so it is no activation."""
    if any(t is i for i in graph.inputs):
        return True
    node = t.inputs[0] if len(t.inputs) == 1 else None
    if node is None or depth > 64 or not node.inputs:
        return False
    data = [x for x in node.inputs if not is_empty(x) and const_value(x) is None]
    if node.op in _KEEPS_RANGE or node.op in ("Cast", "Sub", "Div", "Mul", "Add", "Pad", "Resize"):
        return len(data) == 1 and _is_data(data[0], graph, depth + 1)
    return False


def _narrowing_clip(graph: gs.Graph, q: gs.Node, readers
                    ) -> Optional[Tuple[gs.Node, Tuple[float, float]]]:
    """A Clip of constant bounds that alone reads a per-tensor QuantizeLinear's integers and
    is read only by DequantizeLinear(s) (PyTorch's export of a fake-quantizer whose range is
    narrower than its type's: ``quant_max`` 127 of a uint8, ``reduce_range``): the Clip and
    the pair's values' (lo, hi), its bounds taken within the type's range. None otherwise."""
    if len(readers) != 1 or readers[0].op != "Clip" or readers[0].inputs[0] is not q.outputs[0]:
        return None
    clip = readers[0]
    if any(clip.outputs[0] is o for o in graph.outputs):      # its integers are an output
        return None
    bounds, params = constant_bounds(clip), _parameters(q)
    after = list(clip.outputs[0].outputs) if clip.outputs else []
    if bounds is None or params is None or not after or any(r.op != "DequantizeLinear" for r in after):
        return None
    scale, zp, info = params
    s, z = float(scale.reshape(())), int(zp.reshape(()))
    qlo, qhi = max(float(info.min), bounds[0]), min(float(info.max), bounds[1])
    if not qlo < qhi or math.ceil(qlo) > z:   # (a clamp from above 0 is no ReLU)
        return None
    return clip, ((math.ceil(qlo) - z) * s, (math.floor(qhi) - z) * s)


@graph_pass("fake-quantization")
def fake_quantization(graph: gs.Graph, result: PassResult) -> None:
    """QuantizeLinear/DequantizeLinear pairs on activations become clipped ReLUs or are
    dropped (the module's doc says which)."""
    graph.toposort()
    nonneg = nonnegative_tensors(graph)
    activations = dropped = 0
    for q in list(graph.nodes):
        if q.op != "QuantizeLinear" or not q.outputs or not q.inputs:
            continue
        x, qy = q.inputs[0], q.outputs[0]
        if const_value(x) is not None:
            if _fold_weight(graph, q):                # QAT's fake-quantized float weights
                result.changed += 1
            continue
        bounds = _range(q)
        readers = list(qy.outputs)
        narrowed = _narrowing_clip(graph, q, readers) if bounds is not None else None
        clip = None
        if narrowed is not None:      # Q -> Clip(integers) -> DQ: a narrower integer range
            clip, bounds = narrowed
            qy, readers = clip.outputs[0], list(clip.outputs[0].outputs)
        exposed = any(qy is o for o in graph.outputs)
        if exposed or bounds is None or not readers or any(
                r.op != "DequantizeLinear" or r.inputs[0] is not qy or not _same_parameters(q, r)
                for r in readers):
            params = _parameters(q)
            if exposed:
                why = ("its integers are a graph output: keep the model's float outputs only "
                       "(--outputs), or export it without that output")
            elif params is None:
                why = ("its type or form (4-bit or float8, blocked, or an output_dtype without "
                       "a zero point) is not read on activations: quantize them to 8 or 16 bits")
            elif params[0].size != 1 or params[1].size != 1:
                why = ("a per-axis (per-channel) pair on an activation is not read, only "
                       "per-tensor ones: quantize activations per tensor (per-channel scales "
                       "are for weights)")
            else:
                why = ("not read only by DequantizeLinear(s) of the same scale and zero point: "
                       "its integers feed another op")
            result.skip(q, why)
            continue
        if clip is not None:
            clip.inputs.clear()
            clip.outputs.clear()
        lo, hi = bounds
        activation = (hi > 0 and (lo >= 0 or x.name in nonneg) and not _requantized(x)
                      and not _is_data(x, graph) and not _squashed(x))
        for dq in readers:
            dq.attrs = {}
            if activation:
                dq.op = "Clip"
                dq.inputs = [x, gs.Constant(f"{dq.name or qy.name}_min", np.array(0.0, np.float32)),
                             gs.Constant(f"{dq.name or qy.name}_max", np.array(hi, np.float32))]
            else:
                dq.op, dq.inputs = "Identity", [x]   # remove-identity-dropout takes it out
        activations += activation
        dropped += not activation
        q.inputs.clear()
        q.outputs.clear()
        result.changed += 1
    if activations or dropped:
        result.notes.append(
            f"fake quantization (QuantizeLinear/DequantizeLinear pairs): {activations} read as "
            f"clipped ReLUs (the quantizer's clamp at 0, mu the top of its range), {dropped} "
            "dropped (on the input, signed tensors and re-quantized activations); the spiking "
            "network's levels replace the integer rounding")
    graph.cleanup()


#: rounding ops and the constant each leaves on average (for a uniform fractional part):
#: Floor(u) is u - 1/2, Round(u) is u, Ceil(u) is u + 1/2
ROUNDING_BIAS = {"Floor": -0.5, "Round": 0.0, "Ceil": 0.5}
#: the activations a written-out quantizer rounds (their output is bounded below)
_QUANTIZED_ACTIVATIONS = {"Clip", "Relu", "Max", "Min"}
#: the elementwise scalar steps between such an activation and its rounding
_SCALAR_STEPS = {"Add", "Sub", "Mul", "Div"}


#: what may read a rounding's output (or a scalar step after it) for the rounding to be a
#: quantized activation's: data ops that take its values as numbers (never a Cast to an
#: integer, an index, or an arithmetic with another data tensor: u - floor(u))
_VALUE_READERS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool",
                  "GlobalAveragePool", "MaxPool", "GlobalMaxPool", "Flatten", "Reshape",
                  "Transpose", "Squeeze", "Unsqueeze", "Pad", "Concat", "Identity", "Dropout",
                  "Clip", "Relu", "Max", "Min", "ReduceMean", "ReduceSum"}


def _read_as_values(y, depth: int = 0) -> bool:
    """Whether every reader of the rounding's output ``y`` takes it as a number (see
    ``_VALUE_READERS``; a Max/Min/Concat/MatMul's other operands may be data, an Add/Sub/
    Mul/Div's may not), through scalar steps; a graph output counts as read so."""
    if depth > 16:
        return False
    for r in y.outputs:
        step = _scalar_step(r) if r.op in _SCALAR_STEPS else None
        if step is not None and step[0] is y and len(r.outputs) == 1:
            if not _read_as_values(r.outputs[0], depth + 1):
                return False
        elif r.op not in _VALUE_READERS or (r.op in ("Max", "Min") and any(
                i is not y and const_value(i) is None for i in r.inputs)):
            return False
    return True


def _scalar_step(node: gs.Node) -> Optional[Tuple[gs.Variable, float, float]]:
    """For an Add/Sub/Mul/Div of one data tensor and one constant scalar (a size-1 tensor):
    (the data tensor, scale, offset) with the node's output ``scale * data + offset``;
    None for any other node (a Sub or Div whose data is the second operand too)."""
    if node.op not in _SCALAR_STEPS or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    data_a, data_b = const_value(a) is None, const_value(b) is None
    # a scalar constant, one that broadcasting does not give more axes (ir.scalar_value)
    c = scalar_value(b, a) if data_a and not data_b else \
        scalar_value(a, b) if data_b and not data_a and node.op in ("Add", "Mul") else None
    if c is None or not math.isfinite(c):
        return None
    x = a if data_a else b
    return {"Add": (x, 1.0, c), "Sub": (x, 1.0, -c), "Mul": (x, c, 0.0),
            "Div": (x, 1.0 / c if c != 0 else math.nan, 0.0)}[node.op]


def _rounded_activation(u) -> Optional[Tuple[gs.Node, float, float]]:
    """Walk back from a rounding's input ``u`` through scalar Add/Sub/Mul/Div steps to the
    activation they scale (a Clip, Relu, Max or Min node): (it, the steps' total scale, the
    constant added last: the Add/Sub right before the rounding, or 0), or None."""
    scale, last_offset, first = 1.0, 0.0, True
    t = u
    while True:
        if len(t.inputs) != 1:
            return None
        node = t.inputs[0]
        if node.op in _QUANTIZED_ACTIVATIONS:
            return (node, scale, last_offset) if math.isfinite(scale) and scale > 0 else None
        step = _scalar_step(node)
        if step is None:
            return None
        x, k, c = step
        if first and node.op in ("Add", "Sub"):
            last_offset = c
        first = False
        scale *= k
        t = x


def _clamped_after(y) -> bool:
    """Whether the rounding's output ``y`` reaches an activation (Clip, Relu, Max, Min)
    through scalar Add/Sub/Mul/Div steps of positive total scale, each the one reader of
    what it reads (``clip(floor(x L / th) / L, 0, 1) * th``: rounded, then clamped)."""
    scale, t = 1.0, y
    while len(t.outputs) == 1:
        node = t.outputs[0]
        if node.op in _QUANTIZED_ACTIVATIONS:
            return node.inputs[0] is t and math.isfinite(scale) and scale > 0
        step = _scalar_step(node)
        if step is None or step[0] is not t or len(node.outputs) != 1:
            return False
        scale *= step[1]
        t = node.outputs[0]
    return False


@graph_pass("rounding-to-identity")
def rounding_to_identity(graph: gs.Graph, result: PassResult) -> None:
    """A quantized clipped ReLU written out in float ops (QCFS, Bu et al. ICLR 2022:
    ``th * floor(L * clip(x / th, 0, 1) + 0.5) / L``; LSQ's and PACT's ``round(clip(x / s, 0,
    Q)) * s``) reads as its clipped ReLU: each Floor, Round or Ceil whose input is an
    activation (Clip, Relu, Max, Min) through scalar Mul/Div/Add/Sub steps of positive total
    scale, or whose output reaches one that way (rounded before the clamp), is replaced by what it leaves on average (``ROUNDING_BIAS``: Floor(u) as u - 1/2,
    so QCFS's Floor(v + 1/2) is v exactly, Round(u) as u, Ceil(u) as u + 1/2), as the
    straight-through estimator that trained it reads it. The spiking neurons' own levels
    (T + 1 per layer) replace the rounding: a note gives each quantizer's number of levels
    (the clip's range times the steps' scale), the T at which the neurons can match it, for
    the roundings that round half up (a floor without QCFS's shift is read, but no T matches
    it exactly). A rounding of anything else (a raw convolution output), or whose output is
    read as anything but a number (an index, a Cast to integers, ``u - floor(u)``), is left,
    and refused by the support check."""
    found = []
    for node in list(graph.nodes):
        if node.op not in ROUNDING_BIAS or len(node.inputs) != 1 or len(node.outputs) != 1:
            continue
        u, y = node.inputs[0], node.outputs[0]
        if const_value(u) is not None:
            continue
        if not _read_as_values(y):      # an index, a cast to integers, u - floor(u)...
            continue
        walked = _rounded_activation(u)
        if walked is None:
            if not _clamped_after(y):
                continue
            step = _scalar_step(u.inputs[0]) if len(u.inputs) == 1 else None
            offset = step[2] if step is not None and u.inputs[0].op in ("Add", "Sub") else 0.0
            act, scale = None, None
        else:
            act, scale, offset = walked
        bias = offset + ROUNDING_BIAS[node.op]
        src = u
        if offset != 0:          # the Add/Sub of the offset right before: start from its input
            src = _scalar_step(u.inputs[0])[0]
        if abs(bias) < 1e-6 * max(1.0, abs(offset)):
            node.op, node.attrs, node.inputs = "Identity", {}, [src]
        else:
            node.op, node.attrs = "Add", {}
            node.inputs = [src, gs.Constant(f"{node.name or y.name}_bias",
                                            np.array(bias, np.float32))]
        levels = None
        # (bounds that are not constants: refused, named, when the sites are read)
        lo, hi = (constant_bounds(act) if act is not None and act.op == "Clip" else None) \
            or (None, None)
        if lo is not None and math.isfinite(lo) and math.isfinite(hi):
            span = (hi - lo) * scale
            levels = int(round(span)) if abs(span - round(span)) < 1e-3 and span >= 1 else None
        # deng's neurons (initial membrane half a threshold) round half up: they match a
        # round or QCFS's shifted floor, not a floor without the shift
        found.append((node.name, levels if abs(bias) < 1e-6 * max(1.0, abs(offset)) else None))
        result.changed += 1
    if found:
        levels = sorted({n for _, n in found if n is not None})
        result.notes.append(
            f"quantized activations: {len(found)} rounding node(s) ({', '.join(n for n, _ in found[:4])}"
            f"{', ...' if len(found) > 4 else ''}) read as the straight-through identity that "
            "trained them (QCFS's floor(L x + 1/2), a round): the spiking neurons' levels "
            "replace the rounding"
            + (f"; the quantizers have {' or '.join(map(str, levels))} steps, which the "
               f"neurons match at T = {levels[0] if len(levels) == 1 else 'that number'} "
               "(QCFS's own conversion is --method deng: threshold mu, initial membrane mu/2)"
               if levels else ""))
        graph.cleanup()


__all__ = ["refuse_integer_operators", "fake_quantization", "rounding_to_identity",
           "INTEGER_OPS", "ROUNDING_BIAS"]

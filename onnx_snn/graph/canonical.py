"""Passes that rewrite equivalent idioms into one form: opset upgrade, Sum, ReduceMax over the
spatial axes, MatMul + Add, Abs and ReduceL1 of non-negative tensors."""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from ..errors import UnsupportedModelError
from ..model_io import default_opset
from . import walk
from ..notes import interface
from .ir import (written_pads, broadcasts_within, const_value, depends_on_inputs, is_graph_output,
                 node_label, pool_windows, rank, scalar_value)
from .passes import PassResult, graph_pass
from .sites import _data_input, constant_bounds

#: the lowest default-domain opset the spiking format is written at
BASE_OPSET = 13


def upgrade_opset(model: onnx.ModelProto, notes: list, where: str) -> onnx.ModelProto:
    """Bring models older than opset 13 to 13 (Clip bounds as inputs, axes as inputs...)."""
    opset = default_opset(model)
    if opset >= BASE_OPSET:
        return model
    per_element = next((n for n in model.graph.node if n.op_type == "BatchNormalization" and any(
        a.name == "spatial" and a.i == 0 for a in n.attribute)), None)
    if per_element is not None:          # the version converter says only "spatial must be 1"
        raise UnsupportedModelError(
            f"{where}: node '{per_element.name or per_element.output[0]}' (BatchNormalization) "
            f"has spatial=0 (statistics per element, opset {opset}), which the upgrade to "
            f"opset {BASE_OPSET} cannot carry; fold it into the layer before it (or re-export "
            "with one statistic per channel) at opset 13 or newer")
    try:
        upgraded = version_converter.convert_version(model, BASE_OPSET)
    except Exception as e:
        raise UnsupportedModelError(
            f"{where}: could not upgrade opset {opset} to {BASE_OPSET} ({str(e).strip()[:160]}); "
            f"re-export the model at opset {BASE_OPSET} or newer") from None
    notes.append(f"upgraded the model from opset {opset} to {BASE_OPSET}")
    if opset < 11:
        _keep_old_resize_coordinates(upgraded, where)
        _drop_pad_value(upgraded)
    return upgraded


def _drop_pad_value(model: onnx.ModelProto) -> None:
    """Pad before opset 11 took its fill as a ``value`` attribute, which the reflect and
    edge modes ignore; the version converter carries it over for those modes (in the
    constant mode it becomes the ``constant_value`` input), and Pad-11 has no such attribute:
    the checker refused the upgraded model. Dropped there."""
    for n in model.graph.node:
        if n.op_type != "Pad" or n.domain not in ("", "ai.onnx"):
            continue
        keep = [a for a in n.attribute if a.name != "value"]
        if len(keep) < len(n.attribute):
            del n.attribute[:]
            n.attribute.extend(keep)


def _keep_old_resize_coordinates(model: onnx.ModelProto, where: str) -> None:
    """Upsample (opset 7-9) and Resize-10 map output x to input x / scale ("asymmetric") and,
    in nearest mode, truncate it when upsampling and round it up when downsampling (what
    onnxruntime does for them). The upgraded Resize would default to half_pixel and
    round_prefer_floor, and compute something else: spell the old rule out."""
    consts = walk.constant_tensors([model.graph])
    for n in model.graph.node:
        if n.op_type != "Resize":
            continue
        attrs = {a.name: a for a in n.attribute}
        mode = attrs["mode"].s.decode() if "mode" in attrs else "nearest"
        keep = {k: v for k, v in attrs.items()
                if k not in ("coordinate_transformation_mode", "nearest_mode")}
        new = [onnx.helper.make_attribute("coordinate_transformation_mode", "asymmetric")]
        if mode == "nearest":
            scales = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            spatial = None if scales is None else \
                onnx.numpy_helper.to_array(scales).astype(np.float64).reshape(-1)[2:]
            if spatial is None or spatial.size == 0:
                # computed scales (folded to constants only later): which rounding the old
                # opset used is not known here, and the upgraded node's default differs
                raise UnsupportedModelError(
                    f"{where}: node '{n.name or '(unnamed)'}' (Resize/Upsample at opset < 11, "
                    "nearest) has computed scales, whose rounding this opset fixes per axis; "
                    "re-export the model at opset 11 or newer")
            if np.all(spatial >= 1):
                new.append(onnx.helper.make_attribute("nearest_mode", "floor"))
            elif np.all(spatial <= 1):
                new.append(onnx.helper.make_attribute("nearest_mode", "ceil"))
            else:
                raise UnsupportedModelError(
                    f"{where}: node '{n.name or '(unnamed)'}' (Resize/Upsample at opset < 11) "
                    "upsamples one axis and downsamples another in nearest mode, which this "
                    "opset rounds differently per axis; re-export the model at opset 11 or newer")
        del n.attribute[:]
        n.attribute.extend(list(keep.values()) + new)


@graph_pass("ml-scaler-to-affine")
def ml_scaler_to_affine(graph: gs.Graph, result: PassResult) -> None:
    """ai.onnx.ml's ``Scaler`` (scikit-learn's StandardScaler and MinMaxScaler in a pipeline,
    through skl2onnx), ``(x - offset) * scale`` per feature, becomes that ``Sub`` and ``Mul``
    by constants, which the conversion takes like any input normalization. Only on a float32
    input (another is left to the support check, which names it)."""
    for node in list(graph.nodes):
        if node.op != "Scaler" or node.domain != "ai.onnx.ml" or len(node.inputs) != 1:
            continue
        x, out = node.inputs[0], node.outputs[0]
        offset = np.asarray(node.attrs.get("offset", [0.0]), np.float32).reshape(-1)
        scale = np.asarray(node.attrs.get("scale", [1.0]), np.float32).reshape(-1)
        shape = x.shape
        features = shape[1] if shape is not None and len(shape) == 2 else None
        why = None
        if x.dtype is not None and np.dtype(x.dtype) != np.float32:
            why = f"its input is {np.dtype(x.dtype)}, not float32"
        elif shape is None or len(shape) != 2:
            why = (f"its input is {'of unknown rank' if shape is None else f'of rank {len(shape)}'}"
                   "; a Scaler of [N, features] rows is rewritten")
        elif len(offset) != len(scale) or (
                len(offset) != 1 and isinstance(features, int) and len(offset) != features):
            why = (f"its offset ({len(offset)} values) and scale ({len(scale)}) must both be one "
                   f"value or one per feature ({features})")
        if why:
            result.skip(node, why)
            result.records.append((node.name, why))
            continue
        offset, scale = offset.reshape(1, -1), scale.reshape(1, -1)
        name = node.name or "scaler"
        centred = gs.Variable(f"{out.name}_centred", dtype=np.float32)
        graph.nodes.append(gs.Node("Sub", f"{name}_offset",
                                   inputs=[x, gs.Constant(f"{name}_offset_value", offset)],
                                   outputs=[centred]))
        node.inputs.clear()
        node.outputs.clear()
        graph.nodes.append(gs.Node("Mul", f"{name}_scale",
                                   inputs=[centred, gs.Constant(f"{name}_scale_value", scale)],
                                   outputs=[out]))
        out.dtype = np.float32
        result.changed += 1
        result.notes.append(f"ai.onnx.ml Scaler '{name}' written as (x - offset) * scale")
    if result.changed:
        graph.cleanup().toposort()


@graph_pass("sum-to-add")
def sum_to_add(graph: gs.Graph, result: PassResult) -> None:
    """``Sum`` of two tensors becomes ``Add``; of more, a chain of ``Add``; of one, a bypass
    (an ``Identity``, removed by the next pass). Every Sum can be rewritten. ``Mean`` of n
    tensors is their Sum times 1/n (a Mul by a constant after it)."""
    for node in list(graph.nodes):
        if node.op == "Mean" and len(node.inputs) > 1:
            out = node.outputs[0]
            total = gs.Variable(f"{out.name}_sum", dtype=out.dtype)
            scale = np.array(1.0 / len(node.inputs),
                             np.dtype(out.dtype) if out.dtype is not None else np.float32)
            node.outputs.clear()
            node.outputs.append(total)
            node.op = "Sum"
            graph.nodes.append(gs.Node("Mul", f"{node.name or 'mean'}_scale",
                                       inputs=[total, gs.Constant(f"{out.name}_1_over_n", scale)],
                                       outputs=[out]))
        elif node.op == "Mean":
            node.op = "Sum"
        if node.op != "Sum":
            continue
        result.changed += 1
        ins = list(node.inputs)
        if len(ins) == 1:
            node.op = "Identity"
            continue
        if len(ins) == 2:
            node.op = "Add"
            continue
        acc = ins[0]
        out = node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        for i, t in enumerate(ins[1:]):
            last = i == len(ins) - 2
            nxt = out if last else gs.Variable(f"{out.name}_sum{i}", dtype=out.dtype)
            graph.nodes.append(gs.Node("Add", f"{node.name or 'sum'}_{i}", inputs=[acc, t],
                                       outputs=[nxt]))
            acc = nxt
    graph.cleanup().toposort()


def _zero_slope(node: gs.Node) -> Optional[str]:
    """How ``node`` is a ReLU written another way (None when it is not): a ``LeakyRelu`` or
    ``PRelu`` whose negative slope is zero, a ``ThresholdedRelu`` at threshold zero."""
    if node.op == "LeakyRelu" and float(node.attrs.get("alpha", 0.01)) == 0.0:
        return "LeakyRelu with alpha 0"
    if node.op == "ThresholdedRelu" and float(node.attrs.get("alpha", 1.0)) == 0.0:
        return "ThresholdedRelu with alpha 0"
    if node.op == "PRelu" and len(node.inputs) == 2:
        slope = const_value(node.inputs[1])
        if slope is not None and slope.size and not np.any(slope):
            return "PRelu with zero slopes"
    return None


@graph_pass("zero-slope-to-relu")
def zero_slope_to_relu(graph: gs.Graph, result: PassResult) -> None:
    """``LeakyRelu(alpha=0)``, ``PRelu`` with all-zero (constant) slopes and
    ``ThresholdedRelu(alpha=0)`` compute exactly ``max(x, 0)`` (Keras's ReLU layer with
    ``negative_slope=0``, a PReLU trained to zero): each becomes a ``Relu``, a site like any
    other. A nonzero slope stays, and is refused as the nonlinearity it is."""
    for node in graph.nodes:
        how = _zero_slope(node)
        if how is None:
            continue
        result.notes.append(f"{node.op} '{node.name}': {how}, is read as a Relu")
        node.op, node.attrs = "Relu", {}
        while len(node.inputs) > 1:
            node.inputs.pop()
        result.changed += 1
    graph.cleanup()


def _finite_scalar(t, like) -> Optional[float]:
    """:func:`.ir.scalar_value` of ``t`` against ``like``, when finite (else None)."""
    v = scalar_value(t, like)
    return v if v is not None and np.isfinite(v) else None


def _minus_scalar(t) -> Optional[tuple]:
    """``t = x - c`` (``Sub(x, c)``, ``Add(x, -c)``): (x, c); else None."""
    n = t.inputs[0] if len(t.inputs) == 1 else None
    if n is None or len(n.inputs) != 2:
        return None
    if n.op == "Sub" and const_value(n.inputs[0]) is None:
        c = _finite_scalar(n.inputs[1], n.inputs[0])
        return None if c is None else (n.inputs[0], c)
    if n.op == "Add":
        for i in (0, 1):
            c = _finite_scalar(n.inputs[i], n.inputs[1 - i])
            if c is not None and const_value(n.inputs[1 - i]) is None:
                return n.inputs[1 - i], -c
    return None


def _relu_of(t):
    """The input of the Relu that computes ``t`` (None when no Relu does)."""
    n = t.inputs[0] if len(t.inputs) == 1 else None
    return n.inputs[0] if n is not None and n.op == "Relu" and n.inputs else None


@graph_pass("relu-pairs-to-clip")
def relu_pairs_to_clip(graph: gs.Graph, result: PassResult) -> None:
    """A clamp written with two ReLUs: ``c - relu(c - r)`` is ``min(r, c)`` (TCL's trainable
    clipping layer, Ho & Chang DAC 2021: relu, ``up - x``, relu, ``up - x``), which after a
    Relu is the clipped ReLU of mu c; ``relu(x) - relu(x - c)`` is ``clip(x, 0, c)`` (a
    hard-tanh built from ReLUs). For ``c > 0`` each becomes a ``Min(r, c)`` or a ``Clip(x, 0,
    c)``: one site, where the ReLUs made two spiking layers, the second of the first's spikes
    (an extra rounding to T + 1 levels)."""
    found = []
    for node in list(graph.nodes):
        if node.op != "Sub" or len(node.inputs) != 2 or len(node.outputs) != 1:
            continue
        a, b = node.inputs
        c = _finite_scalar(a, b)
        inner = _relu_of(b)
        if c is not None and c > 0 and inner is not None:       # c - relu(c - r)
            n = inner.inputs[0] if len(inner.inputs) == 1 else None
            c2 = _finite_scalar(n.inputs[0], n.inputs[1]) if n is not None and n.op == "Sub" \
                and len(n.inputs) == 2 else None
            if c2 is not None and abs(c2 - c) <= 1e-6 * c and const_value(n.inputs[1]) is None:
                r = n.inputs[1]
                node.op, node.attrs = "Min", {}
                node.inputs = [r, gs.Constant(f"{node.name}_top", np.array(c, np.float32))]
                found.append(f"'{node.name}' ({c:g} - relu({c:g} - x) as min(x, {c:g}))")
                result.changed += 1
            continue
        x, y = _relu_of(a), _relu_of(b)
        shifted = _minus_scalar(y) if x is not None and y is not None else None
        if shifted is not None and shifted[0] is x and shifted[1] > 0:   # relu(x) - relu(x - c)
            c = shifted[1]
            node.op, node.attrs = "Clip", {}
            node.inputs = [x, gs.Constant(f"{node.name}_lo", np.array(0.0, np.float32)),
                           gs.Constant(f"{node.name}_hi", np.array(c, np.float32))]
            found.append(f"'{node.name}' (relu(x) - relu(x - {c:g}) as clip(x, 0, {c:g}))")
            result.changed += 1
    if found:
        result.notes.append("clamps written with two ReLUs read as one clipped ReLU each: "
                            + ", ".join(found[:4]) + (", ..." if len(found) > 4 else ""))
        graph.cleanup()


def _channel_bound(t, data) -> Optional[np.ndarray]:
    """A clamp's upper bound ``t`` when it is one value per element of some axes (per channel:
    ``[C, 1, 1]``, ``[1, C, 1, 1]``), not all equal, finite and positive, and broadcasts onto
    ``data`` without growing it or adding axes (every axis 1 or the data's known length);
    else None."""
    c = const_value(t)
    if c is None or c.size < 2 or np.all(c == c.reshape(-1)[0]) \
            or not (np.all(np.isfinite(c)) and np.all(c > 0)) \
            or not broadcasts_within(c.shape, data.shape):
        return None
    return c.astype(np.float32)


def _zero_floor(node) -> Optional[tuple]:
    """(x, top) when ``node`` is a ReLU of the computed tensor ``x`` with a positive top (the
    site reader's :func:`.sites.constant_bounds` with a floor of 0: ``Relu`` and ``Max(x,
    0)``, top inf; ``Clip(x, 0, hi)``); else None."""
    bounds = constant_bounds(node) if node is not None and node.op != "Min" else None
    if bounds is None or bounds[0] != 0 or not bounds[1] > 0:
        return None
    x = _data_input(node)
    return None if const_value(x) is not None else (x, bounds[1])


@graph_pass("channel-clamps-to-unit-clip")
def channel_clamps_to_unit_clip(graph: gs.Graph, result: PassResult) -> None:
    """A clipped ReLU with one top per channel (PACT or a ReLU-N trained per channel:
    ``Min(Relu(x), c)``, ``Relu(Min(x, c))``, with ``c`` of shape ``[C, 1, 1]``: ONNX's Clip
    takes scalar bounds only) is, for ``c > 0``, ``c * clip(x / c, 0, 1)``: a ``Div`` by ``c`` (folded into the
    layer before it), a clipped ReLU of top 1, whose spikes are the site's, and a ``Mul`` by
    ``c`` (an elementwise scale of its output, as after any site). One threshold per layer
    where the model has one per channel."""
    found = []
    for node in list(graph.nodes):
        if len(node.outputs) != 1 or not node.inputs:
            continue
        x = top = c = None
        if node.op == "Min" and len(node.inputs) == 2:
            for i in (0, 1):
                d = node.inputs[1 - i]
                b = _channel_bound(node.inputs[i], d)
                p = d.inputs[0] if len(d.inputs) == 1 else None
                relu = _zero_floor(p)
                if b is not None and relu is not None:     # (a ReLU read elsewhere stays)
                    (x, top), c = relu, b
                    break
        elif node.op in ("Relu", "Max", "Clip"):             # relu(min(x, c))
            relu = _zero_floor(node)
            p = relu[0].inputs[0] if relu is not None and len(relu[0].inputs) == 1 else None
            if p is not None and p.op == "Min" and len(p.inputs) == 2:
                for i in (0, 1):
                    b = _channel_bound(p.inputs[i], p.inputs[1 - i])
                    if b is not None and const_value(p.inputs[1 - i]) is None:
                        x, top, c = p.inputs[1 - i], relu[1], b
                        break
        if c is None:
            continue
        if np.isfinite(top):
            c = np.minimum(c, np.float32(top))
        name = node.name or node.outputs[0].name
        y = node.outputs[0]
        scaled = gs.Variable(f"{name}_per_channel", dtype=x.dtype, shape=x.shape)
        unit = gs.Variable(f"{name}_unit", dtype=x.dtype, shape=y.shape)
        bound = gs.Constant(f"{name}_channel_top", c)
        graph.nodes.append(gs.Node("Div", f"{name}_to_unit", inputs=[x, bound], outputs=[scaled]))
        node.op, node.attrs = "Clip", {}
        node.inputs = [scaled, gs.Constant(f"{name}_lo", np.array(0.0, np.float32)),
                       gs.Constant(f"{name}_hi", np.array(1.0, np.float32))]
        node.outputs = [unit]
        graph.nodes.append(gs.Node("Mul", f"{name}_from_unit", inputs=[unit, bound], outputs=[y]))
        found.append(f"'{name}' ({c.size} tops, {float(c.min()):.3g} to {float(c.max()):.3g})")
        result.changed += 1
    if found:
        result.notes.append("clipped ReLUs with one top per channel read as c * clip(x / c, 0, 1), "
                            "a site of top 1: " + ", ".join(found[:4])
                            + (", ..." if len(found) > 4 else ""))
        graph.cleanup().toposort()


@graph_pass("hard-sigmoid-to-clip")
def hard_sigmoid_to_clip(graph: gs.Graph, result: PassResult) -> None:
    """``HardSigmoid(x; a, b) = clip(a x + b, 0, 1)`` is, for ``a > 0``, the clipped ReLU
    ``a * clip(x + b / a, 0, 1 / a)`` (Keras's hard_sigmoid: a = 0.2, b = 0.5; ``relu6(x) / 6``
    written as HardSigmoid(1/6, 0)): an ``Add`` of ``b / a`` (none when b = 0), a ``Clip``
    to [0, 1/a], whose top is the site's mu, and a ``Mul`` by ``a`` (none when a = 1). A
    HardSigmoid that multiplies its own input (HardSwish written out) is left, and refused
    as the product it is. One that is a graph output (a head: as a site its spikes would
    round the outputs to T + 1 levels) becomes ``x + (b - 0.5) / a``, its scores, positive
    where it is above 0.5 (what a dropped final Sigmoid leaves)."""
    for node in list(graph.nodes):
        if node.op != "HardSigmoid" or not node.inputs or not node.outputs:
            continue
        a = float(node.attrs.get("alpha", 0.2))
        b = float(node.attrs.get("beta", 0.5))
        x, y = node.inputs[0], node.outputs[0]
        if const_value(x) is not None:
            continue
        if not a > 0 or not np.isfinite(b):      # why it is left, for the refusal's message
            result.records.append((node.name, (
                f"alpha {a:g}: it falls as its input rises, and only a HardSigmoid of alpha > 0 "
                "is a clipped ReLU" if not a > 0 else f"beta {b:g} is not finite")))
            continue
        if any(c.op == "Mul" and x in c.inputs for c in y.outputs):
            result.records.append((node.name, "it multiplies its own input: x * HardSigmoid(x) "
                                              "is a HardSwish, which a ReLU6 can replace"))
            continue              # x * HardSigmoid(x): a HardSwish
        if is_graph_output(graph, y):      # a head: its scores, as a final Sigmoid's
            node.op, node.attrs = "Add", {}
            node.inputs = [x, gs.Constant(f"{node.name or y.name}_centre",
                                          np.array((b - 0.5) / a, np.float32))]
            result.notes.append(interface(
                f"the final HardSigmoid '{node.name}' is read as its scores x + {(b - 0.5) / a:g}: "
                "above 0 where it is above 0.5, of the same order (apply it for its values)"))
            result.changed += 1
            continue
        name = node.name or y.name
        cur = x
        if b != 0:
            cur = gs.Variable(f"{name}_shifted", dtype=x.dtype, shape=x.shape)
            graph.nodes.append(gs.Node("Add", f"{name}_shift", inputs=[
                x, gs.Constant(f"{name}_shift_value", np.array(b / a, np.float32))],
                outputs=[cur]))
        clipped = y if a == 1 else gs.Variable(f"{name}_clipped", dtype=x.dtype, shape=x.shape)
        node.op, node.attrs = "Clip", {}
        node.inputs = [cur, gs.Constant(f"{name}_lo", np.array(0.0, np.float32)),
                       gs.Constant(f"{name}_hi", np.array(1.0 / a, np.float32))]
        node.outputs = [clipped]
        if a != 1:
            graph.nodes.append(gs.Node("Mul", f"{name}_scale", inputs=[
                clipped, gs.Constant(f"{name}_scale_value", np.array(a, np.float32))],
                outputs=[y]))
        result.notes.append(f"HardSigmoid '{name}' (alpha {a:g}, beta {b:g}) is read as "
                            f"{a:g} x clip(x + {b / a:g}, 0, {1 / a:g}), a clipped ReLU")
        result.changed += 1
    if result.changed:
        graph.cleanup().toposort()


def _zeros(t, like) -> bool:
    """Whether ``t`` is a constant zero that broadcasts to ``like`` without growing it
    (:func:`.ir.scalar_value`)."""
    return scalar_value(t, like) == 0.0


def _sign_test(t):
    """(x, "positive" or "negative") when ``t`` is ``x > 0`` / ``x >= 0`` (or ``0 < x``...),
    or ``x < 0`` / ``x <= 0``: the mask of a ReLU written by hand; else None."""
    if len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    ops = {"Greater": "positive", "GreaterOrEqual": "positive",
           "Less": "negative", "LessOrEqual": "negative"}
    if node.op not in ops or len(node.inputs) != 2:
        return None
    a, b = node.inputs
    if _zeros(b, a) and const_value(a) is None:
        return a, ops[node.op]
    if _zeros(a, b) and const_value(b) is None:          # 0 < x is x > 0
        return b, "negative" if ops[node.op] == "positive" else "positive"
    return None


def _scaled(t, x) -> Optional[float]:
    """``a`` when ``t`` is ``a * x`` (or ``x * a``) with a constant scalar ``a``, else None."""
    if len(t.inputs) != 1 or t.inputs[0].op != "Mul" or len(t.inputs[0].inputs) != 2:
        return None
    a, b = t.inputs[0].inputs
    if a is x or b is x:
        return scalar_value(b if a is x else a, x)
    return None


@graph_pass("masked-relu-to-relu")
def masked_relu_to_relu(graph: gs.Graph, result: PassResult) -> None:
    """A ReLU written with a mask is a ``Relu`` (a site like any other): ``Where(x > 0, x, 0)``,
    ``Where(x < 0, 0, x)`` (>= and <= too, either operand order of the comparison;
    ``torch.where(x > 0, x, 0)`` exports so) and ``x * Cast(x > 0)``. At ``x = 0`` every form
    gives 0, as max(x, 0) does. A leaky ReLU written so, ``Where(x > 0, x, a * x)``, is a
    ``LeakyRelu`` of slope ``a`` (which the support check refuses by its name unless ``a`` is
    0). Any other Where or Mul stays, and the support check names it."""
    for node in graph.nodes:
        x = None
        if node.op == "Where" and len(node.inputs) == 3:
            test = _sign_test(node.inputs[0])
            if test is not None:
                t, sign = test
                keep, zero = (1, 2) if sign == "positive" else (2, 1)
                if node.inputs[keep] is t and _zeros(node.inputs[zero], t):
                    x = t
                slope = _scaled(node.inputs[zero], t) if node.inputs[keep] is t else None
                if x is None and slope == 0.0:        # Where(x > 0, x, 0 * x): a ReLU
                    x = t
                elif x is None and slope is not None:
                    result.notes.append(f"Where '{node.name}': a leaky ReLU written with a "
                                        f"mask (slope {slope:g}), is read as a LeakyRelu")
                    node.op, node.attrs = "LeakyRelu", {"alpha": float(slope)}
                    form = "Where(x > 0, x, a * x)" if sign == "positive" else "Where(x < 0, a * x, x)"
                    result.records.append((node.name, f"a leaky ReLU of slope {slope:g} "
                                                      f"written as {form}"))
                    node.inputs.clear()
                    node.inputs.append(t)
                    result.changed += 1
                    continue
        elif node.op == "Mul" and len(node.inputs) == 2:
            for i in (0, 1):
                mask, other = node.inputs[i], node.inputs[1 - i]
                if len(mask.inputs) == 1 and mask.inputs[0].op == "Cast":
                    test = _sign_test(mask.inputs[0].inputs[0])
                    if test is not None and test[1] == "positive" and test[0] is other:
                        x = other
        if x is None:
            continue
        result.notes.append(f"{node.op} '{node.name}': a ReLU written with a mask, is read as a Relu")
        node.op, node.attrs = "Relu", {}
        node.inputs.clear()
        node.inputs.append(x)
        result.changed += 1
    graph.cleanup()


@graph_pass("nonnegative-identities")
def nonnegative_identities(graph: gs.Graph, result: PassResult) -> None:
    """Ops that are linear on a tensor that cannot be negative (an activation's output, a sum
    or pool of them: :func:`.sites.nonnegative_tensors`): ``Abs`` of it is the tensor (an
    Identity, removed later), ``ReduceL1`` of it is its ``ReduceSum``, and an L1 pool of it
    (``LpPool`` / ``GlobalLpPool`` with p = 1, :func:`_sum_pool`) is a sum pool. On a tensor
    that can be negative they stay and the support check names them."""
    from .sites import nonnegative_tensors
    graph.toposort()
    positive = nonnegative_tensors(graph)
    for node in list(graph.nodes):
        if node.op not in ("Abs", "ReduceL1", "LpPool", "GlobalLpPool") or not node.inputs \
                or not node.outputs:
            continue
        if node.op.endswith("LpPool") and int(node.attrs.get("p", 2)) != 1:
            continue                      # (a p-norm: the support check names it)
        if node.inputs[0].name not in positive:
            result.skip(node, f"its input '{node.inputs[0].name}' can be negative")
            continue
        if node.op.endswith("LpPool"):
            op = node.op
            why = _sum_pool(graph, node)
            if why:
                result.skip(node, why)
            else:
                result.changed += 1
                result.notes.append(f"{op} '{node.name}' (p = 1) of a non-negative tensor "
                                    "written as its sum")
            continue
        result.changed += 1
        if node.op == "Abs":
            node.op = "Identity"
            continue
        node.op = "ReduceSum"        # opset >= 13 here: its axes are an input
        if "axes" in node.attrs:
            axes = np.array(node.attrs.pop("axes"), np.int64)
            node.inputs.append(gs.Constant(f"{node.name or node.outputs[0].name}_axes", axes))
        result.notes.append(f"ReduceL1 '{node.name}' of a non-negative tensor written as ReduceSum")
    if result.changed:
        graph.toposort()          # (an LpPool's Mul is appended after the nodes)


def _sum_pool(graph: gs.Graph, node: gs.Node) -> Optional[str]:
    """An L1 pool (p = 1) of a non-negative tensor rewritten in place as the sum it is: a
    ``GlobalLpPool`` as ``ReduceSum`` over the spatial axes (kept), an ``LpPool`` as an
    ``AveragePool`` that counts the padding, times the kernel's size (a window's sum: padding
    adds zeros); why not (the rank unknown, ``ceil_mode`` or dilations, whose edge windows an
    average does not count as a sum), else None."""
    name = node.name or node.outputs[0].name
    if node.op == "GlobalLpPool":
        shape = node.inputs[0].shape
        if shape is None:
            return "the rank of its input is unknown"
        if len(shape) < 3:
            return f"its input has rank {len(shape)}, no spatial axes"
        node.op, node.attrs = "ReduceSum", {"keepdims": 1}
        node.inputs.append(gs.Constant(f"{name}_axes", np.arange(2, len(shape), dtype=np.int64)))
        return None
    kernel = [int(k) for k in node.attrs.get("kernel_shape", [])]
    if not kernel:
        return "it has no kernel_shape"
    if int(node.attrs.get("ceil_mode", 0)) or any(int(d) != 1 for d in node.attrs.get("dilations", [])):
        return "with ceil_mode or dilations its edge windows are no average's"
    keep = {k: v for k, v in node.attrs.items() if k in ("kernel_shape", "strides", "pads", "auto_pad")}
    out = node.outputs[0]
    mid = gs.Variable(f"{name}_window_mean", dtype=out.dtype)
    node.op, node.attrs = "AveragePool", {**keep, "count_include_pad": 1}
    node.outputs = [mid]
    area = np.array(float(np.prod(kernel)), np.float32)
    graph.nodes.append(gs.Node("Mul", f"{name}_window_sum", inputs=[mid, gs.Constant(
        f"{name}_window_size", area)], outputs=[out]))
    return None


@graph_pass("reshape-keeps-batch")
def reshape_keeps_batch(graph: gs.Graph, result: PassResult) -> None:
    """A Reshape to a constant shape that starts with 1 (``x.view(1, -1)``, as a model written
    for one sample at a time exports it) of a tensor whose first axis is the input's free
    batch axis keeps that axis instead (0: copy it). The same at batch 1; and the model runs
    batches (onnxruntime failed on them: the Reshape merged the samples into one row)."""
    batch = {t.shape[0] for t in graph.inputs
             if t.shape and isinstance(t.shape[0], str) and t.shape[0]}
    if not batch:
        return
    for node in graph.nodes:
        if node.op != "Reshape" or len(node.inputs) < 2 or int(node.attrs.get("allowzero", 0)):
            continue
        shape, data = const_value(node.inputs[1]), node.inputs[0]
        if shape is None or shape.ndim != 1 or shape.size < 2 or int(shape[0]) != 1 \
                or not data.shape or data.shape[0] not in batch:
            continue
        kept = shape.copy()
        kept[0] = 0
        node.inputs[1] = gs.Constant(f"{node.name or node.outputs[0].name}_keeps_batch", kept)
        result.changed += 1
        result.notes.append(f"Reshape '{node.name}' to {shape.tolist()} merged the batch into one "
                            f"sample; it keeps the batch axis ({kept.tolist()}): the same at "
                            "batch 1, and batches run")


@graph_pass("reduce-max-to-global-pool")
def reduce_max_to_global_pool(graph: gs.Graph, result: PassResult) -> None:
    """``ReduceMax`` over exactly the spatial axes of an N x C x spatial tensor is
    ``GlobalMaxPool`` (Keras's GlobalMaxPooling2D through tf2onnx), which has a rate-exact
    spiking form; with ``keepdims=0`` a ``Flatten`` follows (N x C). Other ReduceMax nodes
    are left (and refused, named)."""
    for node in list(graph.nodes):
        if node.op != "ReduceMax" or not node.inputs:
            continue
        x = node.inputs[0]
        r = rank(x)
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1:
            axes = const_value(node.inputs[1])
            axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
        keep = int(node.attrs.get("keepdims", 1))
        perm = None
        if r is not None and r >= 3 and axes is not None and \
                sorted(int(a) % r for a in axes) != list(range(2, r)):
            perm = _channels_last_reduction(x, [int(a) % r for a in axes], keep)
        if r is None or r < 3 or axes is None or (
                perm is None and sorted(int(a) % r for a in axes) != list(range(2, r))):
            result.skip(node, "not a reduction over exactly the spatial axes of a known rank")
            continue
        result.changed += 1
        out = node.outputs[0]
        name = node.name or "reducemax"
        node.op, node.attrs = "GlobalMaxPool", {}
        node.inputs.clear()
        node.inputs.append(x if perm is None else x.inputs[0].inputs[0])
        if not keep or perm is not None:
            pooled = gs.Variable(out.name + "_pooled", dtype=out.dtype)
            node.outputs.clear()
            node.outputs.append(pooled)
            if keep:       # the pooled N x C x 1 x 1 in the layout the Transpose gave
                graph.nodes.append(gs.Node("Transpose", f"{name}_layout", attrs={"perm": perm},
                                           inputs=[pooled], outputs=[out]))
            else:
                graph.nodes.append(gs.Node("Flatten", f"{name}_flatten",
                                           attrs={"axis": 1}, inputs=[pooled], outputs=[out]))
    graph.cleanup().toposort()


def _channels_last_reduction(x, axes, keep: int):
    """The ``perm`` of the Transpose that computes ``x`` when the reduced ``axes`` of ``x``
    are exactly the spatial axes of the Transpose's N x C x spatial input (Keras's
    GlobalMaxPooling2D in NHWC: ``Transpose(0, 2, 3, 1)`` then ``ReduceMax(axes=[1, 2])``),
    and the kept axes (``keepdims=0``) stay in the order N, C; else None."""
    t = x.inputs[0] if len(x.inputs) == 1 else None
    if t is None or t.op != "Transpose" or not t.inputs or "perm" not in t.attrs:
        return None
    perm = [int(p) for p in t.attrs["perm"]]
    r = len(perm)
    if sorted(perm) != list(range(r)) or sorted(perm[a] for a in axes) != list(range(2, r)):
        return None
    kept = [p for i, p in enumerate(perm) if i not in axes]
    if not keep and kept != [0, 1]:
        return None
    return perm


def _forget_shapes_after(graph: gs.Graph, node: gs.Node) -> None:
    """Clear the inferred shapes of every tensor computed from ``node`` (the graph's outputs
    too: the first inference may have put its shape on them), for inference to compute
    again."""
    todo, seen = list(node.outputs), set()
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        t.shape = None
        for reader in t.outputs:
            todo.extend(reader.outputs)


#: the ops whose ``auto_pad`` :func:`auto_pads_to_explicit_pads` writes out (ConvTranspose's
#: SAME pads the output, not the input: left as it is)
AUTO_PAD_OPS = ("Conv", "MaxPool", "AveragePool", "LpPool")


@graph_pass("auto-pads-to-explicit-pads")
def auto_pads_to_explicit_pads(graph: gs.Graph, result: PassResult) -> None:
    """A Conv or pool whose padding is ``auto_pad`` (SAME_UPPER, SAME_LOWER, VALID: Keras's
    and TensorFlow's "same"/"valid", as tf2onnx writes them) on an input of static size gets
    the same padding written out in ``pads``: the same values, and a form every runtime
    takes (onnxruntime's NCHWc convolution refused a dilated one with SAME_UPPER: "Dilation
    not supported for AutoPadType::SAME_UPPER"). A pool in ceil mode, or an input of free
    size, is left as it is."""
    for node in graph.nodes:
        if node.op not in AUTO_PAD_OPS or not node.inputs:
            continue
        auto = node.attrs.get("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto not in ("SAME_UPPER", "SAME_LOWER", "VALID") or int(node.attrs.get("ceil_mode", 0)):
            continue
        w = node.inputs[1].shape if node.op == "Conv" and len(node.inputs) > 1 else None
        pads = written_pads(node.op, node.attrs, node.inputs[0].shape, w)
        if pads is None:       # a spatial size (or the kernel) not known
            kernel = node.attrs.get("kernel_shape") or (list(w[2:]) if w is not None else None)
            refused = _refused_auto_pad(node, auto, kernel)
            if refused:      # (onnxruntime loads it and refuses at a run, the DNN's too)
                raise UnsupportedModelError(
                    f"{node_label(node)}: {refused} with auto_pad {auto} on an input whose "
                    "spatial size the model leaves free: onnxruntime cannot run it on every "
                    "size, and its padding depends on the size; export the model with a fixed "
                    "input size (its padding is then written out here) or with explicit pads "
                    "(Keras/tf2onnx: a fixed input_shape; PyTorch: padding=\"same\" writes them)")
            continue
        node.attrs["pads"] = pads
        node.attrs["auto_pad"] = "NOTSET"
        result.changed += 1


def _refused_auto_pad(node: gs.Node, auto: str, kernel) -> Optional[str]:
    """What onnxruntime refuses at run time (not at load) in ``node``'s ``auto_pad`` SAME_*
    form, in words, or None: a dilated Conv on any size ("Dilation not supported for
    AutoPadType"), a pool whose stride is longer than its window on the sizes where ONNX's
    padding is negative ("padding values must be non-negative": kernel 1, stride 2 on 8).
    The messages are :data:`onnx_snn.calibrate.AUTO_PAD_REFUSALS`."""
    if auto == "VALID":
        return None
    n = len(kernel) if kernel else 0
    dilations = [int(d) for d in node.attrs.get("dilations", []) or [1] * n]
    if node.op == "Conv":
        return "a dilated convolution" if any(d != 1 for d in dilations) else None
    strides = [int(d) for d in node.attrs.get("strides", []) or [1] * n]
    if kernel and any(s > d * (int(k) - 1) + 1 for s, k, d in zip(strides, kernel, dilations)):
        return "a pool whose stride is longer than its window"
    return None


@graph_pass("ceil-pools-to-explicit-pads")
def ceil_pools_to_explicit_pads(graph: gs.Graph, result: PassResult) -> None:
    """A ``MaxPool``/``AveragePool`` in ceil mode whose last window would start in the end
    padding (``kernel 2, stride 2, pads [0, 0, 1, 1]`` on a 6 x 6 input; Caffe's pooling):
    onnxruntime drops that window (3 x 3), ONNX's shape inference counts it (4 x 4), and the
    spiking graph's states were sized from the inference. The pool becomes floor mode with
    the end padding that gives onnxruntime's windows: the same values, and a shape both
    agree on. An ``AveragePool`` that counts the padding and needs more of it pads with an
    explicit zero ``Pad`` and counts only what lies inside that. A pool whose windows the
    two agree on is left as it is. After each rewrite the shapes after it are inferred
    again (the next such pool's windows depend on them)."""
    while True:
        graph.toposort()
        node = next((n for n in list(graph.nodes) if _floor_mode_pool(graph, n)), None)
        if node is None:
            break
        result.changed += 1
        result.notes.append(f"{node.op} '{node.name}' in ceil mode: its last window would start in "
                            "the end padding, which onnxruntime drops and ONNX's shape inference "
                            "counts; written in floor mode with the padding that gives "
                            "onnxruntime's windows")
        _forget_shapes_after(graph, node)     # inferred with the window onnxruntime drops
        _infer_again(graph)
    if result.changed:
        graph.cleanup().toposort()


def _floor_mode_pool(graph: gs.Graph, node: gs.Node) -> bool:
    """Rewrite ``node`` as :func:`ceil_pools_to_explicit_pads` says, when it is such a pool
    (True); UnsupportedModelError when it is one that floor mode cannot give (an end pad as
    long as the kernel, which onnxruntime refuses)."""
    if node.op not in ("MaxPool", "AveragePool") or not node.inputs \
            or not int(node.attrs.get("ceil_mode", 0)):
        return False
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    x = node.inputs[0]
    kernel = [int(k) for k in node.attrs.get("kernel_shape", [])]
    n = len(kernel)
    shape = x.shape
    if auto != "NOTSET" or not n or shape is None or len(shape) != n + 2:
        return False
    strides = [int(v) for v in node.attrs.get("strides", [1] * n)]
    dil = [int(v) for v in node.attrs.get("dilations", [1] * n)]
    pads = [int(v) for v in node.attrs.get("pads", [0] * (2 * n))]
    if not all(isinstance(d, int) and d > 0 for d in shape[2:]):
        # a last window can start in the end padding only with end padding, or a window
        # shorter than the stride: then whether it does depends on the size
        if any(pads[n + i] > 0 or dil[i] * (kernel[i] - 1) + 1 < strides[i] for i in range(n)):
            raise UnsupportedModelError(
                f"{node_label(node)}: in ceil mode on a free input size, its last window may "
                "start in the end padding, which onnxruntime drops and ONNX's shape inference "
                "counts, depending on the size; convert pins the free dimensions to the "
                "calibration data's (prepare: give input_shapes)")
        return False
    ends, dropped = [], False
    for i in range(n):
        size, span = int(shape[2 + i]), dil[i] * (kernel[i] - 1) + 1
        o = pool_windows(size, span, strides[i], pads[i], pads[n + i], ceil=True)
        dropped |= o != -(-(size + pads[i] + pads[n + i] - span) // strides[i]) + 1   # ONNX's
        # the end padding floor mode needs for o windows (less than a stride short of the
        # input's end: none)
        ends.append(max(0, (o - 1) * strides[i] + span - size - pads[i]))
    if not dropped:
        return False
    # a kept window never ends past the padding along an axis that dropped one; along
    # another axis ceil mode's last window may (a partial window: more padding)
    grow = [max(0, e - p) for e, p in zip(ends, pads[n:])]
    counts_pad = node.op == "AveragePool" and int(node.attrs.get("count_include_pad", 0))
    explicit = counts_pad and any(grow)
    new_pads = ([0] * n + grow) if explicit else (pads[:n] + ends)
    if explicit and any(d != 1 for d in dil) or any(
            p >= kernel[i % n] for i, p in enumerate(new_pads)):
        raise UnsupportedModelError(
            f"{node_label(node)}: in ceil mode its last window would start in the end padding, "
            "which onnxruntime drops and ONNX's shape inference counts, and floor mode cannot "
            "give onnxruntime's windows here (dilations, or padding as long as the kernel); "
            "re-export the pool in floor mode with explicit padding")
    if explicit:
        # onnxruntime divides a partial window by its cells inside the padding: pad with
        # explicit zeros and count only the cells inside the padded tensor
        padded = gs.Variable(f"{node.name or x.name}_padded", dtype=x.dtype)
        graph.nodes.append(gs.Node("Pad", f"{node.name or x.name}_pad", inputs=[
            x, gs.Constant(f"{node.name or x.name}_pads", np.array(
                [0, 0] + pads[:n] + [0, 0] + [min(e, p) for e, p in zip(ends, pads[n:])],
                np.int64))], outputs=[padded]))
        node.inputs[0] = padded
        node.attrs["count_include_pad"] = 0
    node.attrs["pads"] = new_pads
    node.attrs["ceil_mode"] = 0
    return True


def _infer_again(graph: gs.Graph) -> None:
    """ONNX's shape inference on the graph as it is now (its large constants as stubs of
    their shape): every tensor without a shape gets the inferred one."""
    from .export import stubbed
    try:
        with stubbed(graph):
            model = gs.export_onnx(graph, do_type_check=False)
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:          # inference is a help: the final inference runs anyway
        return
    tensors = graph.tensors()
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = tensors.get(vi.name)
        tt = vi.type.tensor_type
        if t is None or isinstance(t, gs.Constant) or t.shape is not None or not tt.HasField("shape"):
            continue
        t.shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                   for d in tt.shape.dim]


@graph_pass("constant-where-to-mask")
def constant_where_to_mask(graph: gs.Graph, result: PassResult) -> None:
    """``Where(mask, a, b)`` with a constant mask is linear in its data branches:
    ``a * mask + b * (1 - mask)``, written as a Mul by a constant 0/1 mask (and an Add where
    both branches are data, or the constant branch is not zero). The dynamo exporter writes
    adaptive average pooling with unequal windows so (``masked_fill`` of the padded cells).
    A Where with a computed mask (a comparison of the data) is nonlinear and left."""
    dynamic = depends_on_inputs(graph)
    for node in list(graph.nodes):
        if node.op != "Where" or len(node.inputs) != 3:
            continue
        cond, a, b = node.inputs
        mask = const_value(cond)
        out = node.outputs[0]
        if mask is None or out.name not in dynamic:
            continue
        dtype = np.dtype(out.dtype) if out.dtype is not None else np.dtype(np.float32)
        if dtype.kind != "f":
            result.skip(node, f"selects {dtype} values")
            continue
        label = node.name or out.name
        consts = [v for v in (const_value(a), const_value(b)) if v is not None]
        if any(not np.all(np.isfinite(v)) for v in consts):
            result.skip(node, "fills with an infinity or NaN, which no multiplication by a mask "
                              "gives")
            continue
        # the mask at the broadcast shape of the mask and the constants: a constant branch
        # wider than the data widens the output even where it is not selected
        try:
            shape = np.broadcast_shapes(mask.shape, *(v.shape for v in consts))
        except ValueError:
            result.skip(node, "its mask and constants do not broadcast")
            continue
        keep_a = np.broadcast_to(mask.astype(bool), shape)
        terms = []
        for branch, keep in ((a, keep_a), (b, ~keep_a)):
            value = const_value(branch)
            if value is None:
                m = gs.Constant(f"{label}_mask{len(terms)}", keep.astype(dtype))
                t = gs.Variable(f"{label}_masked{len(terms)}", dtype=dtype)
                graph.nodes.append(gs.Node("Mul", f"{label}_mul{len(terms)}",
                                           inputs=[branch, m], outputs=[t]))
                terms.append(t)
            else:
                fill = np.where(keep, value, 0).astype(dtype)
                if np.any(fill):
                    terms.append(gs.Constant(f"{label}_fill", fill))
        if len(terms) == 1 and isinstance(terms[0], gs.Constant):
            result.skip(node, "selects only constants")
            continue
        node.op, node.attrs = "Add" if len(terms) == 2 else "Identity", {}
        node.inputs.clear()
        node.inputs.extend(terms)
        result.changed += 1
    if result.changed:
        result.notes.append(f"{result.changed} Where node(s) with a constant mask written as a "
                            "multiplication by the mask")
        graph.cleanup().toposort()


def _why_not_dense(node: gs.Node) -> Optional[str]:
    """Why MatMul ``node`` is no dense layer (None: it is one: a constant 2-D weight on a
    rank-2 input)."""
    a, w = node.inputs
    wv = const_value(w)
    if wv is None:
        return f"its weight '{w.name}' is not constant"
    if wv.ndim != 2:
        return f"its weight is {wv.ndim}-D, not 2-D"
    r = rank(a)
    if r is None:
        return f"the rank of its input '{a.name}' is unknown"
    if r != 2:
        return f"its input '{a.name}' is {r}-D, not 2-D"
    return None


def _bias_add(graph: gs.Graph, node: gs.Node):
    """(Add node, bias tensor, None) when the dense MatMul ``node`` (:func:`_why_not_dense`)
    + its Add is a dense layer with a bias, else (None, None, why not)."""
    wv = const_value(node.inputs[1])
    out = node.outputs[0]
    if is_graph_output(graph, out):
        return None, None, f"its output '{out.name}' is a graph output"
    if len(out.outputs) != 1:
        return None, None, f"its output '{out.name}' feeds {len(out.outputs)} nodes, not one Add"
    add = out.outputs[0]
    if add.op != "Add":
        return None, None, f"it is followed by {add.op} '{add.name}', not by Add"
    other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
    bv = const_value(other)
    if bv is None:
        return None, None, f"the Add after it ('{add.name}') has a non-constant bias"
    if bv.size != wv.shape[1] or (bv.ndim == 2 and bv.shape[0] != 1) or bv.ndim > 2:
        return None, None, (f"the bias of the Add after it has shape {list(bv.shape)}, not one "
                            f"value per output ({wv.shape[1]})")
    return add, other, None


@graph_pass("gemm-scales-into-weights")
def gemm_scales_into_weights(graph: gs.Graph, result: PassResult) -> None:
    """A Gemm's ``alpha`` and ``beta`` multiplied into its constant weight and bias (then 1;
    a bias times 0 is dropped): the same layer, which the weight calibration can refit (it
    left a Gemm of ``alpha != 1`` as it was)."""
    for node in graph.nodes:
        if node.op != "Gemm" or len(node.inputs) < 2:
            continue
        alpha = float(node.attrs.get("alpha", 1.0))
        beta = float(node.attrs.get("beta", 1.0))
        w = const_value(node.inputs[1])
        c = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
        done = False
        if alpha != 1.0 and w is not None and w.dtype == np.float32:
            node.inputs[1] = gs.Constant(f"{node.name}_weight_alpha",
                                         np.asarray(w.astype(np.float64) * alpha, np.float32))
            node.attrs["alpha"] = 1.0
            done = True
        if beta != 1.0 and c is not None and c.dtype == np.float32:
            if beta == 0.0:
                node.inputs.pop()
            else:
                # (np.asarray: a bias of shape [] times beta is a numpy scalar, no array)
                node.inputs[2] = gs.Constant(f"{node.name}_bias_beta",
                                             np.asarray(c.astype(np.float64) * beta, np.float32))
            node.attrs["beta"] = 1.0
            done = True
        result.changed += done
    if result.changed:
        graph.cleanup()


@graph_pass("matmul-add-to-gemm")
def matmul_add_to_gemm(graph: gs.Graph, result: PassResult) -> None:
    """``MatMul(A, W)`` + ``Add(b)`` with constant 2-D W, 1-D b and rank-2 A is a dense layer
    (a Gemm); a ``MatMul(A, W)`` that is one without such an Add (the last layer of an export
    without a bias, a bias that is not one value per output) becomes a Gemm without a bias,
    which the weight calibration refits as it does a Gemm's (with a bias of its own: the
    same two-layer MLP converted 73.95 % against 76.85 % for its twin with a zero-bias Gemm,
    whose last layer the refit reached)."""
    for node in list(graph.nodes):
        if node.op != "MatMul":
            continue
        why = _why_not_dense(node)
        if why is not None:
            result.skip(node, why)
            continue
        add, other, why = _bias_add(graph, node)
        if why is not None:                    # (a dense layer without a bias)
            node.op, node.attrs = "Gemm", {}
            result.changed += 1
            continue
        a, w = node.inputs
        bias = gs.Constant(other.name + "_gemm", np.asarray(const_value(other), np.float32).reshape(-1))
        gemm = gs.Node("Gemm", node.name or add.name, inputs=[a, w, bias],
                       outputs=[add.outputs[0]])
        node.inputs.clear()
        node.outputs.clear()
        add.inputs.clear()
        add.outputs.clear()
        graph.nodes.append(gemm)
        result.changed += 1
    graph.cleanup().toposort()


#: the max pools that commute with a monotone activation (max(clip(x)) = clip(max(x)))
_MAX_POOLS = ("MaxPool", "GlobalMaxPool")


def pool_before_sites(graph: gs.Graph, sites: list) -> PassResult:
    """Move every max pool that reads a site's activation alone ahead of the activation:
    ``Clip(h) -> MaxPool`` becomes ``MaxPool(h) -> Clip``, the same DNN (a clipped ReLU is
    monotone, so it commutes with a maximum; padded cells are -inf to both). The spiking layer
    then sits on the pooled map: it pools the running input currents and fires once per
    window, instead of each cell firing and the pool taking the largest spike count. ``sites``
    (canonical :class:`~onnx_snn.graph.sites.Site` records) are updated in place. Opt-in
    (``convert --pool-first``): its measured effect is in docs/FORMAT.md."""
    result = PassResult("pool-before-sites")
    by_node = {s.name: s for s in sites}
    for act in list(graph.nodes):
        site = by_node.get(act.name)
        if site is None or not act.outputs:
            continue
        y = act.outputs[0]
        pools = [n for n in y.outputs if n.op in _MAX_POOLS]
        if not pools:
            continue
        pool = pools[0]
        if len(y.outputs) > 1:
            result.skip(pool, f"its input '{y.name}' is also read by {len(y.outputs) - 1} other "
                              "node(s)")
            continue
        if is_graph_output(graph, y):
            result.skip(pool, f"its input '{y.name}' is also a graph output")
            continue
        if len(pool.outputs) > 1 and (pool.outputs[1].outputs or
                                      is_graph_output(graph, pool.outputs[1])):
            result.skip(pool, "its Indices output is used (the cells it picks can differ where "
                              "the clip saturates)")
            continue
        h, z = act.inputs[0], pool.outputs[0]
        pool.inputs[0] = h              # the pool reads the pre-activation: h -> y
        act.inputs[0] = y               # the activation reads the pooled one: y -> z
        act.outputs[0] = z
        pool.outputs[0] = y
        y.shape = z.shape
        result.records.append((site.output, z.name))    # the activation's old and new tensor
        site.input, site.output = y.name, z.name
        result.changed += 1
    if result.changed:
        graph.cleanup().toposort()
    return result

"""Unit thresholds: rescale each site's input current so that all its thresholds are 1.

An integrate-and-fire neuron is unchanged when its input current, its threshold and its
membrane are divided by the same positive number ``th`` (one per channel): ``u / th >= 1``
iff ``u >= th``, and the reset subtracts ``th / th = 1``; the leak multiplies either form
alike. So every layer that computes a site's current (a Conv's or Gemm's output channels,
their biases, a bias-correction offset, a pool of currents, which commutes with a positive
scale) can absorb ``1 / th``, and the site's threshold becomes 1 and its initial membrane
``v_init / th``. The spikes and their amplitudes are those of the model, exactly in real
arithmetic; in float32 the rescaled weights move each current by rounding, which can flip a
neuron that sits on its threshold (as folding the amplitudes does, :mod:`.binary`).

What it is for: with thresholds of 1 the deploy graph writes a neuron with ops that
onnxruntime keeps in its blocked (NCHWc) convolution layout (:mod:`.deploy`,
``unit_thresholds=True``). A site whose current cannot take the scale (it sums another
site's spikes directly, a residual ``Add`` behind an identity shortcut; a weight shared with
another layer; an op that mixes channels in a way not followed here) keeps its threshold,
and the report says why.
"""
from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import walk
from . import format as fmt

#: ops that pass a positive per-channel scale from their output to their (first) input
_HOMOGENEOUS = {"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "Identity"} | \
    set(fmt.POOL_OPS.values())


def identity_convolutions(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, List[str]]:
    """A copy of ``model`` in which every site's spikes that an ``Add``, ``Sub`` or ``Sum``
    reads (a residual block's identity shortcut), directly or through pools that keep the
    channels (a ResNet stem's max pool, whose output both the block's first convolution and
    its shortcut read), pass a 1x1 convolution with the identity matrix on the way, so that
    the sum is of two convolutions, each of which can absorb the scales
    (:func:`unit_thresholds`, and the amplitude folding of :mod:`.binary`): the same values,
    for C multiply-adds per element and step. Returns it and the sites whose spikes got one.
    Only sites of 2 or more axes (channels first) get one."""
    m = copy.deepcopy(model)
    view = fmt.read_spiking(m)
    shapes = {s.name: list(s.shape) for s in view.info.sites}
    graphs = walk.subgraphs(m.graph)
    readers: Dict[str, List[onnx.NodeProto]] = {}
    for gg in graphs:
        for r in gg.node:
            for i in set(r.input):
                readers.setdefault(i, []).append(r)
    done: List[str] = []
    for g in graphs:
        for n in list(g.node):
            if not fmt.is_neuron_node(n):
                continue
            site = fmt.site_of_neuron_node(n.name)
            shape = shapes.get(site)
            if not shape or len(shape) < 2:
                continue
            sums = _sums_reading(n.output[0], readers)
            if not sums:
                continue
            c = int(shape[0])
            eye = np.eye(c, dtype=np.float32).reshape(c, c, *[1] * (len(shape) - 1))
            for k, (y, r) in enumerate(sums):  # each its own weight: each is rescaled on its own
                out = f"{fmt.RESERVED_PREFIX}unit/{site}.identity{k}"
                m.graph.initializer.append(numpy_helper.from_array(eye, out + ".weight"))
                conv = onnx.helper.make_node("Conv", [y, out + ".weight"], [out], name=out)
                graph = next(gg for gg in graphs if any(x is r for x in gg.node))
                graph.node.insert(list(graph.node).index(r), conv)
                for i, name in enumerate(r.input):
                    if name == y:
                        r.input[i] = out
            done.append(site)
    return m, done


def _sums_reading(y: str, readers: Dict[str, List[onnx.NodeProto]]
                  ) -> List[Tuple[str, onnx.NodeProto]]:
    """Each ``Add``, ``Sub`` or ``Sum`` that reads the spikes ``y``, directly or through ops
    that keep the channels and the rank and commute with a positive per-channel scale (the
    pools of :data:`_HOMOGENEOUS`, as their data input), with the tensor it reads."""
    out: List[Tuple[str, onnx.NodeProto]] = []
    todo, seen = [y], {y}
    while todo:
        t = todo.pop(0)
        for r in readers.get(t, []):
            if r.op_type in ("Add", "Sub", "Sum"):
                out.append((t, r))
            elif r.op_type in _HOMOGENEOUS and r.input[0] == t and r.output[0] not in seen:
                seen.add(r.output[0])
                todo.append(r.output[0])
    return out


def unit_thresholds(model: onnx.ModelProto, shift_reset: bool = False, inplace: bool = False
                    ) -> Tuple[onnx.ModelProto, Dict[str, str]]:
    """A copy of the spiking ``model`` (``inplace``: the model itself) in which every site
    that can take it has thresholds of 1 (see the module docstring), and for every site
    "unit" or the reason it was kept.

    ``shift_reset`` (for the deploy graph's unit neurons only): also subtract 1 from one
    constant term of every unit site's current (a bias, or a constant added on the way; a
    Conv or Gemm without one gets one), which moves each step's reset by subtraction into
    the current. The result is not the model any more on its own: the deploy graph adds the
    1 back through its neuron's ``1 - s`` (:meth:`deploy._Unroller.unit_neuron`)."""
    m = model if inplace else copy.deepcopy(model)
    view = fmt.read_spiking(m)
    nodes = walk.all_nodes(m.graph)
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    uses: Dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
            uses[i] = uses.get(i, 0) + 1
    producers = {o: n for n in nodes for o in n.output}
    outputs = exposed(view)
    inits = view.initializers
    result: Dict[str, str] = {}
    neurons = {fmt.site_of_neuron_node(n.name): n for n in view.body if fmt.is_neuron_node(n)}
    for site in view.info.sites:
        th_name = fmt.param_name(site.name, "threshold")
        th = numpy_helper.to_array(inits[th_name]).astype(np.float64)
        node = neurons.get(site.name)
        if node is None:
            result[site.name] = "kept: its neuron node was not found"
            continue
        if not np.all(th > 0) or not np.all(np.isfinite(th)):
            result[site.name] = "kept: a threshold is not a positive number"
            continue
        if shift_reset:
            if node.op_type == fmt.SIGNED_NEURON_OP:
                result[site.name] = "kept: a signed neuron keeps its own form"
                continue
            leak = numpy_helper.to_array(inits[node.input[4]]) if node.input[4] in inits else None
            if leak is None or not np.all(leak == 1):
                result[site.name] = "kept: a leak below one keeps the plain form"
                continue
            if any(node.output[1] in n.input for n in view.body):
                result[site.name] = "kept: another node reads its next membrane"
                continue
        scale = 1.0 / th
        plan: List[_Step] = []
        ctx = _Context(producers, consumers, uses, inits, outputs, scale)
        reason = _walk(node.input[0], plan, ctx, 1, True)
        if reason is None:
            reason = _check_plan(plan, inits, scale)
        shift = None
        if reason is None and shift_reset:
            shift = next((p for p in plan if p.kind in ("bias", "offset", "no-bias")
                          and p.shiftable), None)
            if shift is None:
                reason = "no bias or constant on the way to take the reset"
        if reason is not None:
            result[site.name] = f"kept: {reason}"
            continue
        for p in plan:
            if p.kind != "no-bias":
                _apply(inits[p.name], p, scale)
        if shift is not None:
            _shift(m, shift, inits)
        inits[th_name].CopyFrom(numpy_helper.from_array(
            np.ones_like(numpy_helper.to_array(inits[th_name])), th_name))
        v0_name = fmt.param_name(site.name, "v_init")
        if v0_name in inits:
            v0 = numpy_helper.to_array(inits[v0_name])
            inits[v0_name].CopyFrom(numpy_helper.from_array(
                (v0.astype(np.float64) * scale).astype(v0.dtype), v0_name))
        result[site.name] = "unit"
    fmt.sync_site_records(m)         # the unit sites' records: threshold 1, v_init rescaled
    return m, result


@dataclass
class _Step:
    """One rescaling: initializer ``name`` of ``node``; ``kind``: "weight" (along ``axis``),
    "bias" (a Conv's or Gemm's bias, along the output channels), "offset" (a constant added),
    "factor" (a constant multiplying), "no-bias" (a Conv or Gemm without one: only a place
    for the reset's shift); ``sign``: -1 when the term enters the current subtracted."""
    name: str
    kind: str
    node: onnx.NodeProto
    axis: int = 0
    sign: int = 1
    shiftable: bool = True      # a constant added here adds sign times itself to the
    #                             site's current (no division or padded average pool on the way)


@dataclass
class _Context:
    producers: Dict[str, onnx.NodeProto]
    consumers: Dict[str, List[onnx.NodeProto]]
    uses: Dict[str, int]
    inits: Dict[str, onnx.TensorProto]
    outputs: set
    scale: np.ndarray

    @property
    def per_channel(self) -> bool:
        """The scale is one number, or one per channel (all other axes of size 1)."""
        return self.scale.size == 1 or self.scale.size == self.scale.shape[0]


def _walk(t: str, plan: List[_Step], ctx: _Context, sign: int, shift_ok: bool) -> Optional[str]:
    """Plan the rescaling of every layer that computes the tensor ``t`` (read only by the
    path to the site); a reason when one cannot take it. ``sign``: how ``t`` enters the
    current (-1 under a subtrahend); ``shift_ok``: whether a constant added to ``t`` adds
    itself, times ``sign``, to the current (not under a division or a padded average pool)."""
    n = ctx.producers.get(t)
    if n is not None and fmt.is_neuron_node(n):
        return f"it adds the spikes of '{fmt.site_of_neuron_node(n.name) or n.name}' directly"
    if t in ctx.outputs:
        return f"'{t}' is a graph output"
    if len(ctx.consumers.get(t, [])) != 1:
        return f"'{t}' is read by {len(ctx.consumers.get(t, []))} nodes"
    if n is None:
        return f"'{t}' is not computed by a layer that can be rescaled"
    op = n.op_type
    if op in _HOMOGENEOUS:
        if op != "Identity" and not ctx.per_channel:
            return f"'{n.name}' ({op}) mixes positions with thresholds per neuron"
        padded = any(walk.attr(n, "pads", []) or []) or \
            walk.attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID")
        # a padded average of x - 1 is not the average minus 1
        return _walk(n.input[0], plan, ctx, sign, shift_ok and not (op == "AveragePool" and padded))
    if op in ("Add", "Sub"):
        for k, i in enumerate(n.input):
            term = -sign if op == "Sub" and k == 1 else sign
            if i in ctx.inits:
                if ctx.uses.get(i, 0) != 1:
                    return f"the constant '{i}' of '{n.name}' is shared"
                plan.append(_Step(i, "offset", n, sign=term, shiftable=shift_ok))
                continue
            reason = _walk(i, plan, ctx, term, shift_ok)
            if reason:
                return reason
        return None
    if op in ("Mul", "Div"):
        const = [i for i in n.input if i in ctx.inits]
        other = [i for i in n.input if i not in ctx.inits]
        if len(const) != 1 or len(other) != 1 or (op == "Div" and n.input[1] not in ctx.inits):
            return f"'{n.name}' ({op}) is not a product with one constant"
        if op == "Mul":
            if ctx.uses.get(const[0], 0) != 1:
                return f"the constant of '{n.name}' is shared"
            plan.append(_Step(const[0], "factor", n))
            return None
        return _walk(other[0], plan, ctx, sign, False)      # a constant added there is divided
    if op == "Conv":
        return _weighted(n, 0, plan, ctx, sign, shift_ok)
    if op in ("Gemm", "MatMul"):
        # the output features are the last axis: the site's channels only for a 1-D site
        if ctx.scale.size > 1 and ctx.scale.ndim != 1:
            return f"'{n.name}' ({op}) computes a site of more than one axis"
        if op == "Gemm":
            return _weighted(n, 0 if walk.attr(n, "transB", 0) else 1, plan, ctx, sign, shift_ok)
        if n.input[1] in ctx.inits and len(ctx.inits[n.input[1]].dims) == 2:
            return _weighted(n, 1, plan, ctx, sign, shift_ok)
    return f"'{n.name}' ({op}) is not a layer that can be rescaled"


def _weighted(n: onnx.NodeProto, axis: int, plan: List[_Step], ctx: _Context, sign: int,
              shift_ok: bool) -> Optional[str]:
    """Plan the rescaling of a Conv's or Gemm's output channels (weight along ``axis``,
    its bias)."""
    w = n.input[1]
    if w not in ctx.inits:
        return f"'{n.name}' has a computed weight"
    if ctx.uses.get(w, 0) != 1:
        return f"the weight of '{n.name}' is shared"
    channels = ctx.scale.size
    if channels > 1 and ctx.inits[w].dims[axis] != channels:
        return f"'{n.name}' has {ctx.inits[w].dims[axis]} output channels, not the site's {channels}"
    plan.append(_Step(w, "weight", n, axis=axis))
    # a Gemm whose beta is 0 ignores its C: no place for the reset's shift there
    shiftable = shift_ok and not (n.op_type == "Gemm" and float(walk.attr(n, "beta", 1.0)) == 0)
    if len(n.input) > 2 and n.input[2]:
        b = n.input[2]
        if b not in ctx.inits:
            return f"'{n.name}' has a computed bias"
        if ctx.uses.get(b, 0) != 1:
            return f"the bias of '{n.name}' is shared"
        plan.append(_Step(b, "bias", n, sign=sign, shiftable=shiftable))
    elif n.op_type in ("Conv", "Gemm"):
        plan.append(_Step("", "no-bias", n, sign=sign, shiftable=shiftable))
    return None


def _check_plan(plan: List[_Step], inits, scale: np.ndarray) -> Optional[str]:
    """Every constant once, and each broadcast one keeps a shape that broadcasts as before."""
    names = [p.name for p in plan if p.name]
    if len(set(names)) != len(names):
        return "a constant is used twice on the way"
    for p in plan:
        if p.kind in ("offset", "factor"):
            shape = tuple(inits[p.name].dims)
            try:
                new = np.broadcast_shapes(shape, scale.shape)
            except ValueError:
                return f"the constant '{p.name}' does not broadcast with the site's channels"
            if len(new) > len(shape) and len(shape) > 0:
                return f"the constant '{p.name}' ({list(shape)}) would change rank"
    return None


def _apply(t: onnx.TensorProto, p: _Step, scale: np.ndarray) -> None:
    arr = numpy_helper.to_array(t)
    a = arr.astype(np.float64)
    s = scale.reshape(-1)
    if p.kind in ("offset", "factor"):
        out = a * scale
    elif p.kind == "bias":              # [M] for a Conv; a Gemm's C broadcasts against [N, M]
        out = a * s
    else:
        shape = [1] * a.ndim
        shape[p.axis] = s.size
        out = a * s.reshape(shape)
    t.CopyFrom(numpy_helper.from_array(out.astype(arr.dtype), t.name))


def _shift(m: onnx.ModelProto, p: _Step, inits) -> None:
    """Subtract 1 from the current through ``p`` (after the rescaling)."""
    # a Gemm adds beta * C: its C moves by 1 / beta
    step = 1.0 / float(walk.attr(p.node, "beta", 1.0)) if p.node.op_type == "Gemm" else 1.0
    if p.kind == "no-bias":             # a Conv or Gemm without a bias gets one of -1
        w = inits[p.node.input[1]]
        channels = w.dims[0] if p.node.op_type == "Conv" or walk.attr(p.node, "transB", 0) \
            else w.dims[1]
        name = f"{fmt.RESERVED_PREFIX}unit/{p.node.name or p.node.output[0]}.bias"
        t = numpy_helper.from_array(np.full(channels, -step * p.sign, np.float32), name)
        m.graph.initializer.append(t)
        inits[name] = m.graph.initializer[-1]
        while len(p.node.input) < 2:
            p.node.input.append("")
        if len(p.node.input) == 2:
            p.node.input.append(name)
        else:
            p.node.input[2] = name
        return
    t = inits[p.name]
    arr = numpy_helper.to_array(t)
    # (a scalar offset took the channels' shape when it was rescaled)
    out = arr.astype(np.float64) - p.sign * (step if p.kind == "bias" else 1.0)
    t.CopyFrom(numpy_helper.from_array(out.astype(arr.dtype), t.name))


def exposed(view: fmt.SpikingView) -> set:
    """The tensors a spiking model exposes: its outputs, and the step's tensors they are."""
    return set(view.step_outputs) | set(view.step_outputs.values()) | \
        {o.name for o in view.model.graph.output}


def per_channel(value: np.ndarray, channels: int, rank: int) -> Optional[np.ndarray]:
    """``value`` (a scalar, or a [C, 1, ...] tensor of the site's ``rank`` that broadcasts
    to a site of C channels) as one float64 per channel, or None where it differs within a
    channel or lies along another axis (broadcasting aligns the right: a [C, 1] value of a
    [C, H, W] site runs along H)."""
    a = np.asarray(value, np.float64)
    if a.size == 1:
        return np.full(channels, float(a.reshape(())))
    if a.ndim == rank and a.shape[0] == channels and all(d == 1 for d in a.shape[1:]):
        return a.reshape(channels)
    return None


def summed_convolution(x: str, producers: Dict[str, onnx.NodeProto], readers: Dict[str, int],
                       inits, outputs=()) -> Optional[onnx.NodeProto]:
    """The convolution whose bias can take a per-channel constant added to ``x``: the Conv
    computing ``x``, or one computing an operand of the ``Add``/``Sum`` that computes ``x``
    (a residual block's last layer), read by nothing else and not an output (``outputs``);
    its bias a [C] initializer of its own. None where there is none."""
    def own_conv(name: str) -> Optional[onnx.NodeProto]:
        n = producers.get(name)
        if n is None or n.op_type != "Conv" or n.domain not in ("", "ai.onnx") \
                or name in outputs \
                or readers.get(name, 0) != 1 or len(n.input) < 3 or n.input[2] not in inits \
                or readers.get(n.input[2], 0) != 1 or len(inits[n.input[2]].dims) != 1:
            return None
        return n
    conv = own_conv(x)
    if conv is not None:
        return conv
    n = producers.get(x)
    if n is None or n.op_type not in ("Add", "Sum") or readers.get(x, 0) != 1 or x in outputs:
        return None
    return next((c for c in map(own_conv, n.input) if c is not None), None)


def offsets_into_biases(m: onnx.ModelProto) -> List[str]:
    """Fold each site's current offset (bias correction) that its own ``Add`` node adds (a
    residual sum's, whose layer could not take it at conversion) into the bias of a
    convolution that computes an operand of the sum, in place: the Add of a constant is an
    op onnxruntime cannot keep in its blocked layout, so it reordered the sum to NCHW and
    back, at every step (ResNet-20: 8 of its 19 sites). Exact in real arithmetic, float32
    rounding as the unit form's other moves. Returns the sites folded. For the deploy
    graph's copy of a model (a spiking model's offset node is part of its contract)."""
    view = fmt.read_spiking(m)
    inits = view.initializers
    nodes = walk.all_nodes(m.graph)
    producers = {o: n for n in nodes for o in n.output if o}
    readers = Counter(i for n in nodes for i in n.input)   # (nested graphs' nodes included)
    outputs = exposed(view)
    folded = []
    for site in view.info.sites:
        names = fmt.OffsetNames(site.name)
        add = next((n for n in nodes if n.name == names.node), None)
        if add is None or add.op_type != "Add" or len(add.input) != 2 \
                or add.input[1] not in inits or add.output[0] in outputs \
                or readers.get(add.output[0], 0) != 1 or add.input[0] in outputs:
            continue
        conv = summed_convolution(add.input[0], producers, readers, inits, outputs)
        if conv is None or conv.input[1] not in inits:
            continue
        bias = inits[conv.input[2]]
        b = numpy_helper.to_array(bias)
        off = per_channel(numpy_helper.to_array(inits[add.input[1]]), b.shape[0],
                          len(inits[conv.input[1]].dims) - 1)
        if off is None:
            continue
        bias.CopyFrom(numpy_helper.from_array((b.astype(np.float64) + off).astype(b.dtype),
                                              bias.name))
        reader = next(n for n in nodes if add.output[0] in n.input)
        reader.input[list(reader.input).index(add.output[0])] = add.input[0]
        for g in walk.subgraphs(m.graph):
            if any(n is add for n in g.node):
                g.node.remove(add)
                break
        folded.append(site.name)
    return folded

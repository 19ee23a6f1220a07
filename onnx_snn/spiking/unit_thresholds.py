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
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import walk
from . import format as fmt

#: ops that pass a positive per-channel scale from their output to their (first) input
_HOMOGENEOUS = {"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "Identity"} | \
    set(fmt.POOL_OPS.values())

# a plan: (initializer name, kind, axis) -- kind "axis" scales the initializer along ``axis``
# by the channel scale; kind "broadcast" multiplies it by the scale shaped like the threshold
_Plan = List[Tuple[str, str, int]]


def identity_convolutions(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, List[str]]:
    """A copy of ``model`` in which every site's spikes that an ``Add``, ``Sub`` or ``Sum``
    reads directly (a residual block's identity shortcut) pass a 1x1 convolution with the
    identity matrix on the way, so that the sum is of two convolutions, each of which can
    absorb the scales (:func:`unit_thresholds`, and the amplitude folding of :mod:`.binary`):
    the same values, for C multiply-adds per element and step. Returns it and the sites
    whose spikes got one. Only sites of 2 or more axes (channels first) get one."""
    m = copy.deepcopy(model)
    view = fmt.read_spiking(m)
    shapes = {s.name: list(s.shape) for s in view.info.sites}
    graphs = walk.subgraphs(m.graph)
    done: List[str] = []
    for g in graphs:
        for n in list(g.node):
            if not fmt.is_neuron_node(n):
                continue
            site = fmt.site_of_neuron_node(n.name)
            shape = shapes.get(site)
            if not shape or len(shape) < 2:
                continue
            y = n.output[0]
            readers = [r for gg in graphs for r in gg.node
                       if r.op_type in ("Add", "Sub", "Sum") and y in r.input]
            if not readers:
                continue
            c = int(shape[0])
            w = f"{fmt.RESERVED_PREFIX}unit/{site}.identity.weight"
            eye = np.eye(c, dtype=np.float32).reshape(c, c, *[1] * (len(shape) - 1))
            m.graph.initializer.append(numpy_helper.from_array(eye, w))
            for k, r in enumerate(readers):
                out = f"{fmt.RESERVED_PREFIX}unit/{site}.identity{k}"
                conv = onnx.helper.make_node("Conv", [y, w if k == 0 else _copy_weight(m.graph, w, k)],
                                             [out], name=out)
                graph = next(gg for gg in graphs if any(x is r for x in gg.node))
                graph.node.insert(list(graph.node).index(r), conv)
                for i, name in enumerate(r.input):
                    if name == y:
                        r.input[i] = out
            done.append(site)
    return m, done


def _copy_weight(g: onnx.GraphProto, w: str, k: int) -> str:
    """A second reader gets its own identity weight (each is rescaled on its own)."""
    src = next(t for t in g.initializer if t.name == w)
    name = f"{w}{k}"
    t = copy.deepcopy(src)
    t.name = name
    g.initializer.append(t)
    return name


def unit_thresholds(model: onnx.ModelProto) -> Tuple[onnx.ModelProto, Dict[str, str]]:
    """A copy of the spiking ``model`` in which every site that can take it has thresholds of
    1 (see the module docstring), and for every site "unit" or the reason it was kept."""
    m = copy.deepcopy(model)
    view = fmt.read_spiking(m)
    nodes = walk.all_nodes(m.graph)
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    uses: Dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
            uses[i] = uses.get(i, 0) + 1
    producers = {o: n for n in nodes for o in n.output}
    outputs = set(view.step_outputs) | set(view.step_outputs.values()) | \
        {o.name for o in m.graph.output}
    inits = view.initializers
    result: Dict[str, str] = {}
    neurons = {fmt.site_of_neuron_node(n.name): n for n in view.body if fmt.is_neuron_node(n)}
    for site in view.info.sites:
        th_name = fmt.param_name(site.name, "threshold")
        th = numpy_helper.to_array(inits[th_name]).astype(np.float64)
        if np.all(th == 1):
            result[site.name] = "unit"
            continue
        if not np.all(th > 0) or not np.all(np.isfinite(th)):
            result[site.name] = "kept: a threshold is not a positive number"
            continue
        node = neurons.get(site.name)
        if node is None:
            result[site.name] = "kept: its neuron node was not found"
            continue
        scale = 1.0 / th
        plan: _Plan = []
        reason = _walk(node.input[0], scale, plan, producers, consumers, uses, inits, outputs,
                       channels=scale.size)
        if reason is None:
            reason = _check_plan(plan, inits, scale)
        if reason is not None:
            result[site.name] = f"kept: {reason}"
            continue
        for name, kind, axis in plan:
            _apply(inits[name], kind, axis, scale)
        inits[th_name].CopyFrom(numpy_helper.from_array(
            np.ones_like(numpy_helper.to_array(inits[th_name])), th_name))
        v0_name = fmt.param_name(site.name, "v_init")
        if v0_name in inits:
            v0 = numpy_helper.to_array(inits[v0_name])
            inits[v0_name].CopyFrom(numpy_helper.from_array(
                (v0.astype(np.float64) * scale).astype(v0.dtype), v0_name))
        result[site.name] = "unit"
    return m, result


def _walk(t: str, scale: np.ndarray, plan: _Plan, producers, consumers, uses, inits,
          outputs, channels: int) -> Optional[str]:
    """Plan the rescaling of every layer that computes the tensor ``t`` (read only by the
    path to the site); a reason when one cannot take it."""
    n = producers.get(t)
    if n is not None and fmt.is_neuron_node(n):
        return f"it adds the spikes of '{fmt.site_of_neuron_node(n.name) or n.name}' directly"
    if t in outputs:
        return f"'{t}' is a graph output"
    if len(consumers.get(t, [])) != 1:
        return f"'{t}' is read by {len(consumers.get(t, []))} nodes"
    if n is None:
        return f"'{t}' is not computed by a layer that can be rescaled"
    op = n.op_type
    if op in _HOMOGENEOUS:
        return _walk(n.input[0], scale, plan, producers, consumers, uses, inits, outputs, channels)
    if op in ("Add", "Sub"):
        for i in n.input:
            if i in inits:
                plan.append((i, "broadcast", 0))
                continue
            reason = _walk(i, scale, plan, producers, consumers, uses, inits, outputs, channels)
            if reason:
                return reason
        return None
    if op in ("Mul", "Div"):
        const = [i for i in n.input if i in inits]
        other = [i for i in n.input if i not in inits]
        if len(const) != 1 or len(other) != 1 or (op == "Div" and n.input[1] not in inits):
            return f"'{n.name}' ({op}) is not a product with one constant"
        if op == "Mul":
            plan.append((const[0], "broadcast", 0))
            return None if uses.get(const[0], 0) == 1 else f"the constant of '{n.name}' is shared"
        return _walk(other[0], scale, plan, producers, consumers, uses, inits, outputs, channels)
    if op == "Conv":
        return _weighted(n, 0, plan, uses, inits, channels)
    if op == "Gemm":
        return _weighted(n, 0 if walk.attr(n, "transB", 0) else 1, plan, uses, inits, channels)
    if op == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
        return _weighted(n, 1, plan, uses, inits, channels)
    return f"'{n.name}' ({op}) is not a layer that can be rescaled"


def _weighted(n: onnx.NodeProto, axis: int, plan: _Plan, uses, inits, channels: int) -> Optional[str]:
    """Plan the rescaling of a Conv's or Gemm's output channels (weight along ``axis``,
    bias or ``C`` broadcast)."""
    w = n.input[1]
    if w not in inits:
        return f"'{n.name}' has a computed weight"
    if uses.get(w, 0) != 1:
        return f"the weight of '{n.name}' is shared"
    if channels > 1 and inits[w].dims[axis] != channels:
        return f"'{n.name}' has {inits[w].dims[axis]} output channels, not the site's {channels}"
    plan.append((w, "axis", axis))
    if len(n.input) > 2 and n.input[2]:
        b = n.input[2]
        if b not in inits:
            return f"'{n.name}' has a computed bias"
        if uses.get(b, 0) != 1:
            return f"the bias of '{n.name}' is shared"
        plan.append((b, "axis" if n.op_type == "Conv" else "bias", 0))
    return None


def _check_plan(plan: _Plan, inits, scale: np.ndarray) -> Optional[str]:
    """Every broadcast constant must keep a shape that broadcasts as before."""
    names = [p[0] for p in plan]
    if len(set(names)) != len(names):
        return "a constant is used twice on the way"
    for name, kind, _ in plan:
        if kind == "broadcast":
            shape = tuple(inits[name].dims)
            try:
                new = np.broadcast_shapes(shape, scale.shape)
            except ValueError:
                return f"the constant '{name}' does not broadcast with the site's channels"
            if len(new) > len(shape) and len(shape) > 0:
                return f"the constant '{name}' ({list(shape)}) would change rank"
    return None


def _apply(t: onnx.TensorProto, kind: str, axis: int, scale: np.ndarray) -> None:
    arr = numpy_helper.to_array(t)
    a = arr.astype(np.float64)
    if kind == "broadcast":
        out = a * scale
    elif kind == "bias":                # a Gemm's C: broadcast against [M, N]
        s = scale.reshape(-1)
        out = a * s if a.ndim else a * s          # a scalar C becomes one value per output
    else:
        s = scale.reshape(-1)
        shape = [1] * a.ndim
        shape[axis] = s.size
        out = a * s.reshape(shape)
    t.CopyFrom(numpy_helper.from_array(out.astype(arr.dtype), t.name))

"""Binary spikes: fold each site's spike amplitude into the weights of the layers it feeds.

Because all spikes of one site share one amplitude ``a``, ``Conv(a*s, W) = Conv(s, a*W)``:
after folding, neurons emit 0/1 spikes (-1/0/+1 from signed neurons) and the next layer only
accumulates (or subtracts) weights (ACs, no multiplies), the paper's point. The fold is applied where it is exact: the site's output may
pass through pooling and reshaping ops (which commute with a scalar) and must end in
Conv/ConvTranspose/Gemm/MatMul layers, as their data input, whose weights no other path uses.
A site that feeds anything else (a residual ``Add`` summing two differently scaled spike
trains, a graph output, ...) keeps its amplitude, i.e. an explicit multiply, and is reported.

Per-channel amplitudes (the default ``refined`` conversion) fold the same way, each into the
weights that read its channel: a Conv's (or ConvTranspose's) input channel ``c``, and for a
Gemm/MatMul behind a Flatten the ``F / C`` consecutive features of channel ``c`` (pooling and
reshaping keep NCHW's channel-major order; a Transpose on the way would not, and keeps the
amplitudes).
"""
from __future__ import annotations

import copy
import json
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import walk
from . import format as fmt

_PASS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape",
         "Transpose", "Squeeze", "Unsqueeze", "Identity"} | set(fmt.POOL_OPS.values())
_WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}


def fold_amplitudes(model: onnx.ModelProto, inplace: bool = False
                    ) -> Tuple[onnx.ModelProto, Dict[str, str]]:
    """Return a copy of ``model`` (``inplace``: the model itself) with foldable amplitudes
    moved into weights, and for every site either "folded" or the reason it was kept."""
    if not isinstance(model, onnx.ModelProto):
        from ..errors import UsageError
        raise UsageError(f"fold_amplitudes takes an onnx.ModelProto (onnx_snn.model_io."
                         f"load_model(path) reads one), not {type(model).__name__}")
    m = model if inplace else copy.deepcopy(model)
    view = fmt.read_spiking(m)
    nodes = walk.all_nodes(m.graph)
    counters = {id(n) for n in view.counters}
    consumers: Dict[str, List[onnx.NodeProto]] = {}
    for n in nodes:
        if id(n) in counters:
            continue  # the spike counter divides by the amplitude itself
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = view.initializers
    weight_uses: Dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            weight_uses[i] = weight_uses.get(i, 0) + 1
    outputs = set(view.step_outputs) | set(view.step_outputs.values())
    consts = walk.constant_tensors(walk.subgraphs(m.graph))
    producers = {o: n for n in nodes for o in n.output}
    result: Dict[str, str] = {}
    for site in view.info.sites:
        targets, reason, passed = _targets(site.output, consumers, outputs)
        amp_name = fmt.param_name(site.name, "amplitude")
        amp = numpy_helper.to_array(inits[amp_name]).astype(np.float64).reshape(-1)
        if reason is None and amp.size > 1:
            reason = _per_channel_reason(passed, consts, producers)
        scales = {}
        if reason is None:
            for node in targets:
                w = node.input[_WEIGHTED[node.op_type]]
                if w not in inits:
                    reason = f"'{node.name}' has a computed weight"
                elif weight_uses.get(w, 0) > 1:
                    reason = f"the weight of '{node.name}' is shared"
                elif node.op_type == "Gemm" and walk.attr(node, "transA", 0):
                    reason = f"'{node.name}' transposes its data input"
                elif node.op_type == "MatMul" and amp.size > 1 and \
                        not _flattened(producers.get(node.input[0])):
                    reason = (f"'{node.name}' (MatMul) may contract an axis other than the "
                              "channels; per-channel amplitudes fold into it behind a Flatten")
                else:
                    scale = _weight_scale(node, tuple(inits[w].dims), amp)
                    if isinstance(scale, str):
                        reason = scale
                    scales[node.name] = scale
                if reason:
                    break
        if reason is not None:
            result[site.name] = f"kept: {reason}"
            continue
        for node in targets:
            w = inits[node.input[_WEIGHTED[node.op_type]]]
            arr = numpy_helper.to_array(w)
            w.CopyFrom(numpy_helper.from_array(
                (arr.astype(np.float64) * scales[node.name]).astype(arr.dtype), w.name))
        inits[amp_name].CopyFrom(numpy_helper.from_array(np.ones_like(numpy_helper.to_array(inits[amp_name])), amp_name))
        result[site.name] = "folded"
    sites = json.loads(fmt.metadata(m)[fmt.META_SITES])
    for s in sites:
        if result.get(s["name"]) == "folded":
            if "folded_amplitude" not in s:      # folded before: its record stays
                s["folded_amplitude"] = s["amplitude"]
            s["amplitude"] = 1.0
    fmt.set_metadata(m, {fmt.META_SITES: json.dumps(sites), fmt.META_BINARY: json.dumps(result)})
    return m, result


def _weight_scale(node: onnx.NodeProto, shape, amp: np.ndarray):
    """The array that multiplies ``node``'s weight (of ``shape``) so that it absorbs the
    amplitudes ``amp`` (one, or one per channel) of its data input; a reason when it cannot."""
    if amp.size == 1:
        return float(amp[0])
    c = amp.size
    if node.op_type in ("Conv", "ConvTranspose"):
        group = walk.attr(node, "group", 1)
        if node.op_type == "Conv":       # W [M, C/group, k...]: input channel c of group g
            m, per = shape[0], shape[1]
            if per * group != c:
                return f"'{node.name}' reads {per * group} channels, not the site's {c}"
            out = np.empty((m, per), np.float64)
            for g in range(group):
                rows = slice(g * m // group, (g + 1) * m // group)
                out[rows] = amp[g * per:(g + 1) * per]
            return out.reshape(m, per, *[1] * (len(shape) - 2))
        if shape[0] != c:                # ConvTranspose: W [C, M/group, k...]
            return f"'{node.name}' reads {shape[0]} channels, not the site's {c}"
        return amp.reshape(c, *[1] * (len(shape) - 1))
    trans_b = node.op_type == "Gemm" and walk.attr(node, "transB", 0)
    if len(shape) != 2:
        return f"'{node.name}' has a {len(shape)}-D weight"
    features = shape[1] if trans_b else shape[0]
    if features % c:
        return f"'{node.name}' reads {features} features, not a multiple of the site's {c} channels"
    per_feature = np.repeat(amp, features // c)       # channel-major, as NCHW flattens
    return per_feature[None, :] if trans_b else per_feature[:, None]


def _flattened(producer: Optional[onnx.NodeProto]) -> bool:
    """Whether ``producer`` is a Flatten at axis 1 (its output 2-D: one feature axis)."""
    return producer is not None and producer.op_type == "Flatten" and \
        walk.attr(producer, "axis", 1) == 1


def _value(name: str, consts) -> Optional[np.ndarray]:
    t = consts.get(name) if name else None
    return None if t is None else numpy_helper.to_array(t).reshape(-1)


def _is_batch_of(t: str, data: str, producers, consts) -> bool:
    """Whether the 1-element tensor ``t`` is ``data``'s dim 0, as exporters compute it:
    Shape(data)[0] through Gather / Slice / Shape(start=0, end=1), Unsqueeze, Cast."""
    n = producers.get(t)
    if n is None:
        return False
    if n.op_type in ("Unsqueeze", "Squeeze", "Cast", "Identity"):
        return _is_batch_of(n.input[0], data, producers, consts)
    if n.op_type == "Shape":
        return n.input[0] == data and walk.attr(n, "start", 0) == 0 and walk.attr(n, "end", 0) == 1
    src = producers.get(n.input[0]) if n.input else None
    from_shape = src is not None and src.op_type == "Shape" and src.input[0] == data and \
        walk.attr(src, "start", 0) == 0
    if n.op_type == "Gather" and from_shape:
        idx = _value(n.input[1], consts)
        return idx is not None and idx.size == 1 and int(idx[0]) == 0 and walk.attr(n, "axis", 0) == 0
    if n.op_type == "Slice" and from_shape:
        starts, ends = _value(n.input[1], consts), _value(n.input[2], consts)
        return starts is not None and ends is not None and starts.size == 1 and \
            int(starts[0]) == 0 and int(ends[0]) == 1
    return False


def _keeps_batch(n: onnx.NodeProto, consts, producers) -> bool:
    """Whether ``n`` (Reshape, Squeeze, Unsqueeze) keeps axis 0 as the batch: a Reshape to a
    shape whose first entry copies it (a constant ``0``, allowzero off, or the data's own
    dim 0 as exporters compute it), a (Un)Squeeze of other axes."""
    def value(i):
        return _value(n.input[i], consts) if len(n.input) > i else None
    if n.op_type == "Reshape":
        if walk.attr(n, "allowzero", 0):
            return False
        shape = value(1)
        if shape is not None:
            return shape.size > 0 and int(shape[0]) == 0
        cat = producers.get(n.input[1])
        return cat is not None and cat.op_type == "Concat" and \
            _is_batch_of(cat.input[0], n.input[0], producers, consts)
    axes = walk.attr(n, "axes")
    if axes is None:
        v = value(1)
        axes = None if v is None else [int(a) for a in v]
    return axes is not None and all(a > 0 for a in axes)


def _per_channel_reason(passed: List[onnx.NodeProto], consts, producers) -> Optional[str]:
    """Why per-channel amplitudes cannot pass the ops ``passed`` on the way to the weighted
    layers (None when they can): only ops that keep the batch axis and the channel-major
    order may lie there (then a Conv's input channel, or a Gemm's block of F / C features, is
    the site's channel)."""
    for n in passed:
        if n.op_type == "Transpose":
            return f"per-channel amplitudes pass '{n.name}' (Transpose), which reorders channels"
        if n.op_type == "Flatten" and walk.attr(n, "axis", 1) != 1:
            return f"'{n.name}' flattens at axis {walk.attr(n, 'axis', 1)}, not 1"
        if n.op_type in ("Reshape", "Squeeze", "Unsqueeze") and not _keeps_batch(n, consts, producers):
            return (f"per-channel amplitudes pass '{n.name}' ({n.op_type}), which may move the "
                    "batch axis (only a Reshape whose shape starts with 0 or the batch, or a "
                    "(Un)Squeeze of other axes, is followed)")
    return None


def _targets(tensor: str, consumers, outputs) -> Tuple[List[onnx.NodeProto], Optional[str],
                                                        List[onnx.NodeProto]]:
    """Weighted layers reached from ``tensor`` through pass-through ops (and the ops passed),
    or a reason not to fold."""
    found, passed, frontier, seen = [], [], [tensor], set()
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in outputs:
            return [], "it is a graph output", passed
        for n in consumers.get(t, []):
            if n.op_type in ("Shape", "Size"):
                continue  # Shape reads the shape, not the values
            if n.op_type in _PASS:
                if n.input[0] != t:
                    return [], f"'{n.name}' uses it as a shape", passed
                passed.append(n)
                frontier.append(n.output[0])
            elif n.op_type in _WEIGHTED and n.input[0] == t:
                found.append(n)
            else:
                return [], f"it feeds '{n.name}' ({n.op_type}); kept as an explicit multiply", passed
    if not found:
        return [], "no weighted layer follows", passed
    return found, None, passed

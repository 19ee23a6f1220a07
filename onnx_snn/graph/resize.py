"""Resize in one form: constant scales or sizes of every axis, no ``axes`` attribute.

Exporters write a resize to a fixed size in forms the rest of the converter cannot read as
constants:

* ``F.interpolate(x, size=(h, w))`` with a free batch: the sizes are computed,
  ``Concat(Shape(x)[0:2], [h, w])`` (both PyTorch exporters; the dynamo one slices with
  Shape's ``start``/``end``);
* opset 18's ``axes`` attribute: scales or sizes of the listed axes only.

This pass reads such sizes entry by entry (a constant, or "axis j of tensor t") and writes the
same resize as constant full-rank sizes when every entry is a constant, else as constant
scales: 1 where the size is the input's own, ``h / H`` where the input's H is known. A
float32 scale is kept only where onnxruntime, run on a small index ramp, resizes with it
exactly as with the sizes (same output size, same positions read); otherwise the node is left
and named by the support check.
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto
from onnx import helper as oh

from .ir import const_value, is_empty, rank
from .passes import PassResult, graph_pass

#: one entry of a shape vector: a constant, or (tensor, axis): that tensor's size on that axis
Entry = Union[int, Tuple[gs.Tensor, int]]


def _ints(t) -> Optional[List[int]]:
    v = const_value(t)
    return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]


def _slice_bounds(n: int, start: int, end: int, step: int = 1) -> range:
    """The indices ONNX's Slice takes from ``n`` values: negative bounds count from the end,
    then they are clamped to [0, n] (to [-1, n - 1] for a negative step)."""
    start, end = (start + n if start < 0 else start), (end + n if end < 0 else end)
    lo, hi = (0, n) if step > 0 else (-1, n - 1)
    return range(min(max(start, lo), hi), min(max(end, lo), hi), step)


def shape_entries(t, depth: int = 0) -> Optional[List[Entry]]:
    """The entries of the 1-D integer tensor ``t`` as constants or references to another
    tensor's axis, read through Shape, Slice, Gather, Concat, Cast, Unsqueeze, Squeeze,
    Reshape and Identity; None when some entry is computed otherwise."""
    v = const_value(t)
    if v is not None:
        return [int(a) for a in np.asarray(v).reshape(-1)]
    if depth > 16 or not t.inputs:
        return None
    node = t.inputs[0]
    ins = list(node.inputs)
    if node.op == "Shape":
        r = rank(ins[0])
        if r is None:
            return None
        start = int(node.attrs.get("start", 0))
        end = int(node.attrs.get("end", r))
        return [(ins[0], i) for i in _slice_bounds(r, start, end)]
    if node.op in ("Cast", "Identity", "Unsqueeze", "Squeeze", "Reshape"):
        return shape_entries(ins[0], depth + 1)        # 1-D or scalar in, 1-D out
    if node.op == "Concat":
        parts = [shape_entries(i, depth + 1) for i in ins]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if node.op == "Gather" and int(node.attrs.get("axis", 0)) == 0:
        data, idx = shape_entries(ins[0], depth + 1), _ints(ins[1])
        if data is None or idx is None or not all(-len(data) <= i < len(data) for i in idx):
            return None
        return [data[i] for i in idx]
    if node.op == "Slice" and len(ins) >= 3:
        data = shape_entries(ins[0], depth + 1)
        starts, ends = _ints(ins[1]), _ints(ins[2])
        axes = _ints(ins[3]) if len(ins) > 3 and not is_empty(ins[3]) else [0]
        steps = _ints(ins[4]) if len(ins) > 4 and not is_empty(ins[4]) else [1]
        if data is None or None in (starts, ends, axes, steps) or len(starts) != 1 \
                or axes not in ([0], [-1]) or steps[0] == 0:
            return None
        return [data[i] for i in _slice_bounds(len(data), starts[0], ends[0], steps[0])]
    return None


def _same_size(a: Entry, x: gs.Tensor, axis: int) -> bool:
    """Whether entry ``a`` is certainly the size of ``x`` on ``axis``."""
    dims = list(x.shape) if x.shape is not None else None
    mine = dims[axis] if dims is not None else None
    if isinstance(a, int):
        return isinstance(mine, int) and mine == a
    t, j = a
    if t is x and j == axis:
        return True
    theirs = t.shape[j] if t.shape is not None and j < len(t.shape) else None
    return (isinstance(mine, int) and mine == theirs) or (
        isinstance(mine, str) and bool(mine) and mine == theirs)


def _scale_for(size: int, dim: int) -> Optional[float]:
    """A float32 scale with which onnxruntime makes ``size`` positions of ``dim``: size / dim
    (its own scale for sizes), moved up a few float32 steps where the product truncates
    one short."""
    s = np.float32(size) / np.float32(dim)
    for _ in range(4):
        if int(np.float32(s) * np.float32(dim)) == size:
            return float(s)
        s = np.nextafter(np.float32(s), np.float32(np.inf))
    return None


def _same_in_onnxruntime(attrs: dict, dims: List[int], sizes: List[int], scales: List[float],
                         opset: int) -> bool:
    """Whether onnxruntime resizes an index ramp of shape ``dims`` to ``sizes`` exactly as it
    does by ``scales`` (bit for bit in the nearest modes, to float32 rounding in linear)."""
    import onnxruntime as ort

    def run(by_scales: bool) -> np.ndarray:
        const = (oh.make_tensor("s", TensorProto.FLOAT, [len(scales)], scales) if by_scales
                 else oh.make_tensor("s", TensorProto.INT64, [len(sizes)], sizes))
        ins = ["x", "", "s"] if by_scales else ["x", "", "", "s"]
        node = oh.make_node("Resize", ins, ["y"], **attrs)
        g = oh.make_graph([node], "r", [oh.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)], [const])
        m = oh.make_model(g, opset_imports=[oh.make_opsetid("", max(opset, 13))])
        m.ir_version = 8
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        ramp = np.arange(int(np.prod(dims)), dtype=np.float32).reshape(dims)
        return sess.run(None, {"x": ramp})[0]

    try:
        a, b = run(False), run(True)
    except Exception:      # noqa: BLE001 - an attribute onnxruntime refuses: leave the node
        return False
    if a.shape != b.shape:
        return False
    if attrs.get("mode", "nearest") == "nearest":
        return bool(np.array_equal(a, b))
    return bool(np.allclose(a, b, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(a).max()))))


def _attrs(node: gs.Node) -> dict:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in node.attrs.items()
            if k != "axes"}


def _per_axis(node: gs.Node, r: int) -> Tuple[Optional[list], Optional[list], str]:
    """(scales, entries, why not): the Resize's scales or size entries for every axis of its
    rank-``r`` input (axes it does not list keep scale 1 / their size)."""
    ins = list(node.inputs)
    axes = node.attrs.get("axes")
    scales = _ints_or_floats(ins[2]) if len(ins) > 2 and not is_empty(ins[2]) else None
    sizes = shape_entries(ins[3]) if len(ins) > 3 and not is_empty(ins[3]) else None
    if scales is not None and len(scales) == 0:
        scales = None
    if sizes is not None and len(sizes) == 0:
        sizes = None
    given = scales if scales is not None else sizes
    if given is None:
        return None, None, "its scales or sizes are computed from more than shapes and constants"
    listed = [int(a) % r for a in axes] if axes is not None else list(range(r))
    if len(listed) != len(given) or len(set(listed)) != len(listed):
        return None, None, f"its {len(given)} scales/sizes do not match the axes {listed}"
    x = ins[0]
    if scales is not None:
        full = [1.0] * r
        for a, s in zip(listed, scales):
            full[a] = float(s)
        return full, None, ""
    full = [(x, a) for a in range(r)]
    for a, e in zip(listed, sizes):
        full[a] = e
    return None, full, ""


def _ints_or_floats(t) -> Optional[list]:
    v = const_value(t)
    return None if v is None else [float(a) for a in np.asarray(v).reshape(-1)]


@graph_pass("resize-constant-form")
def resize_constant_form(graph: gs.Graph, result: PassResult) -> None:
    """Rewrite computed sizes and the ``axes`` attribute into constant full-rank scales or
    sizes (see the module's docstring); Resizes already in that form are left as they are."""
    opset = int(getattr(graph, "opset", None) or 13)
    for node in list(graph.nodes):
        if node.op != "Resize" or not node.inputs:
            continue
        ins = list(node.inputs)
        has_axes = node.attrs.get("axes") is not None
        const_sizes = len(ins) > 3 and const_value(ins[3]) is not None
        scales_value = const_value(ins[2]) if len(ins) > 2 else None
        const_scales = scales_value is not None and scales_value.size > 0
        if not has_axes and (const_sizes or const_scales):
            continue                                   # the form the converter reads
        policy = node.attrs.get("keep_aspect_ratio_policy", "stretch")
        policy = policy.decode() if isinstance(policy, bytes) else policy
        if policy != "stretch":
            result.skip(node, f"keep_aspect_ratio_policy '{policy}'")
            continue
        ctm = node.attrs.get("coordinate_transformation_mode", "half_pixel")
        if (ctm.decode() if isinstance(ctm, bytes) else ctm) == "tf_crop_and_resize":
            result.skip(node, "in mode tf_crop_and_resize")
            continue
        x = ins[0]
        r = rank(x)
        if r is None:
            result.skip(node, "its input's rank is not known")
            continue
        scales, entries, why = _per_axis(node, r)
        if why:
            result.skip(node, why)
            continue
        label = node.name or node.outputs[0].name
        # no roi in the new form: only tf_crop_and_resize reads it (left alone above), and one
        # given for some axes would not fit the full-rank form
        if scales is None:
            dims = list(x.shape) if x.shape is not None else [None] * r
            if all(isinstance(e, int) for e in entries):
                new = [x, gs.Variable.empty(), gs.Variable.empty(),
                       gs.Constant(f"{label}_sizes", np.array(entries, np.int64))]
                what = f"constant sizes {entries}"
            else:
                scales, why = _scales_from_sizes(node, entries, x, dims, opset)
                if why:
                    result.skip(node, why)
                    continue
        if scales is not None:
            new = [x, gs.Variable.empty(), gs.Constant(f"{label}_scales", np.array(scales, np.float32))]
            what = f"constant scales {[float(np.float32(s)) for s in scales]}"
        node.inputs.clear()
        node.inputs.extend(new)
        node.attrs.pop("axes", None)
        result.changed += 1
        given = "scales" if const_scales else "sizes" if const_sizes else "computed sizes"
        result.notes.append(f"Resize '{node.name}': {given}{' of some axes' if has_axes else ''}"
                            f" written as {what}")
    for node in graph.nodes:
        if node.op == "Resize" and int(node.attrs.get("antialias", 0)) and _upsamples(node):
            # ONNX filters only when it shrinks an axis: the same resize without it
            node.attrs.pop("antialias")
            result.changed += 1
            result.notes.append(f"Resize '{node.name}': antialias dropped (it enlarges every "
                                "axis, where antialiasing changes nothing)")
    result.records.extend(result.skipped)
    graph.cleanup()


def _upsamples(node: gs.Node) -> bool:
    """Whether a Resize in constant form (full-rank constant scales, or constant sizes of an
    input of known lengths) shrinks no axis."""
    ins = list(node.inputs)
    scales = const_value(ins[2]) if len(ins) > 2 and not is_empty(ins[2]) else None
    if scales is not None and scales.size:
        return bool(np.all(np.asarray(scales, np.float64) >= 1.0))
    sizes = const_value(ins[3]) if len(ins) > 3 and not is_empty(ins[3]) else None
    dims = list(ins[0].shape) if ins and ins[0].shape is not None else None
    if sizes is None or dims is None or len(dims) != sizes.size:
        return False
    return all(isinstance(d, int) and int(s) >= d for s, d in zip(sizes.reshape(-1), dims))


def _scales_from_sizes(node, entries, x, dims, opset):
    """(full-rank scales, None) that resize ``x`` to the sized ``entries`` exactly as
    onnxruntime does, else (None, why not)."""
    scales, test_dims, test_sizes = [], [], []
    for a, e in enumerate(entries):
        if not isinstance(e, int) and e[0].shape is not None and e[1] < len(e[0].shape) \
                and isinstance(e[0].shape[e[1]], int):
            e = int(e[0].shape[e[1]])        # a known size of another tensor: a constant
        if _same_size(e, x, a):
            scales.append(1.0)
            test_dims.append(1)
            test_sizes.append(1)
            continue
        if not isinstance(e, int):
            return None, (f"its size on axis {a} is read from the shape of '{e[0].name}', "
                          "which is not certainly the input's")
        if not isinstance(dims[a], int) or dims[a] <= 0:
            return None, f"its input's size on axis {a} is not known, so no constant scale gives {e}"
        s = _scale_for(e, dims[a])
        if s is None:
            return None, f"no float32 scale makes {e} of {dims[a]} on axis {a}"
        scales.append(s)
        test_dims.append(dims[a])
        test_sizes.append(e)
    if not _same_in_onnxruntime(_attrs(node), test_dims, test_sizes, scales, opset):
        return None, ("no constant scale resizes as the sizes do "
                      f"({test_sizes} of {test_dims}); export with scale_factor instead of size")
    return scales, None


"""One pass: an image input of raw uint8 pixels becomes a float32 input of the same values.

Some exports take the image as it comes from a file, ``[N, C, H, W]`` uint8, and convert it
inside the graph (``Cast`` to float, then the model's own scaling and normalization): an
end-to-end PyTorch module with its transforms, a TF serving signature. Spiking neurons and the
calibration take float32, so such an input (every reader of it a Cast to float32) becomes a
float32 input that holds the same pixel values, 0-255, and its Casts go. Data is then fed as
raw pixels: a named dataset's [0, 1] images times 255 (``PIXELS_255``, the preprocessing the
spiking model records), arrays as they are.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, numpy_helper

from ..notes import interface
from .passes import PassResult, graph_pass
from .sources import constant_names
from .walk import constant_tensors

#: the preprocessing that feeds [0, 1] images as raw 0-255 pixels: (x - 0) / (1 / 255)
PIXELS_255 = {"mean": [0.0], "std": [1.0 / 255.0]}


def is_pixels_255(preprocess) -> bool:
    return bool(preprocess) and list(preprocess.get("mean", [])) == [0.0] and \
        len(preprocess.get("std", [])) == 1 and abs(preprocess["std"][0] * 255.0 - 1.0) < 1e-9


#: ops that move or pick values without computing on them: a uint8 input may pass through
#: them (``x.permute(0, 3, 1, 2).float()`` exports Transpose, then Cast) before its Cast
_LAYOUT_OPS = {"Transpose", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity",
               "Slice", "Split", "Gather", "DepthToSpace", "SpaceToDepth", "Expand", "Tile"}


def _to_float_readers(t: gs.Variable):
    """(the layout tensors between ``t`` and its Casts to float32, the Casts), or (None, the
    first node that reads the values as integers)."""
    layout, casts, todo = [], [], [t]
    while todo:
        v = todo.pop()
        for r in v.outputs:
            if r.op == "Cast" and int(r.attrs.get("to", 0)) == TensorProto.FLOAT:
                casts.append(r)
            elif r.op in _LAYOUT_OPS and r.inputs[0] is v and \
                    not any(x is v for x in r.inputs[1:]):     # the data, not a shape or index
                outs = [o for o in r.outputs if o.name]
                layout += outs
                todo += outs
            else:
                return None, r
    return (layout, casts) if casts else (None, next(iter(t.outputs)))


@graph_pass("uint8-input-to-float")
def uint8_input_to_float(graph: gs.Graph, result: PassResult) -> None:
    """A uint8 graph input read only by Casts to float32 (directly or through layout ops,
    :data:`_LAYOUT_OPS`) becomes a float32 input of the same values (the Casts become
    Identity, which the next pass removes; the layout ops then move float32 values);
    ``result.records`` names each such input. A uint8 input read otherwise is left (and
    refused, named)."""
    outputs = {o.name for o in graph.outputs}
    for t in graph.inputs:
        if t.dtype is None or np.dtype(t.dtype) != np.uint8 or not t.outputs:
            continue
        layout, casts = _to_float_readers(t)
        if layout is None:
            result.skip(casts, f"it reads the uint8 input '{t.name}' as integers")
            continue
        if any(v.name in outputs for v in layout):   # an output of uint8 values stays so
            result.skip(casts[0], f"the uint8 input '{t.name}' is also an output")
            continue
        t.dtype = np.float32
        for v in layout:
            v.dtype = np.float32
        for r in casts:
            r.op, r.attrs = "Identity", {}
        result.changed += 1
        result.records.append(t.name)
        result.notes.append(interface(
            f"input '{t.name}' takes uint8 pixels: the spiking model takes them as float32 of "
            "the same values (0-255); named datasets are fed as raw pixels"))


#: elementwise ops by a constant that normalize an input (x / 255, (x - mean) / std)
_SCALING_OPS = ("Sub", "Add", "Mul", "Div")


def _scaling_chain(model):
    """(the one float data input's name, the chain of constant Sub/Add/Mul/Div nodes it goes
    through first, in order, each with its constant's name and whether the data is its first
    operand); None for a model of several data inputs or a non-float one."""
    g = model.graph
    consts = constant_names(g)
    data = [i for i in g.input if i.name not in consts]
    if len(data) != 1 or data[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        return None
    readers = {}
    for n in g.node:
        for x in n.input:
            readers.setdefault(x, []).append(n)
    chain, t = [], data[0].name
    while len(readers.get(t, [])) == 1:
        n = readers[t][0]
        other = [x for x in n.input if x != t]
        if n.op_type not in _SCALING_OPS or len(other) != 1 or other[0] not in consts:
            break
        chain.append((n, other[0], n.input[0] == t))
        t = n.output[0]
    return data[0].name, chain


def input_scaling(model) -> Optional[str]:
    """How the model scales its (one, float) data input itself right away: the chain of
    constant Sub/Add/Mul/Div it applies first (``x / 255``, ``(x - mean) / std``), as
    'Sub, Div after input 'x''; None when it applies none."""
    return _scaling_text(_scaling_chain(model))


def _scaling_text(found) -> Optional[str]:
    if not found or not found[1]:
        return None
    name, chain = found
    return f"{', '.join(n.op_type for n, _, _ in chain)} after input '{name}'"


#: a model whose own first scaling multiplies its image input by at most this (x / 255,
#: (x - 73) / 90 as Keras's Rescaling and Normalization layers adapted on raw pixels write
#: it) and maps 0-255 into [-PIXELS_255_RANGE, PIXELS_255_RANGE] takes 0-255 pixels: a model
#: trained on [0, 1] images normalizes them with a gain of 1 or more ((x - 0.286) / 0.353)
PIXELS_255_GAIN = 1.0 / 10.0
PIXELS_255_RANGE = 10.0


def scales_raw_pixels(model) -> Optional[str]:
    """Why the model takes raw 0-255 pixels, read from the affine map ``g x + b`` its first
    constant Sub/Add/Mul/Div apply to its one float image input (:func:`input_scaling`),
    each constant taken at its median (per-channel or per-pixel constants; a pixel a Keras
    Normalization divides by epsilon does not decide): ``|g|`` at most :data:`PIXELS_255_GAIN`
    and 0-255 mapped into +-:data:`PIXELS_255_RANGE` ("its first operations (Mul) multiply
    input 'x' by 1/255"). None otherwise: no such chain, a larger gain, another range, a
    division of a constant by the data, a constant it cannot read, or an input of fewer than
    three axes (not an image: a table's features may be scaled by anything)."""
    return _raw_pixels_why(model, _scaling_chain(model))


def own_scaling(model) -> dict:
    """What the model's own first scaling says about its inputs, read once, as
    ``resolve_data``'s keywords: ``scaling`` (:func:`input_scaling`) and ``raw_pixels``
    (:func:`scales_raw_pixels`)."""
    found = _scaling_chain(model)
    return {"scaling": _scaling_text(found), "raw_pixels": _raw_pixels_why(model, found)}


def _raw_pixels_why(model, found) -> Optional[str]:
    if not found or not found[1]:
        return None
    name, chain = found
    vi = next(i for i in model.graph.input if i.name == name).type.tensor_type
    if not vi.HasField("shape") or len(vi.shape.dim) < 3:
        return None
    values = constant_tensors([model.graph])
    g, b = 1.0, 0.0
    for n, c, data_first in chain:
        t = values.get(c)
        if t is None:
            return None
        v = numpy_helper.to_array(t).astype(np.float64)
        if v.size == 0 or not np.all(np.isfinite(v)):
            return None
        m = float(np.median(v))
        if n.op_type == "Add":
            b += m
        elif n.op_type == "Sub":
            g, b = (g, b - m) if data_first else (-g, m - b)
        elif n.op_type == "Mul":
            g, b = g * m, b * m
        elif data_first and m != 0:                   # x / c
            g, b = g / m, b / m
        else:                                         # c / x: not affine
            return None
    lo, hi = sorted((b, 255.0 * g + b))
    if not (0 < abs(g) <= PIXELS_255_GAIN and -PIXELS_255_RANGE <= lo and hi <= PIXELS_255_RANGE):
        return None
    ops = ", ".join(n.op_type for n, _, _ in chain)
    return f"its first operations ({ops}) multiply input '{name}' by 1/{1.0 / abs(g):.4g}"


__all__ = ["uint8_input_to_float", "PIXELS_255", "is_pixels_255", "input_scaling",
           "scales_raw_pixels", "own_scaling", "PIXELS_255_GAIN"]

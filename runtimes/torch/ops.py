"""ONNX operators the spiking format carries, as torch functions.

Each entry takes the node's parsed attributes and its input tensors (None for an omitted
optional input) and returns a list of outputs. Only what exporters put into CNNs (and what
the converter emits) is here; anything else is refused when the network is built, naming
the node.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from onnx_snn.graph.ir import auto_pads

_DTYPES = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16, TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32, TensorProto.INT16: torch.int16, TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8, TensorProto.BOOL: torch.bool,
}


def parse_attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.type == a.TENSOR:
            v = torch.from_numpy(numpy_helper.to_array(v).copy())
        elif isinstance(v, bytes):
            v = v.decode()
        out[a.name] = v
    return out


def _ints(t) -> List[int]:
    return [int(v) for v in (t.tolist() if isinstance(t, torch.Tensor) else t)]


def _sym_pads(pads, n):
    """ONNX pads [b1..bn, e1..en] -> (symmetric torch padding or None, F.pad list)."""
    if not pads:
        return [0] * n, None
    begin, end = list(pads[:n]), list(pads[n:])
    if begin == end:
        return begin, None
    fpad = []
    for b, e in zip(reversed(begin), reversed(end)):
        fpad += [b, e]
    return [0] * n, fpad


def _auto_pad(a, x, kernel, strides, dilations):
    mode = a.get("auto_pad", "NOTSET")
    if mode in ("NOTSET", "VALID"):
        return a.get("pads")
    return auto_pads(mode, x.shape[2:], kernel, strides, dilations)


def conv(a, x, w, b=None):
    n = w.dim() - 2
    strides = a.get("strides", [1] * n)
    dil = a.get("dilations", [1] * n)
    pads = _auto_pad(a, x, list(w.shape[2:]), strides, dil)
    pad, fpad = _sym_pads(pads, n)
    if fpad:
        x = F.pad(x, fpad)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    return [fn(x, w, b, stride=strides, padding=pad, dilation=dil, groups=a.get("group", 1))]


def conv_transpose(a, x, w, b=None):
    n = w.dim() - 2
    strides = list(a.get("strides") or [1] * n)
    dil = list(a.get("dilations") or [1] * n)
    out_pad = list(a.get("output_padding") or [0] * n)
    group = a.get("group", 1)
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    mode = a.get("auto_pad", "NOTSET")
    pads = list(a.get("pads") or [0] * 2 * n)
    out_shape = list(a.get("output_shape") or [])[-n:]
    if out_shape or mode in ("SAME_UPPER", "SAME_LOWER"):
        if not out_shape:
            out_shape = [x.shape[2 + i] * strides[i] for i in range(n)]
        pads = [0] * 2 * n
        for i in range(n):
            total = (strides[i] * (x.shape[2 + i] - 1) + out_pad[i] + (w.shape[2 + i] - 1) * dil[i] + 1
                     - out_shape[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[n + i] = (small, big) if mode == "SAME_UPPER" else (big, small)
    elif mode == "VALID":
        pads = [0] * 2 * n
    begin, end = pads[:n], pads[n:]
    if begin == end and min(begin) >= 0 and all(p < max(s, d) for p, s, d in zip(out_pad, strides, dil)):
        return [fn(x, w, b, stride=strides, padding=begin, output_padding=out_pad, groups=group,
                   dilation=dil)]
    # the full transposed convolution, then crop the pads (negative crops and output_padding
    # are positions no input reaches: zeros, plus the bias)
    y = fn(x, w, None, stride=strides, groups=group, dilation=dil)
    fpad = []
    for i in reversed(range(n)):
        fpad += [-begin[i], out_pad[i] - end[i]]
    y = F.pad(y, fpad)
    if b is not None:
        y = y + b.reshape([-1] + [1] * n)
    return [y]


def gemm(a, x, w, c=None):
    if a.get("transA", 0):
        x = x.t()
    y = F.linear(x, w) if a.get("transB", 0) else x @ w
    alpha, beta = a.get("alpha", 1.0), a.get("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


def _pool(a, x, kind):
    kernel = list(a["kernel_shape"])
    n = len(kernel)
    strides = list(a.get("strides") or [1] * n)
    dil = list(a.get("dilations") or [1] * n)
    pads = list(_auto_pad(a, x, kernel, strides, dil) or [0] * 2 * n)
    ceil = bool(a.get("ceil_mode", 0))
    include = bool(a.get("count_include_pad", 0))
    begin, end = pads[:n], pads[n:]
    # torch's own padding: symmetric, at most half the kernel, no dilated averages
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel)):
        if kind == "max":
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
            return [fn(x, kernel, strides, begin, dil, ceil_mode=ceil)]
        if dil == [1] * n:
            fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[n]
            return [fn(x, kernel, strides, begin, ceil_mode=ceil, count_include_pad=include)]
    # otherwise pad explicitly, so that the windows tile the padded input exactly; in ceil
    # mode the last window may stick out past the end padding (into `extra`), but is dropped
    # when it would start there (torch's and onnxruntime's rule)
    extra = []
    for i in range(n):
        size = x.shape[2 + i] + begin[i] + end[i]
        eff = (kernel[i] - 1) * dil[i] + 1
        span = size - eff
        out = (-(-span // strides[i]) if ceil else span // strides[i]) + 1
        if ceil and (out - 1) * strides[i] >= x.shape[2 + i] + begin[i]:
            out -= 1
        extra.append(max(0, (out - 1) * strides[i] + eff - size))
    fpad = []
    for i in reversed(range(n)):
        fpad += [begin[i], end[i] + extra[i]]
    if kind == "max":
        low = float("-inf") if x.is_floating_point() else torch.iinfo(x.dtype).min
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[n]
        return [fn(F.pad(x, fpad, value=low), kernel, strides, 0, dil)]
    # average = window sum / number of counted positions, both as a depthwise convolution
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]
    c = x.shape[1]
    ones = torch.ones([c, 1] + kernel, dtype=x.dtype, device=x.device)
    total = conv_fn(F.pad(x, fpad), ones, stride=strides, dilation=dil, groups=c)
    mask = torch.ones([1, 1] + list(x.shape[2:]), dtype=x.dtype, device=x.device)
    if include:  # the explicit pads count, what ceil mode adds past them does not
        mask = F.pad(mask, [p for i in reversed(range(n)) for p in (begin[i], end[i])], value=1.0)
        fpad = [p for i in reversed(range(n)) for p in (0, extra[i])]
    count = conv_fn(F.pad(mask, fpad), ones[:1], stride=strides, dilation=dil)
    return [total / count]


def _axes(a, axes_input, x):
    axes = a.get("axes")
    if axes_input is not None:
        axes = _ints(axes_input)
    return axes


def _reduce(fn):
    def op(a, x, axes_input=None):
        axes = _axes(a, axes_input, x)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return [x]
            axes = list(range(x.dim()))
        return [fn(x, dim=[int(d) for d in axes], keepdim=keep)]
    return op


def _reduce_each(fn):
    """A reduction of one axis at a time (torch.prod, amin/amax over a list are not all
    there): the shape arithmetic's ReduceProd/ReduceMin/ReduceMax."""
    def each(x, dim, keepdim):
        for d in sorted((int(d) % max(x.dim(), 1) for d in dim), reverse=True):
            x = fn(x, d, keepdim)
        return x
    return _reduce(each)


def reshape(a, x, shape):
    dims = _ints(shape)
    if not a.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return [x.reshape(dims)]


def flatten(a, x):
    axis = a.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return [x.reshape(lead, -1)]


def squeeze(a, x, axes_input=None):
    axes = _axes(a, axes_input, x)
    if axes is None:
        return [x.squeeze()]
    for d in sorted((int(d) % x.dim() for d in axes), reverse=True):
        x = x.squeeze(d)
    return [x]


def unsqueeze(a, x, axes_input=None):
    axes = _axes(a, axes_input, x)
    rank = x.dim() + len(axes)
    for d in sorted(int(d) % rank for d in axes):
        x = x.unsqueeze(d)
    return [x]


def slice_(a, x, starts=None, ends=None, axes=None, steps=None):
    if starts is None:  # opset < 10: attributes
        starts, ends, axes = a["starts"], a["ends"], a.get("axes")
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    idx = [slice(None)] * x.dim()
    backward = []
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax %= x.dim()
        size = x.shape[ax]
        s, e = (s + size if s < 0 else s), (e + size if e < 0 else e)
        if st > 0:
            idx[ax] = slice(max(0, min(size, s)), max(0, min(size, e)), st)
        else:
            s, e = max(0, min(size - 1, s)), max(-1, min(size - 1, e))
            backward.append((ax, torch.arange(s, e, st, device=x.device) if s > e else
                             torch.zeros(0, dtype=torch.int64, device=x.device)))
    x = x[tuple(idx)]
    for ax, i in backward:
        x = x.index_select(ax, i)
    return [x]


def shape(a, x):
    s = torch.tensor(list(x.shape), dtype=torch.int64)
    start, end = a.get("start", 0), a.get("end")
    return [s[start:end]]


def gather(a, x, idx):
    axis = a.get("axis", 0) % x.dim()
    idx = idx.to(torch.int64)
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    flat = x.index_select(axis, idx.reshape(-1).to(x.device))
    return [flat.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))]


def gather_nd(a, x, idx):
    """ONNX GatherND: the slices of ``x`` that the last axis of ``idx`` addresses, after
    ``batch_dims`` leading axes shared by both (dynamo's export of an adaptive average pool
    at a size that is not a multiple of its output's)."""
    b = int(a.get("batch_dims", 0))
    idx = idx.to(torch.int64).to(x.device)
    k = idx.shape[-1]
    sizes = torch.tensor(x.shape[b:b + k], dtype=torch.int64, device=x.device)
    idx = torch.where(idx < 0, idx + sizes, idx)
    lead = int(np.prod(x.shape[:b])) if b else 1
    xf = x.reshape((lead,) + tuple(x.shape[b:]))
    idf = idx.reshape(lead, -1, k)
    rows = torch.arange(lead, device=x.device).view(lead, 1).expand(lead, idf.shape[1])
    out = xf[(rows,) + tuple(idf[..., j] for j in range(k))]
    return [out.reshape(tuple(idx.shape[:-1]) + tuple(x.shape[b + k:]))]


def concat(a, *xs):
    xs = [x for x in xs if x is not None]
    return [torch.cat(xs, dim=a.get("axis", 0))]


def split(a, x, sizes=None):
    axis = a.get("axis", 0)
    if sizes is None and "split" in a:
        sizes = a["split"]
    if sizes is None:  # equal parts, the last one smaller when they do not divide evenly
        n = a.get("num_outputs") or a["_n_outputs"]
        part = -(-x.shape[axis] // n)
        sizes = [part] * (n - 1) + [x.shape[axis] - part * (n - 1)]
    return list(torch.split(x, _ints(sizes), dim=axis))


def _pad_index(i: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Source positions along one axis for the positions `i` (which may lie outside it)."""
    if mode == "edge":
        return i.clamp(0, size - 1)
    if mode == "wrap":
        return i % size
    period = 2 * (size - 1)  # reflect, mirrored about the first and the last element
    if period == 0:
        return torch.zeros_like(i)
    i = i % period
    return torch.where(i >= size, period - i, i)


def pad(a, x, pads=None, value=None, axes=None):
    pads = _ints(pads) if pads is not None else list(a.get("pads", []))
    mode = a.get("mode", "constant")
    n = len(pads) // 2
    ax = _ints(axes) if axes is not None else list(range(x.dim() - n, x.dim()))
    full_b, full_e = [0] * x.dim(), [0] * x.dim()
    for i, d in enumerate(ax):
        full_b[d % x.dim()], full_e[d % x.dim()] = pads[i], pads[n + i]
    if mode == "constant":
        fpad = []
        for d in reversed(range(x.dim())):
            fpad += [full_b[d], full_e[d]]
        v = value.reshape(-1)[0].item() if value is not None and value.numel() else a.get("value", 0.0)
        return [F.pad(x, fpad, value=v)]
    if mode not in ("reflect", "edge", "wrap"):
        raise NotImplementedError(f"Pad mode {mode!r}")
    for d in range(x.dim()):
        if full_b[d] or full_e[d]:
            size = x.shape[d]
            i = torch.arange(-full_b[d], size + full_e[d], device=x.device)
            x = x.index_select(d, _pad_index(i, size, mode))
    return [x]


def expand(a, x, shape_):
    target = torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape_)))
    return [x.expand(target)]


def constant_of_shape(a, shape_):
    v = a.get("value")
    dims = _ints(shape_)
    if v is None:
        return [torch.zeros(dims)]
    return [torch.full(dims, v.reshape(-1)[0].item(), dtype=v.dtype)]


def cast(a, x):
    return [x.to(_DTYPES[a["to"]])]


def depth_to_space(a, x):
    b = a["blocksize"]
    n, c, h, w = x.shape
    if a.get("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:  # CRD
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def space_to_depth(a, x):
    b = a["blocksize"]
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


def div(a, x, y):
    if x.is_floating_point() or y.is_floating_point():
        return [x / y]
    return [torch.div(x, y, rounding_mode="trunc")]  # integer division truncates in ONNX


def range_(start, limit, delta):
    n = max(int(np.ceil((limit.item() - start.item()) / delta.item())), 0)
    return start + torch.arange(n, dtype=start.dtype, device=start.device) * delta


def constant(a):
    if "value" in a:
        return a["value"]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                       ("value_int", torch.int64), ("value_ints", torch.int64)):
        if key in a:
            return torch.tensor(a[key], dtype=dtype)
    raise NotImplementedError(f"Constant with attributes {sorted(a)}")


def _source_coordinate(out_size: int, in_size: int, scale: float, ctm: str) -> torch.Tensor:
    """ONNX Resize: the input coordinate of every output position along one axis, in float32
    as onnxruntime computes it (the nearest modes round it, the linear one interpolates)."""
    f = torch.float32
    xo = torch.arange(out_size, dtype=f)
    if ctm == "asymmetric":
        return xo / torch.tensor(scale, dtype=f)
    if ctm == "tf_half_pixel_for_nn":
        return (xo + 0.5) / torch.tensor(scale, dtype=f)
    if ctm == "align_corners":
        return xo * (in_size - 1) / (out_size - 1) if out_size > 1 else torch.zeros_like(xo)
    if ctm == "pytorch_half_pixel" and out_size <= 1:
        return torch.zeros_like(xo)
    return (xo + 0.5) / torch.tensor(scale, dtype=f) - 0.5      # half_pixel, pytorch_half_pixel


def _nearest_source(out_size: int, in_size: int, scale: float, ctm: str, mode: str) -> torch.Tensor:
    """ONNX Resize (mode nearest): the input position each output position copies, along one
    axis, as onnxruntime rounds it."""
    orig = _source_coordinate(out_size, in_size, scale, ctm)
    if mode == "floor":
        idx = torch.floor(orig)
    elif mode == "ceil":
        idx = torch.ceil(orig)
    elif mode == "round_prefer_ceil":
        idx = torch.floor(orig + 0.5)
    else:   # round_prefer_floor: a tie goes down
        idx = torch.ceil(orig - 0.5)
    return idx.clamp(0, in_size - 1).long()


def _linear_weights(out_size: int, in_size: int, scale: float, ctm: str):
    """Along one axis: the two input positions each output reads and their weights (the
    distance to the other one; 1/2 each where both are the edge), as onnxruntime has them."""
    src = _source_coordinate(out_size, in_size, scale, ctm).clamp(0, in_size - 1)
    i1 = torch.floor(src).long().clamp(max=in_size - 1)
    i2 = (i1 + 1).clamp(max=in_size - 1)
    d1, d2 = (src - i1.float()).abs(), (src - i2.float()).abs()
    half = torch.tensor(0.5)
    same = i1 == i2
    return i1, i2, torch.where(same, half, d2), torch.where(same, half, d1)   # i1's, i2's weight


def _bilinear(x: torch.Tensor, out: List[int], scale: List[float], ctm: str) -> torch.Tensor:
    """ONNX Resize, mode linear, of an NCHW tensor's H and W: each output is the weighted sum
    of its four neighbours, summed in onnxruntime's order (bit-identical results; tested)."""
    y1, y2, wy1, wy2 = _linear_weights(out[2], x.shape[2], scale[2], ctm)
    x1, x2, wx1, wx2 = _linear_weights(out[3], x.shape[3], scale[3], ctm)
    dev = x.device
    rows1, rows2 = x.index_select(2, y1.to(dev)), x.index_select(2, y2.to(dev))
    wy1, wy2 = wy1.to(dev, x.dtype)[:, None], wy2.to(dev, x.dtype)[:, None]
    wx1, wx2 = wx1.to(dev, x.dtype), wx2.to(dev, x.dtype)
    i1, i2 = x1.to(dev), x2.to(dev)
    return (wx1 * wy1 * rows1.index_select(3, i1) + wx2 * wy1 * rows1.index_select(3, i2)
            + wx1 * wy2 * rows2.index_select(3, i1) + wx2 * wy2 * rows2.index_select(3, i2))


def resize(a, x, roi=None, scales=None, sizes=None):
    """ONNX Resize in the modes the converter accepts: nearest (every output position copies
    one input position, so spikes stay spikes) or linear on NCHW (each output a fixed
    weighted sum of four neighbours; the gradient flows to all four)."""
    ctm = a.get("coordinate_transformation_mode", "half_pixel")
    rounding = a.get("nearest_mode", "round_prefer_floor")
    dims = list(x.shape)
    if sizes is not None and sizes.numel():
        out = _ints(sizes)
        scale = [float(np.float32(o) / np.float32(i)) for o, i in zip(out, dims)]
    else:
        scale = [float(v) for v in scales.tolist()]
        # onnxruntime multiplies in float32 and truncates (10 x 0.7 is 7, not floor(6.99...))
        out = [int(np.float32(s) * np.float32(i)) for i, s in zip(dims, scale)]
    if a.get("mode", "nearest") == "linear":    # the converter accepts NCHW, N and C kept
        return [_bilinear(x, out, scale, ctm)]
    for axis in range(x.dim()):
        if out[axis] == dims[axis] and scale[axis] == 1.0:
            continue
        idx = _nearest_source(out[axis], dims[axis], scale[axis], ctm, rounding)
        x = x.index_select(axis, idx.to(x.device))
    return [x]


OPS: Dict[str, Callable] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": lambda a, x, y: [torch.matmul(x, y)],
    "Add": lambda a, x, y: [x + y],
    "Sub": lambda a, x, y: [x - y],
    "Mul": lambda a, x, y: [x * y],
    "Div": div,
    "Neg": lambda a, x: [-x],
    "MaxPool": lambda a, x: _pool(a, x, "max"),
    "AveragePool": lambda a, x: _pool(a, x, "avg"),
    "GlobalAveragePool": lambda a, x: [x.mean(dim=tuple(range(2, x.dim())), keepdim=True)],
    "GlobalMaxPool": lambda a, x: [x.amax(dim=tuple(range(2, x.dim())), keepdim=True)],
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceProd": _reduce_each(lambda x, d, k: torch.prod(x, dim=d, keepdim=k)),
    "ReduceMin": _reduce_each(lambda x, d, k: torch.amin(x, dim=d, keepdim=k)),
    "ReduceMax": _reduce_each(lambda x, d, k: torch.amax(x, dim=d, keepdim=k)),
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": lambda a, x: [x.permute(*(a.get("perm") or reversed(range(x.dim()))))],
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Shape": shape,
    "Size": lambda a, x: [torch.tensor(x.numel(), dtype=torch.int64)],
    "Gather": gather,
    "GatherND": gather_nd,
    "Cast": cast,
    "Constant": lambda a: [constant(a)],
    "ConstantOfShape": constant_of_shape,
    "Expand": expand,
    "Identity": lambda a, x: [x],
    "Pad": pad,
    "Greater": lambda a, x, y: [x > y],
    "GreaterOrEqual": lambda a, x, y: [x >= y],
    "Tile": lambda a, x, r: [x.repeat(*_ints(r))],
    "DepthToSpace": lambda a, x: [depth_to_space(a, x)],
    "SpaceToDepth": lambda a, x: [space_to_depth(a, x)],
    "Range": lambda a, s, l, d: [range_(s, l, d)],
    "Resize": resize,
}


def run_op(op: str, attrs: dict, inputs: List[Optional[torch.Tensor]]) -> List[torch.Tensor]:
    while inputs and inputs[-1] is None:
        inputs = inputs[:-1]
    return OPS[op](attrs, *inputs)

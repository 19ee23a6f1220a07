"""Where a tensor's elements come from: the walk back from a tensor through the ops that
move values without mixing them (pools, reshapes, concatenations, scaling by constants) to
the sites whose spikes they are, shared by the rewrite (is a max pool's input all spikes?)
and the analyzer (at which site's spike rate is a layer charged?).

* :func:`constant_names` — the tensors no data input reaches;
* :func:`source_mix` / :func:`source_mix_and_pools` — {site: share} of a tensor's elements
  (and the spiking max pools on the way); :func:`source_site` — the first of them.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import onnx

from .ir import pool_windows, same_pads
from .walk import attr

#: ops the source-site walk passes through (data input(s) only)
PASS_THROUGH = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
                "ReduceMean", "ReduceSum",
                "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Pad", "Slice", "Split",
                "Identity", "Dropout", "Cast", "Concat", "Mul", "Div", "Resize", "Gather",
                "GatherND", "DepthToSpace", "SpaceToDepth", "Tile", "Expand", "Neg")
#: pass-through ops that sum several input elements into each output element (a window's
#: spikes become a fraction, or a count): a layer after one receives every summed spike, so
#: the analyzer's walk multiplies the share by the elements summed per output
#: (:func:`window_elements`); the rewrite's test of "is this tensor spikes?" stops at them
MIXING = ("AveragePool", "GlobalAveragePool", "LpPool", "ReduceMean", "ReduceSum")
#: sums: a sum of spike trains (and constants) still arrives as spikes, each source at its
#: own rate (a layer after it accumulates every source's spikes: it is linear, W(a + b + c) =
#: Wa + Wb + Wc, and Wc a constant it adds to its bias once); with an analog term it is analog
SUMS = ("Add", "Sub", "Sum")


#: ops whose output depends on the shape of their input, never on its values
SHAPE_OPS = ("Shape", "Size")


def constant_names(g: onnx.GraphProto, weights: Iterable[str] = (), shapes: bool = False) -> set:
    """Tensors that depend on no data input (initializers, Constant nodes and their results).
    ``shapes``: also what depends on the data's shape alone (``Shape``, ``Size`` and their
    results: the same at every time step, such as a Dropout's mask of ones at inference,
    ``ConstantOfShape(Shape(x))``)."""
    const = {t.name for t in g.initializer} | set(weights)
    inputs = {i.name for i in g.input} - const
    for n in g.node:
        ins = [i for i in n.input if i]
        if (shapes and n.op_type in SHAPE_OPS) or (
                all(i in const for i in ins) and not any(i in inputs for i in ins)):
            const.update(o for o in n.output if o)
    return const


def source_site(tensor: str, producers: Mapping[str, onnx.NodeProto], sites: Mapping[str, str],
                constant: set) -> Optional[str]:
    """The site whose spikes reach ``tensor`` through pass-through ops only (else None).

    Depth-first, inputs in order: for a ``Concat`` the first site found is returned.
    """
    return next((k for k in source_mix(tensor, producers, sites, constant) if k), None)


def source_mix(tensor: str, producers: Mapping[str, onnx.NodeProto], sites: Mapping[str, str],
               constant: set, shapes: Optional[Mapping[str, Sequence[int]]] = None,
               sums: bool = False) -> Dict[str, float]:
    """Where the elements of ``tensor`` come from, through pass-through ops: {site: share},
    "" for what is not a site's spikes, in the order a depth-first walk (inputs in order)
    reaches them; a ``Concat`` splits its output by its inputs' sizes in ``shapes`` (equally
    when a size is unknown). The shares sum to 1. With ``sums`` (the analyzer's walk: which
    spikes does a layer accumulate?) the walk also passes a sum of spike trains (``SUMS``),
    whose every element receives each source's spikes: share 1 each, so they may sum to more;
    and through an average pool or a reduction (``MIXING``), whose every output element
    receives the spikes of the input elements it sums: the share is multiplied by their
    number (:func:`window_elements`). Without it (the rewrite's: is a tensor single spikes?)
    a sum, a mixing op and a Resize that interpolates end the walk."""
    return source_mix_and_pools(tensor, producers, sites, constant, shapes, sums=sums)[0]


def source_mix_and_pools(tensor: str, producers: Mapping[str, onnx.NodeProto],
                         sites: Mapping[str, str], constant: set,
                         shapes: Optional[Mapping[str, Sequence[int]]] = None,
                         pools: Optional[Mapping[str, str]] = None, sums: bool = False
                         ) -> Tuple[Dict[str, float], Dict[str, str]]:
    """:func:`source_mix`, and from the same walk the sources whose spikes reach ``tensor``
    through a spiking max pool: {site: the pool nearest ``tensor`` on the way} (``pools``: a
    pool's output tensor -> its name). A site reached both ways keeps the pooled path."""
    mix: Dict[str, float] = {}
    pooled: Dict[str, str] = {}
    for key, w, pool in _sources(tensor, producers, sites, constant, shapes or {}, pools or {},
                                 sums):
        mix[key] = mix.get(key, 0.0) + w
        if key and pool:
            pooled.setdefault(key, pool)
    return mix, pooled


def _sources(tensor, producers, sites, constant, shapes, pools, sums=False):
    """The leaves of the pass-through walk from ``tensor``: (site or "", share, the nearest
    spiking pool passed on the way or None), depth-first, inputs in order. A mixing op's
    window multiplies a site's share (the layer after it receives every summed spike), not
    that of an analog leaf: an averaged analog value is still one operand per weight."""
    stack = [(tensor, 1.0, 1.0, None)]
    while stack:
        x, w, m, via = stack.pop()
        via = via or pools.get(x)
        key = sites.get(x)
        node = None if key is not None else producers.get(x)
        nxt: List[Tuple[str, float]] = []
        if node is not None and node.domain in ("", "ai.onnx") and (
                node.op_type in PASS_THROUGH or (sums and node.op_type in SUMS)) and (
                sums or not _mixes(node)):
            if node.op_type == "Concat":
                ins = [i for i in node.input if i]
                sizes = [math.prod(int(d) for d in shapes[i]) if shapes.get(i) is not None and
                         all(isinstance(d, int) and d >= 0 for d in shapes[i]) else None
                         for i in ins]
                if any(z is None for z in sizes) or not sum(sizes):
                    sizes = [1] * len(ins)
                nxt = [(i, w * z / sum(sizes)) for i, z in zip(ins, sizes)]
            elif node.op_type in SUMS:
                # a constant term adds the same to every step: the layer after folds W c into
                # its bias, once; the data terms must all be spikes
                ins = [i for i in node.input if i and i not in constant]
                leaves = [leaf for i in ins for leaf in _sources(i, producers, sites, constant,
                                                                 shapes, pools, sums)]
                if leaves and all(k for k, _, _ in leaves):     # spikes only
                    for k, v, p in leaves:
                        yield k, w * m * v, p or via
                    continue
            elif node.op_type in ("Mul", "Div"):
                if len(node.input) >= 2 and (node.input[1] in constant or
                                             (node.op_type == "Mul" and node.input[0] in constant)):
                    nxt = [([i for i in node.input[:2] if i not in constant][0], w)]
            elif node.op_type in MIXING or _mixes(node):      # (and an interpolating Resize)
                stack.append((node.input[0], w, m * window_elements(node, shapes), via))
                continue
            else:
                nxt = [(node.input[0], w)]
        if nxt:
            stack.extend((t, v, m, via) for t, v in reversed(nxt))
        else:                       # a site, or where the spikes end (not pass-through)
            yield (key, w * m, via) if key is not None else ("", w, via)


def _mixes(node: onnx.NodeProto) -> bool:
    """Whether ``node`` sums or interpolates input elements into an output element (its
    output is then no longer single spikes): ``MIXING``, and a Resize not in nearest mode."""
    if node.op_type in MIXING:
        return True
    if node.op_type == "Resize":
        return attr(node, "mode", b"nearest") != b"nearest"
    return False


def window_elements(node: onnx.NodeProto, shapes: Mapping[str, Sequence[int]]) -> float:
    """How many input elements a mixing op (``MIXING``, an interpolating Resize) sums into
    one output element, on average over its outputs (an average pool's padded border windows
    hold fewer valid cells; a global pool or a reduction its whole reduced extent; a linear
    Resize 2 per resized axis, a cubic one 4). 1 when the shapes it needs are unknown."""
    shape = shapes.get(node.input[0])
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return 1.0
    shape = [int(d) for d in shape]
    op = node.op_type
    if op == "Resize":
        out = shapes.get(node.output[0])
        if out is None or len(out) != len(shape) or not all(isinstance(d, int) and d > 0
                                                            for d in out):
            return 1.0
        taps = {b"linear": 2, b"cubic": 4}.get(attr(node, "mode", b"nearest"), 1)
        return float(taps ** sum(int(o) != i for o, i in zip(out, shape)))
    if op == "GlobalAveragePool":
        return float(math.prod(shape[2:]))
    if op in ("ReduceMean", "ReduceSum"):
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            out = shapes.get(node.output[0])       # axes as an input (opset 18)
            if out is None or not all(isinstance(d, int) and d > 0 for d in out):
                return 1.0
            return float(math.prod(shape)) / float(math.prod(int(d) for d in out))
        if axes is None:
            return 1.0 if attr(node, "noop_with_empty_axes", 0) else float(math.prod(shape))
        return float(math.prod(shape[a] for a in axes))
    kernel = list(attr(node, "kernel_shape", []))      # AveragePool, LpPool
    n = len(kernel)
    if not n or len(shape) != n + 2:
        return 1.0
    strides = list(attr(node, "strides", [1] * n))
    dil = list(attr(node, "dilations", [1] * n))
    pads = list(attr(node, "pads", [0] * (2 * n)))
    auto = attr(node, "auto_pad", b"NOTSET")
    ceil = attr(node, "ceil_mode", 0)
    out = shapes.get(node.output[0])
    total = 1.0
    for i in range(n):
        size, k, s, d = shape[2 + i], kernel[i], strides[i], dil[i]
        span = d * (k - 1) + 1
        if auto in (b"SAME_UPPER", b"SAME_LOWER"):     # output ceil(size / s), pads split
            o = -(-size // s)
            lo = same_pads(size, k, s, d, auto.decode())[0]
        elif auto == b"VALID":
            o, lo = (size - span) // s + 1, 0
        else:
            lo = pads[i]
            o = pool_windows(size, span, s, pads[i], pads[i + n], bool(ceil))
        if out is not None and isinstance(out[2 + i], int) and out[2 + i] > 0:
            o = int(out[2 + i])
        if o < 1:
            return 1.0
        valid = 0
        for j in range(o):          # the valid (unpadded) cells of each window along axis i
            start = j * s - lo
            valid += sum(1 for t in range(k) if 0 <= start + t * d < size)
        total *= valid / o
    return total

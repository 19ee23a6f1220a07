"""Find every ReLU-type activation ("site") in every idiom exporters emit.

An elementwise clamp is any of ``Relu`` (0, inf), ``Max(x, c)`` (c, inf), ``Min(x, c)``
(-inf, c) or ``Clip(x, lo, hi)`` (bounds as attributes before opset 11, as inputs after).
A chain of clamps, each feeding only the next, is the clamp ``(max lo, min hi)``. A chain
with lower bound 0 is a site: a clipped ReLU with ``mu = hi`` when ``hi`` is finite, a plain
ReLU otherwise (its ``mu`` is estimated from calibration data later). A chain with another
finite lower bound (Hardtanh, ``Clip(0.2, 3)``, ``Max(x, c)``) is ``lo + clip(h - lo, 0,
hi - lo)``: the same site between ``Sub(h, lo)`` and ``Add(., lo)`` (the Add moved past
the max pools that alone read it, so that they pool spikes). Each site is rewritten
into one canonical node (``Clip(h, 0, mu)`` or ``Relu(h)``) named after the site.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from ..spiking.format import SITE_PREFIX
from .ir import broadcasts_within, const_value, is_empty, is_graph_output, node_label

CLAMP_OPS = ("Relu", "Clip", "Min", "Max")


@dataclass
class Site:
    """One activation that becomes a layer of integrate-and-fire neurons."""

    name: str                 # e.g. "lif0"; also the prefix of its initializers and states
    input: str                # pre-activation tensor h
    output: str               # activation tensor y = clip(h, 0, mu)
    mu: Optional[float]       # trained clip threshold; None for a plain ReLU until estimated
    mu_source: str            # "model" (trained clip) or "estimated" (plain ReLU)
    idiom: str                # how the exporter wrote it, e.g. "Clip", "Relu+Min"
    source_nodes: List[str] = field(default_factory=list)


def site_constants(site: str) -> tuple:
    """The constants of a canonical site node ``Clip(h, <site>.clip_min, <site>.mu)``."""
    return (f"{site}.clip_min", f"{site}.mu")


#: a lower bound at or below this is no bound: -FLT_MAX (ONNX's default Clip min before
#: opset 11, and what exporters write for an open end), -1e38 and the like clamp nothing
NO_FLOOR = -1e30


def clamp_bounds(node: gs.Node):
    """(lo, hi) of an elementwise clamp node, None when the node is not one; a lower bound
    at or below NO_FLOOR is -inf (``torch.clamp(x, max=1)`` at opset 9 is a Clip whose min
    is -FLT_MAX: a top alone, not a clipped ReLU shifted by 3.4e38).

    Raises for clamp-like nodes whose bounds are not constant scalars.
    """
    got = _clamp_bounds(node)
    if got is not None and got[0] <= NO_FLOOR:
        return -math.inf, got[1]
    return got


def _clamp_bounds(node: gs.Node):
    if node.op == "Relu":
        return 0.0, math.inf
    if node.op == "Clip":
        lo, hi = -math.inf, math.inf
        if "min" in node.attrs:
            lo = float(node.attrs["min"])
        if "max" in node.attrs:
            hi = float(node.attrs["max"])
        for idx in (1, 2):
            if len(node.inputs) > idx and not is_empty(node.inputs[idx]):
                v = const_value(node.inputs[idx])
                if v is None:
                    raise UnsupportedModelError(
                        f"{node_label(node)}: the clip bound '{node.inputs[idx].name}' is not a "
                        "constant; export the model with fixed (trained) thresholds")
                if v.size != 1:
                    raise UnsupportedModelError(
                        f"{node_label(node)}: a Clip's bounds are scalars in ONNX, this one has "
                        f"{v.size} values; write a top per channel as min(relu(x), c)")
                if idx == 1:
                    lo = float(v.reshape(()))
                else:
                    hi = float(v.reshape(()))
        return lo, hi
    if node.op in ("Min", "Max"):
        if len(node.inputs) != 2:
            return None
        vals = [const_value(t) for t in node.inputs]
        if (vals[0] is None) == (vals[1] is None):
            return None  # two dynamic (or two constant) operands: not a clamp
        c = vals[0] if vals[0] is not None else vals[1]
        data = node.inputs[1] if vals[0] is not None else node.inputs[0]
        if c.size != 1 and not _uniform_within(c, getattr(data, "shape", None)):
            what = ("a floor per channel or per element (only a floor of 0 makes a ReLU)"
                    if node.op == "Max" else "a top per channel or per element that is not "
                    "above 0 everywhere, or of a tensor that is not a ReLU's")
            raise UnsupportedModelError(
                f"{node_label(node)}: {node.op} with {what} is not a clipped ReLU; a top per "
                "channel converts as min(relu(x), c) with every c > 0 (the default conversion "
                "then gives each channel its own threshold), else use one bound per layer")
        c = float(c.reshape(-1)[0])
        return (-math.inf, c) if node.op == "Min" else (c, math.inf)
    return None


def constant_bounds(node: gs.Node):
    """:func:`clamp_bounds` of a clamp node (Relu, Clip, Min, Max), None for any other node
    and for a clamp whose bounds are dynamic or per element (the sites pass says why when it
    reads them)."""
    if node.op not in CLAMP_OPS or not node.outputs or not node.inputs:
        return None
    try:
        return clamp_bounds(node)
    except UnsupportedModelError:
        return None


def _uniform_within(c: np.ndarray, shape) -> bool:
    """A bound tensor that is one value repeated (e.g. ``Max(x, zeros[1, C, 1, 1])``, a ReLU)
    and broadcasts onto the data without changing its shape: the same as a scalar bound."""
    return c.size > 0 and bool(np.all(c == c.reshape(-1)[0])) and broadcasts_within(c.shape, shape)


#: ops whose output is non-negative when their data input is (the rest of their inputs are
#: shapes, indices or attributes): layout, selection and pooling
_KEEPS_SIGN = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout",
               "Slice", "Gather", "GatherND", "Split", "Expand", "Tile", "MaxPool", "GlobalMaxPool",
               "AveragePool", "GlobalAveragePool", "ReduceMax", "ReduceMin", "ReduceMean",
               "ReduceSum", "SpaceToDepth", "DepthToSpace"}
#: ops whose output is non-negative when every float input is: sums, products, maxima,
#: concatenation, bilinear/nearest resizing (weights in [0, 1])
_ALL_NONNEG = {"Add", "Sum", "Mul", "Max", "Concat", "Mean"}


def nonnegative_tensors(graph: gs.Graph) -> set:
    """Names of the tensors that cannot be negative, by what computes them (graph toposorted):
    non-negative constants; Relu, Abs; a clamp with a lower bound >= 0, or with an upper bound
    >= 0 on a non-negative input; and what keeps the sign of non-negative inputs (layout,
    pooling, sums, products, maxima, concatenation, division by a positive constant,
    nearest/linear resizing, zero padding). A one-sided ``Min``/``Clip(max)`` of such a
    tensor is a clipped ReLU."""
    def nonneg(t) -> bool:
        v = const_value(t)
        if v is not None:
            return v.size > 0 and bool(np.all(np.asarray(v, np.float64) >= 0))
        return t.name in out

    out: set = set()
    for node in graph.nodes:
        if not node.outputs or not node.inputs:
            continue
        x = node.inputs[0]
        op = node.op
        ok = False
        if op in ("Relu", "Abs"):
            ok = True
        elif op in ("Clip", "Min"):
            bounds = constant_bounds(node)    # None: bounds per element, or dynamic
            if bounds is not None:
                lo, hi = bounds
                ok = lo >= 0 or (hi >= 0 and nonneg(_data_input(node)))
            elif op == "Min":                 # a minimum of non-negative tensors
                ok = all(nonneg(t) for t in node.inputs if not is_empty(t))
            else:                             # Clip(x, lo, hi): lo >= 0, or x and hi >= 0
                lo, hi = (node.inputs[i] if len(node.inputs) > i and not is_empty(node.inputs[i])
                          else None for i in (1, 2))
                ok = (lo is not None and nonneg(lo)) or \
                    (nonneg(x) and hi is not None and nonneg(hi) and "min" not in node.attrs)
        elif op == "Max" and len(node.inputs) == 2:
            ok = any(nonneg(t) for t in node.inputs)
        elif op in _KEEPS_SIGN:
            ok = nonneg(x)
        elif op in _ALL_NONNEG:
            ok = all(nonneg(t) for t in node.inputs if not is_empty(t))
        elif op == "Div" and len(node.inputs) == 2:
            d = const_value(node.inputs[1])
            ok = nonneg(x) and d is not None and d.size > 0 and bool(np.all(d > 0))
        elif op == "Pad":
            mode = node.attrs.get("mode", "constant")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            value = node.attrs.get("value", 0.0)
            if len(node.inputs) > 2 and not is_empty(node.inputs[2]):
                c = const_value(node.inputs[2])
                value = None if c is None or c.size != 1 else float(c.reshape(()))
            ok = nonneg(x) and (mode != "constant" or (value is not None and value >= 0))
        elif op in ("Resize", "Upsample"):
            mode = node.attrs.get("mode", "nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            ok = nonneg(x) and mode in ("nearest", "linear", "bilinear")
        if ok:
            out.update(o.name for o in node.outputs)
    return out


def _data_input(node: gs.Node):
    if node.op in ("Min", "Max"):
        return node.inputs[0] if const_value(node.inputs[0]) is None else node.inputs[1]
    return node.inputs[0]


def _next_in_chain(graph: gs.Graph, node: gs.Node) -> Optional[gs.Node]:
    out = node.outputs[0]
    if len(out.outputs) != 1 or is_graph_output(graph, out):
        return None
    nxt = out.outputs[0]
    if nxt.op in CLAMP_OPS and clamp_bounds(nxt) is not None and _data_input(nxt) is out:
        return nxt
    return None


def _split_pair_hint(graph: gs.Graph, node: gs.Node) -> str:
    """Why the clamp after ``node`` was not taken with it as one activation (tf2onnx's
    ``from_function`` makes intermediate tensors graph outputs: the Min of a
    ``clip_by_value`` then stands alone), as a sentence to add; "" when no clamp follows."""
    out = node.outputs[0]
    after = [r for r in out.outputs
             if r.op in CLAMP_OPS and clamp_bounds(r) is not None and _data_input(r) is out]
    if not after:
        return ""
    if is_graph_output(graph, out):
        also, fix = "also a graph output", "export the model"
    else:
        others = [f"'{r.name}' ({r.op})" for r in out.outputs if r not in after]
        also = ("also read by " + ", ".join(others)) if others else \
            f"read by {len(after)} clamps"
        fix = "if that leads to an extra output of the export, export the model"
    return (f". Its output '{out.name}' is {also}, so the {after[0].op} after it "
            f"('{after[0].name}') is not taken with it as one activation: {fix} with only "
            "its real outputs (tf2onnx: --outputs, or output_names with from_function), "
            "or keep them here with `onnx-snn convert --outputs NAME` (convert(..., "
            "outputs=[NAME]))")


def _shifted(graph: gs.Graph, name: str, h: gs.Variable, y: gs.Variable, shift: float):
    """``Sub(h, lo) -> [site] -> Add(., lo) -> y``: the site's own input and output."""
    lo = gs.Constant(f"{name}.lo", np.array(shift, np.float32))
    h_in = gs.Variable(f"{name}.shifted_input", dtype=np.float32)
    y_site = gs.Variable(f"{name}.unshifted_output", dtype=np.float32)
    nodes = [gs.Node("Sub", f"{name}.shift", inputs=[h, lo], outputs=[h_in]),
             gs.Node("Add", f"{name}.unshift", inputs=[y_site, lo], outputs=[y])]
    graph.nodes.extend(nodes)
    return h_in, y_site


#: max pools a shifted site's constant shift moves past: max(y + lo) = max(y) + lo exactly
#: (adding lo rounds monotonically, and a max pool pads with -inf), so the pool reads the
#: site's spikes and becomes a spiking pool whose output spikes are counted
_SHIFT_PAST = ("MaxPool", "GlobalMaxPool")


def _unshift_after_pools(graph: gs.Graph, y: gs.Variable) -> None:
    """Move the ``Add(., lo)`` that computes ``y`` past the max pools that alone read it
    (each one's pooled output becomes the Add's): the pool then reads the site's own output."""
    add = y.inputs[0]
    while len(y.outputs) == 1 and not is_graph_output(graph, y):
        pool = y.outputs[0]
        if pool.op not in _SHIFT_PAST or pool.inputs[0] is not y or len(pool.outputs) != 1:
            return
        src, out = add.inputs[0], pool.outputs[0]
        moved = gs.Variable(f"{out.name}.unshifted", dtype=np.float32)
        pool.inputs[0], pool.outputs[0] = src, moved
        add.inputs[0], add.outputs[0] = moved, out
        y.inputs.clear()
        y = out


def find_and_canonicalize_sites(graph: gs.Graph) -> List[Site]:
    """Replace each activation chain by one canonical node and return the sites in order."""
    from .ir import depends_on_inputs
    graph.toposort()
    data = depends_on_inputs(graph)   # clamps of shape arithmetic are not activations
    in_chain = set()
    chains = []
    for node in graph.nodes:
        if id(node) in in_chain or node.op not in CLAMP_OPS:
            continue
        if _data_input(node).name not in data or clamp_bounds(node) is None:
            continue
        chain = [node]
        nxt = _next_in_chain(graph, node)
        while nxt is not None:
            chain.append(nxt)
            nxt = _next_in_chain(graph, nxt)
        in_chain.update(id(n) for n in chain)
        chains.append(chain)

    positive = nonnegative_tensors(graph)
    sites: List[Site] = []
    for chain in chains:
        bounds = [clamp_bounds(n) for n in chain]
        lo = max(b[0] for b in bounds)
        hi = min(b[1] for b in bounds)
        first, last = chain[0], chain[-1]
        label = node_label(first) if len(chain) == 1 else \
            f"nodes {', '.join(repr(n.name) for n in chain)} ({'+'.join(n.op for n in chain)})"
        if lo < 0 and hi > 0 and _data_input(first).name in positive:
            lo = 0.0     # a clamp of a non-negative tensor: its lower bound is 0
        if not lo < hi:
            raise UnsupportedModelError(f"{label}: clamps everything to a constant ({lo}, {hi}); "
                                        "remove the layer or fix its bounds and export again")
        if math.isinf(lo):
            why = f"its input '{_data_input(first).name}' can be negative"
            raise UnsupportedModelError(
                f"{label}: an activation clamped to [{lo:g}, {hi:g}] is not ReLU-like ({why}); "
                "only activations with a finite lower bound (Relu, Clip(lo, hi), Relu+Min, "
                "Max(lo)+Min, Hardtanh, or a Min/Clip(max) of a non-negative tensor: a Relu's or "
                "clipped activation's output, their sums and pools) can become "
                f"integrate-and-fire neurons{_split_pair_hint(graph, last)}")
        h = _data_input(first)
        y = last.outputs[0]
        name = f"__site{len(sites)}"   # renamed in topological order below
        idiom = "+".join(n.op for n in chain)
        shift = float(lo) if abs(lo) > 1e-12 else 0.0
        if shift:
            # a clamp to [lo, hi] with lo != 0 (Hardtanh, a shifted clipped ReLU) is
            # lo + clip(h - lo, 0, hi - lo): a site between two constant shifts, which the
            # rate code carries exactly (each step's output plus lo averages to rate + lo)
            # named after the clamp they replace: 'lif<k>.*' names are the format's own
            y_shifted = y
            h, y = _shifted(graph, first.name or name, h, y, shift)
            idiom += f" (shifted by {shift:g})"
            hi = hi - shift
        mu = None if math.isinf(hi) else float(hi)
        if mu is not None and mu <= 0:
            raise UnsupportedModelError(f"{label}: clip threshold {mu} must be positive; check "
                                        "the trained thresholds of the model")
        site = Site(name=name, input=h.name, output=y.name, mu=mu,
                    mu_source="model" if mu is not None else "estimated", idiom=idiom,
                    source_nodes=[n.name for n in chain])
        for n in chain:
            n.inputs.clear()
            n.outputs.clear()
        if mu is None:
            new = gs.Node("Relu", name, inputs=[h], outputs=[y])
        else:
            lo_name, mu_name = site_constants(name)
            new = gs.Node("Clip", name, inputs=[
                h, gs.Constant(lo_name, np.array(0.0, np.float32)),
                gs.Constant(mu_name, np.array(mu, np.float32))], outputs=[y])
        graph.nodes.append(new)
        sites.append(site)
        if shift:
            _unshift_after_pools(graph, y_shifted)
    graph.cleanup().toposort()
    # names follow the topological order of the rewritten graph
    by_name = {s.name: s for s in sites}
    ordered = []
    for n in graph.nodes:
        site = by_name.get(n.name)
        if site is None:
            continue
        new = f"{SITE_PREFIX}{len(ordered)}"
        n.name = new
        for t in n.inputs[1:]:
            t.name = t.name.replace(site.name, new, 1)
        site.name = new
        ordered.append(site)
    return ordered

"""Per-layer operation counts of any ONNX graph: a plain DNN or a spiking model (loop or step).

Everything is counted **per sample** (batch 1) and from tensor shapes only, so the count
needs neither data nor a deep-learning framework: onnx shape inference gives the shapes,
and where it cannot (a shape computed by an op its data propagation does not follow), one
onnxruntime run on zeros of batch 1 measures the missing ones.

Counted layers (``kind == "mac"``; multiply-accumulates; biases are not counted, as in the
published counts this module is checked against)::

    Conv           MACs = output elements x (C_in / groups) x prod(kernel)
                        = prod(Y.shape[1:]) x prod(W.shape[1:])    (any stride, dilation, pads)
    ConvTranspose  MACs = input elements x (C_out / groups) x prod(kernel)
                        = prod(X.shape[1:]) x prod(W.shape[1:])
    Gemm           MACs = M x K x N      (transA / transB honoured; M is the batch)
    MatMul         MACs = prod(Y.shape) x K   (K = A.shape[-1]; batch dims and broadcasting)

Reported, never part of the energy (``kind == "other"``)::

    MaxPool, AveragePool, LpPool        output elements x prod(kernel_shape)   (compares / adds)
    GlobalAveragePool, GlobalMaxPool    output elements x prod(spatial input)  (= input elements)
    ReduceMean, ReduceSum               input elements (float tensors only; the dynamo
                                        exporter's global average pool is a ReduceMean)
    Add                                 output elements          (float tensors only: integer
    Sum (k inputs)                      (k - 1) x output elements  shape arithmetic is skipped)

All counts are divided by the batch size the graph was measured at (1 unless the data
input has a fixed batch), so ``Gemm``'s M and MatMul's leading dims need no special case.

**Spiking models.** The spiking graph is flattened back into the DNN it runs: the nodes
hoisted out of the time loop plus the loop body, each ``LIFNeuron`` read as the identity
from its input current ``x`` to its output ``y``; spike counters, membrane-state and
initial-state nodes and the averaging after the loop are dropped because nothing the DNN
outputs depends on them. The loop form and the step form flatten to the same graph.

**Where a layer's input comes from.** ``source_site`` is found by walking backward from the
layer's data input through ops that move or select spikes without turning them into
analog values (``PASS_THROUGH``: pooling, ReduceMean/ReduceSum, Flatten, Reshape, Transpose, (Un)Squeeze, Pad,
Slice, Split, Gather, GatherND, DepthToSpace, SpaceToDepth, Tile, Expand, Identity, Dropout,
Cast, Concat, Resize, Neg, Mul/Div by a constant, and sums of spike trains and constants:
Add, Sub, Sum, each source charged at its own rate, a constant term a part of the bias) until
the
output of a neuron is reached. For ``Concat`` the inputs are searched in order and the
first site found is taken; ``source_mix`` then gives each source's share of the
concatenated elements (a DenseNet or Inception layer reads several sites, or spikes and an
analog branch), which the energy model charges at each source's own rate. A walk that ends
anywhere else gives ``source_site = None``.
``direct`` is True when the data input does not depend on any neuron at all (it comes from
the graph input through non-spiking ops only: the direct-encoded first layer, which the
single-call graph computes once, outside the time loop). In a plain DNN every layer is
``direct`` (there are no neurons).

After a spiking max pool (rate-exact: its count is the largest count of its window) the
pooled outputs fire at least as often as the site's neurons on average (1.7x and 2.4x on the
shipped model at T = 2): ``source_pools`` names, per source site, the spiking pool its spikes
pass on the way (the one nearest the layer), and the energy model charges the layer at that
pool's counted output rate (``eval``'s ``pools``); rates without it (files from before the
pools were counted) fall back to the site's rate, which undercounts. An average pool, a
global one or a reduction (``MIXING``) sums a window's spikes into each output element: the
layer after it receives every one of them, so its share is multiplied by the window's
(valid) elements (``graph.sources.window_elements``: 4 for a 2x2 pool, H x W for a global
one), which is one accumulate per input spike and fan-out of the pool and the layer together,
the synapses a neuromorphic chip would give them. Before 2026-12-05 such a layer was charged
at its site's rate per pooled element, too little by the window's size. An interpolating
Resize is charged the same way: each output element of a bilinear one weighs 2 input
elements per resized axis (4 on an image), of a bicubic one 4 (16), so the layer after it
receives those elements' spikes (until 2026-12-05 it was charged at the site's rate per
output element, like a nearest-neighbour one, which copies one input's spikes).
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

from ..errors import UnsupportedModelError
from ..graph import skeleton, walk
from ..graph.sources import (PASS_THROUGH, constant_names, source_mix,  # noqa: F401 (re-exported)
                             source_mix_and_pools, source_site)
from ..spiking import format as fmt

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOL_OPS = ("MaxPool", "AveragePool", "LpPool")
GLOBAL_POOL_OPS = ("GlobalAveragePool", "GlobalMaxPool")
ADD_OPS = ("Add", "Sum")
#: a mean or sum over axes: what the dynamo exporter writes for a global average pool
REDUCE_OPS = ("ReduceMean", "ReduceSum")
#: ops with multiply-accumulates this module does not count (reported as warnings)
UNCOUNTED_MAC_OPS = ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul",
                     "FusedConv", "FusedGemm", "FusedMatMul", "Attention", "MultiHeadAttention",
                     "LSTM", "GRU", "RNN")
SMALL_INITIALIZER = 1024    # elements; larger initializers are weights, kept as shapes only

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                onnx.TensorProto.BFLOAT16}

Shape = Tuple[Optional[int], ...]


@dataclass
class LayerCount:
    """One counted node, per sample.

    ``macs`` is set for ``kind == "mac"`` layers (0 otherwise); ``ops`` is set for
    ``kind == "other"`` ops (compares or adds; 0 otherwise). ``neurons`` is the number of
    output elements per sample. ``input`` is the data input tensor (the activations, not
    the weights).
    """

    name: str
    op: str
    kind: str                      # "mac" or "other"
    macs: int
    ops: int
    neurons: int
    input: str
    output: str
    output_shape: List[int]        # per sample (batch axis left out)
    source_site: Optional[str] = None
    direct: bool = False
    #: when the input concatenates several sources: each one's share of the input elements
    #: (site name, or "" for a branch that is not spikes); empty for a single source
    source_mix: Dict[str, float] = field(default_factory=dict)
    #: sources whose spikes reach the layer through a spiking max pool: site -> that pool
    #: (the one nearest the layer), whose output rate the layer accumulates at
    source_pools: Dict[str, str] = field(default_factory=dict)
    #: where the layer's rate is an estimate (:func:`_estimated`): "part" (it reads part of a
    #: site's output: Slice, Split, Gather), the uncounted spiking pools on the way
    estimated: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FlatGraph:
    """A graph reduced to the DNN it computes (standard ops only), with shapes at batch 1."""

    model: onnx.ModelProto
    sites: Dict[str, str]                    # neuron output tensor (y) -> site name
    site_nodes: Dict[str, str]               # site name -> node name
    spiking: bool
    batch: int                               # the batch the shapes are measured at
    data_inputs: List[str]
    weights: set                             # initializers turned into static-shape inputs
    notes: List[str] = field(default_factory=list)       # how the count was made
    #: a spiking max pool's output tensor -> the pool's name
    pools: Dict[str, str] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)    # what could not be counted
    #: the spiking max pools whose output spikes the model does not count (of a sum of
    #: spike trains, of an average pool's fractions): output tensor -> name
    uncounted_pools: Dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ flattening

def _renamed(node: onnx.NodeProto, rename: Mapping[str, str]) -> onnx.NodeProto:
    if not any(x in rename for x in list(node.input) + list(node.output)):
        return node
    n = copy.deepcopy(node)
    for i, x in enumerate(n.input):
        n.input[i] = rename.get(x, x)
    for i, x in enumerate(n.output):
        n.output[i] = rename.get(x, x)
    return n


def _dims(vi: onnx.ValueInfoProto) -> Optional[List]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def _with_shape(vi: onnx.ValueInfoProto, dims: Sequence) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, list(dims))


def _spiking_parts(view: fmt.SpikingView):
    """(nodes, outputs, initializers, y tensor -> site, site -> node, pool output -> pool)
    of a spiking model read as the DNN it runs: the hoisted nodes and one time step, each
    neuron the identity from its input current to its output, the per-step outputs under the
    DNN's names."""
    sites: Dict[str, str] = {}
    site_nodes: Dict[str, str] = {}
    pools: Dict[str, str] = {}
    pool_names = {id(n): p for p, n in view.pools.items()}
    nodes: List[onnx.NodeProto] = list(view.hoisted)
    pool_ops = {fn: op for op, fn in fmt.POOL_OPS.items()}
    for n in view.body:
        if n.domain == fmt.DOMAIN and n.op_type in pool_ops:
            # a spiking max pool is counted as the pool it applies to the running sums
            nodes.append(helper.make_node(pool_ops[n.op_type], [n.input[0]], [n.output[0]],
                                          name=n.name))
            nodes[-1].attribute.extend(n.attribute)
            if id(n) in pool_names:
                pools[n.output[0]] = pool_names[id(n)]
            continue
        site = next((s for s, m in view.neurons.items() if m is n), None)
        if site is None:
            nodes.append(n)
            continue
        sites[n.output[0]] = site
        site_nodes[site] = n.name
        nodes.append(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
    rename = {t: o for o, t in view.step_outputs.items() if t != o}
    nodes = [_renamed(n, rename) for n in nodes]
    pools = {rename.get(t, t): p for t, p in pools.items()}
    # a site whose output is also a model output runs under its per-step name: the layers
    # that read it read the renamed tensor (they were charged as analog, at every step)
    sites = {rename.get(t, t): s for t, s in sites.items()}
    return nodes, view.outputs, list(view.initializers.values()), sites, site_nodes, pools


def _split_initializers(inits, used: set):
    """(small initializers kept as values, large ones as static-shape inputs)."""
    kept, weights = [], []
    for t in inits:
        if t.name not in used:
            continue
        if _prod(t.dims) > SMALL_INITIALIZER:
            weights.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            kept.append(t)
    return kept, weights


def _fixed_inputs(g: onnx.GraphProto, skip: set, used: set,
                  input_shapes: Mapping[str, Sequence[int]]):
    """The used data inputs with a symbolic batch set to 1 (or the shape given); and the batch."""
    unknown = set(input_shapes) - {i.name for i in g.input}
    if unknown:
        raise UnsupportedModelError(f"input_shapes names {sorted(unknown)}, which are not inputs of "
                                    f"the model (inputs: {[i.name for i in g.input]})")
    inputs, batch = [], None
    for vi in g.input:
        if vi.name in skip or vi.name not in used:
            continue
        dims = _dims(vi)
        if vi.name in input_shapes:
            dims = [int(d) for d in input_shapes[vi.name]]
        elif dims and (not isinstance(dims[0], int) or dims[0] <= 0):
            dims = [1] + dims[1:]
        if batch is None:
            batch = int(dims[0]) if dims and isinstance(dims[0], int) and dims[0] > 0 else 1
        inputs.append(_with_shape(vi, dims) if dims is not None else copy.deepcopy(vi))
    return inputs, batch or 1


def flatten(model: onnx.ModelProto,
            input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
            where: Optional[str] = None) -> FlatGraph:
    """Reduce ``model`` to the plain graph it computes, with the batch axis fixed.

    Graph inputs whose first dimension is symbolic get batch 1; ``input_shapes`` (name ->
    full shape, batch included) overrides an input's shape (for dynamic spatial sizes).
    Initializers of more than ``SMALL_INITIALIZER`` elements become static-shape inputs.
    ``where``: the model's name in messages (its file; default: the graph's name).
    """
    spiking = fmt.META_FORMAT in fmt.metadata(model)   # a file onnx-snn wrote (else below)
    model = skeleton.densified(model) or model           # sparse weights as dense ones
    if not spiking and model.functions:
        model = _inlined(model)
    g = model.graph
    if spiking:
        nodes, outputs, inits, sites, site_nodes, pools = _spiking_parts(
            fmt.read_spiking(model, where or g.name or "model"))
    else:  # a plain DNN, or a hand-built graph of neurons without the format's metadata
        nodes, outputs, inits = list(g.node), [o.name for o in g.output], list(g.initializer)
        sites, site_nodes, pools = {}, {}, {}
        for i, n in enumerate(nodes):
            if fmt.is_neuron_node(n):
                site = fmt.site_of_neuron_node(n.name) or n.output[0]
                sites[n.output[0]], site_nodes[site] = site, n.name
                nodes[i] = helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name)
        states = [x for n in g.node if n.op_type in fmt.NEURON_OPS for x in n.output[1:]]
        outputs = [o for o in outputs if o not in states]
    kept = walk.prune(nodes, outputs)
    every_pool = dict(pools)
    pools = _pools_of_spikes(kept, pools, sites, inits)
    uncounted = {t: p for t, p in every_pool.items() if t not in pools}
    warns = []
    for n in kept:
        if n.op_type in ("Loop", "If", "Scan"):
            warns.append(f"node {n.name or n.op_type} ({n.op_type}): its subgraph is not counted")
        if n.op_type in UNCOUNTED_MAC_OPS or (n.op_type == "Einsum" and _einsum_labels(n) is None):
            warns.append(f"node {n.name or n.op_type} ({n.op_type}): op not counted")
    used = {x for n in kept for x in walk.node_inputs(n)} | set(outputs)
    kept_inits, weights = _split_initializers(inits, used)
    inputs, batch = _fixed_inputs(g, {t.name for t in inits}, used, dict(input_shapes or {}))
    out_vis = [onnx.ValueInfoProto(name=o) for o in outputs]
    graph = helper.make_graph(kept, g.name or "flat", inputs + weights, out_vis, kept_inits)
    opsets = [o for o in model.opset_import if o.domain != fmt.DOMAIN]
    flat = helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    flat.functions.extend(f for f in model.functions if f.domain != fmt.DOMAIN)
    return FlatGraph(model=flat, sites=sites, site_nodes=site_nodes, spiking=spiking,
                     batch=batch, data_inputs=[i.name for i in inputs],
                     weights={w.name for w in weights}, warnings=warns, pools=pools,
                     uncounted_pools=uncounted)


def _inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its model-local functions (onnxscript, the dynamo exporter's modules)
    inlined, as the converter reads it: a function call's layers counted, not skipped as one
    node of an unknown op. The model itself where inlining fails (the calls are then named in
    the warnings, as any uncounted op)."""
    if any(f.domain == fmt.DOMAIN for f in model.functions):
        return model
    from onnx import inliner
    try:
        return inliner.inline_local_functions(model, convert_version=True)
    except Exception:       # noqa: BLE001 -- counted as it is, with the calls uncounted
        return model


def _pools_of_spikes(nodes, pools: Dict[str, str], sites: Dict[str, str], inits) -> Dict[str, str]:
    """The spiking pools (output tensor -> name) whose input is whole spikes, by the rewrite's
    own test (``graph.sources.source_mix`` without sums): those the graph counts since
    2026-12-03, whose output rate a layer after them is charged at. A max pool of an average
    pool's fractions is no counted pool (its layer is charged through the walk instead), nor
    one of currents; files from before the counters still list their pools of spikes."""
    producers = {o: n for n in nodes for o in n.output if o}
    constant = constant_names(helper.make_graph(nodes, "g", [], [], list(inits)))
    out = {}
    for t, p in pools.items():
        node = producers.get(t)
        if node is None:
            continue
        mix = source_mix(node.input[0], producers, sites, constant)
        if mix and "" not in mix:
            out[t] = p
    return out


# ------------------------------------------------------------------ shapes

@dataclass
class _Tensors:
    shapes: Dict[str, Shape]
    types: Dict[str, int]

    def known(self, name: str) -> bool:
        s = self.shapes.get(name)
        return s is not None and all(isinstance(d, int) and d >= 0 for d in s)


def _collect(model: onnx.ModelProto) -> _Tensors:
    shapes: Dict[str, Shape] = {}
    types: Dict[str, int] = {}
    g = model.graph
    for t in g.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
        types[t.name] = t.data_type
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type"):
            if tt.elem_type:
                types[vi.name] = tt.elem_type
            d = _dims(vi)
            if d is not None and vi.name not in shapes:
                shapes[vi.name] = tuple(x if isinstance(x, int) and x > 0 else None for x in d)
    for n in g.node:  # Constant nodes: shapes are in the attribute
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = tuple(int(d) for d in a.t.dims)
                    types[n.output[0]] = a.t.data_type
    return _Tensors(shapes, types)


def _infer(flat: onnx.ModelProto, notes: List[str]) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(flat, check_type=False, strict_mode=False,
                                                 data_prop=True)
    except Exception as e:  # a malformed corner the inference rejects: measure instead
        notes.append(f"onnx shape inference failed ({str(e).strip().splitlines()[0][:120]}); "
                     "shapes measured with onnxruntime")
        return flat


def _dry_run(fg: FlatGraph, names: Sequence[str], t: _Tensors) -> None:
    """Measure the shapes of ``names`` with one onnxruntime run on zeros (batch as fixed)."""
    g = fg.model.graph
    feeds = {}
    for vi in g.input:
        dims = _dims(vi)
        if dims is None or not all(isinstance(d, int) and d > 0 for d in dims):
            raise UnsupportedModelError(
                f"the shapes of {', '.join(list(names)[:3])} cannot be inferred, and input "
                f"{vi.name!r} has a dynamic shape {dims}; give its full shape so that the "
                "model can be measured (`onnx-snn analyze --data DATA`: the data's samples fix "
                "it; the Python API: input_shapes={name: [1, C, H, W]})")
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type or onnx.TensorProto.FLOAT)
        feeds[vi.name] = np.zeros(dims, dtype)
    m = onnx.ModelProto()
    m.CopyFrom(fg.model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    del m.graph.value_info[:]
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        outs = sess.run(list(names), feeds)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UnsupportedModelError(
            f"the shapes of {', '.join(list(names)[:3])} cannot be inferred by onnx, and measuring "
            f"them with onnxruntime failed: {msg}") from None
    for n, v in zip(names, outs):
        t.shapes[n] = tuple(int(d) for d in np.shape(v))


# ------------------------------------------------------------------ counting

def _einsum_labels(node: onnx.NodeProto):
    """An Einsum of two operands: (their labels, the output's), else None (three or more
    operands, an ellipsis, a label repeated within an operand: not counted)."""
    from ..graph.einsum import parse
    eq = walk.attr(node, "equation", b"")
    parsed = parse(eq.decode() if isinstance(eq, bytes) else str(eq), len(node.input))
    if parsed is None or len(parsed[0]) != 2 or any(len(set(o)) != len(o) for o in parsed[0]):
        return None
    return parsed


def _einsum_macs(node: onnx.NodeProto, t: "_Tensors") -> int:
    """An Einsum's multiply-adds: one per combination of its labels' values (each output
    element sums the products over the labels it lacks)."""
    (a, b), _ = _einsum_labels(node)
    size = dict(zip(a, t.shapes[node.input[0]]))
    size.update(zip(b, t.shapes[node.input[1]]))
    return _prod(size.values())


def _needed(node: onnx.NodeProto) -> List[str]:
    op = node.op_type
    if op == "Einsum":
        return [node.input[0], node.input[1], node.output[0]]
    if op in ("Conv",):
        return [node.input[1], node.output[0]]
    if op == "ConvTranspose":
        return [node.input[0], node.input[1], node.output[0]]
    if op in ("Gemm", "MatMul"):
        return [node.input[0], node.output[0]]
    if op in GLOBAL_POOL_OPS or op in REDUCE_OPS:
        return [node.input[0], node.output[0]]
    return [node.output[0]]


def _counted(node: onnx.NodeProto, t: _Tensors) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    if node.op_type in MAC_OPS or node.op_type in POOL_OPS or node.op_type in GLOBAL_POOL_OPS:
        return True
    if node.op_type == "Einsum":
        return _einsum_labels(node) is not None
    if node.op_type in ADD_OPS or node.op_type in REDUCE_OPS:
        et = t.types.get(node.output[0])
        return et is None or et in _FLOAT_TYPES
    return False


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def _count_node(node: onnx.NodeProto, t: _Tensors) -> Tuple[str, int]:
    """(kind, total count over the measured batch) for one node."""
    op = node.op_type
    out = t.shapes[node.output[0]]
    if op == "Conv":
        return "mac", _prod(out) * _prod(t.shapes[node.input[1]][1:])
    if op == "ConvTranspose":
        return "mac", _prod(t.shapes[node.input[0]]) * _prod(t.shapes[node.input[1]][1:])
    if op == "Gemm":
        a = t.shapes[node.input[0]]
        k = a[0] if walk.attr(node, "transA", 0) else a[1]
        return "mac", _prod(out) * int(k)
    if op == "MatMul":
        return "mac", _prod(out) * int(t.shapes[node.input[0]][-1])
    if op == "Einsum":
        return "mac", _einsum_macs(node, t)
    if op in POOL_OPS:
        return "other", _prod(out) * _prod(walk.attr(node, "kernel_shape", []))
    if op in GLOBAL_POOL_OPS or op in REDUCE_OPS:
        return "other", _prod(t.shapes[node.input[0]])
    if op == "Sum":
        return "other", _prod(out) * max(len([i for i in node.input if i]) - 1, 1)
    return "other", _prod(out)  # Add


def _data_input(node: onnx.NodeProto, constant: set) -> str:
    if node.op_type in ("MatMul", "Einsum") and node.input[0] in constant and node.input[1] not in constant:
        return node.input[1]
    return node.input[0]


def count_flat(fg: FlatGraph) -> List[LayerCount]:
    """Count the layers of a flattened graph (see :func:`flatten`)."""
    inferred = _infer(fg.model, fg.notes)
    t = _collect(inferred)
    g = fg.model.graph
    counted = [i for i, n in enumerate(g.node) if _counted(n, t)]
    missing: List[str] = []
    for i in counted:
        missing += [x for x in _needed(g.node[i]) if not t.known(x) and x not in missing]
    if missing:
        fg.notes.append(f"shapes of {len(missing)} tensors measured with one onnxruntime run "
                        "(onnx shape inference could not resolve them)")
        _dry_run(fg, missing, t)
    producers = {}
    for n in g.node:
        for o in n.output:
            producers.setdefault(o, n)
    constant = constant_names(g, fg.weights, shapes=True)   # (a mask of ones: a scale)
    parts = {o: n.name or n.op_type for n in g.node if n.op_type in PART_OPS for o in n.output}
    site_dep = walk.dependents(list(g.node), fg.sites.keys())
    names: Dict[str, int] = {}
    rows = []
    B = fg.batch
    for idx in counted:
        n = g.node[idx]
        kind, total = _count_node(n, t)
        out_shape = t.shapes[n.output[0]]
        name = n.name or f"{n.op_type}_{idx}"
        if name in names:
            names[name] += 1
            name = f"{name}#{names[name]}"
        else:
            names[name] = 0
        x = _data_input(n, constant)
        per = total // B if total % B == 0 else total / B
        mix, pooled = source_mix_and_pools(x, producers, fg.sites, constant, t.shapes, fg.pools,
                                           sums=True) if x in site_dep else ({}, {})
        site = next((k for k in mix if k), None)
        rows.append(LayerCount(
            name=name, op=n.op_type, kind=kind, macs=int(per) if kind == "mac" else 0,
            ops=int(per) if kind == "other" else 0, neurons=_prod(out_shape) // B if out_shape else 1,
            input=x, output=n.output[0], output_shape=[int(d) for d in out_shape[1:]],
            source_site=site,
            direct=x not in site_dep,
            source_mix=mix if len(mix) > 1 or any(abs(v - 1.0) > 1e-9 for v in mix.values()) else {},
            source_pools=pooled,
            estimated=_estimated(x, producers, fg.sites, constant, t.shapes,
                                 {"part": parts, "pools": fg.uncounted_pools})
            if x in site_dep else {}))
    return rows


#: ops that keep part of their input: a layer after one reads part of a site's neurons
PART_OPS = ("Slice", "Split", "Gather", "GatherND")


def _estimated(tensor: str, producers, sites, constant, shapes, marks: Mapping[str, dict]
               ) -> dict:
    """Where the analyzer's walk back from ``tensor`` to the sites passes an op after which a
    site's mean rate is an estimate of what the layer receives, by kind: ``marks`` maps a
    kind to {an op's output tensor: its name} ("part": ``PART_OPS``, a part of a site's
    output, which may fire more or less than the whole; "pools": the spiking max pools
    whose output spikes are not counted). {kind: [names]}, only the kinds found."""
    out = {}
    for kind, outputs in marks.items():
        found = source_mix_and_pools(tensor, producers, sites, constant, shapes, outputs,
                                     sums=True)[1] if outputs else {}
        if found:
            out[kind] = sorted(set(found.values()))
    return out


def count_layers(model: onnx.ModelProto,
                 input_shapes: Optional[Mapping[str, Sequence[int]]] = None) -> List[LayerCount]:
    """Per-sample MAC and pooling/add counts of every layer of ``model``, in graph order.

    Works on any ONNX graph: a plain DNN from any exporter, or a spiking model in the
    single-call (loop) or step form (flattened first, see the module docstring). Ops that
    could not be counted (control flow, Einsum, quantized convolutions...) are reported as
    warnings.
    """
    fg = flatten(model, input_shapes)
    rows = count_flat(fg)
    for note in fg.warnings:
        warnings.warn(note, stacklevel=2)
    return rows


def total_macs(layers: Iterable[LayerCount]) -> int:
    return sum(l.macs for l in layers)

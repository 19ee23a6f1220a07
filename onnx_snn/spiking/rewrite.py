"""Rewrite a normalized DNN into the spiking format: the step graph and the single-call graph.

The pipeline is three small passes over the normalized node list:

1. ``step_nodes``: every canonical site node becomes a ``LIFNeuron`` call (plus its spike
   count); everything else is kept as it is.
2. ``partition``: nodes whose inputs never depend on a membrane state (the first layer's
   convolution of the analog input under direct encoding, shape arithmetic, ...) are
   time-invariant and hoisted out of the time loop.
3. ``loop_model``: the rest becomes the body of an ONNX ``Loop`` over ``timesteps``; outputs
   are averaged over time and spike counts summed.
"""
from __future__ import annotations

import copy
import json
from typing import Dict, List, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UnsupportedModelError
from ..graph import walk
from ..graph.normalize import NormalizedModel
from ..graph.sources import constant_names, source_mix
from . import format as fmt
from .neuron import (POOL_ATTRIBUTES, POOL_OPS, neuron_function, pool_functions,
                     signed_neuron_function)


def _site_param_initializers(rec: fmt.SiteRecord) -> List[onnx.TensorProto]:
    return [numpy_helper.from_array(v, fmt.param_name(rec.name, p))
            for p, v in rec.param_values().items()]


def spiking_pools(nm: NormalizedModel, records: Dict[str, fmt.SiteRecord]) -> List[onnx.NodeProto]:
    """The max pools that act on spikes (or currents built from spikes) and so become
    rate-exact spiking pools: those whose input depends on a site's output. A pool of the
    analog input (before any neuron) runs once, outside the time loop, and stays a MaxPool."""
    nodes = list(nm.model.graph.node)
    dep = walk.dependents(nodes, [r.output for r in records.values()])
    return [n for n in nodes if n.op_type in POOL_OPS and n.input[0] in dep
            and len([o for o in n.output if o]) == 1]


def pool_records(pools: Sequence[onnx.NodeProto], shapes: Dict[str, Sequence[int]],
                 nm: Optional[NormalizedModel] = None) -> Dict[str, fmt.PoolRecord]:
    """A record per spiking pool (keyed by the DNN node's name), with its per-sample input
    and output shapes from ``shapes``. With ``nm``, a pool whose input is spikes (a site's
    output, through ops that only move spikes) is ``counted``: the graph counts its output
    spikes, which the layer after it accumulates (the analyzer's rate for that layer)."""
    spikes = _spike_tensors(nm) if nm is not None else None
    return {n.name: fmt.PoolRecord(name=f"{fmt.POOL_PREFIX}{i}", node=n.name,
                                   op=POOL_OPS[n.op_type], input=n.input[0], output=n.output[0],
                                   in_shape=[int(d) for d in shapes[n.input[0]]],
                                   out_shape=[int(d) for d in shapes[n.output[0]]],
                                   counted=spikes is not None and spikes(n.input[0]))
            for i, n in enumerate(pools)}


def _spike_tensors(nm: NormalizedModel):
    """A test of whether a tensor holds only spikes of the sites: every element reaches a
    site's output through ops that move spikes (the pass-through walk of graph.sources, the
    analyzer's too)."""
    g = nm.model.graph
    producers = {o: n for n in g.node for o in n.output if o}
    sites = {s.output: s.name for s in nm.sites}
    constant = constant_names(g)

    def test(tensor: str) -> bool:
        mix = source_mix(tensor, producers, sites, constant)
        return bool(mix) and "" not in mix
    return test


def step_readers(nm: NormalizedModel, records: Dict[str, fmt.SiteRecord]) -> Dict[str, int]:
    """How many of the step graph's nodes read each DNN tensor, counted on the DNN: a site's
    neuron reads its input alone (not the clip's bounds); every other node what it reads
    in the DNN (a spiking pool its one input, as the MaxPool did)."""
    users: Dict[str, int] = {}
    for n in nm.model.graph.node:
        site = n.name in records and n.op_type in ("Clip", "Relu")
        for x in (n.input[:1] if site else n.input):
            users[x] = users.get(x, 0) + 1
    return users


def step_nodes(nm: NormalizedModel, records: Dict[str, fmt.SiteRecord],
               pools: Optional[Dict[str, fmt.PoolRecord]] = None) -> List[onnx.NodeProto]:
    """Nodes of one time step: sites replaced by neuron calls and spike counters, spiking
    pools by their function calls; everything else is kept as it is."""
    pools = pools or {}
    out = []
    for node in nm.model.graph.node:
        pool = pools.get(node.name)
        if pool is not None:
            c, m = (fmt.StateNames(pool.name, k) for k in fmt.POOL_STATES)
            call = helper.make_node(pool.op, [pool.input, c.input, m.input],
                                    [pool.output, c.next, m.next],
                                    name=fmt.pool_node_name(pool.name), domain=fmt.DOMAIN)
            call.attribute.extend(copy.deepcopy(a) for a in node.attribute
                                  if a.name in POOL_ATTRIBUTES)
            out.append(call)
            if pool.counted:
                out += pool_counter_nodes(pool)
            continue
        rec = records.get(node.name)
        if rec is None or node.op_type not in ("Clip", "Relu"):
            out.append(copy.deepcopy(node))
            continue
        s = rec.name
        st = [spec.names for spec in rec.states()]      # membrane (and a signed one's count)
        out.append(helper.make_node(
            rec.neuron_op, [rec.input] + [n.input for n in st] +
            [fmt.param_name(s, p) for p in fmt.NEURON_PARAMS],
            [rec.output] + [n.next for n in st], name=fmt.neuron_node_name(s), domain=fmt.DOMAIN))
        out += _counter_nodes(rec)
    return out


def _counter_nodes(rec: fmt.SiteRecord) -> List[onnx.NodeProto]:
    """spikes = sum(y / amplitude), rounded: each spike's y / amplitude is exactly 1 (y is
    the amplitude itself), so the float32 sum of 0s and 1s is the count, exact up to 2^24
    spikes per sample and step. (Summing y first and dividing once, the counters' form until
    2026-12-08 for a site of one amplitude, saves the elementwise divide but is not exact: a
    sum of 25 088 spikes of amplitude 0.56 came out one spike high per step, which
    ``analyze`` then refused as more than T spikes per neuron.) A signed site counts its
    negative spikes too: sum(|y| / amplitude)."""
    c = fmt.CounterNames(rec.name)
    amp = fmt.param_name(rec.name, "amplitude")
    # a signed site's |y|: every spike, of either sign
    absolute = [helper.make_node("Abs", [rec.output], [c.y_abs], name=c.abs_node)] \
        if rec.signed else []
    y = c.y_abs if rec.signed else rec.output
    return absolute + [
        helper.make_node("Div", [y, amp], [c.y_count], name=c.per_amplitude_node),
        helper.make_node("ReduceSum", [c.y_count, c.axes], [c.y_sum], keepdims=0,
                         name=c.count_node),
        helper.make_node("Round", [c.y_sum], [fmt.spikes_name(rec.name)], name=c.round_node)]


def pool_counter_nodes(pool: fmt.PoolRecord, total: Optional[str] = None) -> List[onnx.NodeProto]:
    """A spiking max pool's output spikes, per sample, into ``total`` (default
    ``<pool>.spikes``): each nonzero output is one spike (the pooled running count rose by
    one; the output is exactly 0 otherwise), so spikes = sum(sign(|y|)), exact, with no
    amplitude to divide by."""
    c = fmt.CounterNames(pool.name)
    return [helper.make_node("Abs", [pool.output], [c.y_abs], name=c.abs_node),
            helper.make_node("Sign", [c.y_abs], [c.y_count], name=c.sign_node),
            helper.make_node("ReduceSum", [c.y_count, c.axes], [total or fmt.spikes_name(pool.name)],
                             keepdims=0, name=c.count_node)]


def _counter_initializers(rec) -> List[onnx.TensorProto]:
    """The counter's axes (every axis but the batch), for a site or a counted pool."""
    shape = rec.shape if isinstance(rec, fmt.SiteRecord) else rec.out_shape
    axes = np.arange(1, len(shape) + 1, dtype=np.int64)
    return [numpy_helper.from_array(axes, fmt.CounterNames(rec.name).axes)]


def counted_pools(pools) -> List[fmt.PoolRecord]:
    """The spiking pools whose output spikes the graph counts."""
    return [p for p in (pools or {}).values() if p.counted]


def _used_site_constants(nm: NormalizedModel, records) -> set:
    """Initializers only the canonical clip nodes used (clip bounds), now unneeded."""
    from ..graph.sites import site_constants
    return {name for r in records.values() for name in site_constants(r.name)}


def float_info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def graph_parts(nm: NormalizedModel, records: Dict[str, fmt.SiteRecord], pools,
                readers: Optional[Dict[str, int]] = None):
    """The step's nodes (new messages) and initializers. The initializers kept from the DNN
    are the normalized model's own messages, not copies (a model built from them copies
    each once, see :func:`_add_initializers`): read them, never change them. ``readers``:
    how many nodes read each tensor in the whole graph, when ``nm`` is a part of it (a
    site's offset is folded into a bias by the same rule as in the whole graph)."""
    nodes = step_nodes(nm, records, pools)
    drop = _used_site_constants(nm, records)
    inits = [i for i in nm.model.graph.initializer if i.name not in drop]
    for rec in records.values():
        inits += _site_param_initializers(rec)
        inits += _counter_initializers(rec)
    for pool in counted_pools(pools):
        inits += _counter_initializers(pool)
    offsets = [rec for rec in records.values() if rec.has_offset]
    if offsets:     # the graph's indexes, built once (a site's offset changes none of them
        by_name = {t.name: t for t in inits}      # that another site's offset reads)
        if readers is None:       # the step graph is the whole graph: count its nodes
            readers = {}
            for n in nodes:
                for x in n.input:
                    readers[x] = readers.get(x, 0) + 1
        users = dict(readers)     # (changed below as offsets fold into biases)
        producers: Dict[str, onnx.NodeProto] = {}
        for n in nodes:
            for o in n.output:
                producers.setdefault(o, n)
        named = {n.name: n for n in nodes}
        dropped: set = set()
        added: Dict[str, onnx.NodeProto] = {}      # neuron node name -> the Add before it
        for rec in offsets:
            _apply_offset(rec, by_name, users, producers, named, inits, dropped, added)
        if dropped:
            inits = [t for t in inits if t.name not in dropped]
        if added:
            nodes = [m for n in nodes for m in ((added[n.name], n) if n.name in added else (n,))]
    return nodes, inits


def _apply_offset(rec: fmt.SiteRecord, by_name, users, producers, named, inits, dropped,
                  added) -> None:
    """Add the site's per-channel current offset to its input every step: folded into the
    bias of the Conv or Gemm that computes the input when that bias (and the input) serve
    this site alone, else by an Add node before the neuron (``added[neuron node name]``; the
    neuron's input renamed here). ``by_name``, ``users``, ``producers`` and ``named`` index
    the step's initializers and nodes; a replaced bias goes into ``dropped``."""
    names = fmt.OffsetNames(rec.name)
    offset = np.asarray(rec.offset, np.float64).reshape(-1)
    producer = producers.get(rec.input)
    c = int(rec.shape[0]) if rec.shape else 1
    if producer is not None and users.get(rec.input, 0) == 1 and producer.op_type in ("Conv", "Gemm"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in producer.attribute}
        has_bias = len(producer.input) > 2 and producer.input[2]
        bias = by_name.get(producer.input[2]) if has_bias else None
        scale = float(attrs.get("beta", 1.0)) if producer.op_type == "Gemm" else 1.0
        ok = (not has_bias or (bias is not None and users.get(bias.name, 0) == 1)) and scale != 0 \
            and not (producer.op_type == "Gemm" and attrs.get("transA", 0)) \
            and (producer.op_type == "Conv" or len(rec.shape) == 1)
        if ok:
            old = numpy_helper.to_array(bias).astype(np.float64) if bias is not None else np.zeros(1)
            if old.size in (1, c) and old.ndim <= 1:
                new = (np.broadcast_to(old.reshape(-1), (c,)) + offset / scale).astype(np.float32)
                t = numpy_helper.from_array(new, names.bias)
                inits.append(t)
                by_name[t.name] = t
                while len(producer.input) < 3:
                    producer.input.append("")
                producer.input[2] = names.bias
                users[names.bias] = 1
                if bias is not None:
                    users[bias.name] -= 1         # as recounting the nodes would find
                    if users[bias.name] == 0:
                        dropped.add(bias.name)
                return
    # an Add node in front of the neuron
    inits.append(numpy_helper.from_array(rec.channel_values(rec.offset), names.offset))
    neuron = named[fmt.neuron_node_name(rec.name)]
    neuron.input[0] = names.current
    added[neuron.name] = helper.make_node("Add", [rec.input, names.offset], [names.current],
                                          name=names.node)


def carried_states(records: Dict[str, fmt.SiteRecord], pools) -> List[fmt.StateSpec]:
    return [st for r in records.values() for st in r.states()] + \
        [st for p in (pools or {}).values() for st in p.states()]


def opsets(nm: NormalizedModel):
    return [helper.make_opsetid("", nm.opset), helper.make_opsetid(fmt.DOMAIN, 1)]


def finish(model: onnx.ModelProto, nm: NormalizedModel, meta: Dict[str, str],
            pools, records: Optional[Dict[str, fmt.SiteRecord]] = None) -> onnx.ModelProto:
    model.ir_version = max(nm.model.ir_version, 8)
    model.producer_name = "onnx-snn"
    from .. import __version__
    model.producer_version = __version__
    recs = list((records or {}).values())
    if not recs or not all(r.signed for r in recs):
        model.functions.append(neuron_function(nm.opset))
    if any(r.signed for r in recs):
        model.functions.append(signed_neuron_function(nm.opset))
    used = {p.op for p in (pools or {}).values()}
    model.functions.extend(f for f in pool_functions(nm.opset) if f.name in used)
    if pools:
        meta = {**meta, fmt.META_POOLS: json.dumps([p.to_dict() for p in pools.values()])}
    fmt.set_metadata(model, meta)
    return model


def step_model(nm: NormalizedModel, records: Dict[str, fmt.SiteRecord],
               meta: Dict[str, str], input_shapes=None, pools=None,
               readers: Optional[Dict[str, int]] = None) -> onnx.ModelProto:
    """One time step as a plain graph: inputs + states in; outputs, next states, spikes out.
    ``readers``: see :func:`graph_parts`."""
    nodes, inits = graph_parts(nm, records, pools, readers)
    g = nm.model.graph
    states = carried_states(records, pools)
    init_names = {i.name for i in g.initializer}
    inputs = [pinned(i, input_shapes) for i in g.input if i.name not in init_names]
    inputs += [float_info(st.names.input, ["N"] + st.shape) for st in states]
    outputs = [copy.deepcopy(o) for o in g.output]
    outputs += [float_info(st.names.next, ["N"] + st.shape) for st in states]
    outputs += [float_info(fmt.spikes_name(r.name), ["N"])
                for r in list(records.values()) + counted_pools(pools)]
    graph = helper.make_graph(nodes, g.name or "snn_step", inputs, outputs)
    model = helper.make_model(graph, opset_imports=opsets(nm))
    _add_initializers(model.graph, inits)
    return finish(model, nm, {**meta, fmt.META_GRAPH: fmt.GRAPH_STEP}, pools, records)


def _add_initializers(graph: onnx.GraphProto, inits: Sequence[onnx.TensorProto]) -> None:
    """Copy ``inits`` into ``graph``: once, into the model being built (``make_graph`` then
    ``make_model`` would copy each twice, the graph into the model included), each with
    ``CopyFrom`` (see ``graph.skeleton.copy_messages``)."""
    from ..graph.skeleton import copy_messages
    copy_messages(graph.initializer, inits)


def pinned(vi: onnx.ValueInfoProto, input_shapes) -> onnx.ValueInfoProto:
    """The input with its non-batch dims fixed to the calibrated ones: membrane states have
    the shapes seen in calibration, so other sizes must be refused up front."""
    vi = copy.deepcopy(vi)
    shape = (input_shapes or {}).get(vi.name)
    if shape is None:
        return vi
    dims = vi.type.tensor_type.shape.dim
    for d, size in zip(list(dims)[1:], shape):
        if not d.HasField("dim_value"):
            d.Clear()
            d.dim_value = int(size)
    return vi


def check_reserved_names(nm: NormalizedModel, n_pools: int = 0) -> None:
    """The spiking graph adds tensors named ``timesteps``, ``snn.*``, ``<site>.*`` and
    ``<pool>.*``."""
    from ..graph.sites import site_constants
    g = nm.model.graph
    site_names = [s.name for s in nm.sites] + [f"{fmt.POOL_PREFIX}{i}" for i in range(n_pools)]
    names = {i.name for i in g.input} | {o for n in g.node for o in n.output} | \
        {i.name for i in g.initializer}
    # the sites' clip constants are the normalization's own; every other name the format
    # reserves is a graph input or output here (normalization renames the rest)
    own = {c for s in site_names for c in site_constants(s)}
    owners = set(site_names)
    for name in sorted(names - own):
        if fmt.is_reserved(name, owners):
            raise UnsupportedModelError(
                f"the model has a tensor named '{name}', a name the spiking format reserves "
                f"('{fmt.TIMESTEPS_INPUT}', '{fmt.RESERVED_PREFIX}*', '{fmt.SITE_PREFIX}<k>.*'); "
                "rename it and export again")


def loop_model(nm: NormalizedModel, records: Dict[str, fmt.SiteRecord], timesteps: int,
               meta: Dict[str, str], input_shapes=None, pools=None) -> onnx.ModelProto:
    """The single-call artifact: hoisted time-invariant work, then a Loop over time steps."""
    nodes, inits = graph_parts(nm, records, pools)
    g = nm.model.graph
    sites = list(records.values()) + counted_pools(pools)     # everything whose spikes are counted
    states = carried_states(records, pools)
    flags = walk.depends(nodes, [st.names.input for st in states])
    hoisted = [n for n, f in zip(nodes, flags) if not f]
    body_nodes = [n for n, f in zip(nodes, flags) if f]
    body_made = {o for n in body_nodes for o in n.output}

    init_names = {i.name for i in g.initializer}
    dnn_inputs = [pinned(i, input_shapes) for i in g.input if i.name not in init_names]
    dnn_outputs = [o.name for o in g.output]

    # the body produces each DNN output and each spike count under its per-step name
    rename = {o: fmt.step_output_name(o) for o in dnn_outputs if o in body_made}
    rename.update({fmt.spikes_name(r.name): fmt.step_spikes_name(r.name) for r in sites})
    walk.rename_tensors(body_nodes, rename)
    # outputs that never depend on a membrane state are the same at every step: they are
    # produced outside the loop, by the hoisted nodes (or are inputs/initializers)
    timed = [o for o in dnn_outputs if o in body_made]
    body_nodes = [helper.make_node("Identity", [fmt.LOOP_COND_IN], [fmt.LOOP_COND_OUT],
                                   name=fmt.LOOP_COND_NODE)] + body_nodes

    out_info = {o.name: o for o in g.output}

    def out_type(name):
        return out_info[name].type.tensor_type.elem_type or TensorProto.FLOAT

    def out_shape(name):
        t = out_info[name].type.tensor_type
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]

    body_inputs = [helper.make_tensor_value_info(fmt.LOOP_ITER, TensorProto.INT64, []),
                   helper.make_tensor_value_info(fmt.LOOP_COND_IN, TensorProto.BOOL, [])]
    body_inputs += [float_info(st.names.input, ["N"] + st.shape) for st in states]
    body_outputs = [helper.make_tensor_value_info(fmt.LOOP_COND_OUT, TensorProto.BOOL, [])]
    body_outputs += [float_info(st.names.next, ["N"] + st.shape) for st in states]
    body_outputs += [helper.make_tensor_value_info(rename[o], out_type(o), out_shape(o)) for o in timed]
    body_outputs += [float_info(fmt.step_spikes_name(r.name), ["N"]) for r in sites]
    body = helper.make_graph(body_nodes, fmt.LOOP_BODY, body_inputs, body_outputs)

    # initial states: each state's initial value broadcast to [batch, *state shape]
    outer = list(hoisted)
    nodes, batch_inits = batch_size_nodes(dnn_inputs[0].name)
    outer += nodes
    inits += batch_inits
    if any(st.init is None for st in states):
        inits.append(zero_initializer())
    for st in states:
        nodes, dims = initial_state_nodes(st, st.init or fmt.ZERO)
        inits += dims
        outer += nodes
    loop_outs = [st.names.last for st in states] + [fmt.steps_output_name(o) for o in timed] + \
        [fmt.steps_spikes_name(r.name) for r in sites]
    outer.append(helper.make_node("Loop", [fmt.TIMESTEPS_INPUT, ""] + [st.names.initial for st in states],
                                  loop_outs, body=body, name=fmt.LOOP_NODE))
    outer.append(helper.make_node("Cast", [fmt.TIMESTEPS_INPUT], [fmt.TIMESTEPS_FLOAT],
                                  to=TensorProto.FLOAT, name=fmt.TIMESTEPS_FLOAT))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), fmt.TIME_AXIS))
    for o in timed:
        on = fmt.OutputNames(o)
        if out_type(o) != TensorProto.FLOAT:  # not a quantity to average: the last step's value
            if fmt.LAST_STEP not in {n.output[0] for n in outer}:
                inits.append(numpy_helper.from_array(np.array(1, np.int64), fmt.ONE))
                outer.append(helper.make_node("Sub", [fmt.TIMESTEPS_INPUT, fmt.ONE], [fmt.LAST_STEP],
                                              name=fmt.LAST_STEP))
            outer.append(helper.make_node("Gather", [fmt.steps_output_name(o), fmt.LAST_STEP], [o],
                                          axis=0, name=on.last))
            continue
        outer.append(helper.make_node("ReduceSum", [fmt.steps_output_name(o), fmt.TIME_AXIS],
                                      [on.sum], keepdims=0, name=on.sum))
        outer.append(helper.make_node("Div", [on.sum, fmt.TIMESTEPS_FLOAT], [o], name=on.mean))
    for r in sites:
        outer.append(helper.make_node("ReduceSum", [fmt.steps_spikes_name(r.name), fmt.TIME_AXIS],
                                      [fmt.spikes_name(r.name)], keepdims=0,
                                      name=fmt.site_total_node(r.name)))

    inits.append(numpy_helper.from_array(np.array(timesteps, np.int64), fmt.TIMESTEPS_INPUT))
    loop_at = next(i for i, n in enumerate(outer) if n.op_type == "Loop")
    inits, body_inits = _move_body_weights(inits, outer, outer[loop_at].attribute[0].g, records)
    inputs = dnn_inputs + [helper.make_tensor_value_info(fmt.TIMESTEPS_INPUT, TensorProto.INT64, [])]
    outputs = [copy.deepcopy(o) for o in g.output]
    outputs += [float_info(fmt.spikes_name(r.name), ["N"]) for r in sites]
    graph = helper.make_graph(outer, g.name or "snn", inputs, outputs)
    model = helper.make_model(graph, opset_imports=opsets(nm))
    _add_initializers(model.graph.node[loop_at].attribute[0].g, body_inits)
    _add_initializers(model.graph, inits)
    return finish(model, nm, {**meta, fmt.META_GRAPH: fmt.GRAPH_LOOP}, pools, records)


def batch_size_nodes(first: str):
    """``snn.batch``, the batch size of the data input ``first`` (a 1-element int64 tensor):
    (nodes, initializers)."""
    return ([helper.make_node("Shape", [first], [fmt.INPUT_SHAPE], name=fmt.INPUT_SHAPE),
             helper.make_node("Gather", [fmt.INPUT_SHAPE, fmt.BATCH_AXIS], [fmt.BATCH],
                              axis=0, name=fmt.BATCH)],
            [numpy_helper.from_array(np.array([0], np.int64), fmt.BATCH_AXIS)])


def zero_initializer() -> onnx.TensorProto:
    """``snn.zero``: the initial value of a state without its own (a float32 scalar 0)."""
    return numpy_helper.from_array(np.array(0.0, np.float32), fmt.ZERO)


def initial_state_nodes(st: fmt.StateSpec, init: str):
    """``st.names.initial``: the tensor ``init`` broadcast to [batch, *st.shape] (reads
    ``snn.batch``, see :func:`batch_size_nodes`): (nodes, initializers)."""
    n = st.names
    return ([helper.make_node("Concat", [fmt.BATCH, n.dims], [n.full_shape], axis=0,
                              name=n.full_shape),
             helper.make_node("Expand", [init, n.full_shape], [n.initial], name=n.initial)],
            [numpy_helper.from_array(np.array(st.shape, np.int64), n.dims)])


def _move_body_weights(inits, outer_nodes, body: onnx.GraphProto, records):
    """Initializers only the time step uses (layer weights) become initializers of the Loop
    body: onnxruntime then prepacks them for its blocked convolutions, which it does not do for
    outer-scope values (about 30 % faster, same results). Neuron parameters stay outside.
    Returns (the outer graph's initializers, the body's), in their order."""
    outer_uses = {i for n in outer_nodes for i in n.input}
    body_uses = {i for n in body.node for i in n.input}
    params = {fmt.param_name(r, p) for r in records for p in fmt.PARAMS}
    keep, moved = [], []
    for t in inits:
        if t.name in body_uses and t.name not in outer_uses and t.name not in params:
            moved.append(t)
        else:
            keep.append(t)
    return keep, moved


def base_metadata(nm: NormalizedModel, records: Dict[str, fmt.SiteRecord], timesteps: int,
                  method: str, history: list) -> Dict[str, str]:
    meta = {fmt.META_RENAMED.get(k, k): v for k, v in nm.source_metadata.items()
            if not k.startswith(fmt.META_PREFIX) or k in fmt.META_CARRIED}
    meta.update({
        fmt.META_FORMAT: str(fmt.format_version(list(records.values()))),
        fmt.META_TIMESTEPS: str(int(timesteps)),
        fmt.META_METHOD: method,
        fmt.META_SITES: json.dumps([r.to_dict() for r in records.values()]),
        fmt.META_HISTORY: json.dumps(history),
        fmt.META_DROPOUT: json.dumps(nm.dropouts),
        fmt.META_OUTPUTS: json.dumps([o.name for o in nm.model.graph.output]),
    })
    if nm.preprocess is not None:
        meta[fmt.META_PREPROCESS] = json.dumps(nm.preprocess)
    if nm.source_sha256:
        meta[fmt.META_SOURCE] = nm.source_sha256
    return meta

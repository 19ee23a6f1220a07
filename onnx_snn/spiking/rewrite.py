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
from typing import Dict, List, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..graph.normalize import NormalizedModel
from . import format as F


def _site_param_initializers(site: str, rec: F.SiteRecord) -> List[onnx.TensorProto]:
    vals = {"threshold": rec.threshold, "amplitude": rec.amplitude, "leak": rec.leak,
            "v_init": rec.v_init}
    return [numpy_helper.from_array(np.array(vals[p], dtype=np.float32), F.param_name(site, p))
            for p in F.PARAMS]


def step_nodes(nm: NormalizedModel, records: Dict[str, F.SiteRecord]) -> List[onnx.NodeProto]:
    """Nodes of one time step: sites replaced by neuron calls and spike counters."""
    out = []
    for node in nm.model.graph.node:
        rec = records.get(node.name)
        if rec is None or node.op_type not in ("Clip", "Relu"):
            out.append(copy.deepcopy(node))
            continue
        s = rec.name
        out.append(helper.make_node(
            F.NEURON_OP, [rec.input, F.state_name(s), F.param_name(s, "threshold"),
                          F.param_name(s, "amplitude"), F.param_name(s, "leak")],
            [rec.output, F.next_state_name(s)], name=f"{s}.neuron", domain=F.DOMAIN))
        # spikes = sum(y) / amplitude, rounded: one pass over y (every spike carries the
        # site's one amplitude; the rounding removes the float sum's tiny error)
        out.append(helper.make_node("ReduceSum", [rec.output, f"{s}.count_axes"], [f"{s}.y_sum"],
                                    keepdims=0, name=f"{s}.count"))
        out.append(helper.make_node("Div", [f"{s}.y_sum", F.param_name(s, "amplitude")],
                                    [f"{s}.y_count"], name=f"{s}.per_amplitude"))
        out.append(helper.make_node("Round", [f"{s}.y_count"], [F.spikes_name(s)], name=f"{s}.round"))
    return out


def _counter_initializers(rec: F.SiteRecord) -> List[onnx.TensorProto]:
    axes = np.arange(1, len(rec.shape) + 1, dtype=np.int64)
    return [numpy_helper.from_array(axes, f"{rec.name}.count_axes")]


def _used_site_constants(nm: NormalizedModel, records) -> set:
    """Initializers only the canonical clip nodes used (clip bounds), now unneeded."""
    return {f"{r.name}.clip_min" for r in records.values()} | \
        {f"{r.name}.mu" for r in records.values()}


def _state_dependent(nodes: Sequence[onnx.NodeProto], states: Sequence[str]) -> List[bool]:
    dep = set(states)
    flags = []
    for n in nodes:
        d = any(i in dep for i in n.input if i)
        if d:
            dep.update(o for o in n.output if o)
        flags.append(d)
    return flags


def _float_info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _graph_parts(nm: NormalizedModel, records: Dict[str, F.SiteRecord]):
    nodes = step_nodes(nm, records)
    drop = _used_site_constants(nm, records)
    inits = [copy.deepcopy(i) for i in nm.model.graph.initializer if i.name not in drop]
    for rec in records.values():
        inits += _site_param_initializers(rec.name, rec)
        inits += _counter_initializers(rec)
    return nodes, inits


def _opsets(nm: NormalizedModel):
    return [helper.make_opsetid("", nm.opset), helper.make_opsetid(F.DOMAIN, 1)]


def _finish(model: onnx.ModelProto, nm: NormalizedModel, meta: Dict[str, str]) -> onnx.ModelProto:
    model.ir_version = max(nm.model.ir_version, 8)
    model.producer_name = "onnx-snn"
    from .. import __version__
    model.producer_version = __version__
    model.functions.append(F.neuron_function(nm.opset))
    F.set_metadata(model, meta)
    return model


def step_model(nm: NormalizedModel, records: Dict[str, F.SiteRecord],
               meta: Dict[str, str], input_shapes=None) -> onnx.ModelProto:
    """One time step as a plain graph: inputs + states in; outputs, next states, spikes out."""
    nodes, inits = _graph_parts(nm, records)
    g = nm.model.graph
    init_names = {i.name for i in g.initializer}
    inputs = [_pinned(i, input_shapes) for i in g.input if i.name not in init_names]
    inputs += [_float_info(F.state_name(r.name), ["N"] + list(r.shape)) for r in records.values()]
    outputs = [copy.deepcopy(o) for o in g.output]
    outputs += [_float_info(F.next_state_name(r.name), ["N"] + list(r.shape)) for r in records.values()]
    outputs += [_float_info(F.spikes_name(r.name), ["N"]) for r in records.values()]
    graph = helper.make_graph(nodes, g.name or "snn_step", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=_opsets(nm))
    return _finish(model, nm, {**meta, F.META_GRAPH: "step"})


def _pinned(vi: onnx.ValueInfoProto, input_shapes) -> onnx.ValueInfoProto:
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


RESERVED_PREFIXES = ("snn.", "lif")


def check_reserved_names(nm: NormalizedModel) -> None:
    """The spiking graph adds tensors named ``timesteps``, ``snn.*`` and ``lif<k>.*``."""
    from ..errors import UnsupportedModelError
    g = nm.model.graph
    site_names = {s.name for s in nm.sites}
    names = {i.name for i in g.input} | {o for n in g.node for o in n.output} | \
        {i.name for i in g.initializer}
    own = {s.output for s in nm.sites} | {s.input for s in nm.sites}
    for name in sorted(names - own):
        clash = name == F.TIMESTEPS_INPUT or name.startswith("snn.") or \
            any(name.startswith(f"{s}.") for s in site_names)
        if clash and not name.endswith((".clip_min", ".mu")):
            raise UnsupportedModelError(
                f"the model has a tensor named '{name}', a name the spiking format reserves "
                f"('{F.TIMESTEPS_INPUT}', 'snn.*', 'lif<k>.*'); rename it and export again")


def loop_model(nm: NormalizedModel, records: Dict[str, F.SiteRecord], timesteps: int,
               meta: Dict[str, str], input_shapes=None) -> onnx.ModelProto:
    """The single-call artifact: hoisted time-invariant work, then a Loop over time steps."""
    nodes, inits = _graph_parts(nm, records)
    g = nm.model.graph
    sites = list(records.values())
    states = [F.state_name(r.name) for r in sites]
    flags = _state_dependent(nodes, states)
    hoisted = [n for n, f in zip(nodes, flags) if not f]
    body_nodes = [n for n, f in zip(nodes, flags) if f]
    body_made = {o for n in body_nodes for o in n.output}

    init_names = {i.name for i in g.initializer}
    dnn_inputs = [_pinned(i, input_shapes) for i in g.input if i.name not in init_names]
    dnn_outputs = [o.name for o in g.output]

    # the body produces each DNN output as "<out>.step", each spike count as "<site>.spikes.step"
    rename = {o: f"{o}.step" for o in dnn_outputs if o in body_made}
    rename.update({F.spikes_name(r.name): F.spikes_name(r.name) + ".step" for r in sites})
    for n in body_nodes:
        for i, o in enumerate(n.output):
            if o in rename:
                n.output[i] = rename[o]
        for i, x in enumerate(n.input):
            if x in rename:
                n.input[i] = rename[x]
    # outputs that never depend on a membrane state are the same at every step: they are
    # produced outside the loop, by the hoisted nodes (or are inputs/initializers)
    timed = [o for o in dnn_outputs if o in body_made]
    body_nodes = [helper.make_node("Identity", ["snn.cond_in"], ["snn.cond_out"], name="loop.cond")] \
        + body_nodes

    out_info = {o.name: o for o in g.output}

    def out_type(name):
        return out_info[name].type.tensor_type.elem_type or TensorProto.FLOAT

    def out_shape(name):
        t = out_info[name].type.tensor_type
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]

    body_inputs = [helper.make_tensor_value_info("snn.iter", TensorProto.INT64, []),
                   helper.make_tensor_value_info("snn.cond_in", TensorProto.BOOL, [])]
    body_inputs += [_float_info(F.state_name(r.name), ["N"] + list(r.shape)) for r in sites]
    body_outputs = [helper.make_tensor_value_info("snn.cond_out", TensorProto.BOOL, [])]
    body_outputs += [_float_info(F.next_state_name(r.name), ["N"] + list(r.shape)) for r in sites]
    body_outputs += [helper.make_tensor_value_info(rename[o], out_type(o), out_shape(o)) for o in timed]
    body_outputs += [_float_info(rename[F.spikes_name(r.name)], ["N"]) for r in sites]
    body = helper.make_graph(body_nodes, "snn_timestep", body_inputs, body_outputs)

    # initial membranes: v_init broadcast to [batch, *site shape]
    first = dnn_inputs[0].name
    outer = list(hoisted)
    outer.append(helper.make_node("Shape", [first], ["snn.input_shape"], name="snn.input_shape"))
    outer.append(helper.make_node("Gather", ["snn.input_shape", "snn.batch_axis"], ["snn.batch"],
                                  axis=0, name="snn.batch"))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "snn.batch_axis"))
    for r in sites:
        s = r.name
        inits.append(numpy_helper.from_array(np.array(r.shape, np.int64), f"{s}.shape"))
        outer.append(helper.make_node("Concat", ["snn.batch", f"{s}.shape"], [f"{s}.v_shape"],
                                      axis=0, name=f"{s}.v_shape"))
        outer.append(helper.make_node("Expand", [F.param_name(s, "v_init"), f"{s}.v_shape"],
                                      [f"{s}.v0"], name=f"{s}.v0"))
    loop_outs = [f"{r.name}.v_last" for r in sites] + [f"{o}.steps" for o in timed] + \
        [f"{r.name}.spikes.steps" for r in sites]
    outer.append(helper.make_node("Loop", [F.TIMESTEPS_INPUT, ""] + [f"{r.name}.v0" for r in sites],
                                  loop_outs, body=body, name="snn.time_loop"))
    outer.append(helper.make_node("Cast", [F.TIMESTEPS_INPUT], ["snn.timesteps_f"],
                                  to=TensorProto.FLOAT, name="snn.timesteps_f"))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "snn.time_axis"))
    for o in timed:
        if out_type(o) != TensorProto.FLOAT:  # not a quantity to average: the last step's value
            if "snn.last_step" not in {n.output[0] for n in outer}:
                inits.append(numpy_helper.from_array(np.array(1, np.int64), "snn.one"))
                outer.append(helper.make_node("Sub", [F.TIMESTEPS_INPUT, "snn.one"], ["snn.last_step"],
                                              name="snn.last_step"))
            outer.append(helper.make_node("Gather", [f"{o}.steps", "snn.last_step"], [o], axis=0,
                                          name=f"{o}.last"))
            continue
        outer.append(helper.make_node("ReduceSum", [f"{o}.steps", "snn.time_axis"], [f"{o}.sum"],
                                      keepdims=0, name=f"{o}.sum"))
        outer.append(helper.make_node("Div", [f"{o}.sum", "snn.timesteps_f"], [o], name=f"{o}.mean"))
    for r in sites:
        outer.append(helper.make_node("ReduceSum", [f"{r.name}.spikes.steps", "snn.time_axis"],
                                      [F.spikes_name(r.name)], keepdims=0, name=f"{r.name}.total"))

    inits.append(numpy_helper.from_array(np.array(timesteps, np.int64), F.TIMESTEPS_INPUT))
    loop_node = next(n for n in outer if n.op_type == "Loop")
    inits = _move_body_weights(inits, outer, loop_node.attribute[0].g)
    inputs = dnn_inputs + [helper.make_tensor_value_info(F.TIMESTEPS_INPUT, TensorProto.INT64, [])]
    outputs = [copy.deepcopy(o) for o in g.output]
    outputs += [_float_info(F.spikes_name(r.name), ["N"]) for r in sites]
    graph = helper.make_graph(outer, g.name or "snn", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=_opsets(nm))
    return _finish(model, nm, {**meta, F.META_GRAPH: "loop"})


def _move_body_weights(inits, outer_nodes, body: onnx.GraphProto):
    """Initializers only the time step uses (layer weights) become initializers of the Loop
    body: onnxruntime then prepacks them for its blocked convolutions, which it does not do for
    outer-scope values (about 30 % faster, same results). Neuron parameters stay outside."""
    outer_uses = {i for n in outer_nodes for i in n.input}
    body_uses = {i for n in body.node for i in n.input}
    keep = []
    for t in inits:
        site_param = any(t.name.endswith("." + p) for p in F.PARAMS)
        if t.name in body_uses and t.name not in outer_uses and not site_param:
            body.initializer.append(t)
        else:
            keep.append(t)
    return keep


def base_metadata(nm: NormalizedModel, records: Dict[str, F.SiteRecord], timesteps: int,
                  method: str, history: list) -> Dict[str, str]:
    meta = {k: v for k, v in nm.source_metadata.items() if not k.startswith(F.META_PREFIX)
            or k in ("onnx_snn.arch", "onnx_snn.dataset", "onnx_snn.test_accuracy")}
    meta.update({
        F.META_FORMAT: str(F.FORMAT_VERSION),
        F.META_TIMESTEPS: str(int(timesteps)),
        F.META_METHOD: method,
        F.META_SITES: json.dumps([r.to_dict() for r in records.values()]),
        F.META_HISTORY: json.dumps(history),
        F.META_DROPOUT: json.dumps(nm.dropouts),
        F.META_OUTPUTS: json.dumps([o.name for o in nm.model.graph.output]),
    })
    if nm.preprocess is not None:
        meta[F.META_PREPROCESS] = json.dumps(nm.preprocess)
    if nm.source_sha256:
        meta[F.META_SOURCE] = nm.source_sha256
    return meta

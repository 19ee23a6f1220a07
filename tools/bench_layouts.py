#!/usr/bin/env python3
"""Benchmark: other layouts of the single-call spiking graph, measured against the default
``Loop`` graph in onnxruntime; prints JSON.

    python tools/bench_layouts.py [--model onnx_snn/models/fmnist_vgg.onnx] [-T 2] [--threads 1]
    python tools/bench_layouts.py --optimization all,extended,basic   # onnxruntime's levels

* ``loop`` (the format's artifact): the time step as the body of an ONNX ``Loop``;
* ``unrolled``: the step graph copied T times into one graph (no ``Loop``; T fixed);
* ``folded``: every layer that reads spikes runs once on all T steps as one batch of T x N
  (layout ``t * N + n``); only the neurons and spiking pools step through time, unrolled;
  the T per-step outputs are concatenated back into the batch for the next layer.

* ``deploy``: ``onnx-snn deploy``'s inference-only graph (unrolled like ``unrolled``, with the
  neurons inlined and the spike counters, the last step's membrane update and the initial
  states' ``Expand`` left out; see onnx_snn/spiking/deploy.py).

* ``--pool-first``: the loop, deploy and binary deploy graphs of the DNN converted with
  ``convert --pool-first`` (each max pool that reads an activation moved ahead of it), timed
  against the same DNN; their outputs are those of another conversion, not compared.

* ``deploy-binary``: the deploy graph of the binary-spike model (``convert --binary-spikes``:
  each site's amplitudes folded into the next layer's weights, so no amplitude ``Mul``). Its
  outputs equal the loop graph's up to float rounding (the weights were rescaled): the JSON
  gives the largest difference and whether every image's top class is the same.

* ``deploy-unit``: ``onnx-snn deploy --unit-thresholds``: the amplitudes folded as in
  ``deploy-binary``, every site rescaled to thresholds of 1, and each neuron written as Add
  and HardSigmoid ops that onnxruntime keeps in its blocked (NCHWc) convolution layout (with
  ``--pool-first`` / ``--signed-spikes`` also of those conversions). Outputs equal the loop
  graph's up to float rounding: the JSON gives the largest difference and the share of images
  whose top class is the same.

* The deploy graphs run the batch ``--batch-chunk`` samples at a time (an ONNX ``Scan`` over
  slices of the batch, ``onnx-snn deploy --batch-chunk``; the same outputs):
  ``deploy-unit-whole`` (and ``deploy-unit-<tag>-whole``) is the unit form without chunks.

All others give the same outputs (checked here, bit for bit) and, but the deploy graph, the same
spike counts. ``unrolled`` and ``folded`` are built by this tool only: their measured gains
(README) did not justify a second artifact; the deploy graph's did. ``--optimization`` also
times the DNN, loop and deploy graphs at onnxruntime's lower graph optimization levels
(``extended``: no NCHWc layout, so no reorders; ``basic``: no fusions either), ratios against
the DNN at ``all``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# siblings in tools/, which `python tools/bench_layouts.py` puts first on sys.path
from _bench_common import emit

ROOT = Path(__file__).resolve().parents[1]


def _name(tensor: str, what: str) -> str:
    return f"{tensor}.{what}"


def _slice(tensor: str, t: int) -> str:
    return f"{tensor}.t{t}"


def folded_model(nm, records, timesteps, meta, input_shapes=None, pools=None):
    """The time-folded graph (see the module docstring)."""
    from onnx_snn.graph import walk
    from onnx_snn.spiking import format as fmt
    from onnx_snn.spiking import rewrite
    T = int(timesteps)
    opset = nm.opset
    nodes, inits = rewrite.graph_parts(nm, records, pools)
    states = rewrite.carried_states(records, pools)
    flags = walk.depends(nodes, [st.names.input for st in states])
    counted_pools = rewrite.counted_pools(pools)
    counter = {c for r in list(records.values()) + counted_pools
               for c in fmt.CounterNames(r.name).nodes}
    hoisted = [n for n, f in zip(nodes, flags) if not f]
    body = [n for n, f in zip(nodes, flags) if f and n.name not in counter]
    g = nm.model.graph
    init_names = {t.name for t in g.initializer}
    data_inputs = [i for i in g.input if i.name not in init_names]
    # tensors that carry the batch axis: computed from the data inputs, not through Shape/Size
    batch_data = {i.name for i in data_inputs}
    for n in hoisted:
        if n.op_type not in ("Shape", "Size") and any(i in batch_data for i in n.input):
            batch_data.update(n.output)

    batch_nodes, batch_inits = rewrite.batch_size_nodes(data_inputs[0].name)
    out: List[onnx.NodeProto] = list(hoisted) + batch_nodes
    extra: List[onnx.TensorProto] = batch_inits + [_int64(fmt.TIME_AXIS, [0]), _int64(fmt.ONE, [1]),
                                                   _int64(_name(fmt.TIMESTEPS_INPUT, "lead"), [T, -1])]
    lead = _name(fmt.TIMESTEPS_INPUT, "lead")
    if any(st.init is None for st in states):
        extra.append(rewrite.zero_initializer())
    stateful = {n.name for n in body if n.domain == fmt.DOMAIN}
    state_of = {st.names.input: st for st in states}
    folded: set = set()
    per_step: Dict[str, List[str]] = {}   # folded tensors whose T slices exist already

    def unfold(x: str) -> List[str]:
        """The T per-step slices of a folded tensor."""
        if x in per_step:
            return per_step[x]
        shape = _name(x, "shape")
        rest = _name(x, "rest")
        split_shape = _name(x, "split_shape")
        steps3 = _name(x, "by_step")
        out.append(helper.make_node("Shape", [x], [shape], name=shape))
        out.append(helper.make_node("Slice", [shape, fmt.ONE, _name(x, "end")], [rest],
                                    name=rest))
        extra.append(_int64(_name(x, "end"), [np.iinfo(np.int64).max]))
        out.append(helper.make_node("Concat", [lead, rest], [split_shape], axis=0, name=split_shape))
        out.append(helper.make_node("Reshape", [x, split_shape], [steps3], name=steps3))
        parts = [_name(x, f"part{t}") for t in range(T)]
        if T == 1:
            out.append(helper.make_node("Identity", [steps3], parts, name=_name(x, "split")))
        elif opset >= 18:
            out.append(helper.make_node("Split", [steps3], parts, axis=0, num_outputs=T,
                                        name=_name(x, "split")))
        else:
            out.append(helper.make_node("Split", [steps3], parts, axis=0,
                                        name=_name(x, "split")))
        slices = [_slice(x, t) for t in range(T)]
        for p, s in zip(parts, slices):
            out.append(helper.make_node("Squeeze", [p, fmt.TIME_AXIS], [s], name=s))
        per_step[x] = slices
        return slices

    def tile(x: str) -> str:
        """A per-sample tensor repeated for the T steps: [T*N, ...]."""
        name = _name(x, "tiled")
        if name not in {o for n in out for o in n.output}:
            out.append(helper.make_node("Concat", [x] * T, [name], axis=0, name=name))
        return name

    for n in body:
        if n.name in stateful:
            x = n.input[0]
            xs = unfold(x) if x in folded else [x] * T
            cur = {}
            for s_in in n.input[1:]:
                st = state_of.get(s_in)
                if st is None:
                    continue
                nodes, dims = rewrite.initial_state_nodes(st, st.init or fmt.ZERO)
                extra += dims
                out += nodes
                cur[s_in] = st.names.initial
            ys = []
            for t in range(T):
                call = copy.deepcopy(n)
                call.name = _slice(n.name, t)
                call.input[0] = xs[t]
                for i, s_in in enumerate(n.input):
                    if i and s_in in cur:
                        call.input[i] = cur[s_in]
                y = _slice(n.output[0], t)
                call.output[0] = y
                for i, s_in in enumerate([s for s in n.input[1:] if s in state_of], start=1):
                    nxt = _slice(state_of[s_in].names.next, t)
                    call.output[i] = nxt
                    cur[s_in] = nxt
                out.append(call)
                ys.append(y)
            out.append(helper.make_node("Concat", ys, [n.output[0]], axis=0,
                                        name=_name(n.output[0], "steps")))
            folded.add(n.output[0])
            per_step[n.output[0]] = ys
            continue
        node = copy.deepcopy(n)
        if any(i in folded for i in node.input):
            for i, x in enumerate(node.input):
                if x and x not in folded and x in batch_data:
                    node.input[i] = tile(x)
            folded.update(o for o in node.output if o)
        out.append(node)

    # outputs: the mean over the T steps (a non-float output: the last step's)
    outputs = [o.name for o in g.output]
    rename = {o: _name(o, "folded") for o in outputs if o in folded}
    walk.rename_tensors(out, rename)
    types = {o.name: o.type.tensor_type.elem_type or TensorProto.FLOAT for o in g.output}
    for o, f in rename.items():
        by_step = _name(o, "by_step_out")
        shape, rest, split_shape = (_name(o, k) for k in ("shape_out", "rest_out", "split_out"))
        extra.append(_int64(_name(o, "end_out"), [np.iinfo(np.int64).max]))
        out += [helper.make_node("Shape", [f], [shape], name=shape),
                helper.make_node("Slice", [shape, fmt.ONE, _name(o, "end_out")], [rest], name=rest),
                helper.make_node("Concat", [lead, rest], [split_shape], axis=0, name=split_shape),
                helper.make_node("Reshape", [f, split_shape], [by_step], name=by_step)]
        if types[o] != TensorProto.FLOAT:
            extra.append(_int64(fmt.LAST_STEP, T - 1))
            out.append(helper.make_node("Gather", [by_step, fmt.LAST_STEP], [o], axis=0,
                                        name=fmt.OutputNames(o).last))
        else:
            out.append(_reduce("ReduceMean", by_step, o, fmt.OutputNames(o).mean, opset))
    # spike counts: one count over the folded outputs, then the sum over T
    for r in records.values():
        c = fmt.CounterNames(r.name)
        amp = fmt.param_name(r.name, "amplitude")
        count, per_amp, rnd = c.count_node, c.per_amplitude_node, c.round_node
        y_step = _name(r.output, "count_steps")
        if r.per_channel:
            out += [helper.make_node("Div", [r.output, amp], [c.y_count], name=per_amp),
                    helper.make_node("ReduceSum", [c.y_count, c.axes], [c.y_sum], keepdims=0, name=count)]
            summed = c.y_sum
        else:
            out += [helper.make_node("ReduceSum", [r.output, c.axes], [c.y_sum], keepdims=0, name=count),
                    helper.make_node("Div", [c.y_sum, amp], [c.y_count], name=per_amp)]
            summed = c.y_count
        out += [helper.make_node("Reshape", [summed, lead], [y_step], name=y_step),
                helper.make_node("ReduceSum", [y_step, fmt.TIME_AXIS], [_name(r.name, "total")],
                                 keepdims=0, name=fmt.site_total_node(r.name)),
                helper.make_node("Round", [_name(r.name, "total")], [fmt.spikes_name(r.name)],
                                 name=rnd)]
    for p in counted_pools:    # each nonzero pooled output is a spike (see rewrite)
        c = fmt.CounterNames(p.name)
        y_step = _name(p.output, "count_steps")
        out += rewrite.pool_counter_nodes(p, c.y_sum)     # per row of the T x N batch
        out += [helper.make_node("Reshape", [c.y_sum, lead], [y_step], name=y_step),
                helper.make_node("ReduceSum", [y_step, fmt.TIME_AXIS], [fmt.spikes_name(p.name)],
                                 keepdims=0, name=fmt.site_total_node(p.name))]
    inputs = [rewrite.pinned(i, input_shapes) for i in data_inputs]
    outs = [copy.deepcopy(o) for o in g.output]
    outs += [rewrite.float_info(fmt.spikes_name(r.name), ["N"])
             for r in list(records.values()) + counted_pools]
    used = {x for n in out for x in walk.node_inputs(n)}
    all_inits = [t for t in inits + extra if t.name in used]
    seen, unique = set(), []
    for t in all_inits:
        if t.name not in seen:
            seen.add(t.name)
            unique.append(t)
    graph = helper.make_graph(out, g.name or "snn", inputs, outs, unique)
    model = helper.make_model(graph, opset_imports=rewrite.opsets(nm))
    return rewrite.finish(model, nm, {**meta, fmt.META_GRAPH: "folded"}, pools)


def _int64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _reduce(op: str, x: str, y: str, name: str, opset: int) -> onnx.NodeProto:
    from onnx_snn.spiking import format as fmt
    if op == "ReduceMean" and opset < 18:
        return helper.make_node(op, [x], [y], axes=[0], keepdims=0, name=name)
    return helper.make_node(op, [x, fmt.TIME_AXIS], [y], keepdims=0, name=name)


def unrolled_model(snn):
    """The step graph copied T times into one graph."""
    from onnx_snn.graph import walk
    from onnx_snn.spiking import format as fmt
    from onnx_snn.spiking import rewrite
    step = snn.step_model()
    view = fmt.read_spiking(step)
    g = step.graph; T = snn.timesteps
    states = view.states
    flags = walk.depends(list(g.node), [s.names.input for s in states])
    hoisted = [n for n, f in zip(g.node, flags) if not f]
    body = [n for n, f in zip(g.node, flags) if f]
    made = {o for n in body for o in n.output}
    out = [copy.deepcopy(n) for n in hoisted]
    inits = list(g.initializer)
    x0 = [i for i in g.input if i.name not in {s.names.input for s in states}][0].name
    batch_nodes, batch_inits = rewrite.batch_size_nodes(x0)
    out += batch_nodes
    inits += batch_inits + [rewrite.zero_initializer()]
    cur = {}
    for st in states:
        nodes, dims = rewrite.initial_state_nodes(st, st.init or fmt.ZERO)
        inits += dims
        out += nodes
        cur[st.names.input] = st.names.initial
    outs = [o.name for o in g.output]
    per = {o: [] for o in outs}
    for t in range(T):
        ren = dict(cur)
        for n in body:
            m = copy.deepcopy(n); m.name = f"{n.name}.t{t}"
            for i, x in enumerate(m.input):
                if x in ren: m.input[i] = ren[x]
            for i, o in enumerate(m.output):
                if o in made:
                    ren[o] = f"{o}.t{t}"; m.output[i] = ren[o]
            out.append(m)
        cur = {st.names.input: ren[st.names.next] for st in states}
        for o in outs:
            per[o].append(ren.get(o, o))
    final = []
    dnn = view.info.outputs
    inits.append(numpy_helper.from_array(np.array(T, np.float32), "snn.T"))
    for o in dnn:
        out.append(helper.make_node("Sum", per[o], [o + ".sum"])); out.append(helper.make_node("Div", [o + ".sum", "snn.T"], [o]))
    for s in view.counted:          # the sites, then the counted spiking pools
        o = fmt.spikes_name(s); out.append(helper.make_node("Sum", per[o], [o]))
    gi = [i for i in g.input if i.name not in {s.names.input for s in states}]
    go = [o for o in g.output if o.name in dnn or o.name in {fmt.spikes_name(s) for s in view.counted}]
    graph = helper.make_graph(out, "unrolled", gi, go, inits)
    m = helper.make_model(graph, opset_imports=list(step.opset_import)); m.ir_version = step.ir_version
    m.functions.extend(step.functions)
    return m


#: onnxruntime's graph optimization levels by name (``all``: what onnx-snn's sessions use)
LEVELS = ("all", "extended", "basic")


def _session(model: onnx.ModelProto, threads: int, level: str):
    """An onnxruntime CPU session at another graph optimization level."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    so.graph_optimization_level = {"extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}[level]
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / "onnx_snn" / "models" / "fmnist_vgg.onnx"))
    ap.add_argument("-T", "--timesteps", type=int, default=2)
    ap.add_argument("--method", default="refined")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--images", type=int, default=2560)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--optimization", default="all",
                    help="onnxruntime graph optimization levels to measure, comma-separated, of "
                         "all (the default, onnx-snn's), extended, basic; the others time the DNN, "
                         "loop and deploy graphs as '<graph>@<level>'")
    ap.add_argument("--pool-first", action="store_true",
                    help="also time the loop, deploy and binary deploy graphs of the same DNN "
                         "converted with --pool-first (other outputs: a different conversion)")
    ap.add_argument("--signed-spikes", action="store_true",
                    help="also time the loop, deploy and binary deploy graphs of the same DNN "
                         "converted with --signed-spikes (other outputs: a different conversion)")
    ap.add_argument("--batch-chunk", type=int, default=None, metavar="N",
                    help="samples per run of the deploy graphs' body (default: deploy's, "
                         "onnx_snn.spiking.batch_chunks.DEFAULT_BATCH_CHUNK); the '-whole' rows "
                         "are the unit deploy graphs without chunks (batch_chunk=0)")
    ap.add_argument("--json", help="also write the JSON here")
    args = ap.parse_args(argv)
    levels = [v.strip() for v in args.optimization.split(",") if v.strip()]
    if not levels or any(v not in LEVELS for v in levels):
        ap.error(f"--optimization takes levels of {', '.join(LEVELS)}, not {args.optimization!r}")
    import onnx_snn
    from onnx_snn.calibrate import make_session
    from onnx_snn.convert import resolve_data
    from onnx_snn.runtimes.ort import ModelRunner
    from onnx_snn.spiking import format as fmt
    from onnx_snn.spiking.batch_chunks import DEFAULT_BATCH_CHUNK
    chunk = DEFAULT_BATCH_CHUNK if args.batch_chunk is None else args.batch_chunk
    snn = onnx_snn.convert(args.model, "fashion-mnist", timesteps=args.timesteps,
                           method=args.method, show_progress=False, reconstruct=0)
    x = resolve_data("fashion-mnist", snn.normalized.preprocess, split="test").take(args.images).x
    models = {"dnn": snn.normalized.model, "loop": snn.model, "unrolled": unrolled_model(snn),
              "folded": folded_model(snn.normalized, snn.records, args.timesteps,
                                     fmt.metadata(snn.model), snn.input_shapes, snn.pools),
              "deploy": onnx_snn.deploy(snn.model, batch_chunk=chunk),
              "deploy-binary": onnx_snn.deploy(snn.binary_model(), batch_chunk=chunk),
              "deploy-unit": onnx_snn.deploy(snn.model, unit_thresholds=True, batch_chunk=chunk),
              "deploy-unit-whole": onnx_snn.deploy(snn.model, unit_thresholds=True, batch_chunk=0)}
    # other conversions of the same DNN (pools moved first also make it a little faster)
    extra = {"pool-first": {"pool_first": True} if args.pool_first else None,
             "signed": {"signed_spikes": True} if args.signed_spikes else None}
    for tag, option in extra.items():
        if option:
            other = onnx_snn.convert(args.model, "fashion-mnist", timesteps=args.timesteps,
                                     method=args.method, show_progress=False, reconstruct=0,
                                     **option)
            models.update({f"loop-{tag}": other.model,
                           f"deploy-{tag}": onnx_snn.deploy(other.model, batch_chunk=chunk),
                           f"deploy-binary-{tag}": onnx_snn.deploy(other.binary_model(), batch_chunk=chunk),
                           f"deploy-unit-{tag}": onnx_snn.deploy(other.model, unit_thresholds=True,
                                                                 batch_chunk=chunk),
                           f"deploy-unit-{tag}-whole": onnx_snn.deploy(other.model, unit_thresholds=True,
                                                                       batch_chunk=0)})
    sess = {k: make_session(m, args.threads) for k, m in models.items()}
    for level in levels:
        if level != "all":
            for k in ("dnn", "loop", "deploy"):
                sess[f"{k}@{level}"] = _session(models[k], args.threads, level)
    feed = {"input": x[:args.batch]}
    ref = sess["loop"].run(None, feed)
    same = {}
    for k in ("unrolled", "folded", "deploy"):
        got = dict(zip([o.name for o in sess[k].get_outputs()], sess[k].run(None, feed)))
        # every output of the loop graph, bar the deploy graph's spike counts, which it does
        # not output (tests/test_deploy.py checks them with --spike-counts)
        want = [(r, o.name) for r, o in zip(ref, sess["loop"].get_outputs())
                if not (k == "deploy" and o.name.endswith(".spikes"))]
        same[k] = all(o in got and np.array_equal(r, got[o]) for r, o in want)
    out = sess["loop"].get_outputs()[0].name

    def against_loop(k):
        got = dict(zip([o.name for o in sess[k].get_outputs()], sess[k].run(None, feed)))[out]
        return {"max_difference": float(np.abs(got - ref[0]).max()),
                "same_top_class": bool(np.array_equal(got.argmax(-1), ref[0].argmax(-1))),
                "top_class_agreement": float(np.mean(got.argmax(-1) == ref[0].argmax(-1)))}
    binary_check = {"sites": snn.report["binary_spikes"], **against_loop("deploy-binary")}
    unit_check = against_loop("deploy-unit")
    # the spike counts too: a neuron within float rounding of its threshold may flip
    counted = ModelRunner(onnx_snn.deploy(snn.model, spike_counts=True, unit_thresholds=True))
    got = counted.run({"input": x[:args.batch]}).spikes
    want = ModelRunner(snn.model).run({"input": x[:args.batch]}).spikes
    unit_check["samples_with_other_spike_counts"] = int(np.sum(np.any(np.stack(
        [got[k] != want[k] for k in want]), axis=0)))
    unit_check["samples"] = int(min(args.batch, len(x)))

    def once(k):
        t0 = time.perf_counter()
        for i in range(0, len(x), args.batch):
            sess[k].run(None, {"input": x[i:i + args.batch]})
        return len(x) / (time.perf_counter() - t0)

    for k in sess:
        once(k)
    best = {k: 0.0 for k in sess}
    for _ in range(args.rounds):
        for k in sess:
            best[k] = max(best[k], once(k))
    emit({"benchmark": "bench_layouts", "model": args.model, "method": args.method,
          "timesteps": args.timesteps, "threads": args.threads, "batch": args.batch,
          "batch_chunk": chunk,
          "optimization": levels,
          "images_per_second": {k: round(v, 1) for k, v in best.items()},
          "over_dnn": {k: round(v / best["dnn"], 3) for k, v in best.items()},
          "over_loop": {k: round(v / best["loop"], 3) for k, v in best.items()},
          "identical_to_loop": same, "deploy_binary": binary_check,
          "deploy_unit": unit_check}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

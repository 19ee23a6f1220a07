"""Batch chunks: run a deploy graph over a large batch a few samples at a time.

A spiking deploy graph is its convolutions plus, per neuron and step, a few elementwise
ops (``Add``, ``HardSigmoid``) that onnxruntime runs as separate passes over whole
tensors. At batch 256 a 32x28x28 site's tensor is 26 MB, far beyond the caches, so every
pass goes to memory; at a batch of 16 the same passes stay in cache. The DNN, whose
activations onnxruntime fuses into its convolutions, runs as fast at either batch size.
:func:`chunk_batch` wraps the graph in an ONNX ``Scan`` whose body is the graph itself (its
weights inside the body, where onnxruntime's blocked-layout rewrite can reach them) run on
``chunk`` samples of the batch per iteration:

* the batch of ``n`` samples is cut into ``c = ceil(n / b)`` slices of ``b = min(n, chunk)``
  samples; the last slice ends at sample ``n`` and so overlaps the one before it where
  ``chunk`` does not divide ``n`` (no padding: at most ``chunk - 1`` samples are computed
  twice, and a batch smaller than ``chunk`` is run whole, once), gathered as ``[c, b, ...]``
  for the ``Scan`` to step over;
* the iterations' outputs, stacked by the ``Scan`` as ``[c, b, ...]``, are flattened and the
  overlap dropped, which gives every output in the order of the batch.

Every sample's outputs are those the graph computes for it in a batch of ``b``: the graph
must compute each sample alone, which the deploy graph of a DNN in inference does when its
inputs and outputs have a dynamic first axis (the batch), the condition checked here
(:func:`why_not`), and that onnxruntime confirms on random samples (:func:`differs`: a
graph that mixes samples, such as a sum over the batch, gives other outputs in chunks).
Where either fails, the graph is left whole and the reason returned. Measured in README
("Inference speed"), ``python tools/bench_layouts.py``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UsageError
from ..graph.skeleton import copy_messages

#: the samples per iteration that deploy graphs use by default (``--batch-chunk``; 0: whole)
DEFAULT_BATCH_CHUNK = 16
#: the most samples per iteration: chunks are for pieces that fit the caches (16-64 measured
#: best, README), and the check that a graph may run in chunks (:func:`differs`) runs 1.5
#: chunks of samples through the model
MAX_BATCH_CHUNK = 1024
#: the prefix of the names the wrapper adds (reserved by the format for onnx-snn's tensors)
_PRE = "snn.chunk/"
#: the first opset with ``Slice`` taking its starts and ends as inputs, and ``Where``
MIN_OPSET = 11


def check_batch_chunk(chunk) -> int:
    """``chunk`` as an int from 0 to :data:`MAX_BATCH_CHUNK`, else a UsageError."""
    if isinstance(chunk, (bool, np.bool_)) or not isinstance(chunk, (int, np.integer)) or chunk < 0:
        raise UsageError(f"batch_chunk must be a whole number of samples, 0 or more (0: the "
                         f"batch whole), not {chunk!r}")
    if chunk > MAX_BATCH_CHUNK:
        raise UsageError(f"batch_chunk is at most {MAX_BATCH_CHUNK} samples (MAX_BATCH_CHUNK: "
                         f"chunks are for pieces that fit the caches, 16-64 run fastest), not "
                         f"{chunk}; 0 runs the batch whole")
    return int(chunk)


def _batch_symbol(value: onnx.ValueInfoProto) -> Optional[str]:
    """The name of ``value``'s first axis when that axis is dynamic and named; else None."""
    t = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape") or len(t.shape.dim) == 0:
        return None
    d = t.shape.dim[0]
    return d.dim_param if d.HasField("dim_param") and d.dim_param else None


def why_not(model: onnx.ModelProto, per_sample: Sequence[str] = ()) -> Optional[str]:
    """Why ``model`` cannot run in batch chunks (None when it can). ``per_sample``: outputs
    known to hold one value per sample (the spike counts), whatever their stated shape."""
    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        return f"opset {opset} has no dynamic Slice (needs {MIN_OPSET})"
    if not g.input:
        return "the graph has no inputs"
    if not all(_dynamic_first(i) for i in g.input):
        return "an input has no dynamic batch axis (a fixed or missing first dimension)"
    symbols = {_batch_symbol(i) for i in g.input} - {None}
    if len(symbols) > 1:
        return f"the inputs name their first axes differently ({', '.join(sorted(symbols))})"
    made = {x for n in g.node for x in n.output}
    for o in g.output:
        if not o.type.tensor_type.HasField("shape"):
            return f"output {o.name!r} states no shape"
        if o.name not in made:
            return f"output {o.name!r} is an input or a constant, not computed by a node"
        # any dynamic first axis, whatever its name: tf2onnx names an output's batch axis
        # apart from the input's (unk__63, unk__62), and so may any producer; whether it is
        # the batch is what differs() runs both graphs to see
        if o.name not in per_sample and not _dynamic_first(o):
            return f"output {o.name!r} has no dynamic first axis (the batch)"
    return None


def _dynamic_first(value: onnx.ValueInfoProto) -> bool:
    """Whether ``value`` states a shape whose first axis is dynamic (named or not)."""
    t = value.type.tensor_type if value.type.HasField("tensor_type") else None
    if t is None or not t.HasField("shape") or len(t.shape.dim) == 0:
        return False
    return not t.shape.dim[0].HasField("dim_value")


#: the name of the body graph of a chunked model's Scan
BODY_NAME = "snn_batch_chunk"


def per_sample_graph(model: onnx.ModelProto) -> onnx.GraphProto:
    """The graph that computes the samples: the body of a chunked model's ``Scan`` (what the
    model was before :func:`chunk_batch`, but for its inputs' and outputs' names), else the
    model's graph itself."""
    for n in model.graph.node:
        if n.op_type == "Scan":
            for a in n.attribute:
                if a.name == "body" and a.g.name == BODY_NAME:
                    return a.g
    return model.graph


def _const(inits: List[TensorProto], name: str, value, dtype=np.int64) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), _PRE + name))
    return _PRE + name


def chunk_batch(model: onnx.ModelProto, chunk: int,
                per_sample: Sequence[str] = ()) -> Tuple[onnx.ModelProto, Optional[str]]:
    """(the model run ``chunk`` samples at a time, None), or (``model`` itself, the reason it
    cannot be: :func:`why_not`, or :func:`differs`: a graph that mixes samples, such as a sum
    over the batch, gives a batch of ``chunk`` other outputs than the whole batch). ``chunk``
    of 0 leaves the model whole (reason "off"). ``model`` is not changed; the new model
    shares no message with it."""
    if chunk <= 0:
        return model, "off"
    reason = why_not(model, per_sample)
    if reason is not None:
        return model, reason
    chunked = _wrap(model, chunk, per_sample)
    reason = differs(model, chunked, chunk)
    return (model, reason) if reason else (chunked, None)


def differs(whole: onnx.ModelProto, chunked: onnx.ModelProto, chunk: int) -> Optional[str]:
    """Why ``chunked`` may not stand for ``whole``: run both in onnxruntime on a batch of
    ``chunk + chunk // 2 + 1`` samples (two slices that overlap; random values in [0, 1) for
    float inputs, zeros for others) and compare every output, to float rounding. None when
    they agree. An op that mixes samples (a sum or a norm over the batch, a batch-size
    dependent shape) shows here, where no list of ops could foresee every exporter's."""
    from ..calibrate import make_session
    from ..graph import skeleton
    if skeleton.byte_size(whole) >= skeleton.MAX_PROTOBUF:     # (the body's weights are inline)
        return "a model of 2 GB or more is not checked for samples that mix, so it runs whole"
    n = chunk + chunk // 2 + 1
    if chunk > 1 and n % chunk == 0:   # (chunk 2: n = 4) slices that overlap, always: an
        n += 1                         # output of k x batch rows then shows in its shape
    rng = np.random.default_rng(0)
    feed = {}
    for i in whole.graph.input:
        t = i.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim[1:]]
        if any(d is None for d in dims):
            return f"input {i.name!r} has a dynamic axis besides the batch"
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        feed[i.name] = (rng.random((n, *dims)).astype(dtype) if np.issubdtype(dtype, np.floating)
                        else np.zeros((n, *dims), dtype))
    try:
        got = [make_session(m, threads=1).run(None, feed) for m in (whole, chunked)]
    except Exception as e:      # noqa: BLE001 -- the verdict: run whole, with the reason
        return f"onnxruntime could not run the check ({str(e).splitlines()[0][:200]})"
    for o, a, b in zip(whole.graph.output, *got):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            return f"output {o.name!r} has shape {b.shape} in chunks, {a.shape} whole"
        if np.issubdtype(a.dtype, np.floating):
            scale = float(np.max(np.abs(a), initial=0.0)) if a.size else 0.0
            if not np.allclose(a, b, rtol=1e-4, atol=1e-4 * max(scale, 1e-6), equal_nan=True):
                return (f"output {o.name!r} differs when the batch runs in chunks of {chunk} "
                        f"(by up to {float(np.nanmax(np.abs(a - b))):.3g}): the graph mixes "
                        "samples (e.g. a sum over the batch)")
        elif not np.array_equal(a, b):
            return f"output {o.name!r} differs when the batch runs in chunks of {chunk}"
    return None


def _wrap(model: onnx.ModelProto, chunk: int, per_sample: Sequence[str]) -> onnx.ModelProto:
    """The model run ``chunk`` samples at a time (see the module docstring)."""
    g = model.graph
    symbol = next((s for s in map(_batch_symbol, g.input) if s), None)   # None: unnamed
    inits: List[TensorProto] = []
    P = _PRE
    zero, one = _const(inits, "zero", [0]), _const(inits, "one", [1])
    two, big = _const(inits, "two", [2]), _const(inits, "end", [np.iinfo(np.int64).max])
    minus1, k = _const(inits, "minus1", [-1]), _const(inits, "chunk", [chunk])
    scalar = _const(inits, "scalar", np.zeros(0))
    n0 = g.input[0].name
    nodes = [
        # n = the batch; b = min(n, chunk) samples per slice
        helper.make_node("Shape", [n0], [P + "shape"]),
        helper.make_node("Gather", [P + "shape", zero], [P + "n"], axis=0),
        helper.make_node("Less", [P + "n", k], [P + "small"]),
        helper.make_node("Where", [P + "small", P + "n", k], [P + "b"]),
        # c = ceil(n / b) slices, at least one (an empty batch: one empty slice, since
        # onnxruntime's Scan takes no empty sequence); slice i starts at min(i b, n - b)
        helper.make_node("Less", [P + "b", one], [P + "empty"]),
        helper.make_node("Where", [P + "empty", one, P + "b"], [P + "b1"]),
        helper.make_node("Add", [P + "n", P + "b1"], [P + "nb"]),
        helper.make_node("Sub", [P + "nb", one], [P + "nb1"]),
        helper.make_node("Div", [P + "nb1", P + "b1"], [P + "c0"]),
        helper.make_node("Where", [P + "empty", one, P + "c0"], [P + "c"]),
        helper.make_node("Reshape", [P + "c", scalar], [P + "c_scalar"]),
        helper.make_node("Reshape", [P + "b", scalar], [P + "b_scalar"]),
        helper.make_node("Reshape", [zero, scalar], [P + "zero_scalar"]),
        helper.make_node("Reshape", [one, scalar], [P + "one_scalar"]),
        helper.make_node("Range", [P + "zero_scalar", P + "c_scalar", P + "one_scalar"], [P + "i"]),
        helper.make_node("Mul", [P + "i", P + "b"], [P + "ib"]),
        helper.make_node("Sub", [P + "n", P + "b"], [P + "last"]),
        helper.make_node("Less", [P + "ib", P + "last"], [P + "inside"]),
        helper.make_node("Where", [P + "inside", P + "ib", P + "last"], [P + "starts"]),
        helper.make_node("Reshape", [P + "starts", _const(inits, "column", [-1, 1])], [P + "starts_col"]),
        helper.make_node("Range", [P + "zero_scalar", P + "b_scalar", P + "one_scalar"], [P + "offsets"]),
        helper.make_node("Add", [P + "starts_col", P + "offsets"], [P + "rows"]),      # [c, b]
    ]
    renamed = {}
    for i in g.input:       # each input as [c, b, ...]: its slices, which the Scan steps over
        renamed[i.name] = P + "slice/" + i.name
        nodes.append(helper.make_node("Gather", [i.name, P + "rows"], [P + "slices/" + i.name],
                                      axis=0))
    outs = {o.name: P + "out/" + o.name for o in g.output}
    body_nodes = []
    for n in g.node:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        for j, x in enumerate(c.input):     # (an output may be read inside the graph too)
            if x in renamed or x in outs:
                c.input[j] = renamed.get(x) or outs[x]
        for j, x in enumerate(c.output):
            if x in outs:
                c.output[j] = outs[x]
        body_nodes.append(c)
    body_inputs = []
    for i in g.input:
        v = onnx.ValueInfoProto()
        v.CopyFrom(i)
        v.name = renamed[i.name]
        body_inputs.append(v)
    body_outputs = []           # onnxruntime's Scan wants every body output's shape stated
    for o in g.output:
        v = onnx.ValueInfoProto()
        v.CopyFrom(o)
        v.name = outs[o.name]
        body_outputs.append(v)
    stacked = [outs[o.name] + ".stacked" for o in g.output]
    # the model is built in place: each weight is copied once, into the body (where
    # onnxruntime's NCHWc rewrite reaches it), never through an intermediate message
    out = onnx.ModelProto()
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version",
              "doc_string"):
        setattr(out, f, getattr(model, f))
    copy_messages(out.opset_import, model.opset_import)
    copy_messages(out.metadata_props, model.metadata_props)
    copy_messages(out.functions, model.functions)
    graph = out.graph
    graph.name, graph.doc_string = g.name, g.doc_string
    graph.node.extend(nodes)
    scan = graph.node.add()
    scan.CopyFrom(helper.make_node("Scan", [P + "slices/" + i.name for i in g.input], stacked,
                                   name=P + "scan", num_scan_inputs=len(g.input),
                                   body=helper.make_graph([], BODY_NAME, [], [])))
    body = next(a.g for a in scan.attribute if a.name == "body")
    body.node.extend(body_nodes)
    body.input.extend(body_inputs)
    body.output.extend(body_outputs)
    copy_messages(body.initializer, g.initializer)
    copy_messages(body.sparse_initializer, g.sparse_initializer)
    copy_messages(body.value_info, g.value_info)
    nodes = []
    # [c, b, ...] -> [c * b, ...], then the rows of the last slice that the one before it
    # already gave are dropped: keep rows [0, (c-1) b) and [(c-1) b + overlap, c b)
    nodes += [
        helper.make_node("Sub", [P + "c", one], [P + "c1"]),
        helper.make_node("Mul", [P + "c1", P + "b"], [P + "kept"]),
        helper.make_node("Add", [P + "kept", P + "b"], [P + "cb"]),
        helper.make_node("Sub", [P + "cb", P + "n"], [P + "overlap"]),
        helper.make_node("Add", [P + "kept", P + "overlap"], [P + "resume"]),
    ]
    for o, s in zip(g.output, stacked):
        nodes += [
            helper.make_node("Shape", [s], [s + ".shape"]),
            helper.make_node("Slice", [s + ".shape", two, big, zero], [s + ".rest"]),
            helper.make_node("Concat", [minus1, s + ".rest"], [s + ".flat_shape"], axis=0),
            helper.make_node("Reshape", [s, s + ".flat_shape"], [s + ".flat"]),
            helper.make_node("Slice", [s + ".flat", zero, P + "kept", zero], [s + ".head"]),
            helper.make_node("Slice", [s + ".flat", P + "resume", big, zero], [s + ".tail"]),
            helper.make_node("Concat", [s + ".head", s + ".tail"], [o.name], axis=0),
        ]
    outputs = []
    for o in g.output:
        v = onnx.ValueInfoProto()
        v.CopyFrom(o)
        t = v.type.tensor_type
        if o.name in per_sample and t.HasField("shape") and len(t.shape.dim):
            t.shape.dim[0].Clear()
            if symbol:
                t.shape.dim[0].dim_param = symbol
        outputs.append(v)
    graph.node.extend(nodes)
    copy_messages(graph.input, g.input)
    graph.output.extend(outputs)
    graph.initializer.extend(inits)
    return out


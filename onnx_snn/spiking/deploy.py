"""The deploy graph: a spiking model unrolled over a fixed T, for inference only.

The loop graph (the format's artifact) runs the time step in an ONNX ``Loop``, calls the
neuron as a model-local function, carries every state through the last step and counts
spikes at every site. Inference needs none of that: the deploy graph is built from a parsed
spiking model (:class:`~onnx_snn.spiking.format.SpikingView`, a loop or step graph) by one
pass that

* copies the time step T times (no ``Loop``; T is fixed by the file);
* expands each ``LIFNeuron`` (and ``SignedIFNeuron``) and spiking-pool call into plain ONNX ops (the rule's own node
  generators, :func:`~onnx_snn.spiking.neuron.neuron_nodes` and ``pool_nodes``), dropping
  the terms that vanish exactly: the initial membrane is a constant (its leak folded in
  numerically, no ``Expand``; a zero one is no ``Add``), a leak or amplitude of one is no
  ``Mul``, zero pool states are no ``Add``/``Sub``, and the last step computes no next
  state;
* keeps the spike counters only on request, and prunes everything the outputs do not read.

Outputs are the DNN's, averaged over T exactly as the loop graph averages them (stacked,
``ReduceSum`` over time, divided by T): the same spike counts, bit for bit, and the same
outputs, up to float rounding where onnxruntime fuses the last, non-spiking layers of the
unrolled graph differently from the loop body's (tests/test_deploy.py and
tests/test_real_models.py check both against the loop graph). The file keeps the spiking
metadata with ``onnx_snn.graph = "deploy"``; onnxruntime (``onnx-snn eval``) runs it, while
fine-tuning, analysis and binary-spike folding need the spiking model it was made from
(:func:`~onnx_snn.spiking.format.read_spiking` refuses it and says so). It uses no custom
domain, so any ONNX runtime runs it.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UsageError
from ..flags import checks_flags
from ..graph import walk
from . import format as fmt
from . import rewrite
from .batch_chunks import DEFAULT_BATCH_CHUNK, check_batch_chunk, chunk_batch
from .neuron import POOL_OPS, neuron_nodes, pool_nodes
from .unit_thresholds import exposed, per_channel, summed_convolution

_POOL_OP = {fn: op for op, fn in POOL_OPS.items()}    # SpikeMaxPool -> MaxPool
#: the graph holds T copies of the time step
DEPLOY_MAX_TIMESTEPS = 64


def _step_name(t: int, name: str) -> str:
    """A tensor or node of step ``t``: under the format's reserved prefix, which no DNN name
    uses (the conversion refuses those), so no copy can take a name the graph already has."""
    return f"{fmt.RESERVED_PREFIX}t{t}/{name}"


def _is(value: Optional[np.ndarray], x: float) -> bool:
    return value is not None and bool(np.all(value == x))


#: a convolution computed once for all steps (on the data input) is copied for step 0, with
#: the neuron's start in its bias, when each output costs at most this many multiply-adds
#: (its input channels per group x kernel size): cheaper than the reorders it saves (the
#: shipped model's first layer, 9: 34 ms against 117 ms of reorders per 2048 images)
DUPLICATE_CONV_MAX_MACS = 64


class _Unroller:
    """Copies the time step T times; ``cur`` maps each state to its current tensor (None
    while it is the zero initial value, a constant's name while it is a nonzero one)."""

    def __init__(self, view: fmt.SpikingView, timesteps: int, spike_counts: bool):
        self.view, self.T = view, int(timesteps)
        self.q: Dict[str, str] = {}      # unit-form neurons: the state's 1 - s of the last step
        self.unit_sites: set = set()     # sites written by unit_neuron
        self.opset = next((o.version for o in view.model.opset_import if o.domain in ("", "ai.onnx")), 13)
        self.inits = view.initializers
        self.body = list(view.body) + (list(view.counters) if spike_counts else [])
        self.made = {o for n in self.body for o in n.output if o}
        self.body_producers = {o: n for n in self.body for o in n.output if o}
        self.exposed = exposed(view)
        self.body_readers = Counter(i for n in self.body for i in n.input)
        self.nodes: List[onnx.NodeProto] = [copy.deepcopy(n) for n in view.hoisted]
        self.new_inits: List[onnx.TensorProto] = []
        self.states = {st.names.input: st for st in view.states}
        self.cur: Dict[str, Optional[str]] = {}
        for st in view.states:
            v0 = self.value(st.init) if st.init else None
            self.cur[st.names.input] = None if v0 is None or _is(v0, 0) else st.init
        self.materialized: Dict[str, str] = {}
        # next states some other node of the step reads: computed at the last step too
        self.read_next = {x for n in self.body for x in n.input} & \
            {st.names.next for st in view.states}

    def unit_form(self, node: onnx.NodeProto) -> bool:
        """Whether the neuron is written in the blocked-layout form (:meth:`unit_neuron`):
        the sites :func:`~.unit_thresholds.unit_thresholds` rescaled and shifted (plain
        integrate-and-fire neurons of leak 1, thresholds now 1)."""
        return fmt.site_of_neuron_node(node.name) in self.unit_sites

    def unit_neuron(self, node: onnx.NodeProto, t: int, arg, pre: str, ren) -> List[onnx.NodeProto]:
        """A neuron of threshold 1 and leak 1 in ops that onnxruntime keeps in its blocked
        (NCHWc) convolution layout: ``Add`` and ``HardSigmoid``, never a compare, a cast or a
        subtraction (each of which makes it reorder the tensor to NCHW and back).

        The site's current arrives as ``x_t - 1`` (``unit_thresholds(shift_reset=True)``
        took 1 from a bias on the way), and the neuron carries ``q_t = 1 - s_t``: the membrane
        ``u_t = u_{t-1} + q_{t-1} + (x_t - 1)`` is ``u_{t-1} - s_{t-1} + x_t``, the reset by
        subtraction, with no subtraction in the graph; the first step adds ``v_init + 1``.
        The neuron fires iff ``u_t >= 1`` (``UNIT_THRESHOLD``: 2**-22 below, so that the
        model's exact ties, rescaled, still fire); :func:`step_functions` gives the two
        HardSigmoids that compute ``s_t`` and ``q_t`` exactly from ``u_t``."""
        x, v, th, amp, leak = node.input
        y, v_next = node.output
        H = helper.make_node
        out: List[onnx.NodeProto] = []
        if t == 0:
            v0 = self.value(self.cur[v]) if self.cur[v] else None
            start = np.float32(1) + (np.float32(0) if v0 is None else v0.astype(np.float32))
            z = pre + "z"
            folded = self.start_in_bias(x, arg(x), start, z, pre, ren)
            if folded is None:
                out.append(H("Add", [arg(x), self.constant(pre + "start", start)], [z], name=z))
            else:
                z, made = folded
                out += made
        else:
            w, z = pre + "zq", pre + "z"
            out.append(H("Add", [self.cur[v], self.q[v]], [w], name=w))
            out.append(H("Add", [w, arg(x)], [z], name=z))
        (a, b), (qa, qb) = step_functions(UNIT_THRESHOLD)
        s = pre + "s"
        out.append(H("HardSigmoid", [z], [s], alpha=a, beta=b, name=s))
        if _is(self.value(amp), 1):
            ren[y] = s
        else:
            out.append(H("Mul", [s, amp], [pre + "y"], name=pre + "y"))
            ren[y] = pre + "y"
        if t < self.T - 1:
            q = pre + "q"
            out.append(H("HardSigmoid", [z], [q], alpha=qa, beta=qb, name=q))
            ren[v_next] = z
            self.q[v] = q
        return out

    def start_in_bias(self, x: str, current: str, start: np.ndarray, z: str, pre: str,
                      ren: Dict[str, str]):
        """Step 0's ``current + start`` as the convolution that computes the current, with
        ``start`` added to its bias: ``(z, nodes to add)``, or None where it cannot be.

        Adding a constant is an op onnxruntime cannot run in its blocked (NCHWc) layout: it
        reorders the convolution's output to NCHW for it, and the step's neuron, the next
        layer's input and every later step's membrane follow in NCHW (on the shipped model
        at T = 2 a fifth of the kernel time was reorders). In the bias the sum stays blocked.
        A convolution of this step that only the neuron reads takes the new bias itself; one
        computed once for all steps (on the data input) is copied for step 0 where that costs
        little (``DUPLICATE_CONV_MAX_MACS`` multiply-adds per output), or at T = 1, where
        the copy is its only use. The rounding moves as the unit form's shifted bias does
        (``acc + (bias + start)`` against ``(acc + bias) + start``; docs/FORMAT.md)."""
        this_step = x in self.made         # else computed once for all steps
        if this_step:    # this step's copy of the Conv (or of one that an Add or Sum adds)
            body = summed_convolution(x, self.body_producers, self.body_readers, self.inits,
                                      self.exposed)
            made = ren.get(body.output[0]) if body is not None else None
            conv = next((n for n in reversed(self.nodes) if made in n.output), None)
        else:
            conv = next((n for n in reversed(self.nodes) if current in n.output), None)
            if conv is not None and (conv.op_type != "Conv" or conv.domain not in ("", "ai.onnx")
                                     or len(conv.input) < 3 or conv.input[2] not in self.inits):
                conv = None
        if conv is None:
            return None
        bias, w = self.value(conv.input[2]), self.value(conv.input[1])
        channels = per_channel(start, bias.shape[0], w.ndim - 1) \
            if bias.ndim == 1 and w is not None else None
        if channels is None:
            return None
        if not this_step and self.T > 1 and (w is None or w[0].size > DUPLICATE_CONV_MAX_MACS):
            return None
        new_bias = self.constant(pre + "bias_start",
                                 (bias.astype(np.float64) + channels).astype(np.float32))
        if this_step:
            conv.input[2] = new_bias
            return current, []
        step0 = copy.deepcopy(conv)
        step0.name, step0.output[:], step0.input[2] = z, [z], new_bias
        return z, [step0]

    def value(self, name: Optional[str]) -> Optional[np.ndarray]:
        t = self.inits.get(name) if name else None
        return numpy_helper.to_array(t) if t is not None else None

    def constant(self, name: str, value: np.ndarray) -> str:
        self.new_inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def full(self, state: str) -> str:
        """A state's initial value broadcast to [batch, *shape], as the loop graph makes it,
        for a node other than a neuron or pool that reads it (none in the format today)."""
        if state not in self.materialized:
            if not self.materialized:      # the batch size and the zero, once
                nodes, inits = rewrite.batch_size_nodes(self.view.data_inputs[0])
                self.nodes += nodes
                self.new_inits += inits + [rewrite.zero_initializer()]
            nodes, inits = rewrite.initial_state_nodes(self.states[state],
                                                       self.cur[state] or fmt.ZERO)
            self.nodes += nodes
            self.new_inits += inits
            self.materialized[state] = self.states[state].names.initial
        return self.materialized[state]

    def step(self, t: int) -> Dict[str, str]:
        """Append step ``t``'s nodes; returns the tensor of every name the step made."""
        last = t == self.T - 1
        ren: Dict[str, str] = {}
        first = t == 0

        def arg(name: str) -> str:
            if name in ren:
                return ren[name]
            if name in self.states:
                return self.cur[name] if not first else self.full(name)
            return name

        for node in self.body:
            pre = _step_name(t, f"{node.name or node.output[0]}.")
            if fmt.is_neuron_node(node) and self.unit_form(node):
                nodes = self.unit_neuron(node, t, arg, pre, ren)
            elif fmt.is_neuron_node(node):
                signed = node.op_type == fmt.SIGNED_NEURON_OP
                if signed:
                    x, v, c, th, amp, leak = node.input
                    y, v_next, c_next = node.output
                else:
                    x, v, th, amp, leak = node.input
                    (y, v_next), c, c_next = node.output, None, None
                leak_value = self.value(leak)
                if first:   # the initial membrane is a constant: leak * v0 computed here
                    v0 = self.value(self.cur[v]) if self.cur[v] else None
                    leaked = None if v0 is None else np.multiply(leak_value, v0, dtype=np.float32)
                    v_arg = None if leaked is None or _is(leaked, 0) else \
                        self.constant(pre + "leaked0", leaked)
                    leak_arg = None
                else:
                    v_arg, leak_arg = arg(v), (None if _is(leak_value, 1) else leak)
                # the count starts at zero: no negative spike on the first step
                c_arg = arg(c) if signed and not first else None
                nodes, out = neuron_nodes(
                    arg(x), v_arg, th, None if _is(self.value(amp), 1) else amp, leak_arg,
                    pre + "y", None if last and v_next not in self.read_next else pre + "v_next",
                    self.opset, prefix=pre, signed=signed, c=c_arg,
                    c_next=None if not signed or (last and c_next not in self.read_next)
                    else pre + "c_next")
                ren[y] = out["y"]
                if "v_next" in out:
                    ren[v_next] = out["v_next"]
                if "c_next" in out:
                    ren[c_next] = out["c_next"]
            elif node.domain == fmt.DOMAIN and node.op_type in _POOL_OP:
                x, c, m = node.input
                y, c_next, m_next = node.output
                nodes, out = pool_nodes(
                    _POOL_OP[node.op_type], arg(x),
                    self.cur[c] if first else arg(c), self.cur[m] if first else arg(m),
                    pre + "y", None if last and c_next not in self.read_next else pre + "c_next",
                    pre + "m_next",
                    [copy.deepcopy(a) for a in node.attribute], prefix=pre)
                ren[y], ren[m_next] = out["y"], out["m_next"]
                if "c_next" in out:
                    ren[c_next] = out["c_next"]
            else:
                m = copy.deepcopy(node)
                m.name = pre[:-1]
                for i, name in enumerate(m.input):
                    if name:
                        m.input[i] = arg(name)
                for i, name in enumerate(m.output):
                    if name in self.made:
                        ren[name] = m.output[i] = _step_name(t, name)
                nodes = [m]
            for n in nodes:
                if not n.name:
                    n.name = n.output[0]
            self.nodes += nodes
        if not last:
            self.cur = {s: ren[st.names.next] for s, st in self.states.items()}
        return ren


#: where a unit-form neuron fires: 4 float32 steps below 1. The model's neuron fires at
#: ``u >= threshold``, and refined conversions can make exact ties (a threshold equal to one
#: input spike's amplitude plus the site's offset, in every channel); rescaled, such a tie
#: comes out up to 3 float32 steps below 1 and would stop firing (every sample of such a net
#: differed). The slack keeps them, and fires early a neuron within 2.4e-7 of its threshold
#: (docs/FORMAT.md has what that costs on the trained networks).
UNIT_THRESHOLD = 1.0 - 2.0 ** -22


def step_functions(threshold: float) -> Tuple[Tuple[float, float], Tuple[float, float]]:
    """``(alpha, beta)`` of two HardSigmoids (``clip(alpha * z + beta, 0, 1)``) that give
    exactly ``1 if z >= threshold else 0`` and ``1 if z < threshold else 0`` for every
    float32 ``z``; ``threshold`` a positive float32 (a whole level, or :data:`UNIT_THRESHOLD`).

    ``alpha`` is a power of two with ``alpha * threshold`` a whole number in [2**23, 2**24]
    (the threshold's 24-bit significand; 2**24 when the threshold is a power of two), so
    ``beta = 1 - alpha * threshold`` is exact in float32 and ``alpha * z`` is exact. For
    ``z >= threshold`` the exact ``alpha * (z - threshold) + 1`` is at least 1; for
    ``z < threshold``, ``threshold - z`` is at least one unit in the last place of the
    threshold's binade (a ``z`` of a lower binade lies below the binade's power of two, which
    is itself one unit or more under a threshold that is not a power of two, and a power of
    two gets the doubled ``alpha``), and ``alpha`` times that is at least 1, so the value is
    at most 0. Rounding is monotone and keeps 0 and 1, so the clipped result is exact with or
    without a fused multiply-add (tests/test_unit_thresholds.py checks every float32 near
    many thresholds, and onnxruntime's kernel)."""
    t = np.float32(threshold)
    if not (np.isfinite(t) and t >= np.float32(2.0 ** -100)) or float(t) > 2.0 ** 100:
        raise ValueError(f"threshold {threshold} is not a positive float32 step functions can make exact")
    mantissa, exp = np.frexp(np.float64(t))          # t = mantissa * 2**exp, mantissa in [0.5, 1)
    e = int(exp) - 1                                  # 2**e <= t < 2**(e+1)
    alpha = 2.0 ** (24 - e) if mantissa == 0.5 else 2.0 ** (23 - e)
    at = alpha * float(t)                             # a whole number below 2**24 + 1
    return (alpha, 1.0 - at), (-alpha, at)


def _stack_sum(nodes, inits, steps: List[str], out: str, opset: int) -> None:
    """``out`` = the per-step tensors stacked on a new time axis and summed over it (the loop
    graph's ReduceSum of its scan output, so the same float sums)."""
    axis = f"{fmt.RESERVED_PREFIX}deploy/{out}.time_axis"
    inits.append(numpy_helper.from_array(np.array([0], np.int64), axis))
    stacked = []
    for i, s in enumerate(steps):
        u = f"{fmt.RESERVED_PREFIX}deploy/{out}.step{i}"
        nodes.append(helper.make_node("Unsqueeze", [s, axis], [u], name=u) if opset >= 13 else
                     helper.make_node("Unsqueeze", [s], [u], axes=[0], name=u))
        stacked.append(u)
    steps_name = f"{fmt.RESERVED_PREFIX}deploy/{out}.steps"
    nodes.append(helper.make_node("Concat", stacked, [steps_name], axis=0, name=steps_name))
    nodes.append(helper.make_node("ReduceSum", [steps_name, axis], [out], keepdims=0, name=out)
                 if opset >= 13 else
                 helper.make_node("ReduceSum", [steps_name], [out], axes=[0], keepdims=0, name=out))


#: the ops whose output shapes the deploy graph states (see :func:`_annotate_shapes`)
_SHAPED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _annotate_shapes(model: onnx.ModelProto) -> None:
    """State the shapes of the synaptic layers' outputs in the graph (``value_info``; in
    place). onnxruntime infers no shape through ``GreaterOrEqual`` (a function in the ONNX
    schema), so without them it knows no shape after the first neuron. Its NCHWc layout
    needs them to prove that two steps' convolution outputs have one shape: then a pool of
    convolution outputs (``--pool-first``) updates its counts and pools in blocked form,
    where it otherwise reorders to NCHW and back. The neurons' own tensors are left
    unstated: a pool of spike counts that onnxruntime knew the shape of would be moved into
    the blocked layout, at the cost of a reorder each way, which is slower. Measured with
    ``python tools/bench_layouts.py --pool-first``; the outputs are the same, bit for bit.
    Shape inference runs on the skeleton (no weight copied); a graph it cannot infer is
    left as it is."""
    from ..graph import skeleton
    sk = skeleton.split(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(sk.model)
    except Exception:       # noqa: BLE001 -- shapes are a help here, not a requirement
        return
    shaped = {o for n in model.graph.node if n.op_type in _SHAPED_OPS for o in n.output} - \
        {o.name for o in model.graph.output}        # (a graph output has its own type)
    model.graph.value_info.extend(v for v in inferred.graph.value_info if v.name in shaped)


def check_deploy_timesteps(T) -> int:
    """``T`` as the int of a deploy graph's time steps (1 to :data:`DEPLOY_MAX_TIMESTEPS`),
    else a UsageError."""
    from ..convert import check_timesteps
    T = check_timesteps(T)
    if T > DEPLOY_MAX_TIMESTEPS:
        raise UsageError(f"a deploy graph holds one copy of the time step per step: at most "
                         f"{DEPLOY_MAX_TIMESTEPS} (DEPLOY_MAX_TIMESTEPS), not T={T}; pass a "
                         "smaller T, or run the spiking model's loop graph")
    return T


def deploy_model(view: fmt.SpikingView, timesteps: Optional[int] = None,
                 spike_counts: bool = False, unit_thresholds: bool = False,
                 batch_chunk: int = DEFAULT_BATCH_CHUNK) -> onnx.ModelProto:
    """The deploy graph of a parsed spiking model (see the module docstring), at ``timesteps``
    (default: the model's T). ``spike_counts`` keeps the per-site spike totals as outputs.
    ``unit_thresholds``: rescale every site that can take it to thresholds of 1
    (:mod:`.unit_thresholds`) and write its neurons in onnxruntime's blocked layout
    (:meth:`_Unroller.unit_neuron`): faster, and the same spikes in real arithmetic (float
    rounding of the rescaled weights can flip a neuron on its threshold).
    ``batch_chunk``: run a batch this many samples at a time (:mod:`.batch_chunks`; the
    same outputs, faster where the neurons' tensors of a whole batch overflow the caches);
    0 runs the batch whole."""
    T = check_deploy_timesteps(view.info.timesteps if timesteps is None else timesteps)
    units, source = None, view.model
    if unit_thresholds:
        from .binary import fold_amplitudes
        from .unit_thresholds import identity_convolutions, offsets_into_biases, \
            unit_thresholds as _unit
        rescaled, _ = identity_convolutions(view.model)        # the one copy of the model
        fold_amplitudes(rescaled, inplace=True)
        _, units = _unit(rescaled, shift_reset=True, inplace=True)
        offsets_into_biases(rescaled)
        view = fmt.read_spiking(rescaled)
    un = _Unroller(view, T, spike_counts)
    if units:
        un.unit_sites = {s for s, what in units.items() if what == "unit"}
    per_step = [un.step(t) for t in range(T)]
    g = view.model.graph
    out_info = {o.name: o for o in g.output}
    nodes, inits = un.nodes, un.new_inits
    outputs = []
    t_float = "snn.deploy.timesteps"
    for o in view.outputs:
        outputs.append(copy.deepcopy(out_info[o]) if o in out_info else
                       helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
        step_name = view.step_outputs[o]
        if step_name not in un.made:      # time-invariant: the hoisted tensor itself
            continue
        steps = [r[step_name] for r in per_step]
        if outputs[-1].type.tensor_type.elem_type not in (0, TensorProto.FLOAT):
            nodes.append(helper.make_node("Identity", [steps[-1]], [o], name=o))   # last step
            continue
        if t_float not in {i.name for i in inits}:
            inits.append(numpy_helper.from_array(np.array(T, np.float32), t_float))
        total = f"{fmt.RESERVED_PREFIX}deploy/{o}.sum"
        _stack_sum(nodes, inits, steps, total, un.opset)
        nodes.append(helper.make_node("Div", [total, t_float], [o], name=f"{fmt.RESERVED_PREFIX}deploy/{o}.mean"))
    if spike_counts:
        for s in view.counted:          # the sites, then the counted spiking pools
            name = fmt.spikes_name(s)
            _stack_sum(nodes, inits, [r[view.step_spikes[s]] for r in per_step], name, un.opset)
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"]))
    nodes = walk.prune(nodes, [o.name for o in outputs])
    # an output can be an initializer itself (a DNN output from a Constant node)
    used = {i for n in nodes for i in n.input} | {o.name for o in outputs}
    all_inits = {**un.inits, **{t.name: t for t in inits}}
    data_inputs = set(view.data_inputs)
    inputs = [copy.deepcopy(i) for i in g.input if i.name in data_inputs]
    graph = helper.make_graph(nodes, g.name or "snn_deploy", inputs, outputs)
    from ..graph.skeleton import copy_messages
    copy_messages(graph.initializer, [all_inits[n] for n in sorted(used) if n in all_inits])
    model = helper.make_model(graph, opset_imports=[o for o in view.model.opset_import
                                                    if o.domain != fmt.DOMAIN])
    model.ir_version = view.model.ir_version
    model.producer_name = view.model.producer_name
    model.producer_version = view.model.producer_version
    _annotate_shapes(model)
    spikes = [fmt.spikes_name(s) for s in view.counted] if spike_counts else []
    model, unchunked = chunk_batch(model, batch_chunk, per_sample=spikes)
    meta = fmt.metadata(source)       # the spiking model's records, not the rescaled copy's
    history = json.loads(meta.get(fmt.META_HISTORY, "[]") or "[]")
    from .. import __version__
    history.append({"step": "deploy", "tool": f"onnx-snn {__version__}",
                    "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "timesteps": T, "spike_counts": bool(spike_counts),
                    **({"unit_thresholds": units} if units is not None else {}),
                    "batch_chunk": 0 if unchunked else int(batch_chunk),
                    **({"batch_chunk_note": unchunked} if unchunked not in (None, "off") else {}),
                    "from_graph": view.info.graph})
    meta.update({fmt.META_GRAPH: fmt.GRAPH_DEPLOY, fmt.META_TIMESTEPS: str(T),
                 fmt.META_HISTORY: json.dumps(history),
                 fmt.META_SPIKE_COUNTS: "1" if spike_counts else "0"})
    fmt.set_metadata(model, meta)
    return model


@checks_flags
def deploy(model, output=None, timesteps: Optional[int] = None,
           spike_counts: bool = False, unit_thresholds: bool = False,
           batch_chunk: int = DEFAULT_BATCH_CHUNK) -> onnx.ModelProto:
    """The deploy graph of the spiking model ``model`` (a path, a ModelProto or the
    SpikingModel ``convert`` returns; a loop or step graph), written atomically to ``output``
    when given (never over an input; with external data beside it when the source kept its
    weights that way). ``batch_chunk``: samples per run of the graph's body (see
    :mod:`.batch_chunks`; 0: the batch whole). Returns it."""
    from ..datasets import check_preprocess
    from ..model_io import (check_model, check_output_path, load_model, model_files, model_proto,
                            save_model)
    spike_counts, unit_thresholds = bool(spike_counts), bool(unit_thresholds)   # (checked above)
    batch_chunk = check_batch_chunk(batch_chunk)
    model = model_proto(model)       # a SpikingModel that convert() returned, not yet saved
    if not isinstance(model, (str, os.PathLike, onnx.ModelProto)):
        raise UsageError(f"deploy takes a spiking model's path, its onnx.ModelProto or what "
                         f"convert() returns, not {type(model).__name__}")
    if output is not None and not isinstance(output, (str, os.PathLike)):
        raise UsageError(f"deploy's output is a path, not {type(output).__name__}")
    from ..convert import check_recorded_timesteps, warn_other_timesteps
    from ..recorded_files import recorded_files
    if timesteps is not None:       # (before the warning that names it)
        timesteps = check_deploy_timesteps(timesteps)
    where = str(model) if not isinstance(model, onnx.ModelProto) else "model"
    inputs = model_files(model) if not isinstance(model, onnx.ModelProto) else []
    # (the files its history names too: the source DNN, the data it was calibrated on)
    protected = inputs + recorded_files(model)
    if output is not None:
        check_output_path(output, *protected)           # before the work
    m = model if isinstance(model, onnx.ModelProto) else load_model(model)
    view = fmt.read_spiking(m, where)
    check_preprocess(view.info.preprocess, where)   # carried into the deploy graph: checked
    if timesteps is None:
        check_recorded_timesteps(view.info.timesteps, where)
    warn_other_timesteps(view.info, [timesteps or view.info.timesteps], where, "deployed")
    out = deploy_model(view, timesteps, spike_counts, unit_thresholds, batch_chunk)
    check_model(out, f"the deploy graph of {where}")     # a graph onnx rejects is not written
    if output is not None:
        save_model(out, output, *protected, external=True if len(inputs) > 1 else None)
    return out

"""The integrate-and-fire rule of the spiking format: the ONNX function body and its numpy
reference, side by side.

Every backend implements the same step (tests/test_neuron_rule.py feeds one set of
time-varying currents to each and asserts identical spikes and membranes)::

    u      = leak * v + x
    s      = (u >= threshold)        # 0/1
    v_next = u - s * threshold       # soft reset (reset by subtraction)
    y      = s * amplitude

* ONNX: :func:`neuron_function`, the model-local function ``ai.onnx_snn.LIFNeuron``;
* numpy: :func:`lif_step` (reference) and :func:`lif_run` (T steps);
* torch: ``onnx_snn.runtimes.torch.neuron.lif_step`` (same forward, surrogate backward);
* the search behind the sequential refinement: ``onnx_snn.scales.simulate_counts``.

Parameters are scalars or tensors that broadcast to the site's shape (per channel).

**Signed neurons** (``ai.onnx_snn.SignedIFNeuron``, ``convert --signed-spikes``): the same
neuron with a memory of its net spike count ``c`` (a second carried state, zero at the start).
A neuron that has fired may take a spike back with a negative one when its membrane drops
below zero (Wang et al., IJCAI 2022, "signed neuron with memory")::

    u      = leak * v + x
    s      = (u >= threshold) - ((u < 0) and (c > 0))     # +1, 0 or -1
    v_next = u - s * threshold;   c_next = c + s;   y = s * amplitude

The net count never goes below zero, so the output summed over T is still ``amplitude`` times
a count in 0..T; what changes is that a neuron driven up on the first step and down on the
second ends where its summed input puts it (a plain neuron keeps the first spike).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

DOMAIN = "ai.onnx_snn"
NEURON_OP = "LIFNeuron"
NEURON_INPUTS = ("x", "v", "threshold", "amplitude", "leak")
NEURON_OUTPUTS = ("y", "v_next")
SIGNED_NEURON_OP = "SignedIFNeuron"
SIGNED_NEURON_INPUTS = ("x", "v", "c", "threshold", "amplitude", "leak")
SIGNED_NEURON_OUTPUTS = ("y", "v_next", "c_next")
NEURON_OPS = (NEURON_OP, SIGNED_NEURON_OP)


def lif_step(x, v, threshold, amplitude, leak=1.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of the rule in float32: returns ``(y, v_next, s)``."""
    f = np.float32
    x, v = np.asarray(x, f), np.asarray(v, f)
    threshold, amplitude, leak = (np.asarray(p, f) for p in (threshold, amplitude, leak))
    u = leak * v + x
    s = (u >= threshold).astype(f)
    v_next = u - s * threshold
    return s * amplitude, v_next, s


def signed_step(x, v, c, threshold, amplitude, leak=1.0):
    """One step of the signed rule in float32: returns ``(y, v_next, c_next, s)``."""
    f = np.float32
    x, v, c = np.asarray(x, f), np.asarray(v, f), np.asarray(c, f)
    threshold, amplitude, leak = (np.asarray(p, f) for p in (threshold, amplitude, leak))
    u = leak * v + x
    s = (u >= threshold).astype(f) - ((u < 0) & (c > 0)).astype(f)
    return s * amplitude, u - s * threshold, c + s, s


def lif_run(currents, v0, threshold, amplitude, leak=1.0, signed: bool = False):
    """Run the rule (``signed``: the signed rule) over ``currents`` [T, ...]: returns
    (y [T, ...], v after each step [T, ...], spikes [T, ...])."""
    v = np.asarray(v0, np.float32)
    c = np.zeros_like(v)
    ys, vs, ss = [], [], []
    for x in np.asarray(currents, np.float32):
        if signed:
            y, v, c, s = signed_step(x, v, c, threshold, amplitude, leak)
        else:
            y, v, s = lif_step(x, v, threshold, amplitude, leak)
        ys.append(y)
        vs.append(v)
        ss.append(s)
    return np.stack(ys), np.stack(vs), np.stack(ss)


def neuron_nodes(x: str, v: Optional[str], threshold: str, amplitude: Optional[str],
                 leak: Optional[str], y: str, v_next: Optional[str], opset: int,
                 prefix: str = "", signed: bool = False, c: Optional[str] = None,
                 c_next: Optional[str] = None) -> Tuple[List[onnx.NodeProto], Dict[str, str]]:
    """The rule's ONNX nodes on the named tensors: the function's body, and its inline
    expansion in the deploy graph, where some terms are known to vanish exactly:

    * ``v=None``: the membrane is zero (``u = x``); ``leak=None``: the leak is one
      (``u = v + x``), or ``v`` already holds ``leak * v``;
    * ``amplitude=None``: the amplitude is one (``y = s``);
    * ``v_next=None``: the next membrane is not needed (the last step: no reset).

    ``signed``: the signed rule, with the net count ``c`` (None: zero, the first step: no
    negative spike can fire) and ``c_next`` (None: not needed).

    Internal tensors are named ``prefix + 'u'`` etc. Returns the nodes and the tensor that
    holds each output (``y`` may be ``s``'s tensor, ``u`` may be ``x``)."""
    H, n = helper.make_node, (lambda t: prefix + t)
    nodes, names = [], {}
    if v is None:
        u = x
    else:
        if leak is not None:
            nodes.append(H("Mul", [leak, v], [n("leaked")]))
            v = n("leaked")
        u = n("u")
        nodes.append(H("Add", [v, x], [u]))
    nodes.append(H("GreaterOrEqual", [u, threshold], [n("fired")]))

    def to_float(b, out):
        return H("CastLike", [b, x], [out]) if opset >= 15 else \
            H("Cast", [b], [out], to=TensorProto.FLOAT)
    if signed and c is not None:   # s = fired - (u < 0 and c > 0)
        nodes.append(H("Constant", [], [n("zero")],
                       value=helper.make_tensor(n("zero"), TensorProto.FLOAT, [], [0.0])))
        nodes.append(H("Less", [u, n("zero")], [n("below")]))
        nodes.append(H("Greater", [c, n("zero")], [n("had")]))
        nodes.append(H("And", [n("below"), n("had")], [n("retract")]))
        nodes.append(to_float(n("fired"), n("pos")))
        nodes.append(to_float(n("retract"), n("neg")))
        nodes.append(H("Sub", [n("pos"), n("neg")], [n("s")]))
    else:
        nodes.append(to_float(n("fired"), n("s")))
    if signed and c_next is not None:
        if c is None:
            names["c_next"] = n("s")
        else:
            nodes.append(H("Add", [c, n("s")], [c_next]))
            names["c_next"] = c_next
    if v_next is not None:
        nodes.append(H("Mul", [n("s"), threshold], [n("reset")]))
        nodes.append(H("Sub", [u, n("reset")], [v_next]))
        names["v_next"] = v_next
    if amplitude is None:
        names["y"] = n("s")
    else:
        nodes.append(H("Mul", [n("s"), amplitude], [y]))
        names["y"] = y
    return nodes, names


def neuron_function(opset: int) -> onnx.FunctionProto:
    """The model-local function that defines one integrate-and-fire step."""
    nodes, _ = neuron_nodes("x", "v", "threshold", "amplitude", "leak", "y", "v_next", opset)
    return helper.make_function(
        DOMAIN, NEURON_OP, list(NEURON_INPUTS), list(NEURON_OUTPUTS), nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        doc_string=("Integrate-and-fire step with leak and soft reset: u = leak*v + x; "
                    "s = u >= threshold; v_next = u - s*threshold; y = s*amplitude"))


def signed_neuron_function(opset: int) -> onnx.FunctionProto:
    """The model-local function of one signed integrate-and-fire step (module docstring)."""
    nodes, _ = neuron_nodes("x", "v", "threshold", "amplitude", "leak", "y", "v_next", opset,
                            signed=True, c="c", c_next="c_next")
    return helper.make_function(
        DOMAIN, SIGNED_NEURON_OP, list(SIGNED_NEURON_INPUTS), list(SIGNED_NEURON_OUTPUTS), nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        doc_string=("Signed integrate-and-fire step with memory: u = leak*v + x; "
                    "s = (u >= threshold) - (u < 0 and c > 0); v_next = u - s*threshold; "
                    "c_next = c + s; y = s*amplitude"))


# ------------------------------------------------------------------ rate-exact max pooling
#
# An OR of one step's spikes is exact per step, but over T steps its rate is at least the
# largest input rate of the window, so the error never shrinks with T. The spiking max pool
# instead pools the running sums ``c`` of its input and emits each step's increase of the
# pooled sum ``m``:
#
#     c_next = c + x;   m_next = MaxPool(c_next);   y = m_next - m
#
# With spikes of one amplitude at the input, no running sum grows by more than one spike per
# step, so ``y`` is 0 or one spike of that amplitude; the sum of ``y`` over T is
# ``MaxPool(sum of x)`` = T x the window's largest rate. On analog currents (pooling before
# the activation) it pools the running currents, i.e. the time average is max of averages.

POOL_OPS = {"MaxPool": "SpikeMaxPool", "GlobalMaxPool": "SpikeGlobalMaxPool"}
POOL_ATTRIBUTES = ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "strides")
POOL_INPUTS = ("x", "c", "m")
POOL_OUTPUTS = ("y", "c_next", "m_next")


def pool_nodes(op: str, x: str, c: Optional[str], m: Optional[str], y: str,
               c_next: Optional[str], m_next: str, attributes: Sequence[onnx.AttributeProto] = (),
               prefix: str = "") -> Tuple[List[onnx.NodeProto], Dict[str, str]]:
    """The spiking pool's ONNX nodes on the named tensors (``op``: MaxPool or GlobalMaxPool),
    for the function's body and the deploy graph's inline expansion: ``c=None`` and
    ``m=None`` mean zero states (the first step: the pool reads ``x`` and ``y`` is the pooled
    value itself), ``c_next=None`` that the running sum is not needed (the last step).
    ``attributes`` are the pool's (references to the function's attributes in its body).
    Returns the nodes and the tensor that holds each output."""
    H = helper.make_node
    nodes, names = [], {}
    if c is None:
        c_sum = x
    else:
        c_sum = c_next if c_next is not None else prefix + "c_next"
        nodes.append(H("Add", [c, x], [c_sum]))
    if c_next is not None:
        names["c_next"] = c_sum
    pool = H(op, [c_sum], [m_next])
    pool.attribute.extend(attributes)
    nodes.append(pool)
    names["m_next"] = m_next
    if m is None:
        names["y"] = m_next
    else:
        nodes.append(H("Sub", [m_next, m], [y]))
        names["y"] = y
    return nodes, names


def _attribute_refs(op: str) -> List[onnx.AttributeProto]:
    refs = []
    for name in (POOL_ATTRIBUTES if op == "MaxPool" else ()):
        a = onnx.AttributeProto()
        a.name = a.ref_attr_name = name
        a.type = (onnx.AttributeProto.STRING if name == "auto_pad" else
                  onnx.AttributeProto.INT if name == "ceil_mode" else onnx.AttributeProto.INTS)
        refs.append(a)
    return refs


def pool_functions(opset: int) -> list:
    """The model-local functions ``SpikeMaxPool`` (MaxPool's attributes) and
    ``SpikeGlobalMaxPool``."""
    out = []
    for op, fn in POOL_OPS.items():
        nodes, _ = pool_nodes(op, "x", "c", "m", "y", "c_next", "m_next", _attribute_refs(op))
        attrs = POOL_ATTRIBUTES if op == "MaxPool" else ()
        out.append(helper.make_function(
            DOMAIN, fn, list(POOL_INPUTS), list(POOL_OUTPUTS), nodes,
            opset_imports=[helper.make_opsetid("", opset)], attributes=list(attrs),
            doc_string=(f"Rate-exact spiking {op}: c_next = c + x; m_next = {op}(c_next); "
                        "y = m_next - m (the increase of the pooled running sum)")))
    return out


def max_pool_step(x, c, m, pool) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy reference of one spiking max-pool step; ``pool`` maps an array to its max pool.
    Returns ``(y, c_next, m_next)``."""
    f = np.float32
    c_next = np.asarray(c, f) + np.asarray(x, f)
    m_next = np.asarray(pool(c_next), f)
    return m_next - np.asarray(m, f), c_next, m_next

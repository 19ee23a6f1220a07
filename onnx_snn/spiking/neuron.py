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
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper

DOMAIN = "ai.onnx_snn"
NEURON_OP = "LIFNeuron"
NEURON_INPUTS = ("x", "v", "threshold", "amplitude", "leak")
NEURON_OUTPUTS = ("y", "v_next")


def lif_step(x, v, threshold, amplitude, leak=1.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step of the rule in float32: returns ``(y, v_next, s)``."""
    f = np.float32
    x, v = np.asarray(x, f), np.asarray(v, f)
    threshold, amplitude, leak = (np.asarray(p, f) for p in (threshold, amplitude, leak))
    u = leak * v + x
    s = (u >= threshold).astype(f)
    v_next = u - s * threshold
    return s * amplitude, v_next, s


def lif_run(currents, v0, threshold, amplitude, leak=1.0):
    """Run the rule over ``currents`` [T, ...]: returns (y [T, ...], v after each step
    [T, ...], spikes [T, ...])."""
    v = np.asarray(v0, np.float32)
    ys, vs, ss = [], [], []
    for x in np.asarray(currents, np.float32):
        y, v, s = lif_step(x, v, threshold, amplitude, leak)
        ys.append(y)
        vs.append(v)
        ss.append(s)
    return np.stack(ys), np.stack(vs), np.stack(ss)


def neuron_function(opset: int) -> onnx.FunctionProto:
    """The model-local function that defines one integrate-and-fire step."""
    nodes = [
        helper.make_node("Mul", ["leak", "v"], ["leaked"]),
        helper.make_node("Add", ["leaked", "x"], ["u"]),
        helper.make_node("GreaterOrEqual", ["u", "threshold"], ["fired"]),
        helper.make_node("CastLike", ["fired", "x"], ["s"]) if opset >= 15 else
        helper.make_node("Cast", ["fired"], ["s"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["s", "threshold"], ["reset"]),
        helper.make_node("Sub", ["u", "reset"], ["v_next"]),
        helper.make_node("Mul", ["s", "amplitude"], ["y"]),
    ]
    return helper.make_function(
        DOMAIN, NEURON_OP, list(NEURON_INPUTS), list(NEURON_OUTPUTS), nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        doc_string=("Integrate-and-fire step with leak and soft reset: u = leak*v + x; "
                    "s = u >= threshold; v_next = u - s*threshold; y = s*amplitude"))


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


def pool_functions(opset: int) -> list:
    """The model-local functions ``SpikeMaxPool`` (MaxPool's attributes) and
    ``SpikeGlobalMaxPool``."""
    out = []
    for op, fn in POOL_OPS.items():
        pool = helper.make_node(op, ["c_next"], ["m_next"])
        attrs = POOL_ATTRIBUTES if op == "MaxPool" else ()
        for name in attrs:
            a = onnx.AttributeProto()
            a.name = a.ref_attr_name = name
            a.type = (onnx.AttributeProto.STRING if name == "auto_pad" else
                      onnx.AttributeProto.INT if name == "ceil_mode" else onnx.AttributeProto.INTS)
            pool.attribute.append(a)
        nodes = [helper.make_node("Add", ["c", "x"], ["c_next"]), pool,
                 helper.make_node("Sub", ["m_next", "m"], ["y"])]
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

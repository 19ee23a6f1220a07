"""What the spiking rewrite can carry, and a check that names the first node it cannot."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .ir import depends_on_inputs, is_empty, node_label

#: layers whose output is a linear function of their (spiking) input
LINEAR_OPS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg",
    "AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum", "Pad",
}
#: data movement and shape computation
STRUCTURAL_OPS = {
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
    "Shape", "Size", "Gather", "Cast", "Constant", "ConstantOfShape", "Expand", "Identity",
    "Range", "Tile", "DepthToSpace", "SpaceToDepth",
}
#: exact on spike trains of one amplitude per layer (max of spikes is a spike)
SPIKE_OPS = {"MaxPool", "GlobalMaxPool"}
#: the canonical activation nodes that become neurons
SITE_OPS = {"Clip", "Relu"}

SUPPORTED_OPS = LINEAR_OPS | STRUCTURAL_OPS | SPIKE_OPS

#: operations that multiply or divide two data tensors are not linear in the spikes
_BILINEAR = {"Mul", "Div", "MatMul"}

SUPPORTED_HELP = ("supported layers: Conv, Gemm, MatMul, Add, MaxPool, AveragePool, "
                  "GlobalAveragePool, Flatten, Reshape, Concat, Pad and shape ops; activations: "
                  "Relu, Clip(0, mu), Relu+Min(mu), Max(0)+Min(mu)")


def check_supported(graph: gs.Graph, site_names: set) -> None:
    """Raise :class:`UnsupportedModelError` naming the first node that cannot be converted."""
    graph.toposort()
    dynamic = depends_on_inputs(graph)
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx", None):
            raise UnsupportedModelError(
                f"{node_label(node)}: custom-domain op '{node.domain}' is not supported; "
                + SUPPORTED_HELP)
        if node.name in site_names and node.op in SITE_OPS:
            continue
        if node.op not in SUPPORTED_OPS:
            kind = ("a nonlinearity the spiking rewrite cannot express"
                    if node.op in _NONLINEAR else "not supported")
            raise UnsupportedModelError(f"{node_label(node)} is {kind}; {SUPPORTED_HELP}")
        if _multiplies_data(node, dynamic):
            raise UnsupportedModelError(f"{node_label(node)} {_BILINEAR_WHY}; {SUPPORTED_HELP}")
        for o in node.outputs:
            kind = _other_float(o.dtype) if o.name in dynamic else None
            if kind:
                raise UnsupportedModelError(
                    f"{node_label(node)} computes '{o.name}' in {kind}; only float32 layers are "
                    "supported: convert the model to float32 (a float16 model with float32 "
                    "inputs and outputs, as onnxconverter-common's keep_io_types writes it, "
                    "computes its layers in float16)")
    for t in graph.inputs:
        try:
            dtype = np.dtype(t.dtype) if t.dtype is not None else np.dtype(np.float32)
        except TypeError:
            dtype = None
        if dtype != np.float32:
            raise UnsupportedModelError(
                f"graph input '{t.name}' is {t.dtype}; only float32 inputs are supported")


_BILINEAR_WHY = "multiplies or divides two data tensors, which is not linear in the spikes"


def _other_float(dtype) -> Optional[str]:
    """The name of a floating-point type other than float32 (float16, bfloat16, float64, the
    float8 types), else None."""
    if dtype is None:
        return None
    try:
        d = np.dtype(dtype)
    except TypeError:
        return None
    name = str(d)
    if d == np.float32 or not (d.kind == "f" or "float" in name):
        return None
    return name


def _multiplies_data(node: gs.Node, dynamic: set) -> bool:
    """Mul/MatMul of two data tensors, or Div by one."""
    if node.op not in _BILINEAR:
        return False
    ins = [t for t in node.inputs if not is_empty(t)]
    return sum(t.name in dynamic for t in ins) > 1 or (
        node.op == "Div" and len(ins) > 1 and ins[1].name in dynamic)


def first_nonlinearity(graph: gs.Graph, site_names: set = frozenset()) -> Optional[Tuple[gs.Node, str]]:
    """The first node, in topological order, that computes a nonlinear function of the input
    data and is not one of the sites, with a phrase saying what it is; None when none does."""
    graph.toposort()
    dynamic = depends_on_inputs(graph)
    for node in graph.nodes:
        if node.name in site_names and node.op in SITE_OPS:
            continue
        if not any(t.name in dynamic for t in node.inputs if not is_empty(t)):
            continue  # shape arithmetic
        if node.op in _NONLINEAR:
            return node, "a nonlinearity the spiking rewrite cannot express"
        if _multiplies_data(node, dynamic):
            return node, _BILINEAR_WHY
    return None


_NONLINEAR = {
    "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "LRN", "LeakyRelu", "PRelu", "Elu", "Selu",
    "Celu", "Gelu", "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Exp", "Log", "Sqrt",
    "Pow", "Abs", "Erf", "ThresholdedRelu", "Mish", "Sin", "Cos", "Reciprocal",
    "LpNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "Max", "Min", "Clip", "Relu", "Sign", "Floor", "Ceil", "Round",
}

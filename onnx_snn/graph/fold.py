"""Constant folding and BatchNormalization folding."""
from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UnsupportedModelError
from .ir import const_value, is_graph_output, node_label

log = logging.getLogger(__name__)


def fold_constants(graph: gs.Graph) -> gs.Graph:
    """Evaluate every subgraph that depends only on constants (Constant, ConstantOfShape,
    Cast, Shape of static dims, ...) so weights and clip bounds become initializers."""
    graph.cleanup().toposort()
    # gs logs every partial failure at WARNING; they are harmless here
    gs_logger = logging.getLogger("onnx_graphsurgeon")
    level = gs_logger.level
    try:
        gs_logger.setLevel(logging.ERROR)
        graph.fold_constants(fold_shapes=True, error_ok=True)
    finally:
        gs_logger.setLevel(level)
    graph.cleanup().toposort()
    # Constant nodes that folding left (e.g. unused) are turned into constants too
    for node in list(graph.nodes):
        if node.op == "Constant" and "value" in node.attrs:
            out = node.outputs[0]
            val = node.attrs["value"]
            values = val.values if isinstance(val, gs.Constant) else np.asarray(val)
            const = gs.Constant(out.name + "_const", np.asarray(values))
            for c in list(out.outputs):
                for i, t in enumerate(c.inputs):
                    if t is out:
                        c.inputs[i] = const
            if not is_graph_output(graph, out):
                node.outputs.clear()
    graph.cleanup().toposort()
    return graph


def _bn_params(node: gs.Node):
    vals = [const_value(t) for t in node.inputs[1:5]]
    if any(v is None for v in vals):
        raise UnsupportedModelError(
            f"{node_label(node)}: BatchNormalization with non-constant parameters cannot be "
            "folded; export the model in eval mode")
    scale, bias, mean, var = (v.astype(np.float64) for v in vals)
    eps = float(node.attrs.get("epsilon", 1e-5))
    k = scale / np.sqrt(var + eps)
    return k, bias - mean * k


def fold_batchnorm(graph: gs.Graph, notes: list) -> gs.Graph:
    """Fold BatchNormalization into the preceding Conv/Gemm; a lone BN becomes Mul + Add."""
    folded, affine = 0, 0
    for node in list(graph.nodes):
        if node.op != "BatchNormalization":
            continue
        k, b = _bn_params(node)
        x, y = node.inputs[0], node.outputs[0]
        prev = x.inputs[0] if x.inputs else None
        single = prev is not None and len(x.outputs) == 1 and not is_graph_output(graph, x)
        conv_bias_ok = prev is not None and (len(prev.inputs) < 3 or not prev.inputs[2].name
                                             or const_value(prev.inputs[2]) is not None)
        if single and prev.op == "Conv" and const_value(prev.inputs[1]) is not None and conv_bias_ok:
            w = const_value(prev.inputs[1]).astype(np.float64)
            bias0 = const_value(prev.inputs[2]).astype(np.float64) \
                if len(prev.inputs) > 2 and prev.inputs[2].name else 0.0
            w = w * k.reshape((-1,) + (1,) * (w.ndim - 1))
            bias = bias0 * k + b
            prev.inputs[1] = gs.Constant(prev.inputs[1].name + "_bnfold", w.astype(np.float32))
            bvar = gs.Constant((prev.name or "conv") + "_bias_bnfold", bias.astype(np.float32))
            if len(prev.inputs) > 2:
                prev.inputs[2] = bvar
            else:
                prev.inputs.append(bvar)
            prev.outputs[0] = y
            node.inputs.clear()
            node.outputs.clear()
            folded += 1
        elif (single and prev.op == "Gemm" and const_value(prev.inputs[1]) is not None
              and (len(prev.inputs) < 3 or const_value(prev.inputs[2]) is not None)):
            beta = float(prev.attrs.get("beta", 1.0))
            w = const_value(prev.inputs[1]).astype(np.float64)
            if int(prev.attrs.get("transB", 0)):
                w = w * k[:, None]
            else:
                w = w * k[None, :]
            c = const_value(prev.inputs[2]).astype(np.float64) if len(prev.inputs) > 2 else 0.0
            c = np.broadcast_to(beta * np.asarray(c).reshape(-1) if np.size(c) > 1 else beta * np.asarray(c).reshape(()), k.shape) * k + b  # BN(alpha*AB + beta*C)
            prev.inputs[1] = gs.Constant(prev.inputs[1].name + "_bnfold", w.astype(np.float32))
            cvar = gs.Constant((prev.name or "gemm") + "_bias_bnfold", c.astype(np.float32))
            if len(prev.inputs) > 2:
                prev.inputs[2] = cvar
            else:
                prev.inputs.append(cvar)
            prev.attrs["beta"] = 1.0
            prev.outputs[0] = y
            node.inputs.clear()
            node.outputs.clear()
            folded += 1
        else:
            rank = len(x.shape) if x.shape is not None else None
            if rank is None:
                raise UnsupportedModelError(
                    f"{node_label(node)}: BatchNormalization whose input rank is unknown cannot "
                    "be turned into an affine layer; export with static shapes")
            shape = (-1,) + (1,) * (rank - 2)
            mid = gs.Variable(y.name + "_scaled", dtype=np.float32)
            mul = gs.Node("Mul", (node.name or "bn") + "_scale",
                          inputs=[x, gs.Constant((node.name or "bn") + "_k",
                                                 k.reshape(shape).astype(np.float32))],
                          outputs=[mid])
            add = gs.Node("Add", (node.name or "bn") + "_shift",
                          inputs=[mid, gs.Constant((node.name or "bn") + "_b",
                                                   b.reshape(shape).astype(np.float32))],
                          outputs=[y])
            node.inputs.clear()
            node.outputs.clear()
            graph.nodes.extend([mul, add])
            affine += 1
    if folded:
        notes.append(f"folded {folded} BatchNormalization layer(s) into the preceding Conv/Gemm")
    if affine:
        notes.append(f"turned {affine} standalone BatchNormalization layer(s) into Mul + Add")
    graph.cleanup().toposort()
    return graph

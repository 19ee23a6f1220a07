"""Einsum with one constant operand, written as the MatMul it is.

``Einsum(x, W)`` (either order) with a constant ``W`` is linear in ``x``: a 1x1 convolution
written ``nchw,oc->nohw``, a dense layer ``bi,oi->bo``, Keras' ``EinsumDense`` (``abc,cd->abd``),
a token mixer ``bnd,nm->bmd``. It is rewritten, with the same values, as

    Transpose(x) -> Reshape [kept axes..., K] -> MatMul W' [K, M] -> Reshape [kept axes...,
    W's own axes] -> Transpose (the output's order)

where the K contracted labels are those of both operands missing from the output, and
``W'`` is ``W`` transposed and reshaped once, here (labels of ``W`` alone that the output
lacks are summed into it). The kept axes are reshaped with ``0`` (copied), so a free batch stays
free. Equations that are not of this kind are left for the support check to name: both
operands computed (attention's ``QK^T``: bilinear), a label of both operands that the output
keeps (a per-element product), a label repeated within an operand (a diagonal), ``...``
(ellipsis), or more than two operands.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import onnx_graphsurgeon as gs

from .ir import const_value
from .passes import PassResult, graph_pass


def parse(equation: str, n_operands: int) -> Optional[Tuple[List[str], str]]:
    """(the operands' labels, the output's labels), explicit or implicit (the labels that
    appear once, sorted), or None for ellipsis or a malformed equation."""
    eq = equation.replace(" ", "")
    if "." in eq:
        return None
    lhs, arrow, rhs = eq.partition("->")
    ops = lhs.split(",")
    if len(ops) != n_operands or not all(o.isalpha() for o in ops) or not (rhs.isalpha() or rhs == ""):
        return None
    if not arrow:
        labels = "".join(ops)
        rhs = "".join(sorted(c for c in set(labels) if labels.count(c) == 1))
    return ops, rhs


def _why_not(a: str, w: str, out: str) -> Optional[str]:
    """Why ``a,w->out`` (a data, w constant) is not one MatMul, or None."""
    for labels in (a, w, out):
        if len(set(labels)) != len(labels):
            return f"a label repeats within '{labels}' (a diagonal or a trace)"
    both = set(a) & set(w) & set(out)
    if both:
        return (f"labels {''.join(sorted(both))} are in both operands and the output "
                "(an elementwise product)")
    if set(out) - set(a) - set(w):
        return "the output has a label of neither operand"
    return None


def _rewrite(graph: gs.Graph, node: gs.Node, x: gs.Tensor, w: np.ndarray, a: str, wl: str,
             out: str) -> None:
    name = node.name or "einsum"
    y = node.outputs[0]
    nodes: List[gs.Node] = []

    def var(suffix):
        return gs.Variable(f"{name}.{suffix}", dtype=np.float32)

    # axes of x that no other operand or the output has: summed first
    dropped = [i for i, c in enumerate(a) if c not in wl and c not in out]
    if dropped:
        s = var("summed")
        nodes.append(gs.Node("ReduceSum", f"{name}.sum", attrs={"keepdims": 0},
                             inputs=[x, gs.Constant(f"{name}.sum_axes", np.array(dropped, np.int64))],
                             outputs=[s]))
        gone = {a[i] for i in dropped}
        x, a = s, "".join(c for c in a if c not in gone)
    # labels of W alone that the output lacks: summed into W here
    for c in [c for c in wl if c not in a and c not in out]:
        w, wl = w.sum(axis=wl.index(c)), wl.replace(c, "")
    contracted = [c for c in a if c in wl]
    kept = [c for c in a if c in out]
    own = [c for c in wl if c in out]
    k = int(np.prod([w.shape[wl.index(c)] for c in contracted])) if contracted else 1
    own_dims = [int(w.shape[wl.index(c)]) for c in own]
    w2 = np.transpose(w, [wl.index(c) for c in contracted + own]).reshape(k, -1).astype(np.float32)
    perm = [a.index(c) for c in kept + contracted]
    if perm != list(range(len(a))):
        t = var("moved")
        nodes.append(gs.Node("Transpose", f"{name}.move", attrs={"perm": perm}, inputs=[x], outputs=[t]))
        x = t
    flat = var("rows")
    nodes.append(gs.Node("Reshape", f"{name}.rows", outputs=[flat], inputs=[
        x, gs.Constant(f"{name}.rows_shape", np.array([0] * len(kept) + [k], np.int64))]))
    prod = var("product")
    nodes.append(gs.Node("MatMul", f"{name}.matmul", inputs=[flat, gs.Constant(f"{name}.weight", w2)],
                         outputs=[prod]))
    order = kept + own
    final = order != list(out)
    shaped = var("shaped") if final else y
    nodes.append(gs.Node("Reshape", f"{name}.unflatten", outputs=[shaped], inputs=[
        prod, gs.Constant(f"{name}.out_shape", np.array([0] * len(kept) + own_dims, np.int64))]))
    if final:
        nodes.append(gs.Node("Transpose", f"{name}.order", inputs=[shaped], outputs=[y],
                             attrs={"perm": [order.index(c) for c in out]}))
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.extend(nodes)


@graph_pass("einsum-to-matmul")
def einsum_to_matmul(graph: gs.Graph, result: PassResult) -> None:
    """Each Einsum of a computed tensor and a constant becomes Transpose/Reshape/MatMul."""
    for node in list(graph.nodes):
        if node.op != "Einsum" or len(node.outputs) != 1:
            continue
        eq = node.attrs.get("equation", "")
        eq = eq.decode() if isinstance(eq, bytes) else str(eq)
        parsed = parse(eq, len(node.inputs))
        if parsed is None or len(node.inputs) != 2:
            result.skip(node, f"equation '{eq}': only two operands without '...' are rewritten")
            continue
        (la, lb), out = parsed
        values = [const_value(t) for t in node.inputs]
        if (values[0] is None) == (values[1] is None):
            result.skip(node, f"equation '{eq}': " + ("both operands are computed (bilinear)"
                                                      if values[0] is None else "both are constants"))
            continue
        xi = 0 if values[0] is None else 1
        a, wl = (la, lb) if xi == 0 else (lb, la)
        w = np.asarray(values[1 - xi], np.float32)
        why = _why_not(a, wl, out)
        if why is None and w.ndim != len(wl):
            why = f"its constant has {w.ndim} axes, not {len(wl)}"
        if why is not None:
            result.skip(node, f"equation '{eq}': {why}")
            continue
        _rewrite(graph, node, node.inputs[xi], w, a, wl, out)
        result.changed += 1
        result.notes.append(f"Einsum '{node.name}' ('{eq}') written as a MatMul with its "
                            "constant operand")
    graph.cleanup().toposort()


__all__ = ["einsum_to_matmul", "parse"]

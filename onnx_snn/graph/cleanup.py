"""Passes that drop what has no place in a spiking graph: final softmax, Identity, Dropout."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from .ir import bypass, const_value, is_graph_output, producer, scalar_value


def _unwrap_coerced_softmax(graph: gs.Graph, out) -> None:
    """Old-opset Softmax upgraded to 13 is written Reshape(Softmax(Flatten(t)), Shape(t)):
    make it a plain Softmax(t) over the last axis so that it can be dropped like one."""
    node = producer(out)
    if node is None or node.op != "Reshape":
        return
    sm = producer(node.inputs[0])
    if sm is None or sm.op not in ("Softmax", "LogSoftmax") or len(sm.outputs[0].outputs) != 1:
        return
    fl = producer(sm.inputs[0])
    shp = producer(node.inputs[1])
    if fl is None or fl.op != "Flatten" or shp is None or shp.op != "Shape":
        return
    t = fl.inputs[0]
    if shp.inputs[0] is not t or (t.shape is not None and len(t.shape) != 2):
        return
    sm.inputs[0] = t
    sm.outputs[0] = out
    node.outputs.clear()
    node.inputs.clear()
    graph.cleanup()  # drops the now unused Flatten and Shape


def strip_final_softmax(graph: gs.Graph, notes: list) -> gs.Graph:
    """A Softmax/LogSoftmax feeding a graph output is dropped: argmax is unchanged."""
    for out in list(graph.outputs):
        _unwrap_coerced_softmax(graph, out)
        node = producer(out)
        if node is not None and node.op in ("Softmax", "LogSoftmax") and len(out.outputs) == 0:
            notes.append(f"dropped the final {node.op} '{node.name}': the spiking model outputs "
                         "time-averaged logits (argmax, hence top-1, is unchanged)")
            bypass(graph, node)
    graph.cleanup()
    return graph


def remove_identity_and_dropout(graph: gs.Graph, notes: list, dropouts: list) -> gs.Graph:
    """Bypass Identity and Dropout nodes; Dropout sites are recorded for fine-tuning."""
    for node in list(graph.nodes):
        if node.op == "Identity" and node.inputs:
            bypass(graph, node)
        elif node.op == "Dropout":
            if len(node.outputs) > 1 and (node.outputs[1].outputs or is_graph_output(graph, node.outputs[1])):
                _all_ones_mask(graph, node)
            ratio = node.attrs.get("ratio", None)
            if ratio is None and len(node.inputs) > 1:
                ratio = scalar_value(node.inputs[1])
            ratio = 0.5 if ratio is None else float(ratio)
            src = node.inputs[0]
            dropouts.append({"tensor": src.name, "ratio": round(ratio, 6),
                             "node": node.name})
            bypass(graph, node)
    graph.cleanup()
    return graph


def _all_ones_mask(graph: gs.Graph, node: gs.Node) -> None:
    """At inference Dropout's mask output is all ones: compute it as such."""
    import numpy as np
    mask = node.outputs[1]
    shape = gs.Variable(mask.name + "_shape", dtype=np.int64)
    graph.nodes.append(gs.Node("Shape", f"{node.name}_mask_shape", inputs=[node.inputs[0]], outputs=[shape]))
    graph.nodes.append(gs.Node("ConstantOfShape", f"{node.name}_mask", inputs=[shape], outputs=[mask],
                               attrs={"value": gs.Constant("one", np.array([True]))}))
    node.outputs = node.outputs[:1]


def drop_unused_outputs_of(graph: gs.Graph) -> gs.Graph:
    """Dropout's optional mask output and similar dangling outputs are removed."""
    for node in graph.nodes:
        node.outputs = [o for i, o in enumerate(node.outputs)
                        if i == 0 or o.outputs or is_graph_output(graph, o)]
    return graph


__all__ = ["strip_final_softmax", "remove_identity_and_dropout", "drop_unused_outputs_of",
           "const_value"]

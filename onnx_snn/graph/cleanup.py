"""Passes that drop what has no place in a spiking graph: final softmax, Identity, Dropout."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from .ir import bypass, const_value, is_graph_output, producer, scalar_value


def strip_final_softmax(graph: gs.Graph, notes: list) -> gs.Graph:
    """A Softmax/LogSoftmax feeding a graph output is dropped: argmax is unchanged."""
    for out in list(graph.outputs):
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


def drop_unused_outputs_of(graph: gs.Graph) -> gs.Graph:
    """Dropout's optional mask output and similar dangling outputs are removed."""
    for node in graph.nodes:
        node.outputs = [o for i, o in enumerate(node.outputs)
                        if i == 0 or o.outputs or is_graph_output(graph, o)]
    return graph


__all__ = ["strip_final_softmax", "remove_identity_and_dropout", "drop_unused_outputs_of",
           "const_value"]

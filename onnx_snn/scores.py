"""What a classifier's first output holds, and the classes top-1 reads from it.

Three kinds of first output (:func:`first_output_kind`, read from the graph):

- ``ids``: class ids, an ArgMax's or a TopK's indices (best first), through casts and
  reshapes; a DNN exported with its serving head (its spiking model outputs the scores);
- ``probabilities``: a final Sigmoid's, a binary classifier's probability (or a
  multi-label model's); the spiking model, whose conversion drops the Sigmoid, outputs its
  logit;
- ``scores``: logits, a Softmax's probabilities, a quantized model's integer scores.

:func:`class_scores` gives every scored output as [N, classes]; a binary classifier's one
score per sample (logit z, or probability p) becomes the two classes [0, z] (or [1 - p, p]),
so that argmax, cross-entropy and distillation read it as they read any classifier: class 1
when z > 0 (p > 0.5), and the cross-entropy of [0, z] is the binary cross-entropy of z.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import onnx

from .datasets import check_label_range
from .errors import DataError

IDS, PROBABILITIES, SCORES = "ids", "probabilities", "scores"

#: ops that carry class ids or scores to an output unchanged (but for their layout or type)
CARRY_OPS = ("Identity", "Cast", "Reshape", "Squeeze", "Unsqueeze", "Flatten")
#: lookups of ids in a constant table (skl2onnx maps ArgMax's indices to class labels)
LOOKUP_OPS = ("Gather", "ArrayFeatureExtractor")


def _first_output_source(model: onnx.ModelProto, name: str):
    """(the node that computes output ``name`` up to carry ops, lookups and
    Quantize/DequantizeLinear pairs, the tensor of it that is read, the last lookup's table of
    class labels or None)."""
    g = model.graph
    producers = {o: n for n in g.node for o in n.output if o}
    inits = {i.name: i for i in g.initializer}    # read only when a lookup's table is one
    t, node, table = name, producers.get(name), None
    while node is not None and node.input:
        if node.op_type in CARRY_OPS:
            t = node.input[0]
        elif node.op_type in LOOKUP_OPS and len(node.input) > 1 and _is_constant(
                node.input[0], inits, producers):
            if table is None:
                table = _constant(node.input[0], inits, producers)
            t = node.input[1]          # ids looked up in a table of class labels
        elif node.op_type == "DequantizeLinear" and producers.get(node.input[0]) is not None \
                and producers[node.input[0]].op_type == "QuantizeLinear":
            t = producers[node.input[0]].input[0]    # a quantized model's fake quantization
        else:
            break
        node = producers.get(t)
    return node, t, table


def _is_constant(name: str, inits: dict, producers: dict) -> bool:
    return name in inits or (name in producers and producers[name].op_type == "Constant")


def _constant(name: str, inits: dict, producers: dict) -> Optional[np.ndarray]:
    """The value of an initializer or a Constant node's output, flattened."""
    from onnx import numpy_helper
    if name in inits:
        return numpy_helper.to_array(inits[name]).reshape(-1)
    value = _constant_value(producers[name])
    return None if value is None else np.asarray(value).reshape(-1)


def _constant_value(node: onnx.NodeProto) -> Optional[np.ndarray]:
    """A Constant node's value, whichever attribute holds it."""
    from onnx import numpy_helper
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_ints", "value_floats", "value_strings"):
            return np.array(list(onnx.helper.get_attribute_value(a)))
        if a.name in ("value_int", "value_float", "value_string"):
            return np.array(onnx.helper.get_attribute_value(a))
    return None


def first_output_kind(model: onnx.ModelProto, output: Optional[str] = None) -> str:
    """What the model's first output (or ``output``) holds: IDS, PROBABILITIES or SCORES
    (see the module's doc). A TopK's values (sorted scores: their argmax is always the first
    column) are refused (DataError naming the node)."""
    g = model.graph
    name = output or (g.output[0].name if g.output else None)
    if name is None:
        return SCORES
    node, t, _ = _first_output_source(model, name)
    if node is None:
        return SCORES
    if node.op_type == "TopK" and list(node.output).index(t) == 0:
        raise DataError(f"the model's first output '{name}' is the values of TopK "
                        f"'{node.name}': sorted scores, not classes; top-1 reads class ids or "
                        "scores from the first output: export the TopK's indices first (or no "
                        "TopK: convert drops it)")
    if node.op_type in ("ArgMax", "TopK"):
        return IDS
    return PROBABILITIES if node.op_type == "Sigmoid" else SCORES


def is_scaled_softmax(model: onnx.ModelProto, output: str) -> bool:
    """Whether ``output`` is a Softmax's probabilities times a positive number (percentages,
    ``Softmax(x) * 100``), through carry ops and Mul/Div by positive scalar constants: a
    teacher's scores to read as probabilities (their log is the logits up to a constant),
    which their sum (100, not 1) does not tell."""
    producers = {o: n for n in model.graph.node for o in n.output if o}
    inits = {i.name: i for i in model.graph.initializer}
    t, scaled = output, False
    for _ in range(64):
        node = producers.get(t)
        if node is None:
            return False
        if node.op_type == "Softmax":
            return scaled
        if node.op_type in CARRY_OPS and node.input:
            t = node.input[0]
            continue
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2:
            return False
        consts = [_constant(i, inits, producers) if _is_constant(i, inits, producers) else None
                  for i in node.input]
        data = [i for i, c in zip(node.input, consts) if c is None]
        c = next((c for c in consts if c is not None), None)
        if len(data) != 1 or c is None or c.size != 1 or not float(c[0]) > 0 or \
                (node.op_type == "Div" and node.input[0] != data[0]):
            return False
        t, scaled = data[0], True
    return False


def class_table(model: onnx.ModelProto, output: Optional[str] = None) -> Optional[np.ndarray]:
    """The labels a classifier's class ids are looked up in on the way to its first output
    (skl2onnx's ``classes``: ArgMax's index i becomes ``table[i]``), when that is not simply
    0..C-1; None otherwise."""
    g = model.graph
    name = output or (g.output[0].name if g.output else None)
    if name is None:
        return None
    table = _first_output_source(model, name)[2]
    if table is None or (table.dtype.kind in "iu" and np.array_equal(table, np.arange(table.size))):
        return None
    return table


def check_labels_for_table(y: Optional[np.ndarray], table: np.ndarray, where: str) -> None:
    """The data's labels are class indices, 0..len(table)-1: a model that looks its ids up
    in ``table`` is scored by their index. Labels that are the table's own values (sklearn's
    ``classes_`` kept as labels) are refused, saying how to map them."""
    if y is None or not y.size or (int(y.min()) >= 0 and int(y.max()) < len(table)):
        return
    shown = ", ".join(map(str, table.tolist()[:6])) + (", ..." if len(table) > 6 else "")
    raise DataError(f"{where}: label {int(y.max())} is out of range: the model's {len(table)} "
                    f"classes ({shown}) are scored by their index, 0..{len(table) - 1}; labels "
                    "that are the classes' own values: map them first (numpy: "
                    "np.searchsorted(classes, y) for sorted classes)")


def ids_to_indices(ids: np.ndarray, table: np.ndarray, where: str) -> np.ndarray:
    """Class labels looked up in ``table`` back to the class indices the data's labels are
    (the position of each label in the table)."""
    flat = np.asarray(ids).reshape(len(ids), -1)[:, 0]
    pos = {(v.decode() if isinstance(v, bytes) else v): i for i, v in enumerate(table.tolist())}
    try:
        return np.array([pos[v.decode() if isinstance(v, bytes) else v] for v in flat.tolist()],
                        np.int64)
    except KeyError as e:
        raise DataError(f"{where}: the model outputs the class label {e.args[0]!r}, which its "
                        "table of classes does not hold") from None


def _floating(out) -> bool:
    """Whether a numpy array or a torch tensor holds floats."""
    return out.dtype.kind == "f" if isinstance(out, np.ndarray) else out.dtype.is_floating_point


def _binary(out, probabilities: bool):
    """A binary classifier's [N, 1] scores as the two classes [0, z] (logits) or [1 - p, p]
    (probabilities); numpy arrays and torch tensors alike."""
    if isinstance(out, np.ndarray):
        other = 1.0 - out if probabilities else np.zeros_like(out)
        return np.concatenate([other, out], axis=1)
    import torch
    other = 1.0 - out if probabilities else torch.zeros_like(out)
    return torch.cat([other, out], dim=1)


def class_scores(out, probabilities: bool = False):
    """A classifier's scores as [N, classes]: a fully convolutional classifier's
    [N, classes, 1, 1] is flattened (the ONNX model zoo's SqueezeNet and DenseNet end that
    way); a binary classifier's one float score per sample ([N], [N, 1] or [N, 1, 1, 1])
    becomes two classes ([0, z], or [1 - p, p] for ``probabilities``); any other shape is
    returned as it is. Takes numpy arrays and torch tensors alike."""
    if out.ndim > 2 and math.prod(out.shape[2:]) == 1:
        out = out.reshape(out.shape[0], out.shape[1])
    floating = _floating(out)
    if floating and out.ndim == 1:
        out = out.reshape(out.shape[0], 1)
    if floating and out.ndim == 2 and out.shape[1] == 1:
        return _binary(out, probabilities)
    return out


def check_labels_for(y: Optional[np.ndarray], out, where: str) -> None:
    """Every label a class the model's first output ``out`` (as it came) scores: 0..C-1, or
    0 and 1 for a binary classifier's one score."""
    if y is None or not y.size or (not _floating(out) and out.ndim == 1):   # ids: any labels
        return
    single = out.ndim >= 1 and (out.ndim == 1 or math.prod(out.shape[1:]) == 1)
    if single and int(y.max()) > 1:
        raise DataError(f"{where}: label {int(y.max())} is out of range: the model outputs one "
                        "score per sample, a binary classifier's (labels 0 and 1)")
    if not single:
        check_label_range(y, int(class_scores(out).shape[1]), where)


def predicted(out: np.ndarray, kind: str = SCORES) -> np.ndarray:
    """The predicted classes from a model's first output of ``kind``: class ids (their first
    per sample: a TopK's best; an integer [N] output is ids too) or the argmax of
    :func:`class_scores` (a binary classifier: class 1 when its logit is above 0, its
    probability above 0.5)."""
    if kind == IDS or (out.dtype.kind in "iu" and out.ndim == 1):
        return out.reshape(len(out), -1)[:, 0]
    scores = class_scores(out, probabilities=kind == PROBABILITIES)
    if scores.ndim != 2:
        raise DataError(f"the model's first output has shape {list(out.shape)}; top-1 needs "
                        "[N, classes] scores, one score per sample (a binary classifier) or "
                        "[N] integer class ids")
    return scores.argmax(1)


__all__ = ["IDS", "PROBABILITIES", "SCORES", "CARRY_OPS", "first_output_kind", "class_table",
           "ids_to_indices", "check_labels_for_table", "class_scores", "check_labels_for", "predicted"]

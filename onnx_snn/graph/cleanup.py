"""Passes that drop what has no place in a spiking graph: an output head (ArgMax/TopK class
ids), final softmax, sigmoid or ReLU-type clamp, Identity, Dropout, unused extra outputs."""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import onnx_graphsurgeon as gs

from . import ir
from ..notes import interface
from .ir import bypass, const_value, is_graph_output, producer, scalar_value
from ..spiking.format import dropout_ratio_ok
from .passes import PassResult, graph_pass
from .sites import CLAMP_OPS, _data_input, constant_bounds

SOFTMAX_OPS = ("Softmax", "LogSoftmax")
#: ops that may sit between the final softmax and the graph output (they only move values)
RESHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Identity")


def _coerced_form(sm: gs.Node):
    """Softmax of opset < 13 upgraded to 13 is written Reshape(Softmax(Flatten(t, a)), Shape(t)):
    a softmax over the axes a.. of t. (t, a, flatten, shape, reshape), or None for another form."""
    fl = producer(sm.inputs[0])
    y = sm.outputs[0]
    if fl is None or fl.op != "Flatten" or len(sm.inputs[0].outputs) != 1:
        return None
    if int(sm.attrs.get("axis", -1)) not in (-1, 1) or len(y.outputs) != 1:
        return None
    rs = y.outputs[0]
    if rs.op != "Reshape" or rs.inputs[0] is not y or len(rs.inputs) < 2:
        return None
    shp = producer(rs.inputs[1])
    t = fl.inputs[0]
    if shp is None or shp.op != "Shape" or shp.inputs[0] is not t or len(rs.inputs[1].outputs) != 1:
        return None
    if shp.attrs.get("start", 0) != 0 or shp.attrs.get("end", None) is not None:
        return None
    return t, int(fl.attrs.get("axis", 1)), fl, shp, rs


#: elementwise ops that keep the order of the values they read: after a final softmax or
#: sigmoid they change no argmax (a log-softmax written as Log(Softmax(x)), percentages as
#: Softmax(x) * 100), so they go with it
MONOTONE_OPS = ("Log", "Exp", "Sqrt", "Mul", "Div", "Add", "Sub")


def _keeps_order(node: gs.Node, t, positive: bool = False) -> bool:
    """Whether ``node`` maps ``t`` elementwise by one increasing function: Exp; Log and Sqrt
    of ``positive`` values (a softmax's or sigmoid's, or a positive scale of them: the DNN's
    own output is defined); or the same number added, subtracted, multiplied by (> 0) or
    divided by (> 0) everywhere."""
    if len(node.outputs) != 1 or not node.inputs or not any(i is t for i in node.inputs):
        return False
    if node.op in ("Log", "Exp", "Sqrt"):
        return len(node.inputs) == 1 and (positive or node.op == "Exp")
    if node.op not in MONOTONE_OPS or len(node.inputs) != 2:
        return False
    first = node.inputs[0] is t
    other = node.inputs[1] if first else node.inputs[0]
    c = scalar_value(other, like=t)
    if c is None or not np.isfinite(c):
        return False
    if node.op in ("Sub", "Div") and not first:      # c - t, c / t: decreasing
        return False
    return c > 0 if node.op in ("Mul", "Div") else True


def _stays_positive(node: gs.Node) -> bool:
    """Whether order-keeping ``node`` maps positive values to positive ones: Exp, Sqrt, a
    positive scale, a shift by a number >= 0 (not Log, nor a subtraction)."""
    if node.op in ("Exp", "Sqrt", "Mul", "Div"):
        return True
    if node.op == "Add":
        c = [scalar_value(i) for i in node.inputs]
        return any(v is not None and v >= 0 for v in c)
    return False


def _path_to_output(graph: gs.Graph, t, monotone: bool = False, positive: bool = False
                    ) -> Tuple[List[gs.Node], Optional[str]]:
    """The reshaping nodes from ``t`` to a graph output that is used by nothing else, or why
    there is no such path. ``monotone``: order-keeping elementwise ops (:func:`_keeps_order`)
    may be on the way too; ``positive``: ``t``'s values are positive (a softmax's), so Log
    and Sqrt may be among them while they stay so."""
    chain: List[gs.Node] = []
    while True:
        if is_graph_output(graph, t):
            if t.outputs:
                fed = ", ".join(f"{c.op} '{c.name}'" for c in t.outputs[:3])
                return chain, f"its output '{t.name}' is a graph output that also feeds {fed}"
            return chain, None
        if len(t.outputs) != 1:
            return chain, (f"its output '{t.name}' feeds {len(t.outputs)} nodes"
                           if t.outputs else f"its output '{t.name}' is unused")
        c = t.outputs[0]
        if not ((c.op in RESHAPE_OPS and c.inputs[0] is t)
                or (monotone and _keeps_order(c, t, positive))):
            return chain, f"its output feeds {c.op} '{c.name}', not a graph output"
        if c.op not in RESHAPE_OPS:
            positive = positive and _stays_positive(c)
        chain.append(c)
        t = c.outputs[0]


def _order_ops(chain: List[gs.Node]) -> List[gs.Node]:
    return [c for c in chain if c.op not in RESHAPE_OPS]


def _drop_order_ops(graph: gs.Graph, chain: List[gs.Node]) -> None:
    """Bypass the order-keeping ops of ``chain`` (they go with the head they follow)."""
    for c in _order_ops(chain):
        data = 1 if len(c.inputs) == 2 and const_value(c.inputs[0]) is not None else 0
        bypass(graph, c, keep=data)


def _after(chain: List[gs.Node]) -> str:
    """' and the Log 'l' after it', or '' without order-keeping ops in ``chain``."""
    ops = _order_ops(chain)
    return (" and the " + ", ".join(f"{c.op} '{c.name}'" for c in ops) + " after it") if ops else ""


def _dropped_output_beside(graph: gs.Graph, head: gs.Node, x, end, chain: List[gs.Node],
                           result: PassResult, what: str) -> bool:
    """When the values ``x`` a final ``head`` reads are themselves a graph output (a model that
    outputs logits and their softmax), the head's output ``end`` is dropped from the outputs
    (with ``chain``, the nodes between them) rather than left holding the same values under
    the head's name; True when it did."""
    same = _passed_to(x, [o for o in graph.outputs if o is not end])
    if same is None:
        return False
    graph.outputs = [o for o in graph.outputs if o is not end]
    for n in [head] + chain:
        n.inputs.clear()
        n.outputs.clear()
    result.notes.append(interface(
        f"dropped the output '{end.name}' ({head.op} '{head.name}'{_after(chain)} of the output "
        f"'{same.name}'): the spiking model outputs '{same.name}' time-averaged, and {what}; "
        f"apply {head.op} to '{same.name}' for the values '{end.name}' held"))
    result.changed += 1
    return True


def _why_kept(sm: gs.Node, x, group_from: int, single: bool, chain: List[gs.Node]) -> Optional[str]:
    """Why dropping softmax ``sm`` over ``x`` would change the predicted class, or None.

    The softmax normalizes over axis ``group_from`` of ``x`` (``single``) or over the axes
    ``group_from``.. (the coerced form). Without reshaping after it, argmax along those axes is
    unchanged; when reshaped (e.g. Flatten of [N, C, 1, 1]) the other non-batch axes must be 1.
    """
    rank = ir.rank(x)
    axis = group_from
    if rank is not None and axis < 0:
        axis += rank
    if axis == 0 and (rank is None or rank >= 2):
        return f"{sm.op} over axis 0 (the batch axis): dropping it would change the argmax"
    chain = [c for c in chain if c.op in RESHAPE_OPS]
    if not chain:
        return None
    if not single and axis == 1:
        return None  # over every value of a sample
    if rank is None or axis < 0:
        return (f"{sm.op} over axis {group_from} of a tensor of unknown rank is reshaped by "
                f"{chain[0].op} '{chain[0].name}'; cannot tell whether it is over the class axis")
    group = {axis} if single else set(range(axis, rank))
    others = [d for i, d in enumerate(x.shape) if i >= 1 and i not in group]
    if any(d != 1 for d in others):
        return (f"{sm.op} over axis {axis} of {list(x.shape)} is reshaped by {chain[0].op} "
                f"'{chain[0].name}': it is not over the class axis, so dropping it would change "
                "the argmax")
    return None


#: ops that turn a classifier's outputs into class ids (a serving signature's head), or
#: into {class: probability} maps (skl2onnx's ZipMap)
HEAD_OPS = ("ArgMax", "TopK", "ZipMap")
#: what may follow them on the way to the outputs (ids are cast, reshaped, looked up: Gather,
#: or ai.onnx.ml's ArrayFeatureExtractor in skl2onnx's classifiers)
HEAD_TAIL = HEAD_OPS + ("ArgMin", "Softmax", "LogSoftmax", "Identity", "Reshape", "Flatten",
                        "Squeeze", "Unsqueeze", "Cast", "Gather", "ArrayFeatureExtractor")


def head_nodes(node: gs.Node, tail=HEAD_TAIL) -> Optional[List[gs.Node]]:
    """``node`` and everything downstream of it when all of that post-processes the outputs
    (``tail`` ops: what it makes ends in graph outputs or nowhere), else None."""
    nodes, seen, todo = [node], {id(node)}, list(node.outputs)
    while todo:
        t = todo.pop()
        for c in t.outputs:
            if id(c) in seen:
                continue
            if c.op not in tail:
                return None
            seen.add(id(c))
            nodes.append(c)
            todo.extend(c.outputs)
    return nodes


def _over_the_classes(node: gs.Node) -> bool:
    """Whether ``node`` picks classes of [N, classes] scores: an ArgMax, or a TopK of the
    largest, over axis 1 of a rank-2 input (or of one of unknown rank); a top-k of the
    smallest (a distance classifier) or over another axis is not dropped."""
    if node.op == "ZipMap":          # always over the classes of [N, classes]
        return True
    axis = int(node.attrs.get("axis", 0 if node.op == "ArgMax" else -1))
    x = node.inputs[0]
    rank = ir.rank(x)
    if node.op == "TopK" and int(node.attrs.get("largest", 1)) != 1:
        return False
    return (rank in (None, 2)) and axis in (1, -1)


@graph_pass("strip-output-head")
def strip_output_head(graph: gs.Graph, result: PassResult) -> None:
    """An ArgMax/TopK over the classes that turns the outputs into class ids (with whatever
    casts, reshapes or lookups follow it to the graph outputs) is dropped, and its input, the
    scores, becomes an output in the place of the first output it made, unless it is one
    already: a spiking model outputs time-averaged scores, and argmax of the average is what
    its top-1 is (a per-step argmax is not). The note names what to apply to the spiking
    model's outputs. A head whose ids the network goes on to use is left (support refuses it,
    naming the node)."""
    for node in list(graph.nodes):
        if node.op not in HEAD_OPS or not node.outputs or not node.inputs:
            continue
        head = head_nodes(node)
        if head is None or not _over_the_classes(node):
            continue
        made = {id(o) for n in head for o in n.outputs}
        dropped = [o for o in graph.outputs if id(o) in made]
        if not dropped:
            continue
        scores = node.inputs[0]
        if scores.dtype is None:
            scores.dtype = np.float32
        at = next(i for i, o in enumerate(graph.outputs) if id(o) in made)
        outs = [o for o in graph.outputs if id(o) not in made]
        same = _passed_to(scores, outs)
        if same is not None:    # an output already holds the scores (through Identity nodes):
            outs.remove(same)   # it moves to the head's place, as the scores would
            scores = same
        outs.insert(min(at, len(outs)), scores)
        graph.outputs = outs
        for n in head:
            n.inputs.clear()
            n.outputs.clear()
        result.changed += 1
        result.notes.append(interface(
            f"dropped the output head {node.op} '{node.name}' (output(s) "
            f"{', '.join(repr(o.name) for o in dropped)}): the spiking model outputs the "
            f"time-averaged scores '{scores.name}'; apply {node.op} to them for "
            + ("{class: score} maps" if node.op == "ZipMap" else "class ids")))
    graph.cleanup()


def _passed_to(t, outputs):
    """The output of ``outputs`` that is ``t`` or ``t`` passed through Identity nodes (the
    same values), or None."""
    todo, seen = [t], set()
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        hit = next((o for o in outputs if o is v), None)
        if hit is not None:
            return hit
        todo += [c.outputs[0] for c in v.outputs if c.op == "Identity" and c.outputs]
    return None


@graph_pass("strip-final-softmax")
def strip_final_softmax(graph: gs.Graph, result: PassResult) -> None:
    """A Softmax/LogSoftmax over the class axis that feeds a graph output (directly or through
    Flatten/Reshape/Squeeze) is dropped: argmax is unchanged."""
    for sm in list(graph.nodes):
        if sm.op not in SOFTMAX_OPS or not sm.outputs:
            continue
        coerced = _coerced_form(sm)
        if coerced is not None:
            x, group_from, fl, shp, rs = coerced
            end, single = rs.outputs[0], False
        else:
            x, group_from, end, single = sm.inputs[0], int(sm.attrs.get("axis", -1)), sm.outputs[0], True
        chain, why = _path_to_output(graph, end, monotone=True, positive=sm.op == "Softmax")
        if why is None:
            why = _why_kept(sm, x, group_from, single, chain)
        if why is not None:
            result.skip(sm, why)
            continue
        out = chain[-1].outputs[0] if chain else end
        if _dropped_output_beside(graph, sm, x, out, chain + ([] if coerced is None else [fl, shp, rs]),
                                  result, "a spiking model has no softmax"):
            continue
        result.notes.append(interface(
            f"dropped the final {sm.op} '{sm.name}'{_after(chain)}: the spiking model outputs "
            "time-averaged logits (argmax, hence top-1, is unchanged)"))
        result.changed += 1
        if coerced is None:
            bypass(graph, sm)
        else:
            for n in (fl, shp, sm):
                n.inputs.clear()
                n.outputs.clear()
            rs.inputs = [x]
            bypass(graph, rs)
        _drop_order_ops(graph, chain)
    graph.cleanup()


@graph_pass("strip-final-sigmoid")
def strip_final_sigmoid(graph: gs.Graph, result: PassResult) -> None:
    """A Sigmoid that feeds a graph output (directly or through Flatten/Reshape/Squeeze):
    a binary classifier's probability, or a multi-label model's. It is dropped: the spiking
    model outputs the time-averaged logits, of the same order (argmax, and a logit above 0
    for a probability above 0.5, are unchanged). A final Tanh likewise (a bounded output:
    the same order and sign)."""
    for sg in list(graph.nodes):
        if sg.op not in _DROPPED_HEADS or not sg.outputs or not sg.inputs:
            continue
        pair = _two_class_pair(graph, sg) if sg.op == "Sigmoid" else None
        if pair is not None:
            _to_logit_pair(graph, sg, *pair)
            result.notes.append(interface(
                f"dropped the final Sigmoid '{sg.name}' of the two-class probabilities "
                f"('{pair[1].outputs[0].name}'): the spiking model outputs the time-averaged "
                "logit beside a 0 in place of 1 - p (a softmax of the two gives the "
                "probabilities)"))
            result.changed += 1
            continue
        chain, why = _path_to_output(graph, sg.outputs[0], monotone=True,
                                     positive=sg.op == "Sigmoid")
        if why is not None:
            result.skip(sg, why)
            continue
        out = chain[-1].outputs[0] if chain else sg.outputs[0]
        if _dropped_output_beside(graph, sg, sg.inputs[0], out, chain, result,
                                  f"a spiking model has no {sg.op.lower()}"):
            continue
        result.notes.append(interface(f"dropped the final {sg.op} '{sg.name}'{_after(chain)}: "
                                      + _DROPPED_HEADS[sg.op]))
        result.changed += 1
        bypass(graph, sg)
        _drop_order_ops(graph, chain)
    graph.cleanup()


#: what the spiking model outputs in place of a final Sigmoid or Tanh it drops
_DROPPED_HEADS = {
    "Sigmoid": ("the spiking model outputs time-averaged logits (a logit above 0 is a "
                "probability above 0.5; apply a sigmoid for probabilities)"),
    "Tanh": ("the spiking model outputs its time-averaged input (the same order and sign; "
             "apply tanh for the model's values)"),
}


def _final_clamp(graph: gs.Graph, node: gs.Node):
    """(lo, hi) when ``node`` is an elementwise clamp (Relu, Clip, Max/Min with a constant)
    whose output goes to a graph output alone (directly or through Flatten/Reshape/Squeeze),
    else None."""
    bounds = constant_bounds(node)
    if bounds is None or producer(_data_input(node)) is None:   # input -> clamp -> output
        return None
    _, why = _path_to_output(graph, node.outputs[0])
    return None if why is not None else bounds


def _in_final_chain(graph: gs.Graph, node: gs.Node) -> bool:
    """Whether clamp ``node`` is a final clamp or feeds one through clamps and reshapes."""
    while _final_clamp(graph, node) is None:
        out = node.outputs[0]
        if len(out.outputs) != 1 or is_graph_output(graph, out):
            return False
        node = out.outputs[0]
        if node.op not in CLAMP_OPS + RESHAPE_OPS or not node.outputs:
            return False
    return True


def _activations(graph: gs.Graph, data: set) -> List[gs.Node]:
    """The clamps of computed tensors (the sites to be)."""
    return [n for n in graph.nodes if constant_bounds(n) is not None and _data_input(n).name in data]


@graph_pass("strip-final-activation")
def strip_final_activation(graph: gs.Graph, result: PassResult) -> None:
    """A ReLU-type clamp (Relu, Clip, Max/Min with a constant, and chains of them) whose
    output goes to a graph output alone is dropped: the spiking model outputs the
    time-averaged values before it. As a spiking layer it would round every output to one of
    T + 1 levels (at T = 2 most classes tie; on the shipped model with a final Relu it cost
    4.9 points of top-1), while the time-averaged values it reads are the outputs' best
    estimate; the argmax is the DNN's wherever the DNN's largest output is above the clamp's
    lower bound (and below its upper). A model whose only activations are on its outputs
    (through clamps and reshapes) keeps them."""
    from .ir import depends_on_inputs
    graph.toposort()
    data = depends_on_inputs(graph)
    changed, kept = True, set()
    while changed:
        changed = False
        for node in list(graph.nodes):
            bounds = _final_clamp(graph, node)
            if bounds is None or id(node) in kept:
                continue
            if not any(not _in_final_chain(graph, n) for n in _activations(graph, data)):
                result.skip(node, "the model has no other activation: it stays its spiking "
                                  "layer")
                kept.add(id(node))
                continue
            lo, hi = bounds
            what = f"clamp to [{lo:g}, {hi:g}]" if node.op != "Relu" else "ReLU"
            chain, _ = _path_to_output(graph, node.outputs[0])
            end = chain[-1].outputs[0] if chain else node.outputs[0]
            if _dropped_output_beside(graph, node, _data_input(node), end, chain, result,
                                      "a spiking layer there would round each output "
                                      "to T + 1 levels"):
                changed = True
                break
            result.notes.append(interface(
                f"dropped the final {node.op} '{node.name}' (a {what} on the outputs): the "
                "spiking model outputs the time-averaged values before it (a spiking layer "
                "there would round each output to T + 1 levels); apply it to the spiking "
                "model's outputs if you need its values"))
            result.changed += 1
            bypass(graph, node, keep=list(node.inputs).index(_data_input(node)))
            changed = True
            break
    graph.cleanup()


def _two_class_pair(graph: gs.Graph, sg: gs.Node):
    """(Sub, Concat) when Sigmoid ``sg``'s output ``p`` ([N, 1], or of an unknown width) is
    read only by ``1 - p`` and a Concat of the two along axis 1 that goes to a graph output
    (a binary classifier's [P(class 0), P(class 1)], as skl2onnx writes one); else None."""
    p = sg.outputs[0]
    if is_graph_output(graph, p) or len(p.outputs) != 2 or ir.rank(p) not in (None, 2):
        return None
    sub = next((c for c in p.outputs if c.op == "Sub"), None)
    cat = next((c for c in p.outputs if c.op == "Concat"), None)
    if sub is None or cat is None or len(sub.inputs) != 2 or sub.inputs[1] is not p:
        return None
    one = scalar_value(sub.inputs[0])
    q = sub.outputs[0]
    if one != 1.0 or is_graph_output(graph, q) or len(q.outputs) != 1 or q.outputs[0] is not cat:
        return None
    if len(cat.inputs) != 2 or {id(t) for t in cat.inputs} != {id(p), id(q)} or \
            int(cat.attrs.get("axis", 0)) not in (1, -1):
        return None
    if p.shape is not None and len(p.shape) == 2 and isinstance(p.shape[1], int) and p.shape[1] != 1:
        return None
    _, why = _path_to_output(graph, cat.outputs[0])
    return None if why is not None else (sub, cat)


def _to_logit_pair(graph: gs.Graph, sg: gs.Node, sub: gs.Node, cat: gs.Node) -> None:
    """[1 - sigmoid(z), sigmoid(z)] becomes [0, z] (in the Concat's order): softmax([0, z]) is
    [1 - sigmoid(z), sigmoid(z)], so the argmax, and a teacher's probabilities, are kept."""
    z, p = sg.inputs[0], sg.outputs[0]
    zero = gs.Constant(f"{sub.name or sg.name}_zero", np.zeros((), np.float32))
    sub.op, sub.attrs, sub.inputs = "Mul", {}, [z, zero]
    cat.inputs = [z if t is p else t for t in cat.inputs]
    sg.inputs.clear()
    sg.outputs.clear()


def _bypass(graph: gs.Graph, node: gs.Node, result: PassResult) -> None:
    src, out = node.inputs[0], node.outputs[0]
    bypass(graph, node)
    if node.outputs:
        result.skip(node, f"its output '{out.name}' is a graph output that cannot take over the "
                          f"name of '{src.name}'; kept as an Identity")
    else:
        result.changed += 1


@graph_pass("remove-identity-dropout")
def remove_identity_and_dropout(graph: gs.Graph, result: PassResult) -> None:
    """Bypass Identity and Dropout nodes; Dropout sites are recorded (``result.records``,
    dicts of tensor, ratio and node) for fine-tuning."""
    for node in list(graph.nodes):
        if node.op == "Identity" and node.inputs:
            _bypass(graph, node, result)
        elif node.op == "Dropout":
            if len(node.outputs) > 1 and (node.outputs[1].outputs or is_graph_output(graph, node.outputs[1])):
                _all_ones_mask(graph, node)
            ratio = node.attrs.get("ratio", None)
            if ratio is None and len(node.inputs) > 1:
                ratio = scalar_value(node.inputs[1])
            ratio = 0.5 if ratio is None else float(ratio)
            training = scalar_value(node.inputs[2]) if len(node.inputs) > 2 else None
            if training is not None and bool(training) and ratio > 0:
                result.notes.append(
                    f"Dropout '{node.name}' was exported in training mode (training_mode=True: "
                    f"onnxruntime drops a random {ratio:.0%} of its inputs on every run, so the "
                    "DNN's outputs are random); converted as the inference-time network, without "
                    "it. Export the model in eval mode (model.eval()) to compare the two")
            src = node.inputs[0]
            if dropout_ratio_ok(round(ratio, 6)):      # what a spiking file can record
                result.records.append({"tensor": src.name, "ratio": round(ratio, 6),
                                       "node": node.name})
            else:        # (ONNX asks for [0, 1); onnxruntime ignores it at inference)
                result.notes.append(f"Dropout '{node.name}' has ratio {ratio:g}, outside [0, 1): "
                                    "removed as at inference, and not recorded for fine-tuning")
            _bypass(graph, node, result)
    graph.cleanup()


def _all_ones_mask(graph: gs.Graph, node: gs.Node) -> None:
    """At inference Dropout's mask output is all ones: compute it as such."""
    mask = node.outputs[1]
    shape = gs.Variable(mask.name + "_shape", dtype=np.int64)
    graph.nodes.append(gs.Node("Shape", f"{node.name}_mask_shape", inputs=[node.inputs[0]], outputs=[shape]))
    graph.nodes.append(gs.Node("ConstantOfShape", f"{node.name}_mask", inputs=[shape], outputs=[mask],
                               attrs={"value": gs.Constant("one", np.array([True]))}))
    node.outputs = node.outputs[:1]


#: ops whose outputs after the first are optional (ONNX lets them be left off at the end)
_OPTIONAL_OUTPUTS = {"BatchNormalization", "MaxPool", "Dropout"}


@graph_pass("drop-unused-outputs")
def drop_unused_outputs(graph: gs.Graph, result: PassResult) -> None:
    """Optional outputs nobody reads (BatchNormalization's running statistics, MaxPool's
    indices, Dropout's mask) are removed from the end; the first output always stays, and
    so does every output before one that is read (an output is known by its position). Other
    ops keep all their outputs: a Split's number of outputs is how many parts it cuts."""
    for node in graph.nodes:
        if node.op not in _OPTIONAL_OUTPUTS:
            continue
        read = [i for i, o in enumerate(node.outputs) if o.outputs or is_graph_output(graph, o)]
        keep = node.outputs[:max([0] + read) + 1]
        result.changed += len(node.outputs) - len(keep)
        if len(keep) > 1:
            result.skip(node, f"its extra output '{keep[-1].name}' is used")
        node.outputs = keep


__all__ = ["strip_output_head", "strip_final_softmax", "strip_final_sigmoid", "strip_final_activation", "remove_identity_and_dropout", "drop_unused_outputs"]

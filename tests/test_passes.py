"""Each normalization pass on its own: a tiny onnx.helper model where it applies (run with
onnxruntime before and after the pass, outputs compared) and cases where it does not (the
reason it gives is checked). Then two classes of real-model failures: a final softmax on a
4-D tensor (ONNX test-suite SqueezeNet) and models whose only nonlinearities are unsupported."""
import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import builders as B
import onnx_snn
from onnx_snn.cli import main
from onnx_snn.errors import UnsupportedModelError
from onnx_snn.graph import canonical, cleanup, fold
from onnx_snn.graph.einsum import einsum_to_matmul
from onnx_snn.graph.normalize import PIPELINE, canonicalize_sites, normalize
from onnx_snn.graph.passes import GraphPass, PassResult

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- helpers

def vi(name, shape, dtype=TP.FLOAT):
    return h.make_tensor_value_info(name, dtype, shape)


def init(name, value):
    return nh.from_array(np.asarray(value), name)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def make(nodes, inputs, outputs, inits=(), opset=13):
    g = h.make_graph(nodes, "t", inputs, outputs, list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)], producer_name="test")
    m.ir_version = 7 if opset < 15 else 8
    onnx.checker.check_model(m)
    return m


def apply(pass_, model, upgrade=False, first=()):
    """Run one pass on ``model`` the way the pipeline sees it (after the opset upgrade and
    the passes ``first`` when given): (result, exported model)."""
    if upgrade:
        model = canonical.upgrade_opset(model, [], "test")
    graph = gs.import_onnx(onnx.shape_inference.infer_shapes(model))
    for p in first:
        p(graph)
    result = pass_(graph)
    out = gs.export_onnx(graph)
    out.ir_version = max(model.ir_version, 8)
    onnx.checker.check_model(out)
    return result, out


def ort_run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_same(before, after, feeds):
    a, b = ort_run(before, feeds), ort_run(after, feeds)
    assert [o.name for o in before.graph.output] == [o.name for o in after.graph.output]
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)


def ops(model):
    return [n.op_type for n in model.graph.node]


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_pipeline_is_a_list_of_named_passes():
    assert all(isinstance(p, GraphPass) for p in PIPELINE)
    assert [p.name for p in PIPELINE] == [
        "compute-in-float32", "float64-round-trips", "uint8-input-to-float", "ml-scaler-to-affine",
        "fold-constants", "refuse-training-batchnorm", "refuse-integer-operators",
        "fake-quantization", "rounding-to-identity", "sum-to-add", "einsum-to-matmul",
        "zero-slope-to-relu", "hard-sigmoid-to-clip", "relu-pairs-to-clip", "channel-clamps-to-unit-clip", "masked-relu-to-relu", "reshape-keeps-batch", "reduce-max-to-global-pool", "auto-pads-to-explicit-pads", "ceil-pools-to-explicit-pads", "nonnegative-identities",
        "constant-where-to-mask", "resize-constant-form",
        "remove-identity-dropout",
        "strip-output-head", "strip-final-softmax", "strip-final-sigmoid", "strip-final-activation",
        "drop-unused-outputs", "fold-batchnorm", "matmul-add-to-gemm", "gemm-scales-into-weights",
        "fold-constants",
        "canonicalize-sites"]


def test_pass_log_is_kept_but_notes_unchanged():
    m = B.vgg(9, "clip")
    sm = next(n.name for n in m.graph.node if n.op_type == "Softmax")
    nm = normalize(m)
    assert [r.name for r in nm.pass_log] == [p.name for p in PIPELINE]
    assert all(isinstance(r, PassResult) for r in nm.pass_log)
    log = {r.name: r for r in nm.pass_log}
    assert log["fold-batchnorm"].changed == 1 and log["strip-final-softmax"].changed == 1
    assert nm.notes == [
        "upgraded the model from opset 9 to 13",
        f"interface: dropped the final Softmax '{sm}': the spiking "
        "model outputs time-averaged logits (argmax, hence top-1, is unchanged)",
        "folded 1 BatchNormalization layer(s) into the preceding Conv/Gemm"]


# ---------------------------------------------------------------- constant folding

def test_fold_constants_makes_weights_initializers():
    w = rand(3, 4)
    nodes = [h.make_node("Constant", [], ["w16"], name="wc",
                         value=nh.from_array(w.astype(np.float16))),
             h.make_node("Cast", ["w16"], ["w"], name="cast", to=TP.FLOAT),
             h.make_node("Constant", [], ["s"], name="sc", value=nh.from_array(np.array(2.0, np.float32))),
             h.make_node("Mul", ["w", "s"], ["w2"], name="scale"),
             h.make_node("MatMul", ["x", "w2"], ["y"], name="mm")]
    m = make(nodes, [vi("x", ["N", 3])], [vi("y", ["N", 4])])
    r, out = apply(fold.fold_constants, m)
    assert ops(out) == ["MatMul"] and r.changed == 4 and r.skipped == []
    assert_same(m, out, {"x": rand(5, 3)})


def test_fold_constants_leaves_dynamic_shapes_and_says_why():
    nodes = [h.make_node("Shape", ["x"], ["shp"], name="shape"),
             h.make_node("Reshape", ["x", "shp"], ["y"], name="reshape")]
    m = make(nodes, [vi("x", ["N", 3])], [vi("y", ["N", 3])])
    r, out = apply(fold.fold_constants, m)
    assert r.changed == 0 and ops(out) == ["Shape", "Reshape"]
    assert r.reason("shape") == "the shape of 'x' is not static (['N', 3])"
    assert_same(m, out, {"x": rand(2, 3)})


# ---------------------------------------------------------------- Sum -> Add

@pytest.mark.parametrize("n", [1, 2, 3])
def test_sum_becomes_add(n):
    names = [f"x{i}" for i in range(n)]
    m = make([h.make_node("Sum", names, ["y"], name="sum")],
             [vi(x, ["N", 4]) for x in names], [vi("y", ["N", 4])])
    r, out = apply(canonical.sum_to_add, m)
    assert r.changed == 1 and r.skipped == []
    assert ops(out) == {1: ["Identity"], 2: ["Add"], 3: ["Add", "Add"]}[n]
    assert_same(m, out, {x: rand(2, 4) for x in names})


def test_sum_pass_without_sum_changes_nothing():
    m = make([h.make_node("Add", ["a", "b"], ["y"], name="add")],
             [vi("a", ["N", 4]), vi("b", ["N", 4])], [vi("y", ["N", 4])])
    r, out = apply(canonical.sum_to_add, m)
    assert (r.changed, r.skipped) == (0, []) and ops(out) == ["Add"]


# ---------------------------------------------------------------- Identity / Dropout

def _dropout_model(mask_used: bool, opset=13):
    ins = ["h"] if opset < 12 else ["h", "ratio"]
    attrs = {"ratio": 0.3} if opset < 12 else {}
    outs = ["d", "mask"] if mask_used else ["d"]
    nodes = [h.make_node("Relu", ["x"], ["h"], name="relu"),
             h.make_node("Dropout", ins, outs, name="drop", **attrs),
             h.make_node("Identity", ["d"], ["i"], name="ident"),
             h.make_node("Neg", ["i"], ["y"], name="neg")]
    outputs = [vi("y", ["N", 4])] + ([vi("mask", ["N", 4], TP.BOOL)] if mask_used else [])
    inits = [] if opset < 12 else [init("ratio", np.array(0.3, np.float32))]
    return make(nodes, [vi("x", ["N", 4])], outputs, inits, opset=opset)


@pytest.mark.parametrize("mask_used", [False, True])
def test_identity_and_dropout_removed(mask_used):
    m = _dropout_model(mask_used)
    r, out = apply(cleanup.remove_identity_and_dropout, m)
    assert "Dropout" not in ops(out) and "Identity" not in ops(out)
    assert r.changed == 2 and r.skipped == []
    assert r.records == [{"tensor": "h", "ratio": 0.3, "node": "drop"}]
    if mask_used:
        assert ops(out).count("ConstantOfShape") == 1
    assert_same(m, out, {"x": rand(3, 4)})


def test_dropout_ratio_attribute_of_old_opsets():
    r, _ = apply(cleanup.remove_identity_and_dropout, _dropout_model(False, opset=9))
    assert r.records[0]["ratio"] == pytest.approx(0.3)


@pytest.mark.parametrize("ratio", [1.0, 0.9999997, 1.5, -0.1])
def test_a_dropout_ratio_outside_zero_to_one_is_removed_and_not_recorded(ratio):
    """ONNX asks for a ratio in [0, 1) and onnxruntime ignores it at inference: the Dropout
    goes as any other, but a ratio a spiking file would refuse (what fine-tuning reads:
    1 / (1 - p)) is not recorded; it was, and convert then refused its own output."""
    m = _dropout_model(False, opset=9)
    next(n for n in m.graph.node if n.op_type == "Dropout").attribute[0].f = ratio
    r, out = apply(cleanup.remove_identity_and_dropout, m)
    assert "Dropout" not in ops(out) and not r.records
    assert any("outside [0, 1)" in n for n in r.notes)


def test_a_dnn_with_a_dropout_ratio_of_one_converts():
    import onnx_snn
    m = B.vgg(9, "clip")           # opset 9: the ratio is an attribute
    drop = next(n for n in m.graph.node if n.op_type == "Dropout")
    next(a for a in drop.attribute if a.name == "ratio").f = 1.0
    x = B.rand_input(16)
    snn = onnx_snn.convert(m, x, timesteps=2, show_progress=False)
    assert not snn.info.dropout


def test_identity_from_input_to_output_is_kept():
    m = make([h.make_node("Identity", ["x"], ["y"], name="ident")],
             [vi("x", ["N", 4])], [vi("y", ["N", 4])])
    r, out = apply(cleanup.remove_identity_and_dropout, m)
    assert r.changed == 0 and ops(out) == ["Identity"]
    assert r.reason("ident") == ("its output 'y' is a graph output that cannot take over the "
                                 "name of 'x'; kept as an Identity")
    assert_same(m, out, {"x": rand(2, 4)})


# ---------------------------------------------------------------- final softmax

def _logits_then(op_nodes, out_shape, opset=13, extra=()):
    """x -> Gemm (logits, 4 classes) -> op_nodes -> y; ``extra`` initializers."""
    w, b = rand(4, 6), rand(4)
    nodes = [h.make_node("Gemm", ["x", "W", "B"], ["logits"], name="fc", transB=1)] + op_nodes
    return make(nodes, [vi("x", ["N", 6])], [vi("y", out_shape)],
                [init("W", w), init("B", b)] + list(extra), opset=opset)


def _check_stripped(m, r, out, feeds, axis=-1):
    """The pass dropped the softmax: the old output is softmax of the new one."""
    assert r.changed == 1 and not {"Softmax", "LogSoftmax"} & set(ops(out))
    assert [o.name for o in out.graph.output] == [o.name for o in m.graph.output]
    a, b = ort_run(m, feeds)[0], ort_run(out, feeds)[0]
    logsm = any(n.op_type == "LogSoftmax" for n in m.graph.node)
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    expect = softmax(flat_b, axis=-1)
    np.testing.assert_allclose(flat_a, np.log(expect) if logsm else expect, rtol=1e-5, atol=1e-6)
    assert (flat_a.argmax(1) == flat_b.argmax(1)).all()


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_final_softmax_dropped(op):
    m = _logits_then([h.make_node(op, ["logits"], ["y"], name="sm", axis=1)], ["N", 4])
    r, out = apply(cleanup.strip_final_softmax, m)
    assert r.notes == [f"interface: dropped the final {op} 'sm': the spiking model outputs time-averaged "
                       "logits (argmax, hence top-1, is unchanged)"]
    _check_stripped(m, r, out, {"x": rand(5, 6)})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset", [9, 11])
@pytest.mark.parametrize("rank", [2, 4])
def test_old_opset_softmax_upgraded_form_dropped(op, opset, rank):
    """Below opset 13 the upgrade writes Reshape(Softmax(Flatten(t)), Shape(t))."""
    nodes = []
    src = "logits"
    if rank == 4:
        nodes.append(h.make_node("Reshape", ["logits", "s4"], ["l4"], name="to4d"))
        src = "l4"
    nodes.append(h.make_node(op, [src], ["y"], name="sm", axis=1))
    shape = ["N", 4] if rank == 2 else ["N", 4, 1, 1]
    m = _logits_then(nodes, shape, opset=opset,
                     extra=[init("s4", np.array([-1, 4, 1, 1], np.int64))] if rank == 4 else [])
    upgraded = canonical.upgrade_opset(m, [], "test")
    if rank == 4:
        assert {"Flatten", "Reshape", "Shape"} <= set(ops(upgraded))
    r, out = apply(cleanup.strip_final_softmax, upgraded)
    assert r.notes and "'sm'" in r.notes[0]
    _check_stripped(m, r, out, {"x": rand(3, 6)})


@pytest.mark.parametrize("after", ["Flatten", "Squeeze", "Reshape"])
def test_softmax_on_nc11_then_reshaped_dropped(after):
    extra = {"Flatten": h.make_node("Flatten", ["p"], ["y"], name="after", axis=1),
             "Squeeze": h.make_node("Squeeze", ["p", "axes"], ["y"], name="after"),
             "Reshape": h.make_node("Reshape", ["p", "s2"], ["y"], name="after")}[after]
    nodes = [h.make_node("Reshape", ["logits", "s4"], ["l4"], name="to4d"),
             h.make_node("Softmax", ["l4"], ["p"], name="sm", axis=1), extra]
    m = _logits_then(nodes, ["N", 4], extra=[init("s4", np.array([-1, 4, 1, 1], np.int64)),
                                             init("axes", np.array([2, 3], np.int64)),
                                             init("s2", np.array([-1, 4], np.int64))])
    r, out = apply(cleanup.strip_final_softmax, m)
    _check_stripped(m, r, out, {"x": rand(3, 6)})
    assert after in ops(out)


def test_softmax_not_over_class_axis_is_kept():
    """Softmax over C of [N, C, 2, 1] then Flatten: dropping it would change the argmax."""
    nodes = [h.make_node("Reshape", ["logits", "s4"], ["l4"], name="to4d"),
             h.make_node("Softmax", ["l4"], ["p"], name="sm", axis=1),
             h.make_node("Flatten", ["p"], ["y"], name="flat")]
    m = _logits_then(nodes, ["N", 4], extra=[init("s4", np.array([-1, 2, 2, 1], np.int64))])
    r, out = apply(cleanup.strip_final_softmax, m)
    assert r.changed == 0 and "Softmax" in ops(out)
    assert "not over the class axis" in r.reason("sm")


def test_softmax_over_batch_axis_is_kept():
    m = _logits_then([h.make_node("Softmax", ["logits"], ["y"], name="sm", axis=0)], ["N", 4])
    r, _ = apply(cleanup.strip_final_softmax, m)
    assert r.changed == 0 and "batch axis" in r.reason("sm")


def test_hidden_softmax_is_kept():
    nodes = [h.make_node("Softmax", ["logits"], ["p"], name="sm", axis=1),
             h.make_node("Add", ["p", "logits"], ["y"], name="add")]
    r, _ = apply(cleanup.strip_final_softmax, _logits_then(nodes, ["N", 4]))
    assert r.changed == 0 and r.reason("sm") == "its output feeds Add 'add', not a graph output"


_ORDER_TAILS = {   # what follows a final softmax to the output, and its inverse
    "Log": ([h.make_node("Log", ["p"], ["y"], name="tail")], [], lambda v: np.exp(v)),
    "Mul": ([h.make_node("Mul", ["p", "c"], ["y"], name="tail")], [init("c", np.float32(100))],
            lambda v: v / 100),
    "Mul-first": ([h.make_node("Mul", ["c", "p"], ["y"], name="tail")], [init("c", np.array([3], np.float32))],
                  lambda v: v / 3),
    "Div": ([h.make_node("Div", ["p", "c"], ["y"], name="tail")], [init("c", np.float32(0.5))],
            lambda v: v * 0.5),
    "Add-Log": ([h.make_node("Add", ["p", "c"], ["q"], name="tail"),
                 h.make_node("Log", ["q"], ["y"], name="tail2")], [init("c", np.float32(1e-6))],
                lambda v: np.exp(v) - 1e-6),
    "Sub": ([h.make_node("Sub", ["p", "c"], ["y"], name="tail")], [init("c", np.float32(0.25))],
            lambda v: v + 0.25),
}


@pytest.mark.parametrize("tail", sorted(_ORDER_TAILS))
def test_a_final_softmax_goes_with_the_order_keeping_ops_after_it(tail):
    """Log(Softmax(x)) (a log-softmax written out), percentages (Softmax * 100), a shift by one
    number: each keeps the argmax, so it is dropped with the softmax (they were refused with
    advice to replace the Softmax by a ReLU)."""
    nodes, extra, inverse = _ORDER_TAILS[tail]
    m = _logits_then([h.make_node("Softmax", ["logits"], ["p"], name="sm", axis=1)] + nodes,
                     ["N", 4], extra=extra)
    r, out = apply(cleanup.strip_final_softmax, m)
    assert r.changed == 1 and ops(out) == ["Gemm"], ops(out)
    assert "'sm' and the " in r.notes[0] and "'tail'" in r.notes[0]
    feeds = {"x": rand(6, 6)}
    a, b = ort_run(m, feeds)[0], ort_run(out, feeds)[0]
    np.testing.assert_allclose(inverse(a), softmax(b), rtol=1e-4, atol=1e-6)
    assert [o.name for o in out.graph.output] == ["y"]


@pytest.mark.parametrize("node,value", [
    (h.make_node("Mul", ["p", "c"], ["y"], name="tail"), np.array([1, 2, 3, 4], np.float32)),
    (h.make_node("Mul", ["p", "c"], ["y"], name="tail"), np.float32(-1)),
    (h.make_node("Sub", ["c", "p"], ["y"], name="tail"), np.float32(1)),
    (h.make_node("Div", ["c", "p"], ["y"], name="tail"), np.float32(1)),
    (h.make_node("Add", ["p", "c"], ["y"], name="tail"), np.array([0, 0, 0, 5], np.float32)),
])
def test_a_tail_that_can_change_the_argmax_keeps_the_softmax(node, value):
    """A per-class scale or shift, a negative scale, 1 - p or 1 / p reorder the classes."""
    m = _logits_then([h.make_node("Softmax", ["logits"], ["p"], name="sm", axis=1), node],
                     ["N", 4], extra=[init("c", value)])
    r, out = apply(cleanup.strip_final_softmax, m)
    assert r.changed == 0 and "Softmax" in ops(out)
    assert r.reason("sm") == f"its output feeds {node.op_type} 'tail', not a graph output"


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Sigmoid"])
@pytest.mark.parametrize("reshaped", [False, True])
def test_an_output_beside_its_own_softmax_is_not_given_the_softmaxs_name(op, reshaped):
    """A model that outputs the logits and their softmax (probs = Softmax(logits), both
    outputs): dropping the softmax left 'probs' an Identity of the logits, an output that
    held logits under the probabilities' name. It is dropped with a note; 'logits' stays."""
    w, b = rand(4, 6), rand(4)
    nodes = [h.make_node("Gemm", ["x", "W", "B"], ["logits"], name="fc", transB=1),
             h.make_node(op, ["logits"], ["p" if reshaped else "probs"], name="sm",
                         **({} if op == "Sigmoid" else {"axis": 1}))]
    if reshaped:
        nodes.append(h.make_node("Flatten", ["p"], ["probs"], name="flat"))
    m = make(nodes, [vi("x", ["N", 6])], [vi("logits", ["N", 4]), vi("probs", ["N", 4])],
             [init("W", w), init("B", b)])
    pass_ = cleanup.strip_final_sigmoid if op == "Sigmoid" else cleanup.strip_final_softmax
    r, out = apply(pass_, m)
    assert [o.name for o in out.graph.output] == ["logits"] and ops(out) == ["Gemm"]
    assert r.changed == 1 and r.notes[0].startswith(
        f"interface: dropped the output 'probs' ({op} 'sm' of the output 'logits')")
    assert "apply " + op + " to 'logits'" in r.notes[0]
    feeds = {"x": rand(3, 6)}
    np.testing.assert_allclose(ort_run(out, feeds)[0], ort_run(m, feeds)[0], rtol=1e-6)


@pytest.mark.parametrize("op", ["LogSoftmax", "Tanh"])
def test_a_log_of_values_that_can_be_negative_is_no_order_keeping_tail(op):
    """Log after a LogSoftmax or a Tanh (values <= 0 or negative: the DNN's own output is
    NaN there) does not go with the head; the head is kept, named."""
    extra = {"axis": 1} if op == "LogSoftmax" else {}
    nodes = [h.make_node(op, ["logits"], ["p"], name="sm", **extra),
             h.make_node("Log", ["p"], ["y"], name="tail")]
    m = _logits_then(nodes, ["N", 4])
    pass_ = cleanup.strip_final_softmax if op == "LogSoftmax" else cleanup.strip_final_sigmoid
    r, out = apply(pass_, m)
    assert r.changed == 0 and op in ops(out) and "feeds Log 'tail'" in r.reason("sm")


def test_a_confidence_and_class_id_head_is_refused_naming_the_other_reader_and_outputs():
    """Softmax -> {ReduceMax 'conf', ArgMax 'y'}: the ArgMax goes, and the softmax then feeds
    an output and the ReduceMax; the refusal said only "also feeds other nodes", of an output
    name the user's model does not have. It names the reader and `--outputs`, with which the
    model converts."""
    import onnx_snn
    from onnx_snn.errors import UnsupportedModelError
    nodes = [h.make_node("Gemm", ["x", "W", "B"], ["h"], name="fc1", transB=1),
             h.make_node("Relu", ["h"], ["r"], name="relu"),
             h.make_node("Gemm", ["r", "W2", "B2"], ["logits"], name="fc2", transB=1),
             h.make_node("Softmax", ["logits"], ["p"], name="sm", axis=1),
             h.make_node("ReduceMax", ["p"], ["conf"], name="top", axes=[1], keepdims=0),
             h.make_node("ArgMax", ["p"], ["y"], name="ids", axis=1, keepdims=0)]
    m = make(nodes, [vi("x", ["N", 6])],
             [vi("conf", ["N"]), h.make_tensor_value_info("y", onnx.TensorProto.INT64, ["N"])],
             [init("W", rand(8, 6)), init("B", rand(8)), init("W2", rand(4, 8)), init("B2", rand(4))])
    x = rand(32, 6)
    with pytest.raises(UnsupportedModelError, match=r"also feeds ReduceMax 'top'.*--outputs NAME"):
        onnx_snn.convert(m, x, 2, "datta", show_progress=False)
    snn = onnx_snn.convert(m, x, 2, "datta", outputs=["y"], show_progress=False)
    assert len([o for o in snn.model.graph.output if not o.name.endswith(".spikes")]) == 1


def test_a_sigmoid_with_a_percentage_tail_is_dropped_with_it():
    nodes = [h.make_node("Sigmoid", ["logits"], ["p"], name="sg"),
             h.make_node("Mul", ["p", "c"], ["y"], name="pct")]
    m = _logits_then(nodes, ["N", 4], extra=[init("c", np.float32(100))])
    r, out = apply(cleanup.strip_final_sigmoid, m)
    assert ops(out) == ["Gemm"] and "'sg' and the Mul 'pct' after it" in r.notes[0]
    feeds = {"x": rand(3, 6)}
    np.testing.assert_allclose(ort_run(m, feeds)[0] / 100,
                               1 / (1 + np.exp(-ort_run(out, feeds)[0])), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- einsum with a constant

_EINSUMS = [   # (equation, data shape, weight shape, weight first)
    ("nchw,oc->nohw", ["N", 4, 5, 5], (6, 4), False),    # a 1x1 convolution
    ("oc,nchw->nohw", ["N", 4, 5, 5], (6, 4), True),     # the same, operands swapped
    ("bi,oi->bo", ["N", 8], (3, 8), False),              # a dense layer
    ("bi,oi", ["N", 8], (3, 8), False),                  # implicit output: 'bo'
    ("abc,cd->abd", ["N", 5, 8], (8, 3), False),         # Keras EinsumDense
    ("bnd,nm->bmd", ["N", 5, 4], (5, 7), False),         # a token mixer
    ("nchw,hwk->nck", ["N", 4, 5, 5], (5, 5, 3), False),  # two axes contracted
    ("nchw,ck->nk", ["N", 4, 5, 5], (4, 6), False),      # h, w summed first
    ("nc,ckj->nj", ["N", 4], (4, 2, 3), False),         # k of W alone: summed into W
]


@pytest.mark.parametrize("eq,xshape,wshape,w_first", _EINSUMS)
def test_einsum_with_a_constant_is_a_matmul(eq, xshape, wshape, w_first):
    w = init("W", rand(*wshape))
    ins = ["W", "x"] if w_first else ["x", "W"]
    dummy = {"x": np.zeros([3] + xshape[1:], np.float32), "W": np.zeros(wshape, np.float32)}
    yshape = ["N"] + list(np.einsum(eq, *(dummy[i] for i in ins)).shape[1:])
    m = make([h.make_node("Einsum", ins, ["y"], name="ein", equation=eq)], [vi("x", xshape)],
             [vi("y", yshape)], [w], opset=13)
    r, out = apply(einsum_to_matmul, m)
    assert r.changed == 1 and "Einsum" not in ops(out) and "MatMul" in ops(out)
    assert r.notes == [f"Einsum 'ein' ('{eq}') written as a MatMul with its constant operand"]
    x = rand(3, *xshape[1:])
    a, b = ort_run(m, {"x": x})[0], ort_run(out, {"x": x})[0]
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eq,ins,why", [
    ("bi,bj->bij", ["x", "x"], "both operands are computed"),
    ("bii,ij->bj", ["x3", "W"], "repeats within"),
    ("...i,oi->...o", ["x", "W"], "without '...'"),
    ("bi,bi->bi", ["x", "Wb"], "in both operands and the output"),
])
def test_einsum_that_is_not_one_matmul_is_left_named(eq, ins, why):
    inits = [init("W", rand(4, 4)), init("Wb", rand(2, 4))]
    g = h.make_graph([h.make_node("Einsum", ins, ["y"], name="ein", equation=eq)], "t",
                     [vi("x", ["N", 4]), vi("x3", ["N", 4, 4])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    r, out = apply(einsum_to_matmul, m)
    assert r.changed == 0 and "Einsum" in ops(out) and why in r.reason("ein")


def test_a_model_with_an_einsum_layer_converts():
    """End to end: conv -> relu -> Einsum 1x1 'conv' -> relu -> dense converts; at T = 256 the
    plain rate conversion approaches the DNN; the runtimes agree at T = 2."""
    b = B.GraphBuilder(13)
    x = b.act(b.conv("input", 1, 4), "relu", None)
    x = b.node("Einsum", [x, b.const(rand(6, 4) * 0.5)], equation="nchw,oc->nohw")
    x = b.act(x, "relu", None)
    x = b.gemm(b.node("Flatten", [x]), 6 * 144, 10)
    m = b.model("input", x, (1, 12, 12), 10)
    data = B.rand_input(48, seed=5)
    dnn = ort_run(m, {"input": data})[0]
    y = ort_run(onnx_snn.convert(m, data, timesteps=256, method="max", show_progress=False).model,
                {"input": data})[0]
    assert np.corrcoef(y.ravel(), dnn.ravel())[0, 1] > 0.999
    B.assert_runtimes_agree(onnx_snn.convert(m, data, timesteps=2, show_progress=False).model, data)


# ---------------------------------------------------------------- Abs / ReduceL1 of activations

@pytest.mark.parametrize("opset", [13, 18])
def test_abs_and_reduce_l1_of_an_activation_are_linear(opset):
    """conv -> relu -> Abs -> ReduceL1 over H, W: on a tensor that cannot be negative they
    are the identity and a ReduceSum (the same values); on a conv's output they stay, named."""
    b = B.GraphBuilder(opset)
    x = b.node("Abs", [b.node("Relu", [b.conv("input", 1, 4)])])
    axes = {"axes": [2, 3]} if opset < 18 else {}
    ins = [x] if opset < 18 else [x, b.const(np.array([2, 3], np.int64))]
    x = b.node("ReduceL1", ins, keepdims=0, **axes)
    m = b.model("input", b.gemm(x, 4, 10), (1, 12, 12), 10)
    r, out = apply(canonical.nonnegative_identities, m)
    assert r.changed == 2 and "Abs" not in ops(out) and "ReduceL1" not in ops(out)
    assert_same(m, out, {"input": B.rand_input(5)})
    nm = normalize(m)
    assert len(nm.sites) == 1
    # on a convolution's output (negative values) both are left for the support check
    b = B.GraphBuilder(opset)
    x = b.node("Abs", [b.conv("input", 1, 4)])
    m = b.model("input", b.gemm(b.node("Flatten", [b.act(x, "relu", None)]), 4 * 144, 10),
                (1, 12, 12), 10)
    r, out = apply(canonical.nonnegative_identities, m)
    name = next(n.name for n in m.graph.node if n.op_type == "Abs")
    assert r.changed == 0 and "can be negative" in r.reason(name)


_L1_POOLS = {
    "global": ("GlobalLpPool", {}),
    "k3s2p1": ("LpPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    "k2s2": ("LpPool", {"kernel_shape": [2, 2], "strides": [2, 2]}),
    "same": ("LpPool", {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER"}),
    "lower": ("LpPool", {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    "valid": ("LpPool", {"kernel_shape": [3, 2], "strides": [1, 2], "auto_pad": "VALID"}),
}


def _l1_pool_net(pool, attrs, opset=13, relu=True):
    b = B.GraphBuilder(opset)
    x = b.conv("input", 1, 4)
    x = b.node(pool, [b.node("Relu", [x]) if relu else x], **attrs)
    x = b.node("Flatten", [b.node("GlobalAveragePool", [x])])
    return b.model("input", b.gemm(b.act(x, "relu", None), 4, 10), (1, 12, 12), 10)


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("kind", sorted(_L1_POOLS))
def test_an_l1_pool_of_an_activation_is_a_sum_pool(kind, opset):
    """An LP pool with p = 1 of a tensor that cannot be negative is the sum of each window: a
    GlobalLpPool a ReduceSum over the spatial axes, an LpPool an AveragePool that counts the
    padding times the kernel's size (the same values); converted, it approaches the DNN as T
    grows and the runtimes agree (it was refused as "not linear", while ReduceL1 of the same
    tensor converted)."""
    pool, attrs = _L1_POOLS[kind]
    m = _l1_pool_net(pool, {**attrs, "p": 1}, opset)
    r, out = apply(canonical.nonnegative_identities, m)
    assert r.changed == 1 and pool not in ops(out)
    x = B.rand_input(16)
    assert_same(m, out, {"input": x})
    assert len(normalize(m).sites) == 2
    dnn = ort_run(m, {"input": x})[0]
    y = ort_run(onnx_snn.convert(m, x, timesteps=256, method="max", show_progress=False).model,
                {"input": x})[0]
    assert np.corrcoef(y.ravel(), dnn.ravel())[0, 1] > 0.99
    # (a global sum of 144 values reaches about 200, where a float32 step is 1.5e-5)
    B.assert_runtimes_agree(onnx_snn.convert(m, x, timesteps=2, show_progress=False).model, x,
                            atol=max(1e-5, 1e-6 * float(np.abs(dnn).max())))


@pytest.mark.parametrize("change, why", [({"p": 2}, None), ({"p": 1, "relu": False}, "can be negative"),
                                         ({"p": 1, "ceil_mode": 1}, "edge windows")])
def test_other_lp_pools_stay_refused_by_name(change, why):
    """A p-norm (p = 2), an L1 pool of a tensor that can be negative, and one whose edge
    windows are no average's (ceil_mode) stay refused, naming the node and what converts."""
    change = dict(change)
    relu = change.pop("relu", True)
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], **change}
    m = _l1_pool_net("LpPool", attrs, 18, relu)
    r, _ = apply(canonical.nonnegative_identities, m)
    name = next(n.name for n in m.graph.node if n.op_type == "LpPool")
    assert r.changed == 0
    if why:                                    # (p = 2: no reason of the pass's, a p-norm)
        assert why in r.reason(name)
    with pytest.raises(UnsupportedModelError) as e:
        normalize(m)
    assert name in str(e.value) and "p = 1" in str(e.value)


# ---------------------------------------------------------------- final clamp (ReLU on the outputs)

_FINAL_CLAMPS = {
    "Relu": lambda: [h.make_node("Relu", ["logits"], ["y"], name="act")],
    "Clip6": lambda: [h.make_node("Clip", ["logits", "zero", "six"], ["y"], name="act")],
    "Relu+Min": lambda: [h.make_node("Relu", ["logits"], ["r"], name="act"),
                         h.make_node("Min", ["r", "six"], ["y"], name="act_min")],
    "Max0": lambda: [h.make_node("Max", ["logits", "zero"], ["y"], name="act")],
    "Hardtanh": lambda: [h.make_node("Clip", ["logits", "minus1", "one"], ["y"], name="act")],
    "Relu+Flatten": lambda: [h.make_node("Relu", ["logits"], ["r"], name="act"),
                             h.make_node("Flatten", ["r"], ["y"], name="flat", axis=1)],
    "0Max": lambda: [h.make_node("Max", ["zero", "logits"], ["y"], name="act")],   # constant first
    "Relu+Flatten+Relu": lambda: [h.make_node("Relu", ["logits"], ["r"], name="act"),
                                  h.make_node("Flatten", ["r"], ["f"], name="flat", axis=1),
                                  h.make_node("Relu", ["f"], ["y"], name="act2")],
}
_CLAMP_CONSTS = [init("zero", np.float32(0)), init("six", np.float32(6)),
                 init("one", np.float32(1)), init("minus1", np.float32(-1))]


def _hidden_then(op_nodes, hidden_act=True):
    """x -> Gemm -> Relu (a hidden activation) -> Gemm (logits) -> op_nodes -> y."""
    nodes = [h.make_node("Gemm", ["x", "W1", "B1"], ["z"], name="fc1", transB=1),
             h.make_node("Relu", ["z"], ["a"], name="hidden") if hidden_act else
             h.make_node("Identity", ["z"], ["a"], name="linear"),
             h.make_node("Gemm", ["a", "W2", "B2"], ["logits"], name="fc2", transB=1)] + op_nodes
    r = np.random.default_rng(5)    # the same weights every call
    w1, b1, w2, b2 = (r.standard_normal(s).astype(np.float32) for s in ((8, 6), 8, (4, 8), 4))
    inits = [init("W1", w1), init("B1", b1), init("W2", w2), init("B2", b2)] + _CLAMP_CONSTS
    return make(nodes, [vi("x", ["N", 6])], [vi("y", ["N", 4])], inits)


@pytest.mark.parametrize("kind", sorted(_FINAL_CLAMPS))
def test_final_clamp_is_dropped(kind):
    """A ReLU-type clamp on the outputs would be a spiking layer rounding each output to
    T + 1 levels: it is dropped, and the model outputs the values before it."""
    m = _hidden_then(_FINAL_CLAMPS[kind]())
    r, out = apply(cleanup.strip_final_activation, m)
    assert r.changed == len([n for n in m.graph.node if n.name.startswith("act")])
    assert ops(out)[-1] in ("Gemm", "Flatten") and ops(out).count("Relu") == 1   # the hidden one
    assert all("dropped the final" in n and "time-averaged values before it" in n for n in r.notes)
    assert [o.name for o in out.graph.output] == ["y"]
    feeds = {"x": rand(7, 6) * 3}
    before = _hidden_then([h.make_node("Identity", ["logits"], ["y"], name="plain")])
    np.testing.assert_allclose(ort_run(out, feeds)[0], ort_run(before, feeds)[0], rtol=1e-6)


def test_an_output_beside_its_own_final_clamp_is_dropped():
    """logits and Relu(logits) both outputs: the clamp's output would have held the logits
    under its own name; it is dropped with a note."""
    m = _hidden_then([h.make_node("Relu", ["logits"], ["y"], name="act")])
    m.graph.output.insert(0, vi("logits", ["N", 4]))
    r, out = apply(cleanup.strip_final_activation, m)
    assert [o.name for o in out.graph.output] == ["logits"] and ops(out).count("Relu") == 1
    assert r.notes[0].startswith("interface: dropped the output 'y' (Relu 'act' of the output 'logits')")


def test_final_clamp_is_kept_where_it_is_not_the_readout():
    # its value also feeds another node
    m = _hidden_then([h.make_node("Relu", ["logits"], ["r"], name="act"),
                      h.make_node("Add", ["r", "logits"], ["y"], name="add")])
    r, out = apply(cleanup.strip_final_activation, m)
    assert r.changed == 0 and ops(out).count("Relu") == 2
    # a pool between it and the output: a pool of rates is not the rate of a pool
    g = [h.make_node("Reshape", ["logits", "s4"], ["l4"], name="to4d"),
         h.make_node("Relu", ["l4"], ["r"], name="act"),
         h.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
         h.make_node("Flatten", ["p"], ["y"], name="flat", axis=1)]
    base = _hidden_then([h.make_node("Identity", ["logits"], ["y"], name="plain")])
    m = make(list(base.graph.node)[:-1] + g, [vi("x", ["N", 6])], [vi("y", ["N", 1])],
             list(base.graph.initializer) + [init("s4", np.array([-1, 1, 2, 2], np.int64))])
    r, out = apply(cleanup.strip_final_activation, m)
    assert r.changed == 0 and ops(out).count("Relu") == 2
    # the model's only activation (a one-layer model), chained or not, through a reshape
    # too: it stays the site
    for kind in ("Relu", "Relu+Min", "Relu+Flatten+Relu", "0Max"):
        nodes = _FINAL_CLAMPS[kind]()
        m = _hidden_then(nodes, hidden_act=False)
        r, out = apply(cleanup.strip_final_activation, m)
        assert r.changed == 0 and "no other activation" in r.reason(nodes[-1].name), kind
        assert len(r.skipped) == 1
    # input -> clamp -> output: the clamp is the whole model
    m = make([h.make_node("Relu", ["x"], ["y"], name="act")], [vi("x", ["N", 4])], [vi("y", ["N", 4])])
    r, _ = apply(cleanup.strip_final_activation, m)
    assert r.changed == 0


def test_a_final_relu_converts_as_the_model_without_it():
    """End to end: the spiking model of a net ending in ReLU is the one of the same net
    without it (same outputs, same spikes), and it is not a spiking layer."""
    plain = B.vgg(13, "clip", softmax=False, dropout=False)
    ended = onnx.ModelProto()
    ended.CopyFrom(plain)
    out = ended.graph.output[0]
    ended.graph.node.append(h.make_node("Relu", [out.name], ["relu_out"], name="final_relu"))
    out.name = "relu_out"
    x = B.rand_input(32)
    runs = []
    for m in (plain, ended):
        _, _, snn = B.converted(m, x, 2, "datta")
        sess = ort.InferenceSession(snn.model.SerializeToString(), providers=["CPUExecutionProvider"])
        runs.append((sess.run(None, {sess.get_inputs()[0].name: x}),
                     [o.name for o in snn.model.graph.output]))
    (a, na), (b, nb) = runs
    assert na[1:] == nb[1:] and na[0] != "relu_out" and nb[0] == "relu_out"
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)


# ---------------------------------------------------------------- unused outputs

@pytest.mark.parametrize("indices_used", [False, True])
def test_unused_outputs_dropped(indices_used):
    outs = [vi("y", ["N", 1, 2, 2])] + ([vi("idx", ["N", 1, 2, 2], TP.INT64)] if indices_used else [])
    m = make([h.make_node("MaxPool", ["x"], ["y", "idx"], name="pool", kernel_shape=[2, 2],
                          strides=[2, 2])], [vi("x", ["N", 1, 4, 4])], outs)
    r, out = apply(cleanup.drop_unused_outputs, m)
    assert len(out.graph.node[0].output) == (2 if indices_used else 1)
    if indices_used:
        assert r.changed == 0 and r.reason("pool") == "its extra output 'idx' is used"
    else:
        assert r.changed == 1 and r.skipped == []
    assert_same(m, out, {"x": rand(2, 1, 4, 4)})


# ---------------------------------------------------------------- BatchNorm folding

def _bn_inits(c, prefix="bn"):
    r = RNG
    return [init(f"{prefix}_g", (1 + 0.2 * r.standard_normal(c)).astype(np.float32)),
            init(f"{prefix}_b", (0.3 * r.standard_normal(c)).astype(np.float32)),
            init(f"{prefix}_m", (0.3 * r.standard_normal(c)).astype(np.float32)),
            init(f"{prefix}_v", (0.5 + r.random(c)).astype(np.float32))]


def _bn(x, y, name="bn"):
    return h.make_node("BatchNormalization", [x, "bn_g", "bn_b", "bn_m", "bn_v"], [y], name=name,
                       epsilon=1e-3)


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folded(bias):
    ins = ["x", "W", "B"] if bias else ["x", "W"]
    nodes = [h.make_node("Conv", ins, ["c"], name="conv", pads=[1, 1, 1, 1]), _bn("c", "y")]
    inits = [init("W", rand(3, 2, 3, 3)), init("B", rand(3))] + _bn_inits(3)
    m = make(nodes, [vi("x", ["N", 2, 5, 5])], [vi("y", ["N", 3, 5, 5])], inits)
    r, out = apply(fold.fold_batchnorm, m)
    assert ops(out) == ["Conv"] and r.changed == 1 and r.skipped == []
    assert r.notes == ["folded 1 BatchNormalization layer(s) into the preceding Conv/Gemm"]
    assert_same(m, out, {"x": rand(2, 2, 5, 5)})


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (3,), (1, 3), ()])
@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_gemm_bn_folded(trans_b, c_shape, beta):
    ins = ["x", "W"] + ([] if c_shape is None else ["C"])
    nodes = [h.make_node("Gemm", ins, ["g"], name="gemm", transB=trans_b, alpha=1.5, beta=beta),
             _bn("g", "y")]
    inits = [init("W", rand(3, 5) if trans_b else rand(5, 3))] + _bn_inits(3)
    if c_shape is not None:
        inits.append(init("C", rand(*c_shape)))
    m = make(nodes, [vi("x", ["N", 5])], [vi("y", ["N", 3])], inits)
    r, out = apply(fold.fold_batchnorm, m)
    assert ops(out) == ["Gemm"] and r.changed == 1 and r.skipped == []
    assert out.graph.node[0].attribute  # transB and alpha kept
    assert_same(m, out, {"x": rand(4, 5)})


def test_lone_bn_becomes_mul_add():
    m = make([_bn("x", "y")], [vi("x", ["N", 3, 4, 4])], [vi("y", ["N", 3, 4, 4])], _bn_inits(3))
    r, out = apply(fold.fold_batchnorm, m)
    assert ops(out) == ["Mul", "Add"] and r.changed == 1
    assert r.notes == ["turned 1 standalone BatchNormalization layer(s) into Mul + Add"]
    assert r.reason("bn") == "not folded: its input 'x' is not computed by a layer; it became Mul + Add"
    assert_same(m, out, {"x": rand(2, 3, 4, 4)})


def test_bn_after_conv_with_weight_input_is_not_folded():
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], name="conv"), _bn("c", "y")]
    m = make(nodes, [vi("x", ["N", 2, 4, 4]), vi("W", [3, 2, 1, 1])], [vi("y", ["N", 3, 4, 4])],
             _bn_inits(3))
    r, out = apply(fold.fold_batchnorm, m)
    assert r.reason("bn") == ("not folded: the Conv's weight is not constant; it became Mul + Add")
    assert_same(m, out, {"x": rand(2, 2, 4, 4), "W": rand(3, 2, 1, 1)})


def test_bn_after_shared_conv_output_is_not_folded():
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], name="conv"), _bn("c", "b"),
             h.make_node("Add", ["b", "c"], ["y"], name="add")]
    m = make(nodes, [vi("x", ["N", 2, 4, 4])], [vi("y", ["N", 3, 4, 4])],
             [init("W", rand(3, 2, 1, 1))] + _bn_inits(3))
    r, out = apply(fold.fold_batchnorm, m)
    assert r.reason("bn") == ("not folded: the Conv output 'c' also feeds other nodes; it became "
                              "Mul + Add")
    assert_same(m, out, {"x": rand(2, 2, 4, 4)})


def test_bn_after_relu_is_not_folded():
    nodes = [h.make_node("Relu", ["x"], ["r"], name="relu"), _bn("r", "y")]
    m = make(nodes, [vi("x", ["N", 3])], [vi("y", ["N", 3])], _bn_inits(3))
    r, out = apply(fold.fold_batchnorm, m)
    assert r.reason("bn") == ("not folded: its input comes from Relu 'relu', not from a Conv or "
                              "Gemm; it became Mul + Add")
    assert_same(m, out, {"x": rand(2, 3)})


def test_bn_with_non_constant_parameters_is_refused():
    m = make([h.make_node("BatchNormalization", ["x", "g", "bn_b", "bn_m", "bn_v"], ["y"], name="bn")],
             [vi("x", ["N", 3]), vi("g", [3])], [vi("y", ["N", 3])], _bn_inits(3)[1:])
    with pytest.raises(UnsupportedModelError, match="eval mode"):
        apply(fold.fold_batchnorm, m)


def test_conv_and_gemm_share_one_scaling_function(monkeypatch):
    calls = []
    real = fold.scale_layer
    monkeypatch.setattr(fold, "scale_layer", lambda layer, k, b: (calls.append(layer.op), real(layer, k, b)))
    conv = make([h.make_node("Conv", ["x", "W"], ["c"], name="conv"), _bn("c", "y")],
                [vi("x", ["N", 2, 4, 4])], [vi("y", ["N", 3, 4, 4])],
                [init("W", rand(3, 2, 1, 1))] + _bn_inits(3))
    gemm = make([h.make_node("Gemm", ["x", "W"], ["g"], name="gemm"), _bn("g", "y")],
                [vi("x", ["N", 5])], [vi("y", ["N", 3])], [init("W", rand(5, 3))] + _bn_inits(3))
    apply(fold.fold_batchnorm, conv)
    apply(fold.fold_batchnorm, gemm)
    assert calls == ["Conv", "Gemm"]


# ---------------------------------------------------------------- MatMul + Add -> Gemm

@pytest.mark.parametrize("bias_first", [False, True])
@pytest.mark.parametrize("bias_shape", [(3,), (1, 3)])
def test_matmul_add_becomes_gemm(bias_first, bias_shape):
    add_in = ["B", "mm"] if bias_first else ["mm", "B"]
    nodes = [h.make_node("MatMul", ["x", "W"], ["mm"], name="mm1"),
             h.make_node("Add", add_in, ["y"], name="add")]
    m = make(nodes, [vi("x", ["N", 5])], [vi("y", ["N", 3])],
             [init("W", rand(5, 3)), init("B", rand(*bias_shape))])
    r, out = apply(canonical.matmul_add_to_gemm, m)
    assert ops(out) == ["Gemm"] and r.changed == 1 and r.skipped == []
    assert out.graph.node[0].name == "mm1"
    assert_same(m, out, {"x": rand(4, 5)})


def test_matmul_with_3d_weight_is_left():
    nodes = [h.make_node("MatMul", ["x", "W"], ["mm"], name="mm1"),
             h.make_node("Add", ["mm", "B"], ["y"], name="add")]
    m = make(nodes, [vi("x", [2, 5])], [vi("y", [4, 2, 3])],
             [init("W", rand(4, 5, 3)), init("B", rand(3))])
    r, out = apply(canonical.matmul_add_to_gemm, m)
    assert r.changed == 0 and r.reason("mm1") == "its weight is 3-D, not 2-D"
    assert_same(m, out, {"x": rand(2, 5)})


def test_matmul_on_3d_input_is_left():
    nodes = [h.make_node("MatMul", ["x", "W"], ["mm"], name="mm1"),
             h.make_node("Add", ["mm", "B"], ["y"], name="add")]
    m = make(nodes, [vi("x", ["N", 7, 5])], [vi("y", ["N", 7, 3])],
             [init("W", rand(5, 3)), init("B", rand(3))])
    r, _ = apply(canonical.matmul_add_to_gemm, m)
    assert r.reason("mm1") == "its input 'x' is 3-D, not 2-D"


def test_matmul_with_non_constant_bias_is_a_gemm_without_bias():
    """A dense MatMul whose Add is no bias (a data input: a residual) becomes a Gemm of its
    own, the Add kept after it: the same function, a layer the weight calibration refits."""
    nodes = [h.make_node("MatMul", ["x", "W"], ["mm"], name="mm1"),
             h.make_node("Add", ["mm", "b"], ["y"], name="add")]
    m = make(nodes, [vi("x", ["N", 5]), vi("b", ["N", 3])], [vi("y", ["N", 3])],
             [init("W", rand(5, 3))])
    r, out = apply(canonical.matmul_add_to_gemm, m)
    assert r.changed == 1 and ops(out) == ["Gemm", "Add"]
    assert len(out.graph.node[0].input) == 2            # (no bias of its own)
    assert_same(m, out, {"x": rand(4, 5), "b": rand(4, 3)})


def test_matmul_without_add_is_a_gemm_without_bias():
    """A dense MatMul that is a graph output (the last layer of an export without a bias)
    becomes a Gemm of no bias under the same output name; a MatMul of two data inputs stays."""
    m = make([h.make_node("MatMul", ["x", "W"], ["y"], name="mm1")], [vi("x", ["N", 5])],
             [vi("y", ["N", 3])], [init("W", rand(5, 3))])
    r, out = apply(canonical.matmul_add_to_gemm, m)
    assert r.changed == 1 and ops(out) == ["Gemm"] and out.graph.output[0].name == "y"
    assert_same(m, out, {"x": rand(4, 5)})
    m = make([h.make_node("MatMul", ["x", "v"], ["y"], name="mm1")],
             [vi("x", ["N", 5]), vi("v", [5, 3])], [vi("y", ["N", 3])], [])
    r, out = apply(canonical.matmul_add_to_gemm, m)
    assert r.changed == 0 and ops(out) == ["MatMul"]
    assert r.reason("mm1") == "its weight 'v' is not constant"


# ---------------------------------------------------------------- activation sites

def _clamp_nodes(idiom, x="x", y="y", opset=13):
    z, mu = "zero", "mu"
    if idiom == "clip_attrs":
        return [h.make_node("Clip", [x], [y], name="clip", min=0.0, max=2.0)]
    if idiom == "clip":
        return [h.make_node("Clip", [x, z, mu], [y], name="clip")]
    if idiom == "relu6":
        return [h.make_node("Clip", [x, z, "six"], [y], name="clip")]
    if idiom == "relu_min":
        return [h.make_node("Relu", [x], ["r"], name="relu"), h.make_node("Min", ["r", mu], [y], name="min")]
    if idiom == "max_min":
        return [h.make_node("Max", [x, z], ["r"], name="max"), h.make_node("Min", ["r", mu], [y], name="min")]
    if idiom == "min_max":
        return [h.make_node("Min", [mu, x], ["r"], name="min"), h.make_node("Max", ["r", z], [y], name="max")]
    if idiom == "relu":
        return [h.make_node("Relu", [x], [y], name="relu")]
    raise ValueError(idiom)


@pytest.mark.parametrize("idiom", ["clip_attrs", "clip", "relu6", "relu_min", "max_min",
                                   "min_max", "relu"])
def test_clamp_idioms_become_one_site(idiom):
    opset = 9 if idiom == "clip_attrs" else 13
    nodes = [h.make_node("Neg", ["x"], ["h"], name="neg")] + _clamp_nodes(idiom, "h")
    inits = [init("zero", np.array(0.0, np.float32)), init("mu", np.array(2.0, np.float32)),
             init("six", np.array(6.0, np.float32))] if opset >= 11 else []
    m = make(nodes, [vi("x", ["N", 8])], [vi("y", ["N", 8])], inits, opset=opset)
    # the upgrade writes Clip's bounds as Constant nodes, which constant folding turns into
    # initializers before sites are looked for
    r, out = apply(canonicalize_sites, m, upgrade=opset < 13, first=[fold.fold_constants])
    (site,) = r.records
    assert r.changed == 1 and r.skipped == [] and site.name == "lif0"
    assert site.mu == {"relu": None, "relu6": 6.0}.get(idiom, 2.0)
    assert ops(out) == ["Neg", "Relu" if idiom == "relu" else "Clip"]
    assert bool(r.notes) == (idiom == "relu")
    assert_same(m if opset >= 13 else canonical.upgrade_opset(m, [], "t"), out,
                {"x": 3 * rand(4, 8)})


def test_max_of_two_data_tensors_is_not_a_site():
    nodes = [h.make_node("Max", ["x", "z"], ["m"], name="max2"),
             h.make_node("Relu", ["m"], ["y"], name="relu")]
    m = make(nodes, [vi("x", ["N", 4]), vi("z", ["N", 4])], [vi("y", ["N", 4])])
    r, out = apply(canonicalize_sites, m)
    assert r.changed == 1
    assert r.reason("max2") == "Max of 2 data tensors is not a clamp by a constant"
    assert_same(m, out, {"x": rand(2, 4), "z": rand(2, 4)})


def test_clip_of_shape_arithmetic_is_not_a_site():
    nodes = [h.make_node("Shape", ["x"], ["s"], name="shape"),
             h.make_node("Clip", ["s", "lo", "hi"], ["cs"], name="clip_shape"),
             h.make_node("Reshape", ["x", "cs"], ["r"], name="reshape"),
             h.make_node("Relu", ["r"], ["y"], name="relu")]
    m = make(nodes, [vi("x", ["N", 4])], [vi("y", ["N", 4])],
             [init("lo", np.array(-1, np.int64)), init("hi", np.array(100, np.int64))])
    r, _ = apply(canonicalize_sites, m)
    assert r.changed == 1 and r.reason("clip_shape") == "it clamps shape arithmetic, not data"


# ---------------------------------------------------------------- real-model bugs

def squeezenet_like(flatten: bool, opset=9):
    """The tail of the ONNX test-suite SqueezeNet: Conv -> Relu -> GlobalAveragePool ->
    Softmax(axis=1) on [N, C, 1, 1] (-> Flatten)."""
    nodes = [h.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             h.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv10"),
             h.make_node("Relu", ["c2"], ["r2"], name="relu10"),
             h.make_node("GlobalAveragePool", ["r2"], ["gap"], name="pool10"),
             h.make_node("Softmax", ["gap"], ["p" if flatten else "softmaxout_1"], name="softmax", axis=1)]
    out = [vi("softmaxout_1", ["N", 10, 1, 1])]
    if flatten:
        nodes.append(h.make_node("Flatten", ["p"], ["softmaxout_1"], name="flat", axis=1))
        out = [vi("softmaxout_1", ["N", 10])]
    inits = [init("W1", 0.5 * rand(4, 1, 3, 3)), init("B1", 0.1 * rand(4)),
             init("W2", 0.5 * rand(10, 4, 1, 1)), init("B2", 0.1 * rand(10))]
    return make(nodes, [vi("x", ["N", 1, 12, 12])], out, inits, opset=opset)


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("opset", [9, 13])
def test_softmax_on_4d_tensor_at_the_output_converts(flatten, opset):
    m = squeezenet_like(flatten, opset)
    nm = normalize(m)
    assert "Softmax" not in ops(nm.model)
    assert nm.output_names == ["softmaxout_1"] and len(nm.sites) == 2
    assert any("dropped the final Softmax 'softmax'" in n for n in nm.notes)
    x = np.random.default_rng(3).random((16, 1, 12, 12)).astype(np.float32)
    a = ort_run(m, {"x": x})[0].reshape(16, -1)
    b = ort_run(nm.model, {"x": x})[0].reshape(16, -1)
    np.testing.assert_allclose(a, softmax(b), rtol=1e-5, atol=1e-6)
    snn = onnx_snn.convert(m, x, timesteps=2, show_progress=False)
    assert len(snn.normalized.sites) == 2


def _silu():
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             h.make_node("Sigmoid", ["c"], ["s"], name="silu_sigmoid"),
             h.make_node("Mul", ["c", "s"], ["a"], name="silu_mul")]
    return nodes, 13, []


def _gelu():
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             h.make_node("Div", ["c", "sqrt2"], ["d"], name="gelu_div"),
             h.make_node("Erf", ["d"], ["e"], name="gelu_erf"),
             h.make_node("Add", ["e", "one"], ["e1"], name="gelu_add"),
             h.make_node("Mul", ["c", "e1"], ["m"], name="gelu_mul"),
             h.make_node("Mul", ["m", "half"], ["a"], name="gelu_half")]
    return nodes, 13, [init("sqrt2", np.array(np.sqrt(2), np.float32)),
                       init("one", np.array(1.0, np.float32)), init("half", np.array(0.5, np.float32))]


def _layernorm():
    nodes = [h.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             h.make_node("LayerNormalization", ["c", "ln_g", "ln_b"], ["a"], name="ln", axis=1)]
    return nodes, 17, [init("ln_g", np.ones((3, 12, 12), np.float32)),
                       init("ln_b", np.zeros((3, 12, 12), np.float32))]


def _hardswish():
    return [h.make_node("Conv", ["x", "W"], ["c"], name="conv"),
            h.make_node("HardSwish", ["c"], ["a"], name="hswish")], 14, []


@pytest.mark.parametrize("build,node,op", [(_silu, "silu_sigmoid", "Sigmoid"),
                                           (_gelu, "gelu_erf", "Erf"),
                                           (_layernorm, "ln", "LayerNormalization"),
                                           (_hardswish, "hswish", "HardSwish")])
def test_model_without_relu_names_its_first_nonlinearity(build, node, op, tmp_path, capsys):
    nodes, opset, inits = build()
    nodes = nodes + [h.make_node("GlobalAveragePool", ["a"], ["g"], name="gap"),
                     h.make_node("Flatten", ["g"], ["f"], name="flat"),
                     h.make_node("Gemm", ["f", "FW", "FB"], ["y"], name="fc", transB=1)]
    inits = inits + [init("W", rand(3, 1, 1, 1)), init("FW", rand(10, 3)), init("FB", rand(10))]
    m = make(nodes, [vi("x", ["N", 1, 12, 12])], [vi("y", ["N", 10])], inits, opset=opset)
    with pytest.raises(UnsupportedModelError) as e:
        normalize(m)
    msg = str(e.value)
    assert f"node '{node}' ({op})" in msg and "no ReLU-type activation" in msg
    assert e.value.exit_code == 4
    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    np.save(tmp_path / "calib.npy", rand(4, 1, 12, 12))
    rc = main(["convert", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy")])
    assert rc == 4 and f"node '{node}' ({op})" in capsys.readouterr().err
    if op == "Erf":     # a GELU the exporter wrote out is named as one
        assert "(likely part of a GELU written out by the exporter)" in msg


def test_an_unsupported_layer_is_named_whether_or_not_the_model_has_a_relu():
    """An LSTM in a model with no ReLU was refused as 'no ReLU-type activation found', not
    naming the LSTM; with a ReLU elsewhere it was named (an outside sweep)."""
    hidden = 6
    nodes = [h.make_node("LSTM", ["x", "W", "R"], ["seq", "hn"], name="lstm", hidden_size=hidden),
             h.make_node("Squeeze", ["hn", "ax"], ["last"], name="sq"),
             h.make_node("Gemm", ["last", "FW", "FB"], ["y"], name="fc", transB=1)]
    inits = [init("W", rand(1, 4 * hidden, 3)), init("R", rand(1, 4 * hidden, hidden)),
             init("ax", np.array([0], np.int64)), init("FW", rand(2, hidden)), init("FB", rand(2))]
    m = make(nodes, [vi("x", [5, "N", 3])], [vi("y", ["N", 2])], inits, opset=13)
    with pytest.raises(UnsupportedModelError) as e:
        normalize(m)
    msg = str(e.value)
    assert "node 'lstm' (LSTM) is not supported" in msg and "no ReLU-type activation" in msg


def test_a_final_tanh_is_dropped_like_a_final_sigmoid():
    """A bounded regression or score head (Tanh on the output) was refused with advice to
    replace it by a ReLU, which changes the model: it is dropped with a note, the spiking
    model outputs its time-averaged input (same order and sign)."""
    from onnx_snn.runtimes.ort import run
    b = B.GraphBuilder(13)
    y = b.gemm(b.node("Relu", [b.gemm(b.node("Flatten", ["input"]), 144, 16)]), 16, 3)
    m = b.model("input", b.node("Tanh", [y]), (1, 12, 12), 3)
    nm = normalize(m)
    assert any("dropped the final Tanh" in n for n in nm.notes)
    x = B.rand_input(16)
    snn = onnx_snn.convert(m, x, timesteps=256, method="max", show_progress=False)
    got = run(snn.model, x).outputs[0]
    want = np.arctanh(np.clip(run(m, x).outputs[0], -1 + 1e-6, 1 - 1e-6))
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("opset,keepdims", [(13, 0), (13, 1), (18, 0)])
def test_reduce_max_over_the_spatial_axes_is_a_global_max_pool(opset, keepdims):
    """Keras's GlobalMaxPooling2D through tf2onnx (ReduceMax over H, W; axes an attribute
    before opset 18, an input from it): the same function as GlobalMaxPool, whose spiking
    form is rate-exact, so at large T the spiking network follows its DNN."""
    from onnx import TensorProto as TP
    from onnx import numpy_helper as nh
    from onnx_snn.runtimes.ort import run
    rng = np.random.default_rng(0)
    inits = [nh.from_array((rng.standard_normal((6, 1, 3, 3)) * 0.5).astype(np.float32), "w"),
             nh.from_array(rng.standard_normal((10, 6)).astype(np.float32), "w2")]
    if opset >= 18:
        inits.append(nh.from_array(np.array([2, 3], np.int64), "axes"))
        red = h.make_node("ReduceMax", ["r", "axes"], ["p"], keepdims=keepdims, name="gmp")
    else:
        red = h.make_node("ReduceMax", ["r"], ["p"], axes=[-2, -1], keepdims=keepdims, name="gmp")
    nodes = [h.make_node("Conv", ["input", "w"], ["c"], pads=[1] * 4),
             h.make_node("Clip", ["c", "lo", "hi"], ["r"]), red]
    inits += [nh.from_array(np.array(0, np.float32), "lo"), nh.from_array(np.array(2, np.float32), "hi")]
    if keepdims:
        nodes.append(h.make_node("Flatten", ["p"], ["f"]))
    nodes.append(h.make_node("Gemm", ["f" if keepdims else "p", "w2"], ["y"], transB=1))
    g = h.make_graph(nodes, "gmp", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, 12, 12])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    nm = normalize(m)
    kinds = [n.op_type for n in nm.model.graph.node]
    assert "ReduceMax" not in kinds and "GlobalMaxPool" in kinds
    x = B.rand_input(32)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-5)
    _, _, snn = B.converted(m, x, T=256, method="max")
    got, want = run(snn.model, x).outputs[0], run(m, x).outputs[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


def test_a_training_mode_dropout_is_removed_with_a_note():
    """A Dropout exported in training mode (training_mode=True: random in onnxruntime) is
    removed like any Dropout, and the notes say the DNN was exported in training mode; an
    inference-mode one gets no such note."""
    import onnx_snn
    from onnx import TensorProto, helper
    notes = {}
    for training in (True, False):
        m = B.vgg(13, "clip", dropout=True)
        d = next(n for n in m.graph.node if n.op_type == "Dropout")
        m.graph.initializer.extend([helper.make_tensor("ratio", TensorProto.FLOAT, [], [0.3]),
                                    helper.make_tensor("train", TensorProto.BOOL, [], [training])])
        d.input[:] = [d.input[0], "ratio", "train"]
        d.name = "drop{0}"                 # braces in a name are no format fields
        nm = onnx_snn.prepare(m)
        assert not any(n.op_type == "Dropout" for n in nm.model.graph.node)
        notes[training] = [n for n in nm.notes if "training mode" in n]
    assert len(notes[True]) == 1 and "30%" in notes[True][0] and d.name in notes[True][0]
    assert notes[False] == []


def _tensordot_model(opset: int) -> onnx.ModelProto:
    """A Keras Dense on a 4-D tensor as tf2onnx writes it (a tensordot): NHWC activations
    reshaped to [N*H*W, C] with N*H*W a ReduceProd of the Shape's gathered sizes (the batch
    is free, so it does not fold), MatMul, and reshaped back to [N, H, W, units]."""
    rng = np.random.default_rng(1)
    i64 = lambda name, v: nh.from_array(np.array(v, np.int64), name)   # noqa: E731
    inits = [nh.from_array((rng.standard_normal((4, 1, 3, 3)) * 0.5).astype(np.float32), "w"),
             nh.from_array(rng.standard_normal((4, 5)).astype(np.float32), "wd"),
             nh.from_array(rng.standard_normal((10, 5 * 36)).astype(np.float32), "w2"),
             nh.from_array(np.array(0, np.float32), "lo"), nh.from_array(np.array(2, np.float32), "hi"),
             i64("free", [0, 1, 2]), i64("units", [5]), i64("chans", [4]), i64("zero", [0])]
    if opset >= 18:
        inits.append(i64("rax", [0]))
        prod = h.make_node("ReduceProd", ["freedims", "rax"], ["rows"], keepdims=0)
    else:
        prod = h.make_node("ReduceProd", ["freedims"], ["rows"], axes=[0], keepdims=0)
    nodes = [h.make_node("Conv", ["input", "w"], ["c"], pads=[1] * 4),
             h.make_node("Clip", ["c", "lo", "hi"], ["r"]),
             h.make_node("Transpose", ["r"], ["nhwc"], perm=[0, 2, 3, 1]),
             h.make_node("Shape", ["nhwc"], ["shp"]),
             h.make_node("Gather", ["shp", "free"], ["freedims"], axis=0), prod,
             h.make_node("Unsqueeze", ["rows", "zero"], ["rows1"]) if opset >= 13 else
             h.make_node("Unsqueeze", ["rows"], ["rows1"], axes=[0]),
             h.make_node("Concat", ["rows1", "chans"], ["flat_shape"], axis=0),
             h.make_node("Reshape", ["nhwc", "flat_shape"], ["flat"]),
             h.make_node("MatMul", ["flat", "wd"], ["md"]),
             h.make_node("Concat", ["freedims", "units"], ["back_shape"], axis=0),
             h.make_node("Reshape", ["md", "back_shape"], ["d4"]),
             h.make_node("Clip", ["d4", "lo", "hi"], ["r2"]),
             h.make_node("Flatten", ["r2"], ["f"]),
             h.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    g = h.make_graph(nodes, "tensordot", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, 6, 6])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("opset,reduce_op", [(13, "ReduceProd"), (18, "ReduceProd"),
                                             (13, "ReduceMax")])   # (ReduceMax: and a max)
def test_a_tensordot_dense_with_a_free_batch_converts(opset, reduce_op, tmp_path):
    """Shape arithmetic may reduce sizes (tf2onnx's tensordot: ReduceProd of the gathered
    dims, which the free batch keeps from folding): converted (it was refused as an
    unsupported ReduceProd), the same in the torch runtime and onnxruntime, analyzed and
    deployed. The same op on data is still refused."""
    from onnx_snn.runtimes.ort import run
    m = _tensordot_model(opset)
    if reduce_op == "ReduceMax":        # the row count as max(N*H*W, 1): the same size
        cat = next(n for n in m.graph.node if n.output[0] == "flat_shape")
        cat.input[0] = "rows_m"
        m.graph.initializer.append(nh.from_array(np.array([1], np.int64), "one"))
        at = list(m.graph.node).index(cat)
        m.graph.node.insert(at, h.make_node("ReduceMax", ["pair"], ["rows_m"], axes=[0], keepdims=1))
        m.graph.node.insert(at, h.make_node("Concat", ["rows1", "one"], ["pair"], axis=0))
    x = B.rand_input(8, shape=(1, 6, 6))
    _, _, snn = B.converted(m, x, T=2)
    B.assert_runtimes_agree(snn.model, x)
    path = tmp_path / "m.snn.onnx"
    onnx.save(snn.model, path)
    assert main(["-q", "analyze", str(path)]) == 0
    assert main(["-q", "deploy", str(path), "-o", str(tmp_path / "d.onnx")]) == 0
    np.testing.assert_allclose(run(onnx.load(tmp_path / "d.onnx"), x).outputs[0],
                               run(snn.model, x).outputs[0], rtol=1e-5, atol=1e-5)
    # at large T the rate code follows the DNN
    _, _, big = B.converted(m, x, T=256, method="max")
    got, want = run(big.model, x).outputs[0], run(m, x).outputs[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99
    # a ReduceProd of data (not sizes) is no shape arithmetic: refused, naming it
    bad = _tensordot_model(13)
    bad.graph.node.append(h.make_node("ReduceProd", ["y"], ["yp"], axes=[1], keepdims=1))
    bad.graph.output[0].name = "yp"
    bad.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 1
    with pytest.raises(UnsupportedModelError, match="ReduceProd"):
        normalize(bad) and onnx_snn.prepare(bad)


@pytest.mark.parametrize("per_feature", [True, False])
def test_an_ml_scaler_is_an_affine_input_normalization(per_feature):
    """scikit-learn's Pipeline(StandardScaler, MLPClassifier) through skl2onnx starts with
    ai.onnx.ml's Scaler, (x - offset) * scale per feature: written as Sub and Mul (it was
    refused as a custom-domain op), the same outputs, and the spiking network follows it."""
    from onnx_snn.runtimes.ort import run
    rng = np.random.default_rng(2)
    d = 8
    offset = rng.normal(size=d).tolist() if per_feature else [0.5]
    scale = rng.uniform(0.5, 2.0, size=d).tolist() if per_feature else [1.5]
    nodes = [h.make_node("Scaler", ["input"], ["scaled"], domain="ai.onnx.ml", name="Scaler",
                         offset=offset, scale=scale),
             h.make_node("MatMul", ["scaled", "w1"], ["a"]), h.make_node("Add", ["a", "b1"], ["ab"]),
             h.make_node("Relu", ["ab"], ["r"]), h.make_node("MatMul", ["r", "w2"], ["y"])]
    inits = [nh.from_array(rng.normal(size=(d, 16)).astype(np.float32), "w1"),
             nh.from_array(rng.normal(size=16).astype(np.float32), "b1"),
             nh.from_array(rng.normal(size=(16, 3)).astype(np.float32), "w2")]
    g = h.make_graph(nodes, "pipe", [h.make_tensor_value_info("input", TP.FLOAT, ["N", d])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 3])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13), h.make_opsetid("ai.onnx.ml", 1)])
    x = rng.normal(size=(64, d)).astype(np.float32)
    nm = normalize(m)
    assert not any(n.op_type == "Scaler" for n in nm.model.graph.node)
    assert any("Scaler" in n for n in nm.notes)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], rtol=1e-5, atol=1e-5)
    _, _, snn = B.converted(m, x, T=256, method="max")
    B.assert_runtimes_agree(snn.model, x, atol=1e-4)
    got, want = run(snn.model, x).outputs[0], run(m, x).outputs[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("case", ["lengths", "rank3", "int64"])
def test_an_ml_scaler_onnxruntime_would_not_run_as_rewritten_is_refused_saying_why(case):
    """The rewrite takes what onnxruntime's Scaler computes: [N, features] float32 rows, an
    offset and a scale of one value each or one per feature. Anything else stays and is
    refused, the message saying why (onnxruntime refuses a scale of 1 value beside 8
    offsets; it reads an [N, 3, 2] input by its axis 1, not its last)."""
    d = 8
    offset, scale = [0.5] * d, [2.0] * d
    shape, elem = ["N", d], TP.FLOAT
    if case == "lengths":
        scale = [2.0]
    elif case == "rank3":
        shape = ["N", 2, 4]
    else:
        elem = TP.INT64
    g = h.make_graph([h.make_node("Scaler", ["input"], ["scaled"], domain="ai.onnx.ml", name="Scaler",
                                  offset=offset, scale=scale),
                      h.make_node("Relu", ["scaled"], ["y"])], "s",
                     [h.make_tensor_value_info("input", elem, shape)],
                     [h.make_tensor_value_info("y", TP.FLOAT, shape)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13), h.make_opsetid("ai.onnx.ml", 1)])
    want = {"lengths": "its offset .8 values. and scale .1. must both be one value or one per feature",
            "rank3": "its input is of rank 3", "int64": "its input is int64"}[case]
    with pytest.raises(UnsupportedModelError, match=f"'ai.onnx.ml' is not supported \\({want}"):
        normalize(m)

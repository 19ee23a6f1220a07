"""What a classifier's first output holds and the classes top-1 reads (onnx_snn/scores.py),
and binary classifiers (one logit, or a final Sigmoid) through convert, eval and finetune."""
import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

import builders as B
from onnx_snn.errors import DataError
from onnx_snn.scores import (IDS, PROBABILITIES, SCORES, check_labels_for, class_scores,
                             first_output_kind, predicted)


def test_predicted_classes_from_scores_and_ids():
    """Integer scores (a quantized model's uint8/int8 logits) are scores: their argmax; class
    ids are read as ids whatever their trailing unit axes; [N, classes, 1, 1] scores are
    flattened; an integer [N] is ids."""
    q = np.array([[0, 9, 1], [0, 1, 9]], np.int8)
    assert predicted(q).tolist() == [1, 2]
    assert predicted(np.array([[[1]], [[2]]], np.int64), IDS).tolist() == [1, 2]
    assert predicted(np.array([[2, 0], [1, 0]]), IDS).tolist() == [2, 1]
    assert predicted(q.astype(np.float32)[:, :, None, None]).tolist() == [1, 2]
    assert predicted(np.array([1, 2])).tolist() == [1, 2]
    with pytest.raises(DataError, match="shape"):
        predicted(np.zeros((2, 3, 4), np.float32))


@pytest.mark.parametrize("shape", [(5,), (5, 1), (5, 1, 1, 1)])
def test_one_score_per_sample_is_a_binary_classifier(shape):
    """A logit is class 1 above 0, a probability above 0.5 (0 and 0.5 themselves: class 0),
    whatever the unit axes the score comes with."""
    z = np.array([-2.0, -1e-3, 0.0, 1e-3, 3.0], np.float32)
    assert predicted(z.reshape(shape)).tolist() == [0, 0, 0, 1, 1]
    p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    p[2] = 0.5
    assert predicted(p.astype(np.float32).reshape(shape), PROBABILITIES).tolist() == [0, 0, 0, 1, 1]
    two = class_scores(z.reshape(shape))
    assert two.shape == (5, 2) and np.array_equal(two[:, 1], z) and not two[:, 0].any()


def test_the_two_classes_cross_entropy_is_the_binary_cross_entropy():
    """Cross-entropy and distillation read a binary classifier as the two classes [0, z]:
    the softmax of [0, z] is [1 - sigmoid(z), sigmoid(z)], so the cross-entropy is the
    binary cross-entropy of the logit, in numpy and torch alike."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as Fn
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.standard_normal((64, 1)).astype(np.float32) * 4)
    y = torch.from_numpy(rng.integers(0, 2, 64))
    two = class_scores(z)
    assert isinstance(two, torch.Tensor) and two.shape == (64, 2)
    ce = Fn.cross_entropy(two, y)
    bce = Fn.binary_cross_entropy_with_logits(z[:, 0], y.float())
    assert float(ce) == pytest.approx(float(bce), rel=1e-5)
    p = torch.sigmoid(z)
    assert torch.allclose(torch.softmax(two, 1), class_scores(p, probabilities=True), atol=1e-6)


def test_labels_must_be_classes_the_output_scores():
    check_labels_for(np.array([0, 25]), np.array([3, 25], np.int64), "d")   # ids: any labels
    y = np.array([0, 1, 1])
    check_labels_for(y, np.zeros((3, 1), np.float32), "d")
    check_labels_for(y, np.zeros(3, np.float32), "d")
    with pytest.raises(DataError, match="one score per sample, a binary classifier"):
        check_labels_for(np.array([0, 2]), np.zeros((2, 1), np.float32), "d")
    with pytest.raises(DataError, match="outputs 3 classes"):
        check_labels_for(np.array([0, 3]), np.zeros((2, 3), np.float32), "d")


def _binary(sigmoid: bool, squeeze: bool = False, opset: int = 13) -> onnx.ModelProto:
    """conv -> clip -> conv -> relu -> global pool -> flatten -> one logit (-> Sigmoid)."""
    b = B.GraphBuilder(opset, seed=3)
    t = b.act(b.conv("x", 1, 8), "clip")
    t = b.act(b.conv(t, 8, 8, stride=2), "relu")
    t = b.node("Flatten", [b.node("GlobalAveragePool", [t])], axis=1)
    t = b.gemm(t, 8, 1)
    if squeeze:
        t = b.node("Squeeze", [t, b.const(np.array([1], np.int64))] if opset >= 13 else [t],
                   **({} if opset >= 13 else {"axes": [1]}))
    if sigmoid:
        t = b.node("Sigmoid", [t])
    out = h.make_tensor_value_info(t, TP.FLOAT, ["N"] if squeeze else ["N", 1])
    g = h.make_graph(b.nodes, "binary", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 1, 12, 12])],
                     [out], b.inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 7 if opset < 15 else 8
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("sigmoid,squeeze,opset", [(False, False, 13), (True, False, 13),
                                                   (True, True, 13), (True, True, 11)])
def test_a_binary_classifier_converts_and_its_logit_approaches_the_dnns(sigmoid, squeeze, opset):
    """A final Sigmoid is dropped with a note (support used to refuse it as a nonlinearity);
    the spiking model outputs the logit, which at T=256 approaches the DNN's, and its classes
    (logit > 0) agree with the DNN's (probability > 0.5)."""
    from onnx_snn.convert import prepare
    from onnx_snn.runtimes.ort import run
    m = _binary(sigmoid, squeeze, opset)
    assert first_output_kind(m) == (PROBABILITIES if sigmoid else SCORES)
    nm = prepare(m)
    assert any("dropped the final Sigmoid" in n for n in nm.notes) == sigmoid
    x = B.rand_input(128, seed=5)
    _, _, snn = B.converted(m, x, T=256, method="max")
    dnn = run(m, x).outputs[0].reshape(len(x))
    logit = np.log(dnn) - np.log1p(-dnn) if sigmoid else dnn
    got = run(snn.model, x).outputs[0].reshape(len(x))
    assert np.corrcoef(got, logit)[0, 1] > 0.99
    kind = first_output_kind(m)
    assert np.mean(predicted(got) == predicted(run(m, x).outputs[0], kind)) >= 0.95


def test_a_final_sigmoid_that_the_network_also_reads_is_refused():
    """Only a Sigmoid whose output goes to the graph outputs alone is post-processing."""
    from onnx_snn.convert import prepare
    from onnx_snn.errors import UnsupportedModelError
    m = _binary(True)
    g = m.graph
    s = next(n for n in g.node if n.op_type == "Sigmoid")
    g.node.append(h.make_node("Add", [s.output[0], s.output[0]], ["twice"], name="reads_it"))
    g.output.append(h.make_tensor_value_info("twice", TP.FLOAT, ["N", 1]))
    with pytest.raises(UnsupportedModelError, match="Sigmoid"):
        prepare(m)


def test_topk_values_are_refused_and_heads_are_read_as_ids():
    b = B.GraphBuilder(13)
    t = b.gemm("x", 4, 3)
    vals, idx = b.node("TopK", [t, b.const(np.array([1], np.int64))], n_out=2, axis=1), None
    idx = b.nodes[-1].output[1]
    g = h.make_graph(b.nodes, "k", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
                     [h.make_tensor_value_info(idx, TP.INT64, ["N", 1]),
                      h.make_tensor_value_info(vals, TP.FLOAT, ["N", 1])], b.inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    assert first_output_kind(m) == IDS
    with pytest.raises(DataError, match="values of TopK"):
        first_output_kind(m, vals)


@pytest.fixture
def binary_files(tmp_path):
    """A sigmoid binary classifier, its spiking model (T=2) and a labelled .npz (the labels
    are the DNN's own classes, so its top-1 is 100 %)."""
    from onnx_snn.cli import main
    from onnx_snn.runtimes.ort import run
    m = _binary(True)
    x = B.rand_input(96, seed=7)
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")   # balance the two classes
    bias = next(i for i in m.graph.initializer if i.name == gemm.input[2])
    p = run(m, x).outputs[0][:, 0].astype(np.float64)
    shift = np.median(np.log(p) - np.log1p(-p)) - 0.01
    bias.CopyFrom(onnx.numpy_helper.from_array(
        (onnx.numpy_helper.to_array(bias) - shift).astype(np.float32), bias.name))
    y = (run(m, x).outputs[0][:, 0] > 0.5).astype(np.int64)
    assert 30 <= y.sum() <= 66
    src = tmp_path / "bin.onnx"
    onnx.save(m, str(src))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "bin.snn.onnx"
    assert main(["-q", "convert", str(src), "--calib", str(tmp_path / "d.npz"), "-o", str(out)]) == 0
    return src, out, tmp_path / "d.npz"


def test_eval_and_finetune_a_binary_classifier(binary_files, tmp_path):
    """eval scores the DNN's probabilities at 0.5 and the spiking model's logits at 0;
    fine-tuning trains the logit with the binary cross-entropy, distilled from the Sigmoid
    DNN too, and labels other than 0/1 are refused before any work."""
    pytest.importorskip("torch")
    from onnx_snn.cli import main
    from onnx_snn.evaluate import evaluate
    src, snn, data = binary_files
    assert evaluate(str(src), str(data), show_progress=False).top1 == 100.0
    before = evaluate(str(snn), str(data), show_progress=False).top1
    assert before >= 75.0       # the labels are the DNN's own classes; T=2 keeps most of them
    assert main(["-q", "finetune", str(snn), "--data", str(data), "--epochs", "1",
                 "--teacher", "auto", "-o", str(tmp_path / "ft.onnx")]) == 0
    majority = 100.0 * max(np.mean(np.load(data)["y"]), 1 - np.mean(np.load(data)["y"]))
    after = evaluate(str(tmp_path / "ft.onnx"), str(data), show_progress=False).top1
    assert after >= max(before - 5.0, majority + 10.0)      # no collapse to one class
    d = np.load(data)
    np.savez(tmp_path / "bad.npz", x=d["x"], y=np.where(d["y"] == 1, 2, 0))
    assert main(["-q", "eval", str(snn), "--data", str(tmp_path / "bad.npz")]) == 5
    assert main(["-q", "finetune", str(snn), "--data", str(tmp_path / "bad.npz"), "--epochs", "1",
                 "-o", str(tmp_path / "ft2.onnx")]) == 5
    assert not (tmp_path / "ft2.onnx").exists()


def test_a_sigmoid_teachers_distillation_loss_is_zero_on_its_own_logit(binary_files):
    """The student outputs a logit z; a Sigmoid teacher's p becomes [1 - p, p], whose log is
    the logits the KL compares: a student with the teacher's own logit has zero loss."""
    torch = pytest.importorskip("torch")
    from onnx_snn.runtimes.ort import run
    from onnx_snn.runtimes.torch.teacher import distillation_loss, load_teacher
    src, _, data = binary_files
    x = np.load(data)["x"]
    student = class_scores(torch.zeros(1, 1))
    t = load_teacher(str(src), x[:1], student)
    assert t.sigmoid and t.probabilities
    p = run(onnx.load(str(src)), x).outputs[0].astype(np.float64)
    own = class_scores(torch.from_numpy((np.log(p) - np.log1p(-p)).astype(np.float32)))
    assert float(distillation_loss(own, t(x))) == pytest.approx(0.0, abs=1e-5)


def test_a_quantized_sigmoids_probability_is_still_a_probability():
    """A Sigmoid whose probability is fake-quantized on its way out (QuantizeLinear /
    DequantizeLinear) is still read as a probability: class 1 above 0.5."""
    m = _binary(True)
    g = m.graph
    out = g.output[0].name
    g.initializer.extend([onnx.numpy_helper.from_array(np.array(1 / 255, np.float32), "qs"),
                          onnx.numpy_helper.from_array(np.array(0, np.uint8), "qz")])
    g.node.extend([h.make_node("QuantizeLinear", [out, "qs", "qz"], ["q"]),
                   h.make_node("DequantizeLinear", ["q", "qs", "qz"], ["p"])])
    g.output[0].name = "p"
    assert first_output_kind(m) == PROBABILITIES


def test_looked_up_class_labels_are_scored_by_their_index():
    """skl2onnx maps ArgMax's index through its classes (ints like 10, 20, 30, or strings; an
    initializer or a Constant node) and reshapes the [1, N] lookup to [N]: eval scores the
    index of each label in that table, as the data's labels are indices; labels that are the
    classes' own values are refused, saying how to map them."""
    from onnx_snn.evaluate import evaluate
    from onnx_snn.runtimes.ort import run
    from onnx_snn.scores import class_table, ids_to_indices
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    for table, as_node in ((np.array([10, 20, 30], np.int64), False),
                           (np.array([10, 20, 30], np.int64), True), (np.array(["a", "b", "c"]), False)):
        b = B.GraphBuilder(13)
        scores = b.gemm("x", 4, 3)
        a = b.node("ArgMax", [scores], axis=1, keepdims=0)
        strings = table.dtype.kind == "U"
        if as_node:
            b.nodes.append(h.make_node("Constant", [], ["classes"], value_ints=table.tolist()))
        else:
            b.inits.append(h.make_tensor("classes", TP.STRING if strings else TP.INT64, [3],
                                         [s.encode() for s in table] if strings else table.tolist()))
        b.nodes.append(h.make_node("ArrayFeatureExtractor", ["classes", a], ["looked"],
                                   domain="ai.onnx.ml"))
        b.nodes.append(h.make_node("Reshape", ["looked", b.const(np.array([-1], np.int64))], ["label"]))
        g = h.make_graph(b.nodes, "skl", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 4])],
                         [h.make_tensor_value_info("label", TP.STRING if strings else TP.INT64, ["N"])],
                         b.inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 13), h.make_opsetid("ai.onnx.ml", 1)])
        m.ir_version = 8
        assert first_output_kind(m) == IDS and len(class_table(m)) == 3
        want = run(m, x).outputs[0]
        y = ids_to_indices(want, class_table(m), "m")
        assert set(y.tolist()) <= {0, 1, 2}
        r = evaluate(m, (x, y), show_progress=False)
        assert r.top1 == 100.0
        assert evaluate(m, (x, (y + 1) % 3), show_progress=False).top1 == 0.0
        if not strings:
            with pytest.raises(DataError, match="classes' own values"):
                evaluate(m, (x, table[y]), show_progress=False)


def test_an_output_without_a_batch_axis_is_refused(tmp_path):
    """A model that squeezes its one sample's scores to [classes] cannot be scored per sample
    (it was read as that many binary scores, and top-1 passed 100 %)."""
    from onnx_snn.evaluate import evaluate
    b = B.GraphBuilder(13)
    t = b.node("Squeeze", [b.gemm("x", 4, 3), b.const(np.array([0], np.int64))])
    g = h.make_graph(b.nodes, "sq", [h.make_tensor_value_info("x", TP.FLOAT, [1, 4])],
                     [h.make_tensor_value_info(t, TP.FLOAT, [3])], b.inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    with pytest.raises(DataError, match="one row per sample"):
        evaluate(m, (np.zeros((5, 4), np.float32), np.array([0, 1, 2, 0, 1])), show_progress=False)

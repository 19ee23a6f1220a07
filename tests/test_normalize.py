"""Normalization passes and activation-site detection on graphs of several producers."""
import numpy as np
import onnx
import pytest
from onnx import helper as h

import builders as B
from onnx_snn.errors import ModelLoadError, UnsupportedModelError
from onnx_snn.graph.normalize import normalize
from onnx_snn.runtimes.ort import run


def ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("opset", [7, 8, 9, 11, 13, 17, 21])
@pytest.mark.parametrize("idiom", B.IDIOMS)
def test_every_idiom_is_found_at_every_opset(opset, idiom):
    nm = normalize(B.vgg(opset, idiom))
    assert [s.name for s in nm.sites] == ["lif0", "lif1", "lif2"]
    expected_mu = {"relu6": 6.0, "relu": None}.get(idiom, 2.0)
    assert all(s.mu == expected_mu for s in nm.sites)
    assert all(s.mu_source == ("estimated" if idiom == "relu" else "model") for s in nm.sites)
    kept = set(ops(nm.model))
    assert not kept & {"BatchNormalization", "Dropout", "Softmax", "Identity", "Min", "Max", "Constant"}
    assert nm.opset == max(13, opset)


@pytest.mark.parametrize("idiom", ["clip", "relu_min", "max_min", "relu"])
def test_normalized_model_computes_the_same_function(idiom):
    m = B.vgg(13, idiom, softmax=False)
    x = B.rand_input(16)
    nm = normalize(m)
    a = run(m, x).outputs[0]
    b = run(nm.model, x).outputs[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batchnorm_is_folded_exactly():
    m = B.vgg(13, "clip", bn=True, softmax=False, dropout=False)
    nm = normalize(m)
    assert "BatchNormalization" not in ops(nm.model)
    assert any("BatchNormalization" in n for n in nm.notes)
    x = B.rand_input(8)
    np.testing.assert_allclose(run(m, x).outputs[0], run(nm.model, x).outputs[0], rtol=1e-4, atol=1e-5)


def test_dropout_is_removed_and_recorded():
    nm = normalize(B.vgg(13, "clip", dropout=True))
    assert "Dropout" not in ops(nm.model)
    assert len(nm.dropouts) == 1 and nm.dropouts[0]["ratio"] == pytest.approx(0.25)
    assert nm.dropouts[0]["tensor"] == nm.sites[2].output


def test_final_softmax_dropped_with_note_and_output_name_kept():
    m = B.vgg(13, "clip", softmax=True)
    nm = normalize(m)
    assert "Softmax" not in ops(nm.model)
    assert [o.name for o in nm.model.graph.output] == [o.name for o in m.graph.output]
    assert any("Softmax" in n for n in nm.notes)


def test_matmul_add_becomes_gemm():
    nm = normalize(B.vgg(13, "clip", matmul=True))
    assert "MatMul" not in ops(nm.model) and ops(nm.model).count("Gemm") == 2


def test_sum_becomes_add():
    nm = normalize(B.resnet(13, "clip", sum_op=True))
    assert "Sum" not in ops(nm.model) and ops(nm.model).count("Add") == 2


def test_residual_sites():
    nm = normalize(B.resnet(13, "clip"))
    assert len(nm.sites) == 5
    adds = [n for n in nm.model.graph.node if n.op_type == "Add"]
    site_inputs = {s.input for s in nm.sites}
    assert all(a.output[0] in site_inputs for a in adds)  # clip after the residual add


def test_plain_relu_warns():
    nm = normalize(B.vgg(13, "relu"))
    assert any("plain ReLU" in n for n in nm.notes)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Softmax", "LRN", "LeakyRelu"])
def test_hidden_nonlinearity_is_named(op):
    attrs = {"size": 3} if op == "LRN" else {}
    m = B.with_node(B.vgg(13, "clip"), op, **attrs)
    with pytest.raises(UnsupportedModelError) as e:
        normalize(m)
    assert f"the_{op.lower()}" in str(e.value) and op in str(e.value)
    assert "supported" in str(e.value)


def test_hardtanh_like_clip_is_rejected():
    b = B.GraphBuilder(13)
    x = b.conv("input", 1, 4)
    x = b.node("Clip", [x, b.const(np.array(-1.0, np.float32)), b.const(np.array(1.0, np.float32))])
    x = b.node("Flatten", [x])
    x = b.gemm(x, 4 * 144, 10)
    with pytest.raises(UnsupportedModelError, match="not ReLU-like"):
        normalize(b.model("input", x, (1, 12, 12), 10))


def test_product_of_two_tensors_is_rejected():
    b = B.GraphBuilder(13)
    x = b.act(b.conv("input", 1, 4), "clip")
    y = b.node("Mul", [x, x])
    y = b.gemm(b.node("Flatten", [y]), 4 * 144, 10)
    with pytest.raises(UnsupportedModelError, match="not linear"):
        normalize(b.model("input", y, (1, 12, 12), 10))


def test_no_activation_at_all():
    b = B.GraphBuilder(13)
    y = b.gemm(b.node("Flatten", [b.conv("input", 1, 2)]), 2 * 144, 10)
    with pytest.raises(UnsupportedModelError, match="no ReLU-type activation"):
        normalize(b.model("input", y, (1, 12, 12), 10))


def test_opset_out_of_range(tmp_path):
    m = B.vgg(9, "clip")
    m.opset_import[0].version = 6
    with pytest.raises(ModelLoadError, match="opset 6 is outside"):
        normalize(m)


def test_weights_as_constant_nodes_and_identity_chains():
    """Weights arriving as Constant nodes behind Identity chains become initializers."""
    m = B.vgg(13, "clip_const_nodes", bn=False, dropout=False, softmax=False)
    g = m.graph
    w = g.initializer[0]
    g.node.insert(0, h.make_node("Constant", [], ["w_const"], value=w, name="wc"))
    g.node.insert(1, h.make_node("Identity", ["w_const"], ["w_id1"], name="id1"))
    g.node.insert(2, h.make_node("Identity", ["w_id1"], ["w_id2"], name="id2"))
    conv = next(n for n in g.node if n.op_type == "Conv")
    conv.input[1] = "w_id2"
    del g.initializer[0]
    onnx.checker.check_model(m)
    nm = normalize(m)
    assert set(ops(nm.model)) <= {"Conv", "Clip", "MaxPool", "Flatten", "Gemm"}

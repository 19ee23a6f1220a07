"""Layer-wise weight calibration (onnx_snn/weight_calibration.py): the patches, the rows it
keeps, and the ridge fit."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_snn.weight_calibration import MAX_ROWS, _design, im2col, layer_fit


def _conv(w, b, **attrs):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    inits = {"w": numpy_helper.from_array(w, "w"), "b": numpy_helper.from_array(b, "b")}
    return node, inits


def _reference_conv(x, w, b, **attrs):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


CASES = [dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2], pads=[0, 1, 1, 0]),
         dict(dilations=[2, 2], pads=[2, 2, 2, 2]), dict(auto_pad="SAME_UPPER", strides=[2, 2]),
         dict(group=2, pads=[1, 1, 1, 1])]


@pytest.mark.parametrize("attrs", CASES)
def test_patches_times_weights_are_the_convolution(attrs):
    rng = np.random.default_rng(0)
    g = attrs.get("group", 1)
    x = rng.normal(size=(2, 4, 9, 8)).astype(np.float32)
    w = rng.normal(size=(6, 4 // g, 3, 3)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    y = _reference_conv(x, w, b, **attrs)
    node, inits = _conv(w, b, **attrs)
    fit = layer_fit(node, inits)
    parts = list(_design(fit, x, y))
    assert len(parts) == g
    per = 6 // g
    for i, (rows, target) in enumerate(parts):
        wi = w[i * per:(i + 1) * per].reshape(per, -1)
        np.testing.assert_allclose(rows @ wi.T + b[i * per:(i + 1) * per], target, rtol=1e-4, atol=1e-4)
    if g == 1:
        cols = im2col(x, w.shape, fit.attrs)
        np.testing.assert_array_equal(cols.reshape(len(parts[0][0]), -1), parts[0][0])


def test_ridge_fit_recovers_a_layer_from_exact_data_and_caps_its_rows():
    """On inputs that determine the layer, the refit returns its weights; a batch with more
    patches than the cap enters the normal equations with the cap's rows only."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(5, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    node, inits = _conv(w, b, pads=[1, 1, 1, 1])
    fit = layer_fit(node, inits)
    for _ in range(3):
        x = rng.random((4, 3, 12, 12)).astype(np.float32)
        fit.add(x, _reference_conv(x, w, b, pads=[1, 1, 1, 1]))
    w2, b2 = fit.solve(1e-9)
    np.testing.assert_allclose(w2, w, atol=2e-3)
    np.testing.assert_allclose(b2, b, atol=2e-3)
    big = layer_fit(node, inits)
    x = rng.random((60, 3, 12, 12)).astype(np.float32)          # 8640 patches > MAX_ROWS
    big.add(x, _reference_conv(x, w, b, pads=[1, 1, 1, 1]))
    assert 60 * 144 > MAX_ROWS and big.fit[0][0][-1, -1] == MAX_ROWS   # the bias column's count

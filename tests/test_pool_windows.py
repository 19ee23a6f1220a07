"""The windows of the max pool that alone reads a site (onnx_snn/pool_windows.py): each
window's largest cell is onnxruntime's pooled value, for any pool geometry."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

from onnx_snn import pool_windows


def _pool_model(op, shape, **attrs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1] + list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node(op, ["x"], ["y"], name="pool", **attrs)
    graph = helper.make_graph([node], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _check(model, shape, seed=0):
    x = np.random.default_rng(seed).normal(size=[1] + list(shape)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    pw = pool_windows.windows(model.graph.node[0], list(shape))
    assert pw is not None
    assert pw.outputs == int(np.prod(want.shape[2:]))
    flat = x.reshape(shape[0], -1)
    got = flat[:, pw.cells].max(-1)                      # [C, outputs]
    np.testing.assert_array_equal(got, want.reshape(shape[0], -1))
    # expand() gives the same cells from flat positions in a batch of two images
    picked = np.arange(2 * shape[0] * pw.outputs)
    pos = pool_windows.expand(pw, shape[0], picked)
    both = np.concatenate([x, x]).reshape(-1)
    np.testing.assert_array_equal(both[pos].reshape(-1, pw.size).max(1),
                                  np.concatenate([want, want]).reshape(-1))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2), st.integers(3, 9), st.integers(3, 9), st.integers(1, 3),
       st.integers(1, 3), st.integers(1, 3), st.integers(0, 1), st.integers(0, 1),
       st.integers(1, 2), st.booleans())
def test_each_windows_largest_cell_is_the_pools_output(c, h, w, kh, kw, s, p0, p1, dil, ceil):
    # pads below the kernel, as ONNX requires; dilated windows no wider than the map
    pads = [min(p0, kh - 1), min(p1, kw - 1), min(p1, kh - 1), min(p0, kw - 1)]
    if dil * (kh - 1) + 1 > h + pads[0] + pads[2] or dil * (kw - 1) + 1 > w + pads[1] + pads[3]:
        return
    model = _pool_model("MaxPool", [c, h, w], kernel_shape=[kh, kw], strides=[s, s + 1 if s < 3 else s],
                        pads=pads, dilations=[dil, 1], ceil_mode=int(ceil))
    _check(model, [c, h, w])


def test_one_and_three_spatial_axes_and_the_global_pool():
    _check(_pool_model("MaxPool", [3, 11], kernel_shape=[3], strides=[2], pads=[1, 1]), [3, 11])
    _check(_pool_model("MaxPool", [2, 4, 5, 6], kernel_shape=[2, 2, 3], strides=[2, 1, 2]),
           [2, 4, 5, 6])
    _check(_pool_model("GlobalMaxPool", [4, 5, 5]), [4, 5, 5])


def test_only_a_pool_that_alone_reads_the_site_is_taken():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, None)
    pool = helper.make_node("MaxPool", ["a"], ["y"], kernel_shape=[2, 2], strides=[2, 2], name="p")
    relu = helper.make_node("Relu", ["x"], ["a"], name="r")
    alone = helper.make_model(helper.make_graph([relu, pool], "g", [x], [y]))
    assert pool_windows.reading_pool(alone, "a", [2, 4, 4]).node == "p"
    also = helper.make_node("Neg", ["a"], ["z"], name="n")
    shared = helper.make_model(helper.make_graph([relu, pool, also], "g", [x], [y, z]))
    assert pool_windows.reading_pool(shared, "a", [2, 4, 4]) is None
    avg = helper.make_node("AveragePool", ["a"], ["y"], kernel_shape=[2, 2], name="p")
    assert pool_windows.reading_pool(helper.make_model(helper.make_graph([relu, avg], "g", [x], [y])),
                                     "a", [2, 4, 4]) is None
    auto = helper.make_node("MaxPool", ["a"], ["y"], kernel_shape=[2, 2], auto_pad="SAME_UPPER", name="p")
    assert pool_windows.reading_pool(helper.make_model(helper.make_graph([relu, auto], "g", [x], [y])),
                                     "a", [2, 4, 4]) is None


@pytest.mark.parametrize("outputs,size,channels,images,sample,want", [
    (196, 4, 16, 512, 200_000, 50_000),       # sample // window
    (1, 49, 64, 512, 200_000, 16_326),        # a global pool: 4 x sample // window at most
    (1, 49, 8, 256, 200_000, 2_048),          # ... but no more windows than there are
])
def test_window_count(outputs, size, channels, images, sample, want):
    pw = pool_windows.PoolWindows("p", size * outputs, np.zeros((outputs, size), np.int64))
    assert pool_windows.window_count(pw, channels, images, sample) == want

"""Sites that a max pool alone reads, and the pool's windows over their neurons
(onnx_snn.pooled_sites): the windows are onnxruntime's own, the sample is the same at any
batch size, and the refinement searches such a site on the pooled values."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h

import builders as B
import onnx_snn
from onnx_snn.pooled_sites import sample_windows, site_pool
from onnx_snn.scales import SearchConfig


def _clip_then(op: str, shape, reader_outputs=1, extra_reader=None, **attrs) -> onnx.ModelProto:
    """input -> Clip(0, 6) -> ``op`` -> output (and ``extra_reader`` of the clip's output)."""
    nodes = [h.make_node("Clip", ["x", "lo", "hi"], ["a"], name="clip"),
             h.make_node(op, ["a"], ["y"], name="pool", **attrs)]
    outputs = [h.make_tensor_value_info("y", TP.FLOAT, None)]
    if extra_reader:
        nodes.append(h.make_node(extra_reader, ["a"], ["z"], name="other"))
        outputs.append(h.make_tensor_value_info("z", TP.FLOAT, None))
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, [2, *shape])], outputs,
                     [h.make_tensor("lo", TP.FLOAT, [], [0.0]), h.make_tensor("hi", TP.FLOAT, [], [6.0])])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


POOLS = [
    ("MaxPool", (3, 8, 8), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),  # a ResNet stem's
    ("MaxPool", (2, 6, 6), dict(kernel_shape=[2, 2], strides=[2, 2])),
    ("MaxPool", (2, 9, 7), dict(kernel_shape=[3, 2], strides=[1, 2], pads=[2, 0, 1, 1],
                                dilations=[2, 1])),
    ("MaxPool", (2, 7, 7), dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", (3, 11), dict(kernel_shape=[3], strides=[2], pads=[1, 0])),
    ("MaxPool", (2, 4, 5, 6), dict(kernel_shape=[2, 2, 3], strides=[2, 2, 3])),
    ("GlobalMaxPool", (3, 5, 7), {}),
    ("GlobalMaxPool", (4, 9), {}),
]


@pytest.mark.parametrize("op,shape,attrs", POOLS)
def test_windows_are_the_pools_own(op, shape, attrs):
    """The largest value of each window's neurons is onnxruntime's pooled output, for every
    window (padding, dilation, ceil mode, 1-D to 3-D, global)."""
    model = _clip_then(op, shape, **attrs)
    win = site_pool(model, "a", shape)
    assert win is not None and win.node == "pool"
    x = np.random.default_rng(0).normal(0, 2, (2, *shape)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(),
                             providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert win.per_sample == y[0].size
    a = np.clip(x, 0, 6).reshape(2, -1)
    idx = win.neurons(np.arange(win.per_sample))
    assert idx.shape == (win.per_sample, win.size)
    assert idx.min() >= 0 and idx.max() < a.shape[1]
    np.testing.assert_array_equal(a[:, idx].max(-1), y.reshape(2, -1))


@pytest.mark.parametrize("case", ["another reader", "graph output", "not a max pool", "window of one"])
def test_only_a_site_that_one_max_pool_alone_reads_is_pooled(case):
    shape = (2, 6, 6)
    if case == "another reader":
        model = _clip_then("MaxPool", shape, extra_reader="Relu", kernel_shape=[2, 2])
    elif case == "graph output":
        model = _clip_then("MaxPool", shape, kernel_shape=[2, 2])
        model.graph.output.append(h.make_tensor_value_info("a", TP.FLOAT, None))
    elif case == "not a max pool":
        model = _clip_then("AveragePool", shape, kernel_shape=[2, 2])
    else:
        model = _clip_then("MaxPool", shape, kernel_shape=[1, 1])
    assert site_pool(model, "a", shape) is None


def test_the_sampled_windows_do_not_depend_on_the_batches():
    """The same windows, whole, at any batch size (as the per-neuron sample)."""
    model = _clip_then("MaxPool", (3, 8, 8), kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    win = site_pool(model, "a", (3, 8, 8))
    per_in = 3 * 8 * 8

    def flat(sizes):
        got = sample_windows(np.random.default_rng(5), win, 10, sizes, sample=90 * win.size)
        starts = np.cumsum([0] + sizes[:-1])
        return np.concatenate([p + s * per_in for p, s in zip(got, starts)])
    whole = flat([10])
    np.testing.assert_array_equal(whole, flat([3, 4, 3]))
    windows = whole.reshape(-1, win.size)
    # MIN_WINDOWS asks for more than there are: every window of every sample, once each
    assert len(windows) == 10 * win.per_sample
    assert len({tuple(w) for w in windows}) == len(windows)
    assert whole.max() < 10 * per_in


def _global_max_net():
    return B.pooled_twin("MaxPool", global_pool=True, in_shape=(1, 12, 12))


def test_the_refinement_searches_a_site_before_a_global_max_pool_on_its_windows():
    """The site the pool alone reads is searched on whole windows (recorded in the report and
    the conversion's history) and gets other parameters; the site before, which an average
    pool reads, is searched per neuron as before. (That the window search fits the pooled
    values better is tests/test_scales.py's; what it gains is measured in docs/FORMAT.md.)"""
    x = B.rand_input(64)
    nm = onnx_snn.prepare(_global_max_net())
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    by = {pw: onnx_snn.build(nm, cal, 2, "refined", SearchConfig(pool_windows=pw))
          for pw in (True, False)}
    rows = {pw: sm.report["sequential"]["sites"] for pw, sm in by.items()}
    assert [bool(r.get("pool")) for r in rows[True]] == [False, True]
    assert rows[True][1]["pool"]["window"] == 6 * 6       # 12 x 12, average-pooled by 2
    assert rows[True][1]["pool"]["windows"] == 64 * 8      # every window: fewer than MIN_WINDOWS
    assert not any(r.get("pool") for r in rows[False])
    assert any('"pool_windows": ["lif1"]' in p.value for p in by[True].model.metadata_props)
    assert not any('"pool_windows"' in p.value for p in by[False].model.metadata_props)
    for key in ("alpha", "beta", "v_init_fraction"):
        assert rows[True][0][key] == rows[False][0][key]
    assert rows[True][1]["alpha"] != rows[False][1]["alpha"]


def test_signed_sites_keep_the_search_per_neuron():
    x = B.rand_input(48)
    nm = onnx_snn.prepare(_global_max_net())
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    sm = onnx_snn.build(nm, cal, 2, "refined", SearchConfig(signed_spikes=True))
    assert not any(r.get("pool") for r in sm.report["sequential"]["sites"])

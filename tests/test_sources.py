"""onnx_snn.graph.sources: the walk from a tensor back to the spikes it holds."""
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import helper as h

sys.path.insert(0, str(Path(__file__).parent))
import builders as B  # noqa: E402
from onnx_snn.graph.sources import source_mix, window_elements  # noqa: E402


def _node(op, shape, out=None, **attrs):
    n = h.make_node(op, ["x"], ["y"], **attrs)
    shapes = {"x": shape}
    if out is not None:
        shapes["y"] = out
    return n, shapes


def _brute(shape, kernel, strides, pads):
    """The valid cells per window of a 2-D pool, averaged, by enumeration."""
    H, W = shape[2:]
    oh = (H + pads[0] + pads[2] - kernel[0]) // strides[0] + 1
    ow = (W + pads[1] + pads[3] - kernel[1]) // strides[1] + 1
    cells = [sum(1 for a in range(kernel[0]) for b in range(kernel[1])
                 if 0 <= i * strides[0] - pads[0] + a < H and 0 <= j * strides[1] - pads[1] + b < W)
             for i in range(oh) for j in range(ow)]
    return float(np.mean(cells))


@pytest.mark.parametrize("shape,kernel,strides,pads", [
    ([1, 4, 8, 8], [2, 2], [2, 2], [0, 0, 0, 0]),
    ([1, 4, 7, 9], [3, 3], [2, 2], [1, 1, 1, 1]),
    ([1, 2, 5, 5], [3, 2], [1, 2], [0, 1, 2, 0]),
])
def test_an_average_pool_sums_its_windows_valid_cells(shape, kernel, strides, pads):
    n, shapes = _node("AveragePool", shape, kernel_shape=kernel, strides=strides, pads=pads)
    assert window_elements(n, shapes) == pytest.approx(_brute(shape, kernel, strides, pads))


@pytest.mark.parametrize("attrs,per_axis", [
    (dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER"), [2, 3, 3, 3, 2]),       # 5 outputs
    (dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_LOWER"), [1, 2, 2]),
    (dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), [2, 2, 1]),          # [4] alone
    (dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID"), [3, 3]),
])
def test_auto_pad_and_ceil_mode_windows(attrs, per_axis):
    """On a 5 x 5 input: the SAME modes' implicit pads (upper: the extra cell at the end,
    lower: at the start), VALID, and ceil_mode's last, partial window."""
    n, shapes = _node("AveragePool", [1, 1, 5, 5], **attrs)
    want = float(np.mean(per_axis)) ** 2
    assert window_elements(n, shapes) == pytest.approx(want)
    o = len(per_axis)
    assert window_elements(n, {**shapes, "y": [1, 1, o, o]}) == pytest.approx(want)


def test_global_pools_and_reductions_sum_their_extent():
    assert window_elements(*_node("GlobalAveragePool", [1, 8, 6, 5])) == 30.0
    assert window_elements(*_node("ReduceMean", [1, 8, 6, 5], axes=[2, 3])) == 30.0
    assert window_elements(*_node("ReduceSum", [1, 8, 6, 5], axes=[-1])) == 5.0
    n = h.make_node("ReduceMean", ["x", "axes"], ["y"])              # opset 18: axes as input
    assert window_elements(n, {"x": [1, 8, 6, 5], "y": [1, 8, 1, 1]}) == 30.0
    assert window_elements(n, {"x": [1, 8, 6, 5]}) == 1.0             # unknown: no factor
    assert window_elements(*_node("GlobalAveragePool", [1, 8, None, 5])) == 1.0


def test_the_spike_test_stops_where_values_are_mixed_and_the_analyzer_counts_through():
    """A site's spikes through a max pool and a reshape are still spikes; through an average
    pool they are fractions: the rewrite's walk (``sums=False``) ends there, the analyzer's
    passes with the window's size as the share."""
    sites = {"s": "lif0"}
    nodes = [h.make_node("MaxPool", ["s"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("AveragePool", ["s"], ["a"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Resize", ["s", "", "sc"], ["r"], mode="linear"),
             h.make_node("Resize", ["s", "", "sc"], ["rn"], mode="nearest"),
             h.make_node("Flatten", ["a"], ["f"])]
    producers = {n.output[0]: n for n in nodes}
    shapes = {"s": [1, 4, 8, 8], "a": [1, 4, 4, 4]}
    constant = {"sc"}
    for t, spikes in (("m", True), ("a", False), ("f", False), ("r", False), ("rn", True)):
        mix = source_mix(t, producers, sites, constant, shapes)
        assert ("" not in mix) is spikes, (t, mix)
    assert source_mix("f", producers, sites, constant, shapes, sums=True) == {"lif0": 4.0}
    assert source_mix("m", producers, sites, constant, shapes, sums=True) == {"lif0": 1.0}
    # an interpolating Resize weighs 2 (linear) or 4 (cubic) inputs per resized axis; a
    # nearest one copies one; unknown sizes: no factor
    shapes.update({"r": [1, 4, 16, 16], "rn": [1, 4, 16, 16]})
    assert source_mix("r", producers, sites, constant, shapes, sums=True) == {"lif0": 4.0}
    assert source_mix("rn", producers, sites, constant, shapes, sums=True) == {"lif0": 1.0}
    assert source_mix("r", producers, sites, constant, {"s": [1, 4, 8, 8]}, sums=True) == \
        {"lif0": 1.0}


def test_an_analog_branch_through_an_average_pool_keeps_its_share():
    """Concat(site 4x14x14, AveragePool 2x2 of the input 1x14x14): the analyzer's walk
    multiplies the site's share by nothing here, and the analog branch's by nothing either:
    an averaged analog value is one operand per weight (it was multiplied by the window, 4,
    charging that branch 4x its MACs); through a pool of spikes the window still counts."""
    sites = {"s": "lif0"}
    nodes = [h.make_node("AveragePool", ["x"], ["xd"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Concat", ["s", "xd"], ["c"], axis=1),
             h.make_node("AveragePool", ["c"], ["cp"], kernel_shape=[2, 2], strides=[2, 2])]
    producers = {n.output[0]: n for n in nodes}
    shapes = {"x": [1, 1, 28, 28], "xd": [1, 1, 14, 14], "s": [1, 4, 14, 14],
              "c": [1, 5, 14, 14], "cp": [1, 5, 7, 7]}
    mix = source_mix("c", producers, sites, set(), shapes, sums=True)
    assert mix == pytest.approx({"lif0": 0.8, "": 0.2})
    mix = source_mix("cp", producers, sites, set(), shapes, sums=True)
    assert mix == pytest.approx({"lif0": 0.8 * 4, "": 0.2})


def test_interpolating_resizes_weigh_their_taps():
    n, shapes = _node("Resize", [1, 4, 8, 8], [1, 4, 16, 8], mode="cubic")
    assert window_elements(n, shapes) == 4.0                      # one axis resized
    n, shapes = _node("Resize", [1, 4, 8, 8], [1, 4, 16, 16], mode="cubic")
    assert window_elements(n, shapes) == 16.0
    n, shapes = _node("Resize", [1, 4, 8, 8], [1, 4, 4, 4], mode="linear")
    assert window_elements(n, shapes) == 4.0                      # downsampling too
    n, shapes = _node("Resize", [1, 4, 8, 8], [1, 4, 16, 16], mode="nearest")
    assert window_elements(n, shapes) == 1.0


def test_a_max_pool_after_an_average_pool_of_spikes_is_not_counted():
    """Its input holds fractions of spikes: each nonzero increase of the pooled running sum
    is no spike, and its counter would count float rounding (torch and onnxruntime one
    count apart); pools of plain spikes stay counted."""
    import onnx_snn
    from onnx_snn.spiking import format as fmt
    b = B.GraphBuilder(13, 0)
    x = b.act(b.conv("input", 1, 4), "clip", 2.0)
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.act(b.conv(x, 4, 8), "clip", 2.0)
    x = b.node("MaxPool", [x], kernel_shape=[3, 3], strides=[3, 3])
    x = b.gemm(b.node("Flatten", [x], axis=1), 8, 10)
    m = b.model("input", x, (1, 12, 12), 10, name="avg_then_max")
    snn = onnx_snn.convert(m, B.rand_input(16), timesteps=2, method="datta", show_progress=False)
    pools = fmt.read_spiking(snn.model).info.pools
    assert [p.counted for p in pools] == [False, True]
    # the analyzer agrees: the layer after the uncounted pool is charged through the walk
    # (the average pool's 2 x 2 window), with no note asking for a counter the file lacks
    from onnx_snn.analyze import analyze
    r = onnx_snn.evaluate(snn.model, B.rand_input(16), show_progress=False)
    a = analyze(snn.model, rates=r.rates, timesteps=2)
    second = a.layers[1]
    assert second.source_mix == {"lif0": 4.0} and second.source_pools == {}
    assert second.spike_rate == pytest.approx(4.0 * r.rates["lif0"])
    assert a.layers[2].source_pools == {"lif1": "pool1"}
    assert not any("convert the model again" in n for n in a.notes), a.notes

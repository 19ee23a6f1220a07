"""The resize-constant-form pass: Resize to a size computed from the input's shape (both
PyTorch exporters' ``F.interpolate(size=...)`` with a free batch) and opset 18's ``axes``
become constant scales or sizes, and the DNN computes what it did, in any batch."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import builders as B
from onnx_snn.errors import UnsupportedModelError
from onnx_snn.graph.normalize import normalize
from onnx_snn.runtimes.ort import run

RESIZE_ATTRS = {"nearest": dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                nearest_mode="floor"),          # F.interpolate's nearest
                "linear": dict(mode="linear", coordinate_transformation_mode="half_pixel")}


def _sizes_nodes(form: str, hw, inits: list) -> list:
    """Nodes that compute the Resize's sizes 'sz' (or scales 'sc') of tensor 'a' in ``form``."""
    inits.append(nh.from_array(np.array(hw, np.int64), "hw"))
    if form == "slice":             # torch.onnx's TorchScript exporter
        inits += [nh.from_array(np.array([0], np.int64), "s0"),
                  nh.from_array(np.array([2], np.int64), "s2"),
                  nh.from_array(np.array([0], np.int64), "ax0")]
        return [h.make_node("Shape", ["a"], ["shp"]),
                h.make_node("Slice", ["shp", "s0", "s2", "ax0"], ["nc"]),
                h.make_node("Cast", ["nc"], ["nc64"], to=TP.INT64),
                h.make_node("Concat", ["nc64", "hw"], ["sz"], axis=0)]
    if form == "shape-range":       # the dynamo exporter: Shape with start and end
        return [h.make_node("Shape", ["a"], ["nc"], start=0, end=2),
                h.make_node("Concat", ["nc", "hw"], ["sz"], axis=0)]
    if form == "gather":            # hand-written: each dimension gathered and unsqueezed
        inits += [nh.from_array(np.array(0, np.int64), "i0"),
                  nh.from_array(np.array(1, np.int64), "i1"),
                  nh.from_array(np.array([0], np.int64), "u0")]
        return [h.make_node("Shape", ["a"], ["shp"]),
                h.make_node("Gather", ["shp", "i0"], ["n0"]),
                h.make_node("Gather", ["shp", "i1"], ["c0"]),
                h.make_node("Unsqueeze", ["n0", "u0"], ["n"]),
                h.make_node("Unsqueeze", ["c0", "u0"], ["c"]),
                h.make_node("Concat", ["n", "c", "hw"], ["sz"], axis=0)]
    raise ValueError(form)


def _net(form: str, mode: str, hw=(16, 16), side: int = 8, opset: int = 18,
         policy: str = "stretch") -> onnx.ModelProto:
    """conv-relu, a Resize of its output to ``hw`` (sizes or scales in ``form``), conv-relu,
    global pool, dense; input N x 1 x side x side with a free batch."""
    rng = np.random.default_rng(0)
    w = lambda *s: (rng.standard_normal(s) * np.sqrt(2.0 / np.prod(s[1:]))).astype(np.float32)
    inits = [nh.from_array(w(4, 1, 3, 3), "w1"), nh.from_array(w(6, 4, 3, 3), "w2"),
             nh.from_array(w(10, 6), "w3")]
    attrs = dict(RESIZE_ATTRS[mode])
    if form.startswith("axes"):
        attrs["axes"] = [2, 3] if form != "axes-last" else [-1]
        if policy != "stretch":
            attrs["keep_aspect_ratio_policy"] = policy
        if form == "axes-scales":
            inits.append(nh.from_array(np.array(hw, np.float32), "sc"))
            ins = ["a", "", "sc"]
        elif form == "axes-last":
            inits.append(nh.from_array(np.array(hw[-1:], np.float32), "sc"))
            ins = ["a", "", "sc"]
        else:
            inits.append(nh.from_array(np.array(hw, np.int64), "sz"))
            ins = ["a", "", "", "sz"]
        size_nodes = []
    elif form == "times-two":      # sizes computed by arithmetic on the shape: not read
        inits.append(nh.from_array(np.array([1, 1, 2, 2], np.int64), "k"))
        size_nodes = [h.make_node("Shape", ["a"], ["shp"]), h.make_node("Mul", ["shp", "k"], ["sz"])]
        ins = ["a", "", "", "sz"]
    elif form == "skip-size":      # F.interpolate(p, size=skip.shape[2:]) (U-Net, FPN):
        # the pooled map back to the size of the map it was pooled from, read from its shape
        size_nodes = [h.make_node("MaxPool", ["a"], ["pa"], kernel_shape=[2, 2], strides=[2, 2]),
                      h.make_node("Shape", ["pa"], ["nc"], start=0, end=2),
                      h.make_node("Shape", ["a"], ["hw_of_skip"], start=2),
                      h.make_node("Concat", ["nc", "hw_of_skip"], ["sz"], axis=0)]
        ins = ["pa", "", "", "sz"]
    elif form == "axes-roi":       # opset 18 axes with a roi of those axes (unread here)
        attrs["axes"] = [2, 3]
        inits += [nh.from_array(np.array(hw, np.float32), "sc"),
                  nh.from_array(np.array([0, 0, 1, 1], np.float32), "roi")]
        ins, size_nodes = ["a", "roi", "sc"], []
    elif form == "other-tensor":   # N and C read from the 1-channel input: not the Resize's
        size_nodes = _sizes_nodes("shape-range", hw, inits)
        size_nodes[0] = h.make_node("Shape", ["input"], ["nc"], start=0, end=2)
        ins = ["a", "", "", "sz"]
    else:
        size_nodes = _sizes_nodes(form, hw, inits)
        ins = ["a", "", "", "sz"]
    nodes = [h.make_node("Conv", ["input", "w1"], ["c1"], pads=[1] * 4),
             h.make_node("Relu", ["c1"], ["a"]), *size_nodes,
             h.make_node("Resize", ins, ["u"], name="up", **attrs),
             h.make_node("Conv", ["u", "w2"], ["c2"], pads=[1] * 4),
             h.make_node("Relu", ["c2"], ["r"]),
             h.make_node("GlobalAveragePool", ["r"], ["g"]), h.make_node("Flatten", ["g"], ["f"]),
             h.make_node("Gemm", ["f", "w3"], ["y"], transB=1)]
    g = h.make_graph(nodes, "resized", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 1, side, side])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _resize_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Resize")


CASES = [("slice", "nearest", (16, 16), 8, 13), ("slice", "linear", (11, 11), 8, 13),
         ("shape-range", "nearest", (3, 3), 8, 18), ("shape-range", "linear", (13, 7), 8, 18),
         ("gather", "nearest", (13, 5), 11, 13),     # 13 of 11: float32(13/11) * 11 < 13
         ("axes-sizes", "nearest", (16, 12), 8, 18), ("axes-sizes", "linear", (5, 16), 8, 18),
         ("axes-scales", "nearest", (2.0, 1.5), 8, 18), ("axes-last", "linear", (0.5,), 8, 18),
         ("skip-size", "nearest", (8, 8), 8, 18), ("skip-size", "linear", (9, 9), 9, 18),
         ("axes-roi", "linear", (2.0, 2.0), 8, 18)]


@pytest.mark.parametrize("form,mode,hw,side,opset", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'x'.join(map(str, c[2]))}" for c in CASES])
def test_resize_becomes_constant_and_computes_the_same(form, mode, hw, side, opset):
    """The normalized Resize has constant scales or sizes of every axis and no ``axes``; the
    normalized DNN gives the source's outputs at batches 1 and 5."""
    m = _net(form, mode, hw, side, opset)
    nm = normalize(m)
    node = _resize_node(nm.model)
    assert not [a for a in node.attribute if a.name == "axes"]
    consts = {i.name for i in nm.model.graph.initializer}
    given = [i for i in node.input[2:] if i]
    assert len(given) == 1 and given[0] in consts, list(node.input)
    value = nh.to_array(next(i for i in nm.model.graph.initializer if i.name == given[0]))
    assert value.size == 4
    for n in (1, 5):
        x = B.rand_input(n, (1, side, side))
        want, got = run(m, x).outputs[0], run(nm.model, x).outputs[0]
        if mode == "nearest":
            np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form,mode,hw,side", [("shape-range", "nearest", (11, 11), 8),
                                               ("slice", "linear", (13, 7), 8),
                                               ("axes-sizes", "nearest", (13, 13), 11)])
def test_resized_spiking_network_runs_alike_in_both_runtimes(form, mode, hw, side):
    """Converted, the spiking network runs any batch; the torch runtime equals onnxruntime
    (same spike counts), and at large T it follows its DNN."""
    m = _net(form, mode, hw, side, opset=18 if form != "slice" else 13)
    x = B.rand_input(6, (1, side, side))
    _, _, snn = B.converted(m, x, T=3)
    B.assert_runtimes_agree(snn.model, x)
    B.assert_runtimes_agree(snn.model, x[:1])
    _, _, big = B.converted(m, x, T=256, method="max")
    got, want = run(big.model, x).outputs[0], run(m, x).outputs[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("form,policy,needle", [
    ("times-two", "stretch", "not constant .its scales or sizes are computed from more than "
                             "shapes and constants"),
    ("other-tensor", "stretch", "'up'"),
    ("axes-sizes", "not_larger", "axes or keep_aspect_ratio_policy")])
def test_sizes_it_cannot_read_are_refused_naming_the_node(form, policy, needle):
    m = _net(form, "nearest", (16, 16), opset=18, policy=policy)
    with pytest.raises(UnsupportedModelError, match=f"'up'.*{needle}" if needle != "'up'" else "'up'"):
        normalize(m)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_constant_sizes_that_fix_a_free_batch_are_refused(mode):
    """Resize to constant sizes [64, C, H, W] of an input whose batch is free resizes the
    batch: a nearest one was accepted, converted when the calibration batch was 64, and its
    spiking loop failed inside onnxruntime on any other batch (a helper's sweep)."""
    m = _net("axes-sizes", mode, (16, 16))
    node = _resize_node(m)
    del node.attribute[:]
    node.attribute.extend(h.make_node("Resize", [], [], mode=mode).attribute)
    m.graph.initializer.append(nh.from_array(np.array([64, 4, 16, 16], np.int64), "sz64"))
    node.input[3] = "sz64"
    with pytest.raises(UnsupportedModelError, match="'up'.*sizes with batch 64, which fixes "
                                                    "the batch .the input's is N"):
        normalize(m)


def test_shape_entries_reads_shape_idioms():
    """Each entry of a computed shape vector: a constant, or a tensor's axis."""
    import onnx_graphsurgeon as gs
    from onnx_snn.graph.resize import shape_entries
    for form in ("slice", "shape-range", "gather"):
        g = gs.import_onnx(onnx.shape_inference.infer_shapes(_net(form, "nearest", (9, 7))))
        sz = g.tensors()["sz"]
        got = shape_entries(sz)
        assert [e if isinstance(e, int) else (e[0].name, e[1]) for e in got] == \
            [("a", 0), ("a", 1), 9, 7], form
    g = gs.import_onnx(onnx.shape_inference.infer_shapes(_net("times-two", "nearest")))
    assert shape_entries(g.tensors()["sz"]) is None


def test_shape_entries_follow_onnx_slicing():
    """Negative steps and out-of-range bounds clamp as ONNX's Slice does (a reversed shape
    read with starts INT64_MAX, ends INT64_MIN, step -1 is all four axes, last first)."""
    import onnx_graphsurgeon as gs
    from onnx_snn.graph.resize import shape_entries
    big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for starts, ends, steps, want in (([big], [small], [-1], [3, 2, 1, 0]),
                                      ([-1], [0], [-1], [3, 2, 1]), ([1], [big], [2], [1, 3]),
                                      ([-3], [-1], [1], [1, 2]), ([5], [7], [1], [])):
        x = gs.Variable("x", np.float32, ["N", 3, 8, 8])
        shp, out = gs.Variable("shp", np.int64, [4]), gs.Variable("out", np.int64, None)
        consts = [gs.Constant(n, np.array(v, np.int64)) for n, v in
                  (("s", starts), ("e", ends), ("a", [0]), ("t", steps))]
        gs.Graph(nodes=[gs.Node("Shape", inputs=[x], outputs=[shp]),
                        gs.Node("Slice", inputs=[shp, *consts], outputs=[out])])
        got = shape_entries(out)
        assert [e[1] for e in got] == want, (starts, ends, steps)


def _unet_free_hw(opset=13) -> onnx.ModelProto:
    """A U-Net step with free H and W: the decoder's Resize takes its size from the skip
    tensor's shape (``F.interpolate(b, size=a.shape[-2:])``), so nothing about it is constant
    until the input's H and W are."""
    rng = np.random.default_rng(3)
    inits = [nh.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n) for n, s in (
        ("w1", (4, 1, 3, 3)), ("w2", (4, 4, 3, 3)), ("w3", (4, 8, 3, 3)), ("fc", (10, 4)))]
    inits += [nh.from_array(np.array([0], np.int64), "s0"), nh.from_array(np.array([2], np.int64), "s2"),
              nh.from_array(np.array([4], np.int64), "s4")]
    nodes = [h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4),
             h.make_node("Relu", ["c1"], ["a"]),
             h.make_node("Conv", ["a", "w2"], ["c2"], pads=[1] * 4, strides=[2, 2]),
             h.make_node("Relu", ["c2"], ["b"]),
             h.make_node("Shape", ["b"], ["sb"]),
             h.make_node("Slice", ["sb", "s0", "s2"], ["nc"]),
             h.make_node("Shape", ["a"], ["sa"]),
             h.make_node("Slice", ["sa", "s2", "s4"], ["hw"]),
             h.make_node("Concat", ["nc", "hw"], ["sz"], axis=0),
             h.make_node("Resize", ["b", "", "", "sz"], ["u"], **RESIZE_ATTRS["nearest"]),
             h.make_node("Concat", ["a", "u"], ["cat"], axis=1),
             h.make_node("Conv", ["cat", "w3"], ["c3"], pads=[1] * 4),
             h.make_node("Relu", ["c3"], ["d"]),
             h.make_node("GlobalAveragePool", ["d"], ["g"]),
             h.make_node("Flatten", ["g"], ["f"]),
             h.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    g = h.make_graph(nodes, "unet_free_hw", [h.make_tensor_value_info("x", TP.FLOAT, ["N", 1, "H", "W"])],
                     [h.make_tensor_value_info("y", TP.FLOAT, ["N", 10])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize("opset", [13, 18])
def test_a_resize_to_a_free_size_converts_at_the_calibration_shape(opset):
    """Free H and W leave the decoder's size unknown, so the model alone is refused; convert
    pins them to the calibration data's (the spiking model takes that shape only anyway), says
    so, and the result runs alike in both runtimes. The user's model is not changed."""
    import onnx_snn
    m = _unet_free_hw(opset)
    before = m.SerializeToString()
    with pytest.raises(UnsupportedModelError, match="Resize"):
        onnx_snn.prepare(m)
    x = B.rand_input(24, (1, 12, 12))
    snn = onnx_snn.convert(m, x, timesteps=2, method="datta", show_progress=False)
    assert any("pinned to the calibration data's ['N', 1, 12, 12]" in n
               for n in snn.report["notes"])
    dims = [d.dim_value or d.dim_param for d in snn.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [1, 12, 12]
    assert m.SerializeToString() == before
    nm = onnx_snn.prepare(m, input_shapes={"x": (1, 12, 12)})     # the API's way: the same
    assert [d.dim_value for d in nm.model.graph.input[0].type.tensor_type.shape.dim][1:] == [1, 12, 12]
    assert m.SerializeToString() == before
    B.assert_runtimes_agree(snn.model, x)
    # a rate code of the pinned model approaches its DNN as T grows
    dnn = run(m, x).outputs[0]
    y = run(onnx_snn.convert(m, x, timesteps=256, method="max", show_progress=False).model, x).outputs[0]
    assert np.corrcoef(dnn.ravel(), y.ravel())[0, 1] > 0.99


@pytest.mark.parametrize("shapes,match", [
    ({"x": (1, 0, 12)}, "positive whole numbers"),
    ({"x": (1, -3, 12)}, "positive whole numbers"),
    ({"x": ("a", 2, 2)}, "positive whole numbers"),
    ({"x": 12}, "positive whole numbers"),
    ({"image": (1, 12, 12)}, "not an input of the model"),
])
def test_prepare_refuses_input_shapes_that_are_not_shapes(shapes, match):
    """prepare(input_shapes=...) names a bad shape or an unknown input (a UsageError: exit 2
    in the CLI), before any work; the model is untouched."""
    import onnx_snn
    from onnx_snn.errors import UsageError
    m = _unet_free_hw()
    before = m.SerializeToString()
    with pytest.raises(UsageError, match=match):
        onnx_snn.prepare(m, input_shapes=shapes)
    assert m.SerializeToString() == before


def test_a_model_refused_for_another_reason_is_still_refused_with_free_dims():
    """Pinning is tried only to get past free sizes: a model that is refused at the pinned
    shape too says why, naming both tries."""
    import onnx_snn
    m = _unet_free_hw()
    n = next(n for n in m.graph.node if n.op_type == "Relu" and n.output[0] == "d")
    n.op_type = "Tanh"
    with pytest.raises(UnsupportedModelError, match="Tanh.*pinned.*free: "):
        onnx_snn.convert(m, B.rand_input(8, (1, 12, 12)), timesteps=2, method="datta",
                         show_progress=False)
    # data that cannot be read (or would need a download), or that cannot pin the input (its
    # rank differs): the model's own refusal, not a data error
    for data in ("/nonexistent/calib.npy", B.rand_input(8, (12, 12))):
        with pytest.raises(UnsupportedModelError, match="Resize") as e:
            onnx_snn.convert(m, data, timesteps=2, method="datta", show_progress=False)
        assert "pinned" not in str(e.value)


def test_the_retry_mutes_only_its_own_threads_warnings(monkeypatch):
    """While the retry reads the calibration data to pin the inputs, the warnings that read
    would give are dropped (the real read gives them again), for its own thread only: another
    thread's conversion, logging at the same moment, keeps its warnings."""
    import logging
    import threading
    import importlib
    C = importlib.import_module("onnx_snn.convert")
    real = C.resolve_data
    log = logging.getLogger("onnx_snn")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    def noisy(*a, **k):
        log.warning("from the retry's thread")
        t = threading.Thread(target=lambda: log.warning("from another thread"))
        t.start()
        t.join()
        return real(*a, **k)

    handler = Keep(level=logging.WARNING)
    log.addHandler(handler)
    monkeypatch.setattr(C, "resolve_data", noisy)
    try:
        shapes = C._calibration_shapes(_unet_free_hw(), B.rand_input(4, (1, 12, 12)), None,
                                       None, None, (None, 0))
    finally:
        log.removeHandler(handler)
    assert shapes == {"x": (1, 12, 12)}
    assert seen == ["from another thread"]
    assert not log.filters


@pytest.mark.parametrize("scale", [2.0, 0.5])
def test_antialias_on_an_enlarging_linear_resize_changes_nothing(scale):
    """ONNX antialiases a linear Resize only where it shrinks an axis: an enlarging one with
    antialias=1 converts, with the DNN's outputs (an outside sweep found it refused); a
    shrinking one stays refused, named."""
    b = B.GraphBuilder(18)
    x = b.act(b.conv("input", 1, 4), "clip")
    x = b.node("Resize", [x, "", b.const(np.array([1, 1, scale, scale], np.float32))],
               mode="linear", antialias=1)
    side = int(12 * scale)
    x = b.act(b.conv(x, 4, 4), "clip")
    m = b.model("input", b.gemm(b.node("Flatten", [x]), 4 * side * side, 10), (1, 12, 12), 10)
    if scale < 1:
        with pytest.raises(UnsupportedModelError, match="antialias"):
            normalize(m)
        return
    nm = normalize(m)
    resize = next(n for n in nm.model.graph.node if n.op_type == "Resize")
    assert "antialias" not in [a.name for a in resize.attribute]
    assert any("antialias dropped" in note for r in nm.pass_log for note in r.notes)
    xs = B.rand_input(4)
    np.testing.assert_allclose(run(nm.model, xs).outputs[0], run(m, xs).outputs[0], rtol=1e-5, atol=1e-5)

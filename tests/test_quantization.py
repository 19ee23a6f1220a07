"""Quantized models (onnx_snn/graph/quantization.py): QDQ activations read as clipped ReLUs,
integer operators refused by name."""
import numpy as np
import onnx
import pytest
from onnx import helper as h
from onnx import numpy_helper as nh

import builders as B
from onnx_snn.convert import prepare
from onnx_snn.errors import UnsupportedModelError
from onnx_snn.runtimes.ort import run


def _quantize(model: onnx.ModelProto, x: np.ndarray, tmp_path, fmt: str) -> onnx.ModelProto:
    """``model`` quantized by onnxruntime's static quantizer (uint8 activations, int8 weights)
    in the QDQ or QOperator format, calibrated on ``x``."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    name = model.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{name: x[i:i + 16]} for i in range(0, len(x), 16)])

        def get_next(self):
            return next(self.batches, None)

    src, dst = tmp_path / "f.onnx", tmp_path / f"q_{fmt}.onnx"
    onnx.save(model, str(src))
    quantize_static(str(src), str(dst), Reader(),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return onnx.load(str(dst))


@pytest.mark.parametrize("net", ["vgg", "resnet"])
def test_a_quantized_model_has_the_float_models_sites(net, tmp_path):
    """onnxruntime re-quantizes after every pool and around residual sums: those pairs are
    dropped, so the quantized model has exactly the float model's spiking layers."""
    fm = B.vgg(13, "clip", softmax=False, dropout=False) if net == "vgg" else B.resnet(13, "clip")
    qm = _quantize(fm, B.rand_input(64), tmp_path, "qdq")
    assert len(prepare(qm).sites) == len(prepare(fm).sites)


@pytest.mark.parametrize("idiom", ["clip", "relu6"])
def test_onnxruntime_qdq_model_converts_with_the_quantizers_clamps_as_mu(idiom, tmp_path):
    """onnxruntime's quantizer drops each clipped ReLU into the quantization's clamp (uint8,
    zero point 0): each pair becomes a site whose mu is the top of its range, as many sites as
    the float model has, and at T=256 the spiking model approaches the quantized DNN."""
    fm = B.vgg(13, idiom, in_shape=(1, 12, 12), softmax=False, dropout=False)
    x = B.rand_input(96)
    qm = _quantize(fm, x, tmp_path, "qdq")
    assert not any(n.op_type in ("Clip", "Relu") for n in qm.graph.node)   # fused into Q/DQ
    nm = prepare(qm)
    assert any("fake quantization" in n for n in nm.notes), nm.notes
    assert len(nm.sites) == len(prepare(fm).sites)
    scales = {n.input[0]: nh.to_array(next(i for i in qm.graph.initializer if i.name == n.input[1]))
              for n in qm.graph.node if n.op_type == "QuantizeLinear"}
    tops = sorted(float(s) * 255 for s in scales.values())
    for site in nm.sites:
        assert any(abs(site.mu - t) <= 1e-5 * t for t in tops), (site.mu, tops)
    _, _, snn = B.converted(qm, x, T=256, method="max")
    want, got = run(qm, x).outputs[0], run(snn.model, x).outputs[0]
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.98
    assert np.mean(want.argmax(1) == got.argmax(1)) >= 0.9


def test_the_qoperator_format_is_refused_naming_the_operator(tmp_path):
    qm = _quantize(B.vgg(13, "clip", in_shape=(1, 12, 12), softmax=False, dropout=False),
                   B.rand_input(32), tmp_path, "qop")
    with pytest.raises(UnsupportedModelError, match=r"\(QLinearConv\) is an integer-quantized "
                                                    r"operator.*QuantFormat.QDQ"):
        prepare(qm)


def _qdq(b: B.GraphBuilder, t: str, scale: float, zp, dtype) -> str:
    s, z = b.const(np.array(scale, np.float32)), b.const(np.array(zp, dtype))
    return b.node("DequantizeLinear", [b.node("QuantizeLinear", [t, s, z]), s, z])


def test_signed_pairs_are_dropped_and_a_relus_pair_gives_its_mu():
    """int8 pairs with zero point 0 (symmetric): on the input and the logits (signed) they only
    round and are dropped; after a Relu the clamp from below never acts, so the pair is
    Clip(0, 127 s); its re-quantization after a max pool is already within range and dropped;
    a uint8 pair on a signed sum (its clamp at 0 acts) is a ReLU of its own."""
    b = B.GraphBuilder(13, seed=2)
    t = _qdq(b, "x", 0.02, 0, np.int8)                      # the input: dropped
    t = _qdq(b, b.node("Relu", [b.conv(t, 1, 8)]), 0.01, 0, np.int8)        # mu = 1.27
    t = b.node("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])
    t = _qdq(b, t, 0.008, 0, np.int8)                       # re-quantized: dropped
    t = _qdq(b, b.conv(t, 8, 8), 0.004, 0, np.uint8)        # uint8 on a signed conv: mu 1.02
    t = b.gemm(b.node("Flatten", [t], axis=1), 8 * 6 * 6, 10)
    t = _qdq(b, t, 0.05, 0, np.int8)                        # the logits: dropped
    m = b.model("x", t, (1, 12, 12), 10)
    nm = prepare(m)
    assert "2 read as clipped ReLUs" in " ".join(nm.notes) and "3 dropped" in " ".join(nm.notes)
    assert sorted(round(s.mu, 6) for s in nm.sites) == [1.02, 1.27]
    # onnxruntime's contrib Q/DQ (com.microsoft, its quantizer's UseQDQContribOps) read alike
    contrib = onnx.ModelProto()
    contrib.CopyFrom(m)
    for n in contrib.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n.domain = "com.microsoft"
    contrib.opset_import.add(domain="com.microsoft", version=1)
    assert sorted(round(s.mu, 6) for s in prepare(contrib).sites) == [1.02, 1.27]
    ops = {n.op_type for n in nm.model.graph.node}
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    x = B.rand_input(64)
    _, _, snn = B.converted(m, x, T=256, method="max")
    want, got = run(m, x).outputs[0], run(snn.model, x).outputs[0]
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.98


@pytest.mark.parametrize("lo", [None, 0, 3])
def test_a_clip_of_the_integers_between_the_pair_narrows_its_range(lo):
    """PyTorch writes a fake-quantizer of range (0, 127) in a uint8 (``reduce_range``) as
    QuantizeLinear -> Clip(max=127) -> DequantizeLinear: it was refused as "not ReLU-like
    (its input can be negative)", about the uint8 integers. It is the clipped ReLU of mu =
    (127 - z) s; one whose clamp from below is above 0 (lo = 3) is no ReLU, and stays
    refused."""
    b = B.GraphBuilder(17, seed=2)
    t = b.node("Relu", [b.conv("x", 1, 8)])
    s, z = b.const(np.array(0.02, np.float32)), b.const(np.array(0, np.uint8))
    q = b.node("QuantizeLinear", [t, s, z])
    bounds = [b.const(np.array(lo, np.uint8)) if lo is not None else "",
              b.const(np.array(127, np.uint8))]
    t = b.node("DequantizeLinear", [b.node("Clip", [q, *bounds]), s, z])
    t = b.gemm(b.node("Flatten", [b.node("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])],
                      axis=1), 8 * 6 * 6, 10)
    m = b.model("x", t, (1, 12, 12), 10)
    if lo == 3:
        with pytest.raises(UnsupportedModelError, match="QuantizeLinear|Clip"):
            prepare(m)
        return
    nm = prepare(m)
    assert [round(site.mu, 6) for site in nm.sites] == [2.54]
    x = B.rand_input(64)
    _, _, snn = B.converted(m, x, T=256, method="max")
    want, got = run(m, x).outputs[0], run(snn.model, x).outputs[0]
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.98


def test_a_per_axis_activation_pair_is_refused_by_name():
    b = B.GraphBuilder(13, seed=2)
    t = b.node("Relu", [b.conv("x", 1, 4)])
    s = b.const(np.full(4, 0.01, np.float32))
    z = b.const(np.zeros(4, np.uint8))
    q = b.node("QuantizeLinear", [t, s, z], axis=1)
    t = b.node("DequantizeLinear", [q, s, z], axis=1)
    t = b.gemm(b.node("Flatten", [t], axis=1), 4 * 12 * 12, 10)
    with pytest.raises(UnsupportedModelError, match="QuantizeLinear.*per-axis.*quantize "
                                                    "activations per tensor"):
        prepare(b.model("x", t, (1, 12, 12), 10))


def test_cli_converts_a_qdq_model_and_refuses_a_qoperator_one(tmp_path):
    from onnx_snn.cli import main
    fm = B.vgg(13, "clip", in_shape=(1, 12, 12), softmax=False, dropout=False)
    x = B.rand_input(64)
    np.save(tmp_path / "x.npy", x)
    onnx.save(_quantize(fm, x, tmp_path, "qdq"), str(tmp_path / "qdq.onnx"))
    onnx.save(_quantize(fm, x, tmp_path, "qop"), str(tmp_path / "qop.onnx"))
    assert main(["-q", "convert", str(tmp_path / "qdq.onnx"), "--calib", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "s.onnx")]) == 0
    assert main(["-q", "convert", str(tmp_path / "qop.onnx"), "--calib", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "o.onnx")]) == 4
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("head", ["Softmax", "Sigmoid"])
def test_a_quantized_final_softmax_or_sigmoid_is_still_dropped(head, tmp_path):
    """onnxruntime quantizes the probabilities too (a uint8 pair at 0): that pair is no
    activation, so the final Softmax/Sigmoid is still dropped and the model converts."""
    b = B.GraphBuilder(13, seed=4)
    t = b.node("Relu", [b.gemm("x", 16, 12)])
    t = b.node(head, [b.gemm(t, 12, 5)], **({"axis": 1} if head == "Softmax" else {}))
    fm = b.model("x", t, (16,), 5)
    x = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)
    qm = _quantize(fm, x, tmp_path, "qdq")
    nm = prepare(qm)
    assert len(nm.sites) == 1 and any(f"dropped the final {head}" in n for n in nm.notes)


@pytest.mark.parametrize("per_channel", [True, False])
def test_fake_quantized_float_weights_are_folded(per_channel):
    """Quantization-aware training exports a weight as QuantizeLinear(float W) ->
    DequantizeLinear (per channel, int8; or per tensor, uint8 with zero point 128 and a scale
    that saturates the largest weights): it becomes W on the integer grid, as onnxruntime
    computes it, and the converted model computes with that weight."""
    b = B.GraphBuilder(13, seed=5)
    w = (np.random.default_rng(1).standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32)
    if per_channel:
        s = (np.abs(w).reshape(8, -1).max(1) / 127).astype(np.float32)
        ws, ss, zs = b.const(w), b.const(s), b.const(np.zeros(8, np.int8))
        attrs = {"axis": 0}
    else:
        s = np.float32(np.abs(w).max() / 200)          # the largest weights saturate
        ws, ss, zs = b.const(w), b.const(np.array(s)), b.const(np.array(128, np.uint8))
        attrs = {}
    wq = b.node("DequantizeLinear", [b.node("QuantizeLinear", [ws, ss, zs], **attrs), ss, zs],
                **attrs)
    t = b.node("Relu", [b.node("Conv", ["x", wq], kernel_shape=[3, 3], pads=[1] * 4)])
    t = b.gemm(b.node("Flatten", [t], axis=1), 8 * 12 * 12, 10)
    m = b.model("x", t, (1, 12, 12), 10)
    nm = prepare(m)
    ops = {n.op_type for n in nm.model.graph.node}
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops
    conv = next(n for n in nm.model.graph.node if n.op_type == "Conv")
    got = nh.to_array(next(i for i in nm.model.graph.initializer if i.name == conv.input[1]))
    g = h.make_graph([h.make_node("QuantizeLinear", ["w", "s", "z"], ["q"], **attrs),
                      h.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], **attrs)], "q",
                     [], [h.make_tensor_value_info("d", onnx.TensorProto.FLOAT, list(w.shape))],
                     [nh.from_array(w, "w"), nh.from_array(np.asarray(s, np.float32), "s"),
                      nh.from_array(np.zeros(8, np.int8) if per_channel else np.array(128, np.uint8), "z")])
    ref = onnx.helper.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    ref.ir_version = 8
    import onnxruntime as ort
    sess = ort.InferenceSession(ref.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(got, sess.run(None, {})[0])       # onnxruntime's own
    assert per_channel or np.any(got == (255 - 128) * s)             # saturated
    x = B.rand_input(8)
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(m, x).outputs[0], atol=1e-5)


@pytest.mark.parametrize("move", ["Gather", "GatherND", "Split"])
def test_a_pair_behind_ops_that_select_values_is_a_requantization(move):
    """Gather, GatherND and Split only select values: a uint8 pair behind them re-quantizes
    a clamped activation and is dropped, not made a second spiking layer."""
    b = B.GraphBuilder(13, seed=2)
    t = _qdq(b, b.node("Relu", [b.conv("x", 1, 8)]), 0.01, 0, np.uint8)       # the site
    if move == "Gather":
        t = b.node("Gather", [t, b.const(np.array([7, 0, 3, 1], np.int64))], axis=1)
    elif move == "GatherND":
        t = b.node("GatherND", [t, b.const(np.array([[0], [0]], np.int64))], batch_dims=1)
    else:
        t = b.node("Split", [t, b.const(np.array([4, 4], np.int64))], n_out=2, axis=1)
    t = _qdq(b, t, 0.008, 0, np.uint8)                      # re-quantized: dropped
    t = b.gemm(b.node("Flatten", [b.node("GlobalAveragePool", [t])], axis=1),
               8 if move == "GatherND" else 4, 10)
    nm = prepare(b.model("x", t, (1, 12, 12), 10))
    assert len(nm.sites) == 1, [s.name for s in nm.sites]
    assert "1 dropped" in " ".join(nm.notes)


def _qcfs(b: B.GraphBuilder, x: str, form: str, th: float, levels: int) -> str:
    """A quantized clipped ReLU of ``levels`` steps on [0, th], written out as trainers do:
    qcfs: th * floor(L * clip(x / th, 0, 1) + 0.5) / L (Bu et al.'s reference code, the
    threshold a [1] tensor); lsq: round(clip(x / s, 0, L)) * s (s = th / L); floor: the
    same without the half-step shift (clip-floor); clip: the plain clip it stands for;
    clip-half: the clip half a step lower (what clip-floor stands for on average);
    floor-first: rounded, then clamped, th * clip(floor(x L / th) / L, 0, 1); clip-in: the
    clip of x half a step lower (what floor-first stands for on average)."""
    if form == "floor-first":
        y = b.node("Floor", [b.node("Mul", [x, b.const(np.array(levels / th, np.float32))])])
        y = b.node("Div", [y, b.const(np.array(levels, np.float32))])
        y = b.node("Clip", [y, b.const(np.array(0, np.float32)), b.const(np.array(1, np.float32))])
        return b.node("Mul", [y, b.const(np.array(th, np.float32))])
    if form == "clip-in":
        x = b.node("Add", [x, b.const(np.array(-th / (2 * levels), np.float32))])
    if form.startswith("clip"):
        y = b.node("Clip", [x, b.const(np.array(0, np.float32)), b.const(np.array(th, np.float32))])
        if form == "clip-half":
            y = b.node("Add", [y, b.const(np.array(-th / (2 * levels), np.float32))])
        return y
    if form == "lsq":
        s = th / levels
        y = b.node("Clip", [b.node("Div", [x, b.const(np.array(s, np.float32))]),
                            b.const(np.array(0, np.float32)), b.const(np.array(levels, np.float32))])
        return b.node("Mul", [b.node("Round", [y]), b.const(np.array(s, np.float32))])
    thr = b.const(np.array([th], np.float32))
    y = b.node("Clip", [b.node("Div", [x, thr]), b.const(np.array(0, np.float32)),
                        b.const(np.array(1, np.float32))])
    y = b.node("Mul", [y, b.const(np.array(levels, np.float32))])
    if form == "qcfs":
        y = b.node("Add", [y, b.const(np.array(0.5, np.float32))])
    y = b.node("Div", [b.node("Floor", [y]), b.const(np.array(levels, np.float32))])
    return b.node("Mul", [y, thr])


def _qcfs_net(form: str, levels: int = 4, depth: int = 2, seed: int = 0) -> onnx.ModelProto:
    b = B.GraphBuilder(13, seed)
    x = _qcfs(b, b.conv("input", 1, 4), form, 1.5, levels)
    if depth > 1:
        x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
        x = _qcfs(b, b.conv(x, 4, 8), form, 2.0, levels)
        x = b.gemm(b.node("Flatten", [x]), 8 * 36, 10)
    else:
        x = b.gemm(b.node("Flatten", [x]), 4 * 144, 10)
    return b.model("input", x, (1, 12, 12), 10)


@pytest.mark.parametrize("form", ["qcfs", "lsq", "floor", "floor-first"])
def test_a_written_out_quantizer_is_its_clipped_relu(form):
    """QCFS's clip-floor-shift, LSQ's round(clip(x / s)) * s and a plain clip-floor, written
    in float ops (their trainers' ONNX exports), were refused at the Floor/Round as a
    nonlinearity: they are the clipped ReLU their straight-through estimator trained (the
    floor without the shift as its mean, half a step lower), one site each, mu at the clip."""
    nm = prepare(_qcfs_net(form))
    assert len(nm.sites) == 2
    assert not {"Floor", "Round"} & {n.op_type for n in nm.model.graph.node}
    note = next(n for n in nm.notes if n.startswith("quantized activations: 2 rounding"))
    # the steps are counted on a clamp before a rounding that rounds half up (deng's neurons
    # match it at T = L; a floor without the shift no T matches exactly)
    assert ("the quantizers have 4 steps, which the neurons match at T = 4" in note) == (
        form in ("qcfs", "lsq"))
    x = B.rand_input(32)
    # floor(u) is read as u - 1/2: the clip's values, half a step lower
    clip = prepare(_qcfs_net({"floor": "clip-half", "floor-first": "clip-in"}.get(form, "clip")))
    np.testing.assert_allclose(run(nm.model, x).outputs[0], run(clip.model, x).outputs[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("use", ["fraction", "cast", "gather"])
def test_a_rounding_read_as_anything_but_a_number_is_still_refused(use):
    """A floor of an activation whose result is an index (Gather), cast to integers, or
    taken from its own input (u - floor(u)) is no quantizer: reading it as the identity
    changed such a model silently (an outside review); it stays refused."""
    b = B.GraphBuilder(13)
    u = b.node("Mul", [b.node("Relu", [b.conv("input", 1, 4)]), b.const(np.array(8, np.float32))])
    f = b.node("Floor", [u])
    if use == "fraction":
        x = b.node("Sub", [u, f])
    elif use == "cast":
        x = b.node("Cast", [b.node("Cast", [f], to=onnx.TensorProto.INT64)], to=onnx.TensorProto.FLOAT)
    else:
        table = b.const(np.linspace(0, 1, 64).astype(np.float32))
        x = b.node("Gather", [table, b.node("Cast", [f], to=onnx.TensorProto.INT64)])
    x = b.node("Relu", [b.conv(x, 4, 4)])
    m = b.model("input", b.gemm(b.node("Flatten", [x]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError):
        prepare(m)


def test_a_rounding_of_anything_but_an_activation_is_still_refused():
    b = B.GraphBuilder(13)
    x = b.node("Floor", [b.conv("input", 1, 4)])
    x = b.node("Relu", [b.conv(x, 4, 4)])
    m = b.model("input", b.gemm(b.node("Flatten", [x]), 4 * 144, 10), (1, 12, 12), 10)
    with pytest.raises(UnsupportedModelError, match=r"\(Floor\) is a nonlinearity"):
        prepare(m)


@pytest.mark.parametrize("levels", [2, 4])
def test_qcfs_converts_exactly_at_T_levels_with_its_own_conversion(levels):
    """QCFS's theorem: an integrate-and-fire layer of threshold th and initial membrane th/2
    run T = L steps on a constant current gives the quantizer's values exactly. One site fed
    by the analog input: the spiking model (deng: threshold mu, v0 = mu/2) reproduces the
    DNN, its Floor included, to float rounding; at T = L - 1 it does not."""
    m = _qcfs_net("qcfs", levels, depth=1, seed=3)
    x = B.rand_input(64, seed=2)
    want = run(m, x).outputs[0]
    _, _, snn = B.converted(m, x, T=levels, method="deng")
    np.testing.assert_allclose(run(snn.model, x).outputs[0], want, rtol=1e-4, atol=1e-4)
    B.assert_runtimes_agree(snn.model, x)
    _, _, fewer = B.converted(m, x, T=levels - 1, method="deng")
    assert not np.allclose(run(fewer.model, x).outputs[0], want, atol=1e-3)


@pytest.mark.parametrize("dtype,zp", [(onnx.TensorProto.INT4, None), (onnx.TensorProto.INT4, -1),
                                      (onnx.TensorProto.UINT4, 8)])
def test_four_bit_weights_are_dequantized(dtype, zp):
    """A DequantizeLinear of 4-bit weights (onnxruntime's quantize_static with QInt4
    weights, opset 21) was refused as an unsupported op: onnx reads INT4 as a dtype numpy does
    not call integer. It is folded like int8; the spiking model approaches the DNN."""
    from onnx import TensorProto as TP
    rng = np.random.default_rng(0)
    lo, hi = (-8, 8) if dtype == TP.INT4 else (0, 16)
    q = rng.integers(lo, hi, (8, 1, 3, 3))
    inits = [onnx.helper.make_tensor("wq", dtype, q.shape, q.reshape(-1).tolist()),
             nh.from_array(np.array(0.05, np.float32), "ws")]
    dq_in = ["wq", "ws"]
    if zp is not None:
        inits.append(onnx.helper.make_tensor("wz", dtype, [], [zp]))
        dq_in.append("wz")
    b = B.GraphBuilder(21, seed=3)
    nodes = [onnx.helper.make_node("DequantizeLinear", dq_in, ["w"], name="dq")]
    b.nodes += nodes
    b.inits += inits
    t = b.node("Relu", [b.node("Conv", ["x", "w"], kernel_shape=[3, 3], pads=[1] * 4)])
    t = b.gemm(b.node("Flatten", [b.node("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])],
                      axis=1), 8 * 6 * 6, 10)
    m = b.model("x", t, (1, 12, 12), 10)
    x = B.rand_input(64)
    _, _, snn = B.converted(m, x, T=256, method="max")
    want, got = run(m, x).outputs[0], run(snn.model, x).outputs[0]
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.99

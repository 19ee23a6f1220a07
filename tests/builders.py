"""Small ONNX models built with onnx.helper at a chosen opset, in every activation idiom.

Weights are seeded random numbers (He-scaled so activations stay in a useful range); these
models test graph handling, never accuracy.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

IDIOMS = ("clip", "clip_const_nodes", "relu_min", "max_min", "min_max", "relu6", "relu")


class GraphBuilder:
    def __init__(self, opset: int, seed: int = 0):
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.n = 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value, prefix="c") -> str:
        nm = self.name(prefix)
        self.inits.append(nh.from_array(np.asarray(value, dtype=np.asarray(value).dtype), nm))
        return nm

    def node(self, op, inputs, n_out=1, **attrs) -> str:
        outs = [self.name(op.lower()) for _ in range(n_out)]
        self.nodes.append(h.make_node(op, inputs, outs, name=self.name(op + "_"), **attrs))
        return outs[0]

    def conv(self, x, cin, cout, k=3, stride=1, pad=1, bias=True):
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        ins = [x, self.const(w, "W")]
        if bias:
            ins.append(self.const((self.rng.standard_normal(cout) * 0.1).astype(np.float32), "B"))
        return self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad] * 4)

    def bn(self, x, c):
        r = self.rng
        return self.node("BatchNormalization", [
            x, self.const((1 + 0.1 * r.standard_normal(c)).astype(np.float32), "bn_g"),
            self.const((0.1 * r.standard_normal(c)).astype(np.float32), "bn_b"),
            self.const((0.1 * r.standard_normal(c)).astype(np.float32), "bn_m"),
            self.const((1 + 0.1 * r.random(c)).astype(np.float32), "bn_v")], epsilon=1e-5)

    def gemm(self, x, cin, cout, matmul=False):
        w = (self.rng.standard_normal((cin, cout)) * np.sqrt(2.0 / cin)).astype(np.float32)
        b = (self.rng.standard_normal(cout) * 0.1).astype(np.float32)
        if matmul:
            return self.node("Add", [self.node("MatMul", [x, self.const(w, "W")]), self.const(b, "B")])
        return self.node("Gemm", [x, self.const(w.T.copy(), "W"), self.const(b, "B")], transB=1)

    def scalar_node(self, value) -> str:
        """A scalar produced by a Constant node (not an initializer)."""
        return self.node("Constant", [], value=nh.from_array(np.array(value, np.float32)))

    def act(self, x, idiom: str, mu: float = 2.0):
        if idiom == "clip":
            if self.opset < 11:
                return self.node("Clip", [x], min=0.0, max=float(mu))
            return self.node("Clip", [x, self.const(np.array(0.0, np.float32)),
                                      self.const(np.array(mu, np.float32))])
        if idiom == "clip_const_nodes":
            if self.opset < 11:
                return self.node("Clip", [x], min=0.0, max=float(mu))
            zero = self.node("Cast", [self.node("Constant", [], value=nh.from_array(np.array(0, np.int64)))],
                             to=TP.FLOAT)
            return self.node("Clip", [x, zero, self.scalar_node(mu)])
        if idiom == "relu_min":
            return self.node("Min", [self.node("Relu", [x]), self.const(np.array([mu], np.float32))])
        if idiom == "max_min":
            m = self.node("Max", [x, self.const(np.array(0.0, np.float32))])
            return self.node("Min", [m, self.const(np.array(mu, np.float32))])
        if idiom == "min_max":
            m = self.node("Min", [self.const(np.array(mu, np.float32)), x])
            return self.node("Max", [m, self.const(np.array(0.0, np.float32))])
        if idiom == "relu6":
            if self.opset < 11:
                return self.node("Clip", [x], min=0.0, max=6.0)
            return self.node("Clip", [x, self.const(np.array(0.0, np.float32)),
                                      self.const(np.array(6.0, np.float32))])
        if idiom == "relu":
            return self.node("Relu", [x])
        raise ValueError(idiom)

    def dropout(self, x):
        if self.opset >= 12:
            return self.node("Dropout", [x, self.const(np.array(0.25, np.float32))])
        return self.node("Dropout", [x], ratio=0.25)

    def model(self, x_name, out, in_shape, n_out, name="g") -> onnx.ModelProto:
        g = h.make_graph(self.nodes, name,
                         [h.make_tensor_value_info(x_name, TP.FLOAT, ["N"] + list(in_shape))],
                         [h.make_tensor_value_info(out, TP.FLOAT, ["N", n_out])], self.inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", self.opset)],
                         producer_name="onnx.helper")
        m.ir_version = min(m.ir_version, 7 if self.opset < 15 else 8)
        onnx.checker.check_model(m)
        return m


def vgg(opset=13, idiom="clip", bn=True, dropout=True, matmul=False, softmax=True,
        pool="MaxPool", seed=0, mu=2.0, in_shape=(1, 12, 12), classes=10) -> onnx.ModelProto:
    """conv-act-conv-act-pool-flatten-dense-act-dense(-softmax)."""
    b = GraphBuilder(opset, seed)
    c, hh, ww = in_shape
    x = b.conv("input", c, 4)
    if bn:
        x = b.bn(x, 4)
    x = b.act(x, idiom, mu)
    x = b.conv(x, 4, 8)
    x = b.act(x, idiom, mu)
    x = b.node(pool, [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.node("Flatten", [x], axis=1)
    x = b.gemm(x, 8 * (hh // 2) * (ww // 2), 16, matmul=matmul)
    x = b.act(x, idiom, mu)
    if dropout:
        x = b.dropout(x)
    x = b.gemm(x, 16, classes)
    if softmax:
        x = b.node("Softmax", [x], axis=1)
    return b.model("input", x, in_shape, classes, name=f"vgg_{idiom}_op{opset}")


def resnet(opset=13, idiom="clip", seed=0, mu=2.0, sum_op=False, in_shape=(1, 12, 12),
           stem_pool=None) -> onnx.ModelProto:
    """A stem, one identity block and one block with a strided 1x1 conv shortcut.
    ``stem_pool`` ("MaxPool", "AveragePool"): the stem ends in that 2x2 pool, whose output
    the identity block's first convolution and its shortcut both read (torchvision's ResNets)."""
    b = GraphBuilder(opset, seed)
    c = in_shape[0]
    x = b.act(b.conv("input", c, 4), idiom, mu)
    if stem_pool:
        x = b.node(stem_pool, [x], kernel_shape=[2, 2], strides=[2, 2])
    # identity block
    y = b.act(b.conv(x, 4, 4), idiom, mu)
    y = b.conv(y, 4, 4)
    x = b.act(b.node("Sum" if sum_op else "Add", [y, x]), idiom, mu)
    # downsampling block with a 1x1 shortcut
    y = b.act(b.conv(x, 4, 8, stride=2), idiom, mu)
    y = b.conv(y, 8, 8)
    s = b.conv(x, 4, 8, k=1, stride=2, pad=0)
    x = b.act(b.node("Add", [y, s]), idiom, mu)
    x = b.node("GlobalAveragePool", [x])
    x = b.node("Flatten", [x], axis=1)
    x = b.gemm(x, 8, 10)
    return b.model("input", x, in_shape, 10, name=f"resnet_{idiom}_op{opset}")


def single_site(opset=13, mu=1.0) -> onnx.ModelProto:
    """input -> Clip(0, mu) -> output: one site fed directly by the input (constant current)."""
    b = GraphBuilder(opset)
    y = b.act("input", "clip", mu)
    g = h.make_graph(b.nodes, "single", [h.make_tensor_value_info("input", TP.FLOAT, ["N", 8])],
                     [h.make_tensor_value_info(y, TP.FLOAT, ["N", 8])], b.inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def with_node(model: onnx.ModelProto, op: str, after_first_act: bool = True, **attrs) -> onnx.ModelProto:
    """Insert an extra unary node ``op`` right after the first Conv (for error tests)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    old = conv.output[0]
    new = old + "_pre"
    conv.output[0] = new
    node = h.make_node(op, [new], [old], name=f"the_{op.lower()}", **attrs)
    idx = list(m.graph.node).index(conv)
    m.graph.node.insert(idx + 1, node)
    return m


def rand_input(n=32, shape=(1, 12, 12), seed=1) -> np.ndarray:
    return np.random.default_rng(seed).random((n,) + tuple(shape)).astype(np.float32)


def pooled_twin(pool: str, seed=0, opset=13, in_shape=(1, 12, 12), global_pool=False) -> onnx.ModelProto:
    """conv - clip - AveragePool - conv - BN - clip - ``pool`` - FC: the max-pooled net and its
    average-pooled twin (``pool`` = MaxPool / AveragePool; ``global_pool``: the global form)."""
    b = GraphBuilder(opset, seed)
    c, hh, ww = in_shape
    x = b.act(b.conv("input", c, 4), "clip", 2.0)
    x = b.node("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.act(b.bn(b.conv(x, 4, 8), 8), "clip", 2.0)
    if global_pool:
        x = b.node("Global" + pool, [x])
        n = 8
    else:
        x = b.node(pool, [x], kernel_shape=[2, 2], strides=[2, 2])
        n = 8 * (hh // 4) * (ww // 4)
    x = b.gemm(b.node("Flatten", [x], axis=1), n, 10)
    return b.model("input", x, in_shape, 10, name=f"twin_{pool}")


def assert_runtimes_agree(model: onnx.ModelProto, x: np.ndarray, atol: float = 1e-5):
    """The torch runtime and onnxruntime give the same outputs (within ``atol``) and exactly
    the same spike counts on ``x``; returns the torch module."""
    import torch
    from onnx_snn.runtimes.ort import run
    from onnx_snn.runtimes.torch import SpikingNetwork
    net = SpikingNetwork(model).eval()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    r = run(model, x)
    assert np.abs(y - r.outputs[0]).max() <= atol
    for k in r.spikes:
        np.testing.assert_array_equal(net.last_spikes[k].numpy(), r.spikes[k])
    return net


def converted(model: onnx.ModelProto, x: np.ndarray, T: int = 2, method: str = "datta"):
    """(normalized model, calibration, SpikingModel) of ``model`` calibrated on ``x``."""
    import onnx_snn
    nm = onnx_snn.prepare(model)
    cal = onnx_snn.calibrate(nm, x, show_progress=False)
    return nm, cal, onnx_snn.build(nm, cal, T, method)


def set_recorded_timesteps(model: onnx.ModelProto, timesteps: int) -> None:
    """Set a spiking model's T in its metadata and in its loop graph's ``timesteps``
    initializer (the T onnxruntime runs), as a conversion at that T writes both (the reader
    refuses a file whose two differ)."""
    from onnx_snn.spiking import format as F
    F.set_metadata(model, {F.META_TIMESTEPS: str(int(timesteps))})
    for t in model.graph.initializer:
        if t.name == F.TIMESTEPS_INPUT:
            t.CopyFrom(nh.from_array(np.array(int(timesteps), np.int64), t.name))


def set_site_param(model: onnx.ModelProto, site: str, param: str, value) -> None:
    """Set a site's neuron parameter (threshold, amplitude, leak, v_init) in the graph and
    in the metadata that records it, as a conversion would have written it (the reader
    refuses a graph whose parameters are not the recorded ones)."""
    import json
    from onnx import numpy_helper
    from onnx_snn.spiking import format as F
    for g in (model.graph,) + tuple(a.g for n in model.graph.node for a in n.attribute if a.g.node):
        for t in g.initializer:
            if t.name == F.param_name(site, param):
                t.CopyFrom(numpy_helper.from_array(np.asarray(value, np.float32), t.name))
                break
        else:
            continue
        break
    else:
        raise KeyError(param)
    meta = F.metadata(model)
    sites = json.loads(meta[F.META_SITES])
    rec = next(s for s in sites if s["name"] == site)
    v = np.asarray(value, np.float64).reshape(-1)
    if param == "leak" and v.size > 1:     # the metadata records one leak per site
        if not np.all(v == v[0]):
            raise ValueError("the metadata records one leak per site")
        v = v[:1]
    val = float(v[0]) if v.size == 1 else [float(a) for a in v]
    ratio = (lambda x: x / rec["mu"]) if v.size == 1 else (lambda x: [a / rec["mu"] for a in x])
    if param == "threshold":
        rec.update(threshold=val, alpha=ratio(val))
    elif param == "amplitude":
        rec.update(amplitude=val, beta=ratio(val))
    else:
        rec[param] = val
    F.set_metadata(model, {F.META_SITES: json.dumps(sites)})


def dense_site_recorded_as_one_neuron(x: np.ndarray):
    """(a datta conversion of :func:`vgg` at T = 2 calibrated on ``x``, the name of its dense
    site, a copy of its model whose record and membrane shape of that site were edited alike
    to one neuron): the two agree, so the reader's checks pass, but the layer has more."""
    import json

    import onnx_snn
    from onnx_snn.spiking import format as F
    snn = onnx_snn.convert(vgg(13, "clip"), x, timesteps=2, method="datta", show_progress=False)
    site = next(s for s in snn.records.values() if len(s.shape) == 1 and s.shape[0] > 1)
    m = onnx.ModelProto()
    m.CopyFrom(snn.model)
    sites = json.loads(F.metadata(m)[F.META_SITES])
    next(d for d in sites if d["name"] == site.name)["shape"] = [1]
    F.set_metadata(m, {F.META_SITES: json.dumps(sites)})
    dims = F.all_initializers(m)[F.StateNames(site.name).dims]
    dims.CopyFrom(nh.from_array(np.array([1], np.int64), dims.name))
    return snn, site, m
